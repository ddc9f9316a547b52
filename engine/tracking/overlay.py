"""Preview of a fit: the crop with the projected FLAME mesh (flat-shaded, half transparent) and landmarks.

Detected landmarks are drawn green, the fitted model's landmarks red, so a bad fit is visible
at a glance (as the official tracker's ``vis_image``).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from ..cameras import camera_center
from .fit import project

__all__ = ["draw_overlay"]

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel polygon vertices
_DETECTED, _FITTED = (40, 220, 40), (235, 40, 40)


def draw_overlay(crop: Tensor, vertices: Tensor, faces: Tensor, transform: Tensor, detected: Tensor,
                 fitted: Tensor, mesh_opacity: float = 0.5) -> np.ndarray:
    """The preview image ``[S, S, 3]`` uint8 RGB.

    Args:
        crop: ``[3, S, S]`` image in 0..1.
        vertices: ``[V, 3]`` FLAME vertices (world units); faces: ``[F, 3]`` (outward, counter-clockwise).
        transform: ``[3, 4]`` official camera of the crop.
        detected, fitted: ``[70, 2]`` landmarks in crop pixels (centres at +0.5).
        mesh_opacity: blend weight of the shaded mesh.
    """
    size = crop.shape[-1]
    image = (crop.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).astype(np.float32)
    with torch.no_grad():
        v = vertices.detach().cpu().float()
        tr = transform.detach().cpu().float()
        px = project(v[None], tr[None], size)[0] - 0.5  # cv2 draws pixel i centred at i
        tri = v[faces.cpu()]
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        to_camera = camera_center(tr) - tri.mean(1)
        facing = (normal * to_camera).sum(-1) / (normal.norm(dim=-1) * to_camera.norm(dim=-1)).clamp_min(1e-12)
        depth = to_camera.norm(dim=-1)
    shade = np.zeros((size, size), np.float32)
    cover = np.zeros((size, size), np.uint8)
    front = torch.nonzero(facing > 0).squeeze(1)
    order = front[torch.argsort(depth[front], descending=True)].numpy()  # painter's algorithm: far first
    polys = np.round(np.clip(px[faces.cpu()].numpy(), -4 * size, 5 * size) * (1 << _SHIFT)).astype(np.int32)
    lum = (0.25 + 0.75 * facing.clamp(0, 1).numpy()).astype(np.float32)
    for f in order:
        cv2.fillConvexPoly(shade, polys[f], float(lum[f]), lineType=cv2.LINE_8, shift=_SHIFT)
        cv2.fillConvexPoly(cover, polys[f], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    a = (cover.astype(np.float32) * mesh_opacity)[..., None]
    mesh_rgb = shade[..., None] * np.array([235.0, 225.0, 215.0], np.float32)
    out = np.ascontiguousarray((image * (1 - a) + mesh_rgb * a).clip(0, 255).astype(np.uint8))
    radius = max(1, size // 256)
    for points, colour in ((detected, _DETECTED), (fitted, _FITTED)):
        for x, y in (points.detach().cpu().float().numpy() - 0.5):
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(out, (int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT)))), radius << _SHIFT,
                           colour, -1, lineType=cv2.LINE_AA, shift=_SHIFT)
    return out
