"""Render avatars into a frame of any camera: head-centred 512^2 crops, resampled and composited by depth.

The network renders a 512^2 crop around the head only; this module places such crops into any
pinhole frame (any intrinsics, resolution and aspect) and composites several avatars by depth.
No bpy here (numpy and torch only): the Blender render engine and viewport, the command line
(``gagavatar render --camera``) and scripts (:func:`render_opencv`) share it.

Conventions:

* Frame pixels are top-down (row 0 at the top), pixel ``i``'s centre at ``i + 0.5``; intrinsics
  ``fx, fy, cx, cy`` project a point of the OpenCV camera (x right, y down, z forward) to
  ``u = fx x / z + cx``, ``v = fy y / z + cy``. :func:`intrinsics_from_projection` reads them from
  Blender's projection matrix (camera: ``calc_matrix_camera``, viewport: ``window_matrix``),
  which already holds the lens, sensor fit, shift and pixel aspect; :func:`opencv_intrinsics`
  from an OpenCV ``K``.
* A :class:`AvatarView` is one avatar seen by the frame's camera, in *head space*: FLAME x5 units,
  +Y up, the face toward +Z, the global head pose removed (it is in the camera).
* The crop window is the square (in the camera's physical units) around the avatar's *anchor*
  whose half side, at the anchor's depth, is the avatar's ``radius`` (:func:`crop_anchor`: from
  the source camera); the source camera's crop is the whole source frame, so rendering through
  the avatar's own camera at 512^2 reproduces the network's output pixel for pixel.
"""
from __future__ import annotations

import json
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import GAGAvatarError

CROP = 512
"""Side of the network's render, pixels."""
BACKGROUND_DEPTH = 1e10
"""Depth written where no avatar covers a pixel (Blender's background Z)."""
_MIN_DEPTH = 1e-3
_MIN_ALPHA = 1e-4


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole frame: pixel focal lengths, principal point (top-down pixels) and size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


@dataclass(frozen=True)
class CropWindow:
    """The frame rectangle ``[x0, x0 + w] x [y0, y0 + h]`` (pixels) covered by the 512^2 render."""

    x0: float
    y0: float
    w: float
    h: float

    def network_camera(self, k: Intrinsics) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(focal, center)`` for the engine's renderer: normalised focals and NDC principal point."""
        return ((2.0 * k.fx / self.w, 2.0 * k.fy / self.h),
                (2.0 * (k.cx - self.x0) / self.w - 1.0, 2.0 * (k.cy - self.y0) / self.h - 1.0))

    def pixel_bounds(self, k: Intrinsics) -> Optional[tuple[int, int, int, int]]:
        """``(xa, ya, xb, yb)``: the frame pixels the window touches, or None when it misses the frame."""
        xa, ya = max(0, math.floor(self.x0)), max(0, math.floor(self.y0))
        xb, yb = min(k.width, math.ceil(self.x0 + self.w)), min(k.height, math.ceil(self.y0 + self.h))
        return (xa, ya, xb, yb) if xa < xb and ya < yb else None


@dataclass
class AvatarView:
    """One avatar to render.

    Attributes:
        load: returns the engine ``Avatar`` on the render device (called only if the avatar is in view).
        vertices: ``[5023, 3]`` FLAME vertices in head space.
        camera: ``[4, 4]`` camera-to-head matrix, Blender camera axes, unit rotation, head units.
        units: scene units per head unit (for the Depth pass).
        anchor: ``[3]`` head-space point the crop is centred on.
        radius: half side of the crop at the anchor's depth, head units.
    """

    load: Callable[[], object]
    vertices: np.ndarray
    camera: np.ndarray
    units: float
    anchor: np.ndarray
    radius: float


@dataclass
class Layers:
    """The composited frame, top-down rows, linear light.

    The arrays may be top-down views (negative row stride) of buffers whose rows run bottom-up
    (:func:`composite`'s compiled path): ``layers.combined[::-1]`` is then contiguous, Blender's
    order, with no copy.

    Attributes:
        combined: ``[H, W, 4]`` premultiplied RGBA (alpha = splatting opacity).
        coarse: ``[H, W, 3]`` premultiplied splatted RGB (feature channels 0-2, sRGB-decoded); None
            when the caller did not ask for it (``coarse=False``).
        depth: ``[H, W]`` scene-unit depth of the front avatar, :data:`BACKGROUND_DEPTH` elsewhere.
    """

    combined: np.ndarray
    coarse: Optional[np.ndarray]
    depth: np.ndarray

    @classmethod
    def empty(cls, width: int, height: int, coarse: bool = True) -> "Layers":
        return cls(np.zeros((height, width, 4), np.float32),
                   np.zeros((height, width, 3), np.float32) if coarse else None,
                   np.full((height, width), BACKGROUND_DEPTH, np.float32))


def intrinsics_from_projection(projection, width: int, height: int) -> Intrinsics:
    """Pixel intrinsics of a perspective OpenGL projection matrix (Blender's camera or viewport).

    Raises:
        ValueError: the projection is orthographic.
    """
    P = np.asarray(projection, dtype=np.float64)
    if abs(P[3, 2] + 1.0) > 1e-6 or abs(P[3, 3]) > 1e-6:
        raise ValueError("not a perspective projection")
    return Intrinsics(fx=0.5 * width * P[0, 0], fy=0.5 * height * P[1, 1],
                      cx=0.5 * width * (1.0 - P[0, 2]), cy=0.5 * height * (1.0 + P[1, 2]),
                      width=int(width), height=int(height))


def opencv_intrinsics(K, width: int, height: int) -> Intrinsics:
    """:class:`Intrinsics` of an OpenCV camera matrix ``K [3, 3]`` (pixels) for a ``width x height`` frame."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be a 3x3 camera matrix with positive focal lengths, got {K.tolist()}")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"the frame must be at least 1x1 pixels, got {width}x{height}")
    return Intrinsics(fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
                      width=int(width), height=int(height))


def opencv_camera(R, t) -> np.ndarray:
    """The ``[4, 4]`` camera-to-head matrix (:attr:`AvatarView.camera`: Blender camera axes) of an
    OpenCV head-to-camera pose ``x_cam = R x_head + t`` (``R [3, 3]`` rotation, ``t [3]`` head units)."""
    R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64).reshape(-1)
    if R.shape != (3, 3) or t.shape != (3,) or not np.allclose(R @ R.T, np.eye(3), atol=1e-5) \
            or np.linalg.det(R) < 0:
        raise ValueError("R must be a 3x3 rotation matrix and t 3 numbers")
    camera = np.eye(4)
    camera[:3, :3] = R.T @ np.diag([1.0, -1.0, -1.0])    # OpenCV axes -> Blender camera axes
    camera[:3, 3] = -R.T @ t
    return camera


def crop_anchor(transform) -> tuple[np.ndarray, float]:
    """``(anchor [3], radius)`` of a source camera ``[3, 4]`` (the tracker's ``[R | T]``): the point
    of its optical axis level with the head origin, and the half side its 512^2 image spans there
    (distance / focal 12), head units."""
    from .cameras import FOCAL
    transform = np.asarray(transform, dtype=np.float64)
    R, T = transform[:, :3], transform[:, 3]
    center = -R @ T
    direction = R[:, 2]
    distance = float(-center @ direction)
    return center + distance * direction, distance / FOCAL


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The sRGB encoding curve (IEC 61966-2-1) of linear values in [0, 1] (clipped), float32."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def srgb_to_linear(x):
    """The sRGB decoding curve (IEC 61966-2-1), for arrays or tensors (negative values clamp to 0)."""
    if hasattr(x, "clamp"):
        x = x.clamp(min=0.0)
        import torch
        return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    x = np.maximum(np.asarray(x, dtype=np.float32), 0.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def crop_window(view: AvatarView, k: Intrinsics) -> Optional[CropWindow]:
    """The crop window of ``view`` in the frame, or None when its anchor is behind the camera."""
    cam = np.asarray(view.camera, dtype=np.float64)
    p = cam[:3, :3].T @ (np.asarray(view.anchor, dtype=np.float64) - cam[:3, 3])
    x, y, z = p[0], -p[1], -p[2]  # Blender camera axes -> OpenCV
    if z <= _MIN_DEPTH:
        return None
    u, v = k.fx * x / z + k.cx, k.fy * y / z + k.cy
    hx, hy = k.fx * view.radius / z, k.fy * view.radius / z
    return CropWindow(u - hx, v - hy, 2.0 * hx, 2.0 * hy)


def _shrink(crop, window: CropWindow):
    """``crop [1, C, 512, 512]`` low-pass resized to the window's size in pixels where the frame shows
    it smaller (so small heads do not alias), else unchanged."""
    import torch.nn.functional as F
    out_w, out_h = max(1, round(window.w)), max(1, round(window.h))
    if out_w < CROP or out_h < CROP:
        crop = F.interpolate(crop, size=(min(out_h, CROP), min(out_w, CROP)), mode="bilinear",
                             align_corners=False, antialias=True)
    return crop


def _taps(start: int, stop: int, origin: float, extent: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps of frame pixels ``start .. stop - 1`` along one axis, in a source of ``size``
    pixels spanning ``[origin, origin + extent]``: ``(left [n] int32 in -1 .. size - 1, weight of
    left + 1 [n] float32)``, as ``grid_sample`` with ``align_corners=False`` samples; pixels whose
    two taps both fall outside the source get ``(-1, 0)`` or ``(size - 1, 1)`` (zero padding)."""
    at = (np.arange(start, stop, dtype=np.float64) + 0.5 - origin) / extent * size - 0.5
    left = np.floor(at)
    weight = at - left
    below, above = left < -1, left > size - 1
    left[below], weight[below] = -1, 0.0
    left[above], weight[above] = size - 1, 1.0
    return left.astype(np.int32), weight.astype(np.float32)


def _resample(crop, window: CropWindow, bounds: tuple[int, int, int, int]):
    """Sample ``crop [1, C, h, w]`` (the window, :func:`_shrink`-ed) at the centres of the frame
    pixels ``bounds`` -> ``[C, yb - ya, xb - xa]``."""
    import torch
    import torch.nn.functional as F
    xa, ya, xb, yb = bounds
    xs = (torch.arange(xa, xb, dtype=torch.float64) + 0.5 - window.x0) / window.w * 2.0 - 1.0
    ys = (torch.arange(ya, yb, dtype=torch.float64) + 0.5 - window.y0) / window.h * 2.0 - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].to(crop)
    return F.grid_sample(crop, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


CANCELLED = "cancelled"
"""What :func:`render_layer` returns when ``cancel()`` turned true between splatting and the network."""


def render_layer(model, view: AvatarView, k: Intrinsics, cancel: Optional[Callable[[], bool]] = None,
                 precision: str = "fp32", coarse: bool = True):
    """Render one avatar into frame space (``precision``: the neural renderer's, ``fp32``, ``bf16`` or
    ``auto``; ``coarse``: whether the coarse planes are wanted, else they are zeros).

    Returns:
        ``(window, bounds, planes [1, 8, h, w])``: the crop window, the frame pixels it covers and
        the network's crop (on the model's device, shrunk to the window's size where that is
        smaller), planes = linear premultiplied RGB (3), alpha, depth x alpha (scene units), coarse
        RGB (3); None when the avatar is out of view; :data:`CANCELLED` when ``cancel()`` is true
        after the splatting (the two halves of the frame's work).
    """
    import torch
    from .cameras import blender_to_transform
    window = crop_window(view, k)
    bounds = window.pixel_bounds(k) if window is not None else None
    if bounds is None:
        return None
    focal, center = window.network_camera(k)
    transform, _ = blender_to_transform(torch.as_tensor(np.asarray(view.camera), dtype=torch.float32), 1.0)
    avatar = view.load()
    device = avatar.device
    vertices = torch.as_tensor(np.asarray(view.vertices), dtype=torch.float32, device=device)[None]
    splat = model.splat(avatar, vertices, transform[None].to(device), focal=focal, center=center)
    if cancel is not None and cancel():
        return CANCELLED
    image = model.neural_renderer(splat.features, precision=precision)
    alpha = splat.alpha.float()
    rgb = splat.features[:, :3].float()
    planes = torch.cat([srgb_to_linear(image.float()), alpha, splat.depth.float() * alpha * view.units,
                        srgb_to_linear(rgb) if coarse else torch.zeros_like(rgb)], dim=1)
    return window, bounds, _shrink(planes, window)


_spare: list = []
"""The pass buffers :func:`_frame_layers` made last (one set at most)."""
_spare_lock = threading.Lock()


def _frame_layers(width: int, height: int, coarse: bool) -> Layers:
    """:class:`Layers` for a frame whose arrays are top-down views of C-contiguous buffers whose rows
    run bottom-up (Blender's order: ``layers.combined[::-1]`` is the buffer), contents undefined;
    ``coarse`` None unless ``coarse``.

    The last set of buffers is reused for the next frame of the same size once nothing refers to
    it any more (no :class:`Layers` or view of its arrays is left; checked, and the new views made,
    under a lock, so two threads never get the same buffers): a fresh 1080p set faults in 66 MB of
    new pages, 15-80 ms per frame on a 2-core Xeon. :func:`release_buffers` drops it.
    """
    with _spare_lock:
        # References to an unused buffer: the tuple in _spare, the loop variable, getrefcount's argument.
        if not (_spare and _spare[0][2].shape == (height, width) and (_spare[0][1] is not None) == coarse
                and all(sys.getrefcount(b) <= 3 for b in _spare[0] if b is not None)):
            _spare[:] = [(np.empty((height, width, 4), np.float32),
                          np.empty((height, width, 3), np.float32) if coarse else None,
                          np.empty((height, width), np.float32))]
        return Layers(*(None if b is None else b[::-1] for b in _spare[0]))


def release_buffers() -> None:
    """Let go of the pass buffers kept for the next frame."""
    with _spare_lock:
        _spare.clear()


def composite(layers: list, k: Intrinsics, coarse: bool = True) -> Layers:
    """Resample :func:`render_layer` outputs into the frame and composite them front to back, per
    pixel by depth (premultiplied "over"); the Layers' ``coarse`` is None unless ``coarse``.

    CPU layers go straight into the frame through the compiled kernel
    (:func:`.splatting.cpu_backend.place`: resampling, depth ordering, compositing and the passes
    in one sweep, rows bottom-up as Blender stores them, so the returned arrays are top-down views
    of them). Otherwise (a GPU's layers, or no kernel) each layer is resampled with ``grid_sample``
    on its device and the work covers only the box the layers touch; with one layer there is
    nothing to order.
    """
    import torch
    if layers and all(planes.device.type == "cpu" for *_, planes in layers):
        from .splatting import cpu_backend
        if (lib := cpu_backend.library()) is not None:
            placed = []
            for window, (xa, ya, xb, yb), planes in layers:
                sh, sw = planes.shape[-2:]
                placed.append((planes[0], *_taps(xa, xb, window.x0, window.w, sw),
                               *_taps(ya, yb, window.y0, window.h, sh), (xa, ya, xb, yb)))
            out = _frame_layers(k.width, k.height, coarse)
            cpu_backend.place(lib, placed, _MIN_ALPHA, BACKGROUND_DEPTH,
                              (out.combined[::-1], None if out.coarse is None else out.coarse[::-1], out.depth[::-1]))
            return out
    out = Layers.empty(k.width, k.height, coarse)
    if not layers:
        return out
    layers = [(bounds, _resample(planes, window, bounds).cpu()) for window, bounds, planes in layers]
    xa, ya = min(b[0] for b, _ in layers), min(b[1] for b, _ in layers)
    xb, yb = max(b[2] for b, _ in layers), max(b[3] for b, _ in layers)
    if len(layers) == 1:   # the layer already covers the box: no copy
        full = layers[0][1][None]
    else:
        full = torch.zeros(len(layers), 8, yb - ya, xb - xa)
        for i, ((x0, y0, x1, y1), planes) in enumerate(layers):
            full[i, :, y0 - ya:y1 - ya, x0 - xa:x1 - xa] = planes
    alpha = full[:, 3]
    depth = torch.where(alpha > _MIN_ALPHA, full[:, 4] / alpha.clamp(min=_MIN_ALPHA), math.inf)
    if len(layers) == 1:
        acc = full[0]
    else:
        order = torch.argsort(depth, dim=0)
        full = torch.gather(full, 0, order[:, None].expand_as(full))
        depth = torch.gather(depth, 0, order)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1.0 - full[:-1, 3]]), dim=0)
        acc = (full * transmittance[:, None]).sum(0)
    out.combined[ya:yb, xa:xb] = acc[:4].permute(1, 2, 0).numpy()
    if out.coarse is not None:
        out.coarse[ya:yb, xa:xb] = acc[5:8].permute(1, 2, 0).numpy()
    out.depth[ya:yb, xa:xb] = torch.where(torch.isinf(depth[0]), BACKGROUND_DEPTH, depth[0]).numpy()
    return out


def render_frame(model, views: list[AvatarView], k: Intrinsics, progress: Optional[Callable[[int, int], None]] = None,
                 cancel: Optional[Callable[[], bool]] = None, precision: str = "fp32",
                 coarse: bool = True) -> Optional[Layers]:
    """Render and composite every avatar; None when ``cancel()`` turned true (checked before each
    avatar and between its splatting and its neural rendering). ``coarse=False`` leaves the coarse
    pass out (``Layers.coarse`` None), which saves its decoding and a 12-byte-per-pixel pass."""
    import torch
    layers = []
    with torch.no_grad():
        for i, view in enumerate(views):
            if cancel is not None and cancel():
                return None
            if progress is not None:
                progress(i, len(views))
            layer = render_layer(model, view, k, cancel, precision, coarse)
            if layer is CANCELLED:
                return None
            if layer is not None:
                layers.append(layer)
    if progress is not None:
        progress(len(views), len(views))
    return composite(layers, k, coarse)


@dataclass(frozen=True)
class OpenCVCamera:
    """A pinhole camera in OpenCV's conventions, posed in the avatar's head space.

    Attributes:
        K: ``[3, 3]`` camera matrix, pixels (top-down rows).
        R, t: head-to-camera pose ``x_cam = R x_head + t``; ``R [3, 3]``, ``t [3]`` head units
            (GAGAvatar's world: FLAME x5, 1 unit = 0.2 m; +Y up, the face toward +Z).
        width, height: the frame, pixels.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int


CAMERA_FORMAT = ('{"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "R": [[3 x 3]], "t": [x, y, z], '
                 '"width": W, "height": H}')
"""The JSON layout :func:`read_camera` reads."""


def read_camera(path) -> OpenCVCamera:
    """An :class:`OpenCVCamera` from a JSON file laid out as :data:`CAMERA_FORMAT`.

    Raises:
        GAGAvatarError: a one-line message naming what is missing or wrong.
    """
    path = Path(path)
    remedy = f"write it as {CAMERA_FORMAT} (OpenCV conventions, head units)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GAGAvatarError(f"camera file {path} not found: check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GAGAvatarError(f"{path} is not a readable JSON camera ({err}): {remedy}") from None
    missing = [k for k in ("K", "R", "t", "width", "height") if not isinstance(data, dict) or k not in data]
    if missing:
        raise GAGAvatarError(f"{path} lacks {', '.join(missing)}: {remedy}")
    try:
        k = opencv_intrinsics(data["K"], data["width"], data["height"])
        opencv_camera(data["R"], data["t"])
        whole = float(data["width"]) == k.width and float(data["height"]) == k.height
    except (ValueError, TypeError) as err:
        raise GAGAvatarError(f"{path}: {err}: {remedy}") from None
    if not whole:
        raise GAGAvatarError(f"{path}: width and height must be whole numbers of pixels: {remedy}")
    return OpenCVCamera(np.asarray(data["K"], dtype=np.float64), np.asarray(data["R"], dtype=np.float64),
                        np.asarray(data["t"], dtype=np.float64).reshape(3), k.width, k.height)


def render_opencv(model, avatar, vertices, K, R, t, width: int, height: int, precision: str = "fp32") -> Layers:
    """Render one avatar through an OpenCV camera, at any resolution and intrinsics.

    Args:
        model: the ``GAGAvatar`` network.
        avatar: its ``Avatar`` (the crop is centred as its source camera's, :func:`crop_anchor`).
        vertices: ``[5023, 3]`` FLAME vertices in head space (world units, FLAME x5).
        K: ``[3, 3]`` camera matrix, pixels. R, t: head-to-camera pose, ``x_cam = R x_head + t``.
        width, height: the frame, pixels.
    Returns:
        :class:`Layers`: premultiplied linear RGBA, coarse RGB and depth (head units). Over black,
        ``linear_to_srgb(combined[..., :3])`` is the displayable image.
    """
    if avatar.source_transform is None:
        raise ValueError("the avatar has no source camera to centre its crop on: reconstruct it again")
    anchor, radius = crop_anchor(avatar.source_transform[0].detach().cpu().numpy())
    view = AvatarView(load=lambda: avatar, vertices=np.asarray(vertices, dtype=np.float32), camera=opencv_camera(R, t),
                      units=1.0, anchor=anchor, radius=radius)
    return render_frame(model, [view], opencv_intrinsics(K, width, height), precision=precision)
