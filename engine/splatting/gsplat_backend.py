"""gsplat 1.5.x fast path (CUDA only) set up to approximate the official kernel.

Official camera -> OpenCV ``viewmat`` / pixel ``K`` (``cx = W/2 (1 + center_x)``: gsplat's pixel
``i`` centre is at ``i + 0.5``), covariances passed explicitly (built from the UNnormalised
quaternion, as the official kernel does), ``near_plane=0.2``, ``eps2d=0.3``, classic mode.
Residual differences to the official kernel (alpha clamp 0.999, stop at ``T <= 1e-4``, gsplat's
opacity-aware radius and exact tile binning) move rare pixels by up to ~0.06 and pass the
conformance kit's statistical pipeline criteria, not the exact render case; use the torch
backend for bit-faithful renders.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import transform_to_opencv
from ..errors import GAGAvatarError

NEAR = 0.2
EPS2D = 0.3


def gsplat_camera(transform: Tensor, focal, size: tuple[int, int], center=(0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """gsplat cameras for official transforms.

    Args:
        transform: ``[B, 3, 4]`` official ``[R | T]``.
        focal: normalised focal, float or ``(fx, fy)``.
        size: ``(H, W)`` pixels.
        center: NDC principal-point offset.

    Returns:
        ``(viewmats [B, 1, 4, 4], Ks [B, 1, 3, 3])`` (one camera per Gaussian set).
    """
    viewmat, K = transform_to_opencv(transform, focal, size, center)
    return viewmat[:, None], K[:, None]


def rasterize(means: Tensor, covars: Tensor, colors: Tensor, opacities: Tensor, transform: Tensor,
              focal, size: tuple[int, int], center=(0.0, 0.0), background: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Render with ``gsplat.rasterization`` (CUDA only).

    Args:
        means: ``[B, N, 3]``; covars: ``[B, N, 3, 3]``; colors: ``[B, N, C]``;
        opacities: ``[B, N]`` or ``[B, N, 1]``; transform: ``[B, 3, 4]``; size: ``(H, W)``;
        background: ``[B, C]`` or ``None``.

    Returns:
        ``(features [B, C, H, W], alpha [B, 1, H, W], depth [B, 1, H, W] (expected depth, 0 where
        empty), radii [B, N] int32 (max of gsplat's per-axis radii))``.

    Raises:
        GAGAvatarError: the tensors are not on a CUDA device or gsplat is missing.
    """
    if means.device.type != "cuda":
        raise GAGAvatarError(f"the gsplat renderer needs CUDA tensors (got {means.device.type}); "
                             "use backend='torch'")
    try:
        from gsplat import rasterization
    except ImportError as err:
        raise GAGAvatarError(f"gsplat is not importable ({err}); install gsplat 1.5.x or use backend='torch'") from err
    B, N, C = colors.shape
    H, W = size
    viewmats, Ks = gsplat_camera(transform, focal, size, center)
    bg = None
    if background is not None:
        bg = torch.cat([background.float(), background.new_zeros(B, 1)], -1)[:, None]   # + depth channel
    render, alpha, meta = rasterization(
        means.float(), None, None, opacities.reshape(B, N).float(), colors.float(), viewmats.float(), Ks.float(),
        W, H, near_plane=NEAR, eps2d=EPS2D, sh_degree=None, backgrounds=bg, render_mode="RGB+ED",
        rasterize_mode="classic", covars=covars.float(), channel_chunk=C + 1, packed=False)
    render = render[:, 0].permute(0, 3, 1, 2)           # [B, C+1, H, W]
    alpha = alpha[:, 0].permute(0, 3, 1, 2)
    depth = torch.where(alpha > 0, render[:, C:], torch.zeros_like(alpha))
    radii = meta["radii"][:, 0]
    radii = (radii.amax(-1) if radii.dim() == 3 else radii).to(torch.int32)
    return render[:, :C].contiguous(), alpha.contiguous(), depth, radii
