"""Fit FLAME (shape, expression, jaw, eyes) and GAGAvatar's camera to 70 landmarks in a square crop.

Camera (the official tracker's): focal 12 (normalised), the head at the origin with FLAME's
global pose zero; the head pose is carried by the camera, ``transform = transform_from_pose(aa,
T)``, i.e. ``R = Rodrigues(aa) @ diag(-1, 1, -1)``. Landmarks are pixels of the ``image_size``
crop with x right, y down and the centre of pixel ``i`` at ``i + 0.5``: world points are projected
with :func:`~..cameras.transform_to_opencv` (``cx = W / 2``), which is the official renderer's
geometry (pixel ``i`` centred at ``i``) shifted by half a pixel.

The jaw contour (landmarks 0-16) follows FLAME's dynamic embedding for the current head yaw
(:func:`contour_yaw`). The fit minimises a robust (pseudo-Huber) reprojection error plus L2
priors on shape, expression, jaw and eyes with Adam, vectorised over the batch, from a
``cv2.solvePnP`` pose. Only the mesh vertices under the 70 landmarks are posed
(:class:`~.flame_landmarks.LandmarkModel`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch
from torch import Tensor

from ..cameras import FOCAL, opencv_to_transform, rodrigues, transform_from_pose, transform_to_opencv
from ..flame import FLAME, N_CONTOUR
from .flame_landmarks import LandmarkModel

__all__ = ["FlameFit", "fit_flame", "project", "contour_yaw", "pose_from_transform",
           "initial_pose", "CONTOUR_WEIGHT"]

_FLIP = (-1.0, 1.0, -1.0)
CONTOUR_WEIGHT = 0.5
"""Weight of the 17 jaw-contour landmarks relative to the others (a detector's contour is the least precise)."""
_ROBUST_PX = 2.0          # pseudo-Huber scale at 512 px: quadratic below, linear above
_CONTOUR_REFRESH = 20     # iterations between updates of the yaw-dependent contour rows
# prior weights (per squared coefficient, relative to a data term in units of (error / _ROBUST_PX)^2)
_PRIOR = {"shape": 2e-3, "expression": 1e-2, "jaw": 0.1, "eyes": 0.1}
_LR = {"aa": 0.01, "t_xy": 0.003, "t_z": 0.03, "shape": 0.05, "expression": 0.05, "jaw": 0.01, "eyes": 0.01}


@dataclass
class FlameFit:
    """Result of :func:`fit_flame` for ``B`` crops (float32 tensors).

    Attributes:
        shape: ``[B, n_shape]`` identity (300 with GAGAvatar's FLAME).
        expression: ``[B, n_expression]`` (100).
        pose: ``[B, 6]`` official posecode: global rotation (always 0) + jaw, axis-angle radians.
        eyes: ``[B, 6]`` left + right eye rotations, axis-angle radians.
        transform: ``[B, 3, 4]`` official camera ``[R | T]``.
        residual_px: ``[B]`` mean landmark distance after the fit, crop pixels.
        projected: ``[B, 70, 2]`` the fitted model's landmarks, crop pixels.
    """

    shape: Tensor
    expression: Tensor
    pose: Tensor
    eyes: Tensor
    transform: Tensor
    residual_px: Tensor
    projected: Tensor

    @property
    def jaw(self) -> Tensor:
        """``[B, 3]`` jaw rotation (axis-angle, radians)."""
        return self.pose[:, 3:]


def project(points: Tensor, transform: Tensor, image_size: int = 512) -> Tensor:
    """World points ``[B, N, 3]`` to crop pixels ``[B, N, 2]`` (x right, y down, pixel centres at +0.5).

    Args:
        transform: ``[B, 3, 4]`` official camera, focal :data:`~..cameras.FOCAL`.
    """
    view, K = transform_to_opencv(transform, FOCAL, (image_size, image_size))
    cam = points @ view[:, :3, :3].transpose(1, 2) + view[:, None, :3, 3]
    pix = cam @ K.transpose(1, 2)
    return pix[..., :2] / pix[..., 2:].clamp_min(1e-6)


def contour_yaw(aa: Tensor) -> Tensor:
    """Head yaw ``[B]`` (radians) for FLAME's dynamic contour, from camera rotations ``aa [B, 3]``.

    The camera maps ``X @ Rodrigues(aa) @ flip``, so the head seen by a frontal camera is rotated
    by ``Rodrigues(aa)^T`` (column convention), which is what :meth:`FLAME.head_yaw` measures.
    """
    return FLAME.head_yaw(rodrigues(aa).transpose(-1, -2))


def pose_from_transform(transform: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`~..cameras.transform_from_pose`: ``(aa [B, 3], T [B, 3])`` from ``[B, 3, 4]``."""
    head = (transform[:, :, :3] * transform.new_tensor(_FLIP)).detach().cpu().double().numpy()
    aa = np.stack([cv2.Rodrigues(np.ascontiguousarray(r))[0][:, 0] for r in head])
    return torch.from_numpy(aa).to(transform), transform[:, :, 3].clone()


def initial_pose(landmarks: Tensor, object_points: Tensor, image_size: int = 512,
                 valid: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Camera ``(aa [B, 3], T [B, 3])`` from ``cv2.solvePnP`` of 3D landmarks on their 2D detections.

    Args:
        landmarks: ``[B, 70, 2]`` crop pixels; object_points: ``[B, 70, 3]`` world units. The jaw
        contour (0-16) is left out: it slides on the mesh with the view.
        valid: optional ``[B, 70]`` mask of usable landmarks. Frames with fewer than 6 usable
        points (or a failed solve) get a frontal camera at the official distance.
    """
    f = FOCAL * image_size / 2.0
    K = np.array([[f, 0.0, image_size / 2.0], [0.0, f, image_size / 2.0], [0.0, 0.0, 1.0]])
    # a frontal camera at the official distance, in OpenCV terms, as the starting guess
    view0, _ = transform_to_opencv(transform_from_pose(torch.zeros(3, dtype=torch.float64),
                                                       torch.tensor([0.0, 0.0, 9.5], dtype=torch.float64)))
    rvec0 = cv2.Rodrigues(view0[:3, :3].numpy())[0]
    use = np.ones(landmarks.shape[:2], bool) if valid is None else valid.detach().cpu().numpy() > 0
    use[:, :N_CONTOUR] = False
    views = []
    for pts2, pts3, m in zip(landmarks.detach().double().cpu().numpy(),
                             object_points.detach().double().cpu().numpy(), use):
        ok, rvec, tvec = False, rvec0, view0[:3, 3:].numpy()
        if m.sum() >= 6:
            ok, rvec, tvec = cv2.solvePnP(pts3[m], pts2[m], K, None, rvec0.copy(), view0[:3, 3:].numpy().copy(),
                                          useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or not np.isfinite(tvec).all() or tvec[2, 0] <= 0:
            rvec, tvec = rvec0, view0[:3, 3:].numpy()
        view = np.eye(4)
        view[:3, :3], view[:3, 3] = cv2.Rodrigues(rvec)[0], tvec[:, 0]
        views.append(view)
    transform, _, _ = opencv_to_transform(torch.from_numpy(np.stack(views)), torch.from_numpy(K)[None],
                                          (image_size, image_size))
    aa, trans = pose_from_transform(transform)
    return aa.to(landmarks.device, torch.float32), trans.to(landmarks.device, torch.float32)


def _as_batch(value: Optional[Tensor], batch: int, width: int, ref: Tensor) -> Tensor:
    if value is None:
        return ref.new_zeros(batch, width)
    value = value.detach().to(ref).reshape(-1, width)
    return value.expand(batch, -1).clone()


def fit_flame(landmarks: Tensor, flame: FLAME, image_size: int = 512, *, shape: Optional[Tensor] = None,
              shared_shape: bool = False, init: Optional[FlameFit] = None, weights: Optional[Tensor] = None,
              iterations: int = 300, model: Optional[LandmarkModel] = None) -> FlameFit:
    """Fit FLAME and the official camera to 2D landmarks.

    Args:
        landmarks: ``[B, 70, 2]`` (68 iBUG + 2 eye centres) in pixels of the ``image_size``
            square crop: x right, y down, pixel centres at +0.5.
        flame: a FLAME with the 70-point embedding (``FLAME_with_eye.pt``).
        image_size: crop side in pixels (the camera's focal is 12 in normalised units).
        shape: a known identity (``[n_shape]`` or ``[B, n_shape]``), kept fixed; otherwise fitted.
        shared_shape: fit one identity for the whole batch (frames of one video).
        init: a previous fit (batch 1 or ``B``) whose expression, jaw, eyes and (unless fixed or
            shared) shape start the optimisation (video warm start); the camera always starts
            from ``cv2.solvePnP`` of the starting mesh.
        weights: optional ``[B, 70]`` per-landmark confidences (0 ignores a point).
        iterations: Adam steps (about 300 from scratch; fewer with ``init``).
        model: a :class:`LandmarkModel` of ``flame`` to reuse across calls.

    Returns:
        :class:`FlameFit`; FLAME's global pose is zero, the head pose is in ``transform``.
    """
    if landmarks.dim() != 3 or landmarks.shape[1:] != (70, 2):
        raise ValueError(f"landmarks must be [B, 70, 2], got {tuple(landmarks.shape)}")
    model = model or LandmarkModel(flame)
    dev = flame.v_template.device
    target = landmarks.detach().to(dev, torch.float32)
    B = target.shape[0]
    valid = torch.ones(B, 70, device=dev) if weights is None else weights.detach().to(dev, torch.float32)
    w = valid.clone()
    w[:, :N_CONTOUR] *= CONTOUR_WEIGHT
    w = w / w.sum(1, keepdim=True).clamp_min(1e-6)

    fixed = shape is not None
    if fixed:
        shape_p = _as_batch(shape, B, model.n_shape, target)
    else:
        shape_p = _as_batch(None if init is None or shared_shape else init.shape, 1 if shared_shape else B,
                            model.n_shape, target)
    expression = _as_batch(None if init is None else init.expression, B, model.n_expression, target)
    jaw = _as_batch(None if init is None else init.jaw, B, 3, target)
    eyes = _as_batch(None if init is None else init.eyes, B, 6, target)

    with torch.no_grad():
        corners = model.corners(None, B, shape_p if fixed else None)
        start = model(corners, expression if fixed else torch.cat([shape_p.expand(B, -1), expression], 1), jaw, eyes)
        aa, trans = initial_pose(target, start, image_size, valid)

    # every per-frame unknown in one tensor, in units of its step size (one Adam group, one update)
    parts = [("aa", aa), ("t_xy", trans[:, :2]), ("t_z", trans[:, 2:]), ("jaw", jaw), ("eyes", eyes),
             ("expression", expression)] + ([] if fixed or shared_shape else [("shape", shape_p)])
    step = torch.cat([torch.full((t.shape[1],), _LR[k], device=dev) for k, t in parts])
    x = (torch.cat([t for _, t in parts], 1) / step).requires_grad_(True)
    leaves = [x]
    if shared_shape and not fixed:
        shape_x = (shape_p / _LR["shape"]).requires_grad_(True)
        leaves.append(shape_x)
    edges = np.cumsum([0] + [t.shape[1] for _, t in parts]).tolist()
    names = [k for k, _ in parts]

    def unpack() -> dict[str, Tensor]:
        v = x * step
        out = {k: v[:, a:b] for k, a, b in zip(names, edges[:-1], edges[1:])}
        if not fixed:
            out.setdefault("shape", (shape_x * _LR["shape"]).expand(B, -1) if shared_shape else None)
        return out

    def predict(p: dict[str, Tensor]) -> Tensor:
        betas = p["expression"] if fixed else torch.cat([p["shape"], p["expression"]], 1)
        camera = transform_from_pose(p["aa"], torch.cat([p["t_xy"], p["t_z"]], 1))
        return project(model(corners, betas, p["jaw"], p["eyes"]), camera, image_size)

    opt = torch.optim.Adam(leaves, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.1 + 0.45 * (1.0 + math.cos(math.pi * i / max(iterations, 1))))
    sigma = _ROBUST_PX * image_size / 512.0
    for it in range(iterations):
        p = unpack()
        if it % _CONTOUR_REFRESH == 0:
            corners = model.corners(contour_yaw(p["aa"]), B, shape_p if fixed else None)
        r2 = ((predict(p) - target) / sigma).square().sum(-1)
        loss = ((torch.sqrt(1.0 + r2) - 1.0) * w).sum() + _PRIOR["expression"] * p["expression"].square().sum() \
            + _PRIOR["jaw"] * p["jaw"].square().sum() + _PRIOR["eyes"] * p["eyes"].square().sum()
        if not fixed:
            loss = loss + _PRIOR["shape"] * p["shape"].square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    with torch.no_grad():
        p = unpack()
        corners = model.corners(contour_yaw(p["aa"]), B, shape_p if fixed else None)
        projected = predict(p)
        used = valid > 0
        residual = ((projected - target).norm(dim=-1) * used).sum(1) / used.sum(1).clamp_min(1)
        return FlameFit(shape=(shape_p if fixed else p["shape"]).expand(B, -1).clone(),
                        expression=p["expression"].clone(),
                        pose=torch.cat([torch.zeros_like(p["jaw"]), p["jaw"]], 1), eyes=p["eyes"].clone(),
                        transform=transform_from_pose(p["aa"], torch.cat([p["t_xy"], p["t_z"]], 1)),
                        residual_px=residual, projected=projected)
