"""Reading user images into RGB and cutting the official 512^2 head crop.

The official tracker (GAGAvatar_track ``engine_core.py``) detects a head box, grows it into a
square of side ``1.65 * sqrt(w * h)`` around its centre, crops it (zero padding outside the
image) and resizes it to 512^2 with antialiased bilinear resampling. Its head box comes from
VGGHead, which we do not have; :func:`head_box` derives an equivalent box from the face mesh:
the 478 points' bounding box grown by :data:`HEAD_BOX_SCALE`, measured on the official crops
(its demo crops put ``sqrt(w * h)`` of the mesh box at 1 / 2.05 of the crop side).

Crop boxes are ``(x0, y0, side)`` in (sub-)pixels of the original image; a point ``p`` of the
image (pixel centres at +0.5) lands at ``(p - (x0, y0)) * size / side`` in the crop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GAGAvatarError

__all__ = ["load_rgb", "head_box", "crop_box", "crop_image", "to_crop", "CROP_SCALE", "HEAD_BOX_SCALE",
           "MIN_SIDE"]

CROP_SCALE = 1.65
"""Official crop side / sqrt(area of the head box)."""
HEAD_BOX_SCALE = 2.05 / CROP_SCALE
"""Head box side / face-mesh box side (so that the crop side is 2.05 x sqrt(area of the mesh box))."""
MIN_SIDE = 64
"""Smallest image side accepted, pixels (below it a face spans a few pixels; avatars are made at 512 px)."""

ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor, Any]


def _from_pil(img: Any) -> np.ndarray:
    """``HxWx3`` uint8 from a PIL image (EXIF orientation applied, alpha composited on black)."""
    from PIL import ImageOps
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(np.asarray(img))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _from_array(np.asarray(img.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def _from_array(a: np.ndarray) -> np.ndarray:
    """``HxWx3`` uint8 from an ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` array (uint8, uint16, int, float 0..1)."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise GAGAvatarError(f"expected an HxW, HxWx3 or HxWx4 image, got an array of shape {a.shape}")
    if a.dtype == np.bool_:
        f = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):  # 8 bits, 16 bits (any byte order), or wider ints holding either
        wide = a.dtype.itemsize == 2 or (a.dtype.itemsize > 2 and a.size and a.max() > 255)
        f = a.astype(np.float32) / (65535.0 if wide else 255.0)
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32))
        if f.size and f.max() > 1.5:
            raise GAGAvatarError("float image values go above 1: pass float pixels in 0..1 (divide by 255) "
                                 "or uint8 pixels")
    else:
        raise GAGAvatarError(f"unsupported image data type {a.dtype}: pass uint8, uint16 or float (0..1) pixels")
    f = np.clip(f, 0.0, 1.0)
    if f.shape[2] in (2, 4):  # gray+alpha / RGBA: composite over black
        f = f[..., :-1] * f[..., -1:]
    if f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return np.ascontiguousarray((f * 255.0 + 0.5).astype(np.uint8))


def load_rgb(image: ImageLike) -> np.ndarray:
    """Any supported image as an ``HxWx3`` uint8 RGB array.

    Args:
        image: a path (anything PIL reads; EXIF orientation applied), an ``HxW[xC]`` numpy array
            (uint8, uint16, or float in 0..1; C = 1, 3 or 4), a ``[C, H, W]`` torch tensor with the
            same dtypes, or a PIL image. Grayscale is replicated, alpha is composited over black.

    Raises:
        GAGAvatarError: unreadable file, unsupported data, or an image smaller than ``MIN_SIDE``.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise GAGAvatarError(f"{path} is a folder, not an image: name a JPEG or PNG file")
        if not path.is_file():
            raise GAGAvatarError(f"image {path} not found: check the path")
        if path.stat().st_size == 0:
            raise GAGAvatarError(f"{path.name} is empty (0 bytes): use a JPEG or PNG photo")
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as img:
                if getattr(img, "is_animated", False) and img.format != "MPO":  # MPO: a camera JPEG + preview
                    raise GAGAvatarError(f"{path.name} is an animation ({img.n_frames} frames): give a still photo, "
                                         "or convert it to a video (.mp4) to track it")
                img.load()
                rgb = _from_pil(img)
        except Image.DecompressionBombError:
            raise GAGAvatarError(f"{path.name} is too large to read safely: downscale it below 150 megapixels") \
                from None
        except UnidentifiedImageError:
            raise GAGAvatarError(f"cannot read {path.name} as an image (not a picture file Pillow knows): "
                                 "use a JPEG or PNG") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise GAGAvatarError(f"cannot read {path.name} as an image ({err}): use a JPEG or PNG") from None
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        rgb = _from_array((t.permute(1, 2, 0) if t.dim() == 3 else t).numpy())
    elif isinstance(image, np.ndarray):
        rgb = _from_array(image)
    elif hasattr(image, "mode") and hasattr(image, "convert"):
        rgb = _from_pil(image)
    else:
        raise GAGAvatarError(f"cannot use a {type(image).__name__} as an image: pass a path, an array or a PIL image")
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise GAGAvatarError(f"the image is only {rgb.shape[1]}x{rgb.shape[0]} pixels: use one at least "
                             f"{MIN_SIDE} pixels on each side (ideally with the face over 100 pixels tall)")
    return rgb


def head_box(mesh: np.ndarray) -> np.ndarray:
    """VGGHead-like head box ``(x0, y0, x1, y1)`` from face-mesh points ``[N, 2]`` (pixels)."""
    lo, hi = mesh.min(0), mesh.max(0)
    c, half = (lo + hi) / 2.0, (hi - lo) / 2.0 * HEAD_BOX_SCALE
    return np.concatenate([c - half, c + half]).astype(np.float64)


def crop_box(box: np.ndarray, scale: float = CROP_SCALE) -> tuple[float, float, float]:
    """The official square crop ``(x0, y0, side)`` (pixels) around a box ``(x0, y0, x1, y1)``.

    ``side = scale * sqrt(w * h)``, centred on the box (``expand_bbox`` in the official tracker,
    which then truncates to integers; we keep sub-pixel boxes so small images crop exactly).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    side = scale * float(np.sqrt(max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)))
    return (x0 + x1 - side) / 2.0, (y0 + y1 - side) / 2.0, side


def crop_image(rgb: np.ndarray, box: tuple[float, float, float], size: int = 512) -> torch.Tensor:
    """Resample the square ``box = (x0, y0, side)`` of ``rgb`` (``HxWx3`` uint8; zeros outside) to ``size``^2.

    Downscaling is antialiased (bilinear with antialias, as torchvision's ``resize`` in the
    official tracker) before an exact bilinear resampling at the box's sub-pixel position.

    Returns:
        ``[3, size, size]`` float32 in 0..1.
    """
    x0, y0, side = (float(v) for v in box)
    H, W = rgb.shape[:2]
    rx0, ry0 = int(np.floor(x0)), int(np.floor(y0))
    rw, rh = int(np.ceil(x0 + side)) - rx0, int(np.ceil(y0 + side)) - ry0
    region = np.zeros((rh, rw, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(rx0, 0), max(ry0, 0), min(rx0 + rw, W), min(ry0 + rh, H)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - ry0:sy1 - ry0, sx0 - rx0:sx1 - rx0] = rgb[sy0:sy1, sx0:sx1]
    t = torch.from_numpy(region).permute(2, 0, 1)[None].float() / 255.0
    if side > size:  # shrink first (edges map to edges, so the normalised grid below stays exact)
        t = F.interpolate(t, size=(max(1, round(rh * size / side)), max(1, round(rw * size / side))),
                          mode="bilinear", align_corners=False, antialias=True)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) * (side / size)
    gx = (2.0 * (x0 - rx0 + centres) / rw - 1.0).float()
    gy = (2.0 * (y0 - ry0 + centres) / rh - 1.0).float()
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].clamp(0.0, 1.0)


def to_crop(points: np.ndarray, box: tuple[float, float, float], size: int = 512) -> np.ndarray:
    """Image pixels ``[..., 2]`` to crop pixels (both with pixel centres at +0.5)."""
    x0, y0, side = box
    return ((np.asarray(points, np.float64) - np.array([x0, y0], np.float64)) * (size / side)).astype(np.float32)
