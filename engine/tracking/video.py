"""Video -> driving sequence (:func:`track_video`): per-frame landmarks, one identity, smoothed cameras.

Pipeline (the official tracker's, with mediapipe in place of its detectors):

1. every frame (OpenCV): the face mesh, searched around the previous frame's face and by the
   detector when that fails; frames without a face are flagged ``missing``;
2. the head boxes, interpolated over missing frames and smoothed over time with the official
   ``alpha = 0.03`` (the crop hardly moves; the camera carries the head motion), give each frame's
   512^2 crop, into which the landmarks are mapped (no pixels are resampled);
3. one identity fitted jointly on up to :data:`KEYFRAMES` frames spread over the video; then all
   frames in chunks with that identity fixed, each chunk warm-started from the previous one;
4. missing frames interpolated (rotations through the 6D representation, Gram-Schmidt), then
   head rotation and translation smoothed with ``alpha = 0.6`` and eyes with ``alpha = 0.7`` as
   the official ``run_smoothing``, but forward and backward (zero phase: no lag, and smoother).
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from ..errors import Cancelled, GAGAvatarError, NoFaceError
from ..flame import FLAME
from ..sequence import DEFAULT_FPS, DrivingSequence
from .crop import crop_box, head_box, to_crop
from .fit import FlameFit, fit_flame
from .flame_landmarks import LandmarkModel
from .image import CROP_SIZE, default_flame, head_bbox_in_crop
from .landmarks import FaceLandmarker, mesh_to_70
from .quiet import native_stderr_silenced

__all__ = ["track_video", "smooth_sequence", "ema", "rotation_to_6d", "rotation_from_6d",
           "BOX_ALPHA", "POSE_ALPHA", "EYES_ALPHA", "KEYFRAMES", "CHUNK"]

BOX_ALPHA = 0.03
"""Official smoothing of the head box (weight of the current frame)."""
POSE_ALPHA = 0.6
"""Official smoothing of the camera rotation and translation."""
EYES_ALPHA = 0.7
"""Official smoothing of the eye rotations."""
KEYFRAMES = 8
"""Frames fitted together for the shared identity."""
CHUNK = 32
"""Frames fitted together after that."""
_ITERATIONS = {"identity": 300, "first": 200, "warm": 100}

Progress = Callable[[int, int], None]


def ema(x: np.ndarray, alpha: float, zero_phase: bool = True) -> np.ndarray:
    """Exponential smoothing along axis 0: ``y[t] = alpha * x[t] + (1 - alpha) * y[t - 1]`` (float64).

    With ``zero_phase`` the filter runs forward then backward, which cancels its lag.
    """
    y = np.array(x, np.float64, copy=True)
    for t in range(1, len(y)):
        y[t] = alpha * y[t] + (1.0 - alpha) * y[t - 1]
    if zero_phase:
        for t in range(len(y) - 2, -1, -1):
            y[t] = alpha * y[t] + (1.0 - alpha) * y[t + 1]
    return y


def rotation_to_6d(R: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` -> ``[..., 6]``: the first two rows (pytorch3d's ``matrix_to_rotation_6d``)."""
    return R[..., :2, :].reshape(*R.shape[:-2], 6)


def rotation_from_6d(d6: np.ndarray) -> np.ndarray:
    """``[..., 6]`` -> ``[..., 3, 3]`` by Gram-Schmidt (pytorch3d's ``rotation_6d_to_matrix``)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-2)


def _interpolate(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill rows ``~known`` of ``values [T, ...]`` linearly from the known ones (nearest at the ends)."""
    if known.all():
        return values
    t, idx = np.arange(len(values)), np.flatnonzero(known)
    flat = values.reshape(len(values), -1)
    out = np.stack([np.interp(t, idx, flat[idx, j]) for j in range(flat.shape[1])], 1)
    return out.reshape(values.shape).astype(values.dtype)


def smooth_sequence(seq: DrivingSequence, pose_alpha: float = POSE_ALPHA, eyes_alpha: float = EYES_ALPHA) -> DrivingSequence:
    """A copy of ``seq`` with camera rotation/translation and eyes smoothed (zero-phase :func:`ema`)."""
    tr = seq.transform.double().numpy()
    R = rotation_from_6d(ema(rotation_to_6d(tr[:, :, :3]), pose_alpha))
    T = ema(tr[:, :, 3], pose_alpha)
    transform = torch.from_numpy(np.concatenate([R, T[:, :, None]], -1)).float()
    eyes = torch.from_numpy(ema(seq.eyes.double().numpy(), eyes_alpha)).float()
    return DrivingSequence(expression=seq.expression.clone(), jaw=seq.jaw.clone(), eyes=eyes, transform=transform,
                           fps=seq.fps, shape=seq.shape, bbox=seq.bbox, landmarks=seq.landmarks,
                           missing=seq.missing.clone(), source=seq.source, start_time=seq.start_time)


def _read_meshes(path: Path, progress: Optional[Progress], cancel: Optional[Callable[[], bool]],
                 assets: Optional[Union[str, os.PathLike]] = None) -> tuple[list[Optional[np.ndarray]], float]:
    """Face-mesh points ``[478, 2]`` (frame pixels) or None for every frame, and the frame rate.

    Progress counts frames read out of twice the container's frame count (fitting is the other half).
    """
    with native_stderr_silenced():  # FFmpeg's own log lines ("moov atom not found"): the error below says it
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise GAGAvatarError(f"cannot open {path.name} as a video: use an MP4/MOV/AVI file OpenCV can read")
    fps = cap.get(cv2.CAP_PROP_FPS)
    total = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    meshes: list[Optional[np.ndarray]] = []
    try:
        with FaceLandmarker(assets=assets) as finder:
            previous = None
            while True:
                if cancel is not None and cancel():
                    raise Cancelled("video tracking cancelled")
                with native_stderr_silenced():  # FFmpeg's complaints about damaged frames
                    ok, bgr = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                mesh = finder.mesh(rgb, tuple(np.concatenate([previous.min(0), previous.max(0)]))) \
                    if previous is not None else None
                if mesh is None:
                    faces = finder.detect(rgb)
                    mesh = finder.mesh(rgb, faces[0].box) if faces else None
                meshes.append(mesh)
                previous = mesh
                if progress is not None:
                    progress(len(meshes), max(total, len(meshes)) * 2)
    finally:
        cap.release()
    if not meshes:
        raise GAGAvatarError(f"no frames could be read from {path.name}: the file is empty or its codec unsupported")
    return meshes, float(fps) if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS


def read_meshes(path: Union[str, os.PathLike], progress: Optional[Progress] = None,
                cancel: Optional[Callable[[], bool]] = None,
                assets: Optional[Union[str, os.PathLike]] = None) -> tuple[list[Optional[np.ndarray]], float]:
    """Face-mesh points ``[478, 2]`` (frame pixels) or None for every frame of a video, and its frame rate.

    ``assets``: the asset folder with the tracking models (default: :func:`~..assets.find_assets`).

    Raises:
        GAGAvatarError: the file cannot be read as a video. Cancelled: ``cancel()`` returned True.
        AssetError: a tracking model is missing.
    """
    return _read_meshes(Path(path), progress, cancel, assets)


def crop_boxes(meshes: list[Optional[np.ndarray]]) -> list[tuple[float, float, float]]:
    """The crop box ``(x0, y0, side)`` (frame pixels) of every frame, as :func:`track_video` crops.

    Head boxes of the frames with a face, interpolated over the others and smoothed like the
    official ``build_video`` (exponential, alpha 0.03). Needs at least one mesh.
    """
    found = np.array([m is not None for m in meshes])
    boxes = np.zeros((len(meshes), 4))
    boxes[found] = np.stack([head_box(m) for m in meshes if m is not None])
    boxes = ema(_interpolate(boxes, found), BOX_ALPHA, zero_phase=False)
    return [crop_box(b) for b in boxes]


def track_video(path: Union[str, os.PathLike], flame: Optional[FLAME] = None, progress: Optional[Progress] = None,
                cancel: Optional[Callable[[], bool]] = None, smooth: bool = True,
                meshes: Optional[tuple[list[Optional[np.ndarray]], float]] = None,
                assets: Optional[Union[str, os.PathLike]] = None) -> DrivingSequence:
    """Track a video into a :class:`~..sequence.DrivingSequence` (one identity, a camera per frame).

    Args:
        path: a video file OpenCV can read (any frame rate; every frame is kept).
        flame: the FLAME model (default: ``FLAME_with_eye.pt`` from the asset folder).
        progress: ``progress(done, total)``, called per frame read and per frame fitted.
        cancel: polled between frames and chunks; returning True raises :class:`~..errors.Cancelled`.
        smooth: smooth cameras and eyes (:func:`smooth_sequence`).
        meshes: this video's :func:`read_meshes` output, when already computed (skips reading it).
        assets: the asset folder with the tracking models (default: :func:`~..assets.find_assets`).

    Returns:
        The sequence at the video's frame rate, with ``shape``, ``bbox`` (official: head box
        normalised to the crop), ``landmarks`` (crop pixels) and ``missing`` (frames without a
        face, interpolated; also reported with a warning).

    Raises:
        NoFaceError: no frame has a face. Cancelled: ``cancel()`` returned True.
    """
    path = Path(path)
    if not path.is_file():
        raise GAGAvatarError(f"video {path} not found: check the path")
    if path.stat().st_size == 0:
        raise GAGAvatarError(f"video {path.name} is empty (0 bytes): copy or export it again")
    flame = flame if flame is not None else default_flame()
    meshes, fps = meshes if meshes is not None else _read_meshes(path, progress, cancel, assets)
    T = len(meshes)
    found = np.array([m is not None for m in meshes])
    if not found.any():
        raise NoFaceError(f"no face found in any frame of {path.name}: use a video with one clearly visible face")
    if not found.all():
        warnings.warn(f"{int((~found).sum())} of {T} frames of {path.name} have no face: their parameters are "
                      "interpolated (see the sequence's `missing`)", stacklevel=2)
    model = LandmarkModel(flame)

    crops = crop_boxes(meshes)
    frames = np.flatnonzero(found)
    lmk = torch.from_numpy(np.stack([to_crop(mesh_to_70(meshes[t]), crops[t], CROP_SIZE) for t in frames]))
    bbox = np.zeros((T, 4), np.float32)
    bbox[found] = np.stack([head_bbox_in_crop(meshes[t], crops[t]) for t in frames])

    # identity from keyframes, then every frame with it fixed
    keys = np.unique(np.linspace(0, len(frames) - 1, min(KEYFRAMES, len(frames))).round().astype(int))
    shape = fit_flame(lmk[keys], flame, CROP_SIZE, shared_shape=True, iterations=_ITERATIONS["identity"],
                      model=model).shape[0]
    fits: list[FlameFit] = []
    for start in range(0, len(frames), CHUNK):
        if cancel is not None and cancel():
            raise Cancelled("video tracking cancelled")
        previous = fits[-1] if fits else None
        init = None if previous is None else FlameFit(**{k: v[-1:] for k, v in vars(previous).items()})
        fits.append(fit_flame(lmk[start:start + CHUNK], flame, CROP_SIZE, shape=shape, init=init, model=model,
                              iterations=_ITERATIONS["warm" if init is not None else "first"]))
        if progress is not None:
            progress(T + min(start + CHUNK, len(frames)) * T // len(frames), 2 * T)

    def per_frame(values: Tensor) -> np.ndarray:
        out = np.zeros((T, *values.shape[1:]), np.float64)
        out[found] = values.double().cpu().numpy()
        return _interpolate(out, found)

    cat = {k: torch.cat([getattr(f, k) for f in fits]) for k in ("expression", "pose", "eyes", "transform")}
    rot6 = np.zeros((T, 6))
    rot6[found] = rotation_to_6d(cat["transform"][:, :, :3].double().cpu().numpy())
    R = rotation_from_6d(_interpolate(rot6, found))
    transform = np.concatenate([R, per_frame(cat["transform"][:, :, 3])[:, :, None]], -1)
    landmarks = np.zeros((T, 70, 2), np.float32)
    landmarks[found] = lmk.numpy()
    seq = DrivingSequence(expression=per_frame(cat["expression"]), jaw=per_frame(cat["pose"][:, 3:]),
                          eyes=per_frame(cat["eyes"]), transform=transform, fps=fps, shape=shape.cpu(),
                          bbox=_interpolate(bbox, found), landmarks=_interpolate(landmarks, found),
                          missing=torch.from_numpy(~found), source=str(path))
    return smooth_sequence(seq) if smooth else seq
