"""Photo -> GAGAvatar source: head crop on black, FLAME parameters and camera (:func:`track_image`)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import NoFaceError
from ..flame import FLAME, load_flame
from .crop import ImageLike, crop_box, crop_image, head_box, load_rgb, to_crop
from .fit import FlameFit, fit_flame
from .landmarks import FaceLandmarker, mesh_to_70
from .matting import SelfieMatte
from .overlay import draw_overlay

__all__ = ["TrackedImage", "track_image", "find_face", "default_flame", "head_bbox_in_crop", "CROP_SIZE"]

CROP_SIZE = 512
"""Side of GAGAvatar's source crop, pixels."""


@dataclass
class TrackedImage:
    """A tracked photo, ready for ``model.reconstruct(crop[None], transform[None])``.

    Attributes:
        crop: ``[3, 512, 512]`` float32 0..1, background matted to black.
        mask: ``[1, 512, 512]`` the person mask (0..1) used for the matte.
        shape: ``[300]``; expression ``[100]``; jaw ``[3]``; eyes ``[6]`` (axis-angle radians).
        transform: ``[3, 4]`` official camera ``[R | T]`` (focal 12); FLAME's global pose is zero.
        landmarks: ``[70, 2]`` detected landmarks in crop pixels (x right, y down, centres at +0.5).
        residual_px: mean distance (crop pixels) between detected and fitted landmarks.
        bbox: ``[4]`` head box ``x0, y0, x1, y1`` normalised to the crop (the official ``bbox``).
        crop_box: ``(x0, y0, side)`` of the crop in the input image's pixels.
        overlay: ``[512, 512, 3]`` uint8 preview (mesh and landmarks over the crop).
        faces_found: faces detected in the photo (the largest was used).
    """

    crop: Tensor
    mask: Tensor
    shape: Tensor
    expression: Tensor
    jaw: Tensor
    eyes: Tensor
    transform: Tensor
    landmarks: Tensor
    residual_px: float
    bbox: Tensor
    crop_box: tuple[float, float, float]
    overlay: np.ndarray
    faces_found: int

    @property
    def pose(self) -> Tensor:
        """``[6]`` official posecode: global rotation (zero) + jaw."""
        return torch.cat([torch.zeros(3), self.jaw])


def default_flame() -> FLAME:
    """FLAME from the asset folder (``FLAME_with_eye.pt``; see ``gagavatar assets``)."""
    from ..assets import asset_path
    return load_flame(asset_path("FLAME_with_eye.pt"))


def head_bbox_in_crop(mesh: np.ndarray, box: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
    """The official ``bbox``: the head box of mesh points ``[478, 2]`` in crop coordinates / ``size``, clamped to 0..1."""
    corners = to_crop(head_box(mesh).reshape(2, 2), box, size)
    return np.clip(corners.reshape(4) / size, 0.0, 1.0).astype(np.float32)


def find_face(rgb: np.ndarray, finder: FaceLandmarker, name: str = "the image") -> tuple[np.ndarray, int]:
    """``(mesh [478, 2] in pixels of rgb, faces found)`` for the largest face of ``rgb`` (``HxWx3`` uint8).

    Raises:
        NoFaceError: no face. Several faces: the largest is used and a warning says so.
    """
    faces = finder.detect(rgb)
    mesh = finder.mesh(rgb, faces[0].box) if faces else None
    if mesh is None:
        raise NoFaceError(f"no face found in {name}: use a photo with one clearly visible face, "
                          "roughly facing the camera")
    if len(faces) > 1:
        warnings.warn(f"{len(faces)} faces found in {name}: using the largest", stacklevel=3)
    return mesh, len(faces)


SOFT_SIDE = 160
"""Crop sides (source pixels) below this are upscaled more than 3.2x to the 512^2 source: a visibly
soft avatar (the astronaut photo's crop is 205 px)."""


def track_image(image: ImageLike, flame: Optional[FLAME] = None, matting: bool = True,
                iterations: int = 300, assets: Optional[Union[str, os.PathLike]] = None) -> TrackedImage:
    """Detect the head in a photo, crop it like the official tracker, matte it and fit FLAME + camera.

    Args:
        image: a path, an ``HxW[xC]`` uint8/uint16/float array, a ``[C, H, W]`` tensor or a PIL
            image (see :func:`~.crop.load_rgb`).
        flame: the FLAME model (default: ``FLAME_with_eye.pt`` from the asset folder).
        matting: composite the crop over black (GAGAvatar's sources are matted).
        iterations: fit iterations.
        assets: the asset folder with the tracking models (default: :func:`~..assets.find_assets`).

    Raises:
        NoFaceError: no face in the image. Several faces: the largest is used, with a warning.
        AssetError: a tracking model is missing.
    """
    flame = flame if flame is not None else default_flame()
    rgb = load_rgb(image)
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else "the image"
    with FaceLandmarker(assets=assets) as finder:
        mesh, n_faces = find_face(rgb, finder, name)
    box = crop_box(head_box(mesh))
    if box[2] < SOFT_SIDE:
        warnings.warn(f"the head in {name} spans only {box[2]:.0f} px of the photo (avatars are made at "
                      f"{CROP_SIZE} px): the avatar will look soft; use a larger or closer photo", stacklevel=2)
    crop = crop_image(rgb, box, CROP_SIZE)
    if matting:
        with SelfieMatte(assets=assets) as matte:
            crop, mask = matte(crop)
    else:
        mask = torch.ones(1, CROP_SIZE, CROP_SIZE)
    landmarks = torch.from_numpy(to_crop(mesh_to_70(mesh), box, CROP_SIZE))
    fit = fit_flame(landmarks[None], flame, CROP_SIZE, iterations=iterations)
    with torch.no_grad():
        vertices = flame(shape=fit.shape, expression=fit.expression, pose=fit.pose, eyes=fit.eyes)[0].cpu()
    fit = FlameFit(**{k: v.cpu() for k, v in vars(fit).items()})
    overlay = draw_overlay(crop, vertices, flame.faces, fit.transform[0], landmarks, fit.projected[0])
    return TrackedImage(crop=crop, mask=mask, shape=fit.shape[0], expression=fit.expression[0], jaw=fit.jaw[0],
                        eyes=fit.eyes[0], transform=fit.transform[0], landmarks=landmarks,
                        residual_px=float(fit.residual_px[0]), bbox=torch.from_numpy(head_bbox_in_crop(mesh, box)),
                        crop_box=box, overlay=overlay, faces_found=n_faces)
