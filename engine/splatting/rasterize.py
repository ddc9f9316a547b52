"""``render_gaussians``: splat C-channel 3D Gaussians with the official camera (torch, cpu or gsplat).

The torch backend runs on the tensors' device: float64 where the official kernel's float32
arithmetic needs it (CPU, CUDA), float32 only on devices without float64 (Apple MPS; see
:mod:`.torch_backend`). It is not free of host transfers; on its float32 (MPS) path these remain,
each a wait for the device (GPU to host) unless noted:

Once per camera:

* ``bool(risky.any())``, ``bool((opacity > 0.99).any())`` (``_composite_camera``): whether the
  ``power > 0`` skip and the 0.99 alpha clamp can occur at all; without them two passes over every
  (Gaussian, pixel) pair are saved.
* ``nonzero(valid)`` and ``nonzero(box not empty)`` (``_Footprints``): the visible Gaussians and
  those with pixels in the image, data-dependent sizes that the depth sort and the tables need.
* uploads (host to device, no wait): the constants of ``preprocess`` (``1.3``, ``0.3``, the focal
  lengths, ...), its ``cov3D`` column list and the image size of the footprint clip.

Once per depth chunk (one chunk unless a camera has more than ``MAX_PAIRS`` (Gaussian, pixel) pairs):

* ``int(done.sum())``: the number of 8x8 blocks whose pixels all stopped; Gaussians are culled only
  when it grew.
* the boolean selections ``fp.select(mask)`` (that cull) and ``gid[live]``, ``blk[live]`` (pairs in
  stopped blocks dropped): data-dependent sizes.
* ``int(searchsorted(cumsum(boxes), budget))``: how many Gaussians fit the chunk's pair budget
  (a Python slice bound).
* two ``repeat_interleave`` in ``_Footprints.blocks`` (block rows per Gaussian, blocks per row)
  and ``bincount`` (list length per block, sized by its input's maximum): data-dependent sizes.
* ``nonzero(length)``: the blocks that have a list.
* ``int(lengths[0])``: the longest list, the number of ``WINDOW`` steps.
* per window of ``WINDOW`` Gaussians: ``nonzero`` of the blocks still compositing and
  ``widths.tolist()``, their padded list lengths, from which the host cuts the dense
  ``[blocks, L, 64]`` stacks (``_groups``).

No ``.cpu()`` copy of inputs or results remains, and nothing is transferred per (Gaussian, pixel)
pair. The float64 path (CPU, CUDA) has the same list.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import FOCAL, _pair, build_camera_matrices
from ..shapes import batch_size, batched, common_batch
from . import cpu_backend, gsplat_backend, torch_backend
from .covariance import covariance_from_scale_rotation


@dataclass
class RenderResult:
    """Output of :func:`render_gaussians` (without the ``B`` dimension for unbatched inputs).

    Attributes:
        features: ``[B, C, H, W]`` composited features (+ ``T * background``).
        alpha: ``[B, 1, H, W]`` accumulated opacity ``1 - T``.
        depth: ``[B, 1, H, W]`` alpha-weighted mean view-space depth (world units, 0 where empty).
        radii: ``[B, N]`` int32 screen radii in pixels (0 = culled).
    """
    features: Tensor
    alpha: Tensor
    depth: Tensor
    radii: Tensor


def resolve_backend(backend: str, *tensors: Tensor) -> str:
    """The backend :func:`render_gaussians` uses for ``backend`` and its input ``tensors``: ``"auto"``
    becomes gsplat on CUDA when importable, ``cpu`` for CPU tensors when no gradient is needed and
    the kernel could be built (building it on the first call), else ``torch``; others are kept."""
    if backend != "auto":
        return backend
    if _gsplat_available(tensors[0].device):
        return "gsplat"
    return "torch" if cpu_backend.refusal(*tensors) else "cpu"


def _gsplat_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render_gaussians(gaussians: dict[str, Tensor], transform: Tensor, focal=FOCAL,
                     size: tuple[int, int] = (512, 512), background: Tensor | None = None,
                     center=(0.0, 0.0), backend: str = "auto") -> RenderResult:
    """Render ``B`` Gaussian sets, each from its own official camera.

    Every tensor may also come unbatched (``xyz [N, 3]``, ``transform [3, 4]``, ...), as gsplat takes
    means. Batch sizes must agree; size 1 and unbatched inputs are shared by the whole batch (one
    camera for every set, or one set seen from every camera).

    Args:
        gaussians: ``xyz [B, N, 3]``, ``colors [B, N, C]``, ``opacities [B, N, 1]`` and either
            ``covars [B, N, 3, 3]`` or ``scales [B, N, 3]`` + ``rotations [B, N, 4]``
            (``w, x, y, z``, not normalised); ``covars`` wins when present.
        transform: ``[B, 3, 4]`` ``[R | T]``, PyTorch3D convention.
        focal: normalised focal (``tan(fov / 2) = 1 / focal``), float or ``(fx, fy)``.
        size: ``(H, W)`` in pixels.
        background: ``[C]`` or ``[B, C]``; ``None`` = zeros.
        center: principal-point offset in NDC ``(cx, cy)``.
        backend: ``"torch"`` (exact, any device, differentiable; on Apple MPS, which has no float64,
            in its float32 mode on the device), ``"cpu"`` (the official kernel's compositing compiled
            for the CPU, about 3x faster than torch there; no backward, see :mod:`.cpu_backend`),
            ``"gsplat"`` (CUDA only) or ``"auto"``: gsplat on CUDA when importable, cpu for CPU
            tensors when no gradient is needed and the kernel could be built, else torch.

    Returns:
        :class:`RenderResult`, unbatched when every input is.

    Raises:
        ShapeError: (a ``ValueError``) an input of the wrong shape, or batch sizes that disagree.
    """
    where = "render_gaussians"
    batches = {"xyz": batch_size(where, "xyz", gaussians["xyz"], ("N", 3))}
    N = gaussians["xyz"].shape[-2]
    dims = {"colors": (N, "C"), "opacities": (N, 1),
            **({"covars": (N, 3, 3)} if "covars" in gaussians else {"scales": (N, 3), "rotations": (N, 4)})}
    batches.update({k: batch_size(where, k, gaussians[k], d) for k, d in dims.items()})
    batches["transform"] = batch_size(where, "transform", transform, (3, 4))
    C = gaussians["colors"].shape[-1]
    if background is not None:
        batches["background"] = batch_size(where, "background", background, (C,))
    batch = common_batch(where, **batches)
    B = 1 if batch is None else batch
    g = {k: batched(gaussians[k], B, len(d)) for k, d in {"xyz": (N, 3), **dims}.items()}
    xyz = g["xyz"]
    tr = batched(transform.to(xyz), B, 2)
    covars = g["covars"] if "covars" in g else covariance_from_scale_rotation(g["scales"], g["rotations"])
    colors = g["colors"]
    if background is not None:
        background = background.to(xyz).expand(B, C)
    backend = resolve_backend(backend, xyz, covars, colors, g["opacities"])
    if backend == "gsplat":
        out = gsplat_backend.rasterize(xyz, covars, colors, g["opacities"], tr, focal, size,
                                          center, background)
    elif backend in ("torch", "cpu"):
        fx, fy = _pair(focal)
        V, P, _ = build_camera_matrices(tr, (fx, fy), center)
        out = (torch_backend if backend == "torch" else cpu_backend).rasterize(
            xyz, covars, colors, g["opacities"], V, P, torch_backend.tan_half_fov(fx), torch_backend.tan_half_fov(fy),
            size[0], size[1], background)
    else:
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'torch', 'cpu' or 'gsplat'")
    return RenderResult(*out) if batch is not None else RenderResult(*(t[0] for t in out))
