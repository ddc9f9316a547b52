"""GAGAvatar's training losses, as the official ``calc_metrics`` computes them.

For a batch with coarse RGB ``I_c`` (the first 3 splatted channels), fine image ``I_f`` (neural
renderer) and target ``I_t`` (all ``[B, 3, S, S]``)::

    img_loss    = (L1(I_c, I_t) + L1(I_f, I_t)) / 2
    box_loss    = (L1(crop I_c, crop I_t) + L1(crop I_f, crop I_t)) / 2
    percep_loss = 1e-2 * (P(crop I_c, crop I_t) + P(crop I_f, crop I_t))
    point_loss  = mean_v 10 * || p_v - nearest lifted point ||^2      (lifting-distance loss)
    loss        = img_loss + box_loss + percep_loss + point_loss

``crop`` cuts each image to its target face box expanded by 1.1 (:func:`expand_bbox`) and resizes
it to ``box_size`` (512 = the render size officially) with antialiased bilinear resampling; ``P``
is :class:`~.perceptual.FacePerceptualLoss`. The nearest-neighbour search is exact (brute force in
chunks, no faiss) and carries no gradient; the distance to the chosen point does.

Every term is a mean over the batch of per-sample means of equal size (every sample has the same
pixels, crop size and vertex count), so the mean of the terms over equal shards of a batch is the
term over the whole batch: data-parallel processes averaging their gradients reproduce one
process's gradient of the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BOX_SCALE = 1.1
LIFTING_WEIGHT = 10.0
BOX_PERCEPTUAL_WEIGHT = 1e-2
NN_CHUNK = 1 << 22
"""Distances computed at once by :func:`nearest_indices` (source points x target points)."""
LOSS_NAMES = ("img_loss", "box_loss", "percep_loss", "point_loss")


def expand_bbox(bbox: torch.Tensor, scale: float = BOX_SCALE) -> torch.Tensor:
    """Square box around ``bbox [..., 4]`` (normalised ``x0, y0, x1, y1``) of side
    ``scale * sqrt(w h)``, shrunk so that it stays inside the unit square around its centre."""
    x0, y0, x1, y1 = bbox.unbind(-1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = torch.sqrt((y1 - y0) * (x1 - x0)) * scale
    side = torch.min(torch.min(torch.min(torch.min(side, cx * 2), cy * 2), (1 - cx) * 2), (1 - cy) * 2)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=-1)


def box_pixels(bbox: torch.Tensor, size: int) -> torch.Tensor:
    """Integer pixel boxes ``[B, 4]`` of normalised boxes in a ``size``-pixel square image
    (``(clamp(b, 0, 1) * size).long()`` as the official code; at least one pixel wide)."""
    box = (bbox.clamp(0, 1) * size).long()
    lo = box[:, :2].clamp(max=size - 1)
    hi = torch.maximum(box[:, 2:], lo + 1)
    return torch.cat([lo, hi], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``images [B, C, H, W]`` to pixel ``boxes [B, 4]`` (x0, y0, x1, y1, end-exclusive) and
    resize each crop to ``size x size`` (bilinear, antialiased)."""
    crops = [F.interpolate(images[i:i + 1, :, y0:y1, x0:x1], size=(size, size), mode="bilinear",
                           align_corners=False, antialias=True)
             for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())]
    return torch.cat(crops, dim=0)


@torch.no_grad()
def nearest_indices(src: torch.Tensor, dst: torch.Tensor, chunk: int = NN_CHUNK) -> torch.Tensor:
    """For every point of ``src [B, M, 3]``, the index of its nearest point in ``dst [B, N, 3]``.

    Exact brute force (Euclidean distances without the ``|a|^2 - 2ab + |b|^2`` shortcut), ``chunk``
    distances at a time; ties go to the lowest index. Returns ``[B, M]`` int64.
    """
    B, M, _ = src.shape
    rows = max(1, chunk // max(1, dst.shape[1]))
    out = torch.empty(B, M, dtype=torch.long, device=src.device)
    a, b = src.detach().float(), dst.detach().float()
    for i in range(B):
        for s in range(0, M, rows):
            d = torch.cdist(a[i, s:s + rows], b[i], compute_mode="donot_use_mm_for_euclid_dist")
            out[i, s:s + rows] = d.argmin(dim=1)
    return out


def lifting_loss(vertices: torch.Tensor, lifted: torch.Tensor, weight: float = LIFTING_WEIGHT) -> torch.Tensor:
    """Lifting-distance loss: ``mean(weight * |v - nearest lifted point|^2)`` over ``vertices [B, M, 3]``
    (the official ``square_distance(t_points, p_points).mean()``); differentiable in both."""
    idx = nearest_indices(vertices, lifted)
    chosen = torch.gather(lifted, 1, idx[..., None].expand(-1, -1, lifted.shape[-1]))
    return (((vertices.float() - chosen.float()) ** 2).sum(-1) * weight).mean()


def psnr_of_mse(mse: torch.Tensor) -> torch.Tensor:
    """``-10 log10(mse)`` in dB (images in 0..1): with the MSE over a whole batch, the official
    training log's PSNR."""
    return -10.0 * torch.log10(mse)


@dataclass
class LossWeights:
    """Multipliers of the four terms (1 = official). ``percep = 0`` needs no perceptual weights."""

    img: float = 1.0
    box: float = 1.0
    percep: float = 1.0
    point: float = 1.0


def gagavatar_losses(coarse_rgb: torch.Tensor, fine: torch.Tensor, target: torch.Tensor, bbox: torch.Tensor,
                     vertices: torch.Tensor, lifted: torch.Tensor, perceptual: nn.Module | None,
                     weights: LossWeights = LossWeights(), box_size: int | None = None) -> dict[str, torch.Tensor]:
    """The official ``calc_metrics`` terms, weighted; ``loss`` is their sum.

    Args:
        coarse_rgb, fine, target: ``[B, 3, S, S]``; bbox: ``[B, 4]`` normalised target face boxes;
        vertices: ``[B, 5023, 3]`` target FLAME vertices; lifted: ``[B, L, 3]`` dual-lifting points;
        perceptual: :class:`~.perceptual.FacePerceptualLoss` (may be None when ``weights.percep == 0``);
        box_size: side the face crops are resized to (default ``S``).
    Returns:
        dict with ``img_loss``, ``box_loss``, ``percep_loss``, ``point_loss`` and ``loss`` (scalars).
    """
    coarse_rgb, fine, target = coarse_rgb.float(), fine.float(), target.float()
    size = target.shape[-1]
    boxes = box_pixels(expand_bbox(bbox.float()), size)
    box_size = size if box_size is None else box_size
    crop_t = crop_resize(target, boxes, box_size)
    crop_c = crop_resize(coarse_rgb, boxes, box_size)
    crop_f = crop_resize(fine, boxes, box_size)
    zero = target.new_zeros(())
    terms = {
        "img_loss": (F.l1_loss(coarse_rgb, target) + F.l1_loss(fine, target)) * 0.5 * weights.img,
        "box_loss": (F.l1_loss(crop_c, crop_t) + F.l1_loss(crop_f, crop_t)) * 0.5 * weights.box,
        "percep_loss": zero,
        "point_loss": lifting_loss(vertices, lifted) * weights.point if weights.point else zero,
    }
    if weights.percep:
        if perceptual is None:
            raise ValueError("the perceptual term is enabled but no perceptual network was given")
        terms["percep_loss"] = (perceptual(crop_c, crop_t) + perceptual(crop_f, crop_t)).float() \
            * BOX_PERCEPTUAL_WEIGHT * weights.percep
    terms["loss"] = sum(terms[k] for k in LOSS_NAMES)
    return terms
