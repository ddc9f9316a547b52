"""Splatting: 3D Gaussians to feature images with the official camera, and the per-frame fast paths.

Modules:

* :mod:`.rasterize`: :func:`render_gaussians` (dispatch to a backend) and :class:`RenderResult`;
* :mod:`.torch_backend`: vectorized PyTorch rasterizer, exact to the official CUDA kernel
  (any device, autograd);
* :mod:`.gsplat_backend`: gsplat 1.5.3 (CUDA only);
* :mod:`.covariance`: :func:`covariance_from_scale_rotation`, the official 3D covariances;
* :mod:`.fastpath`: opt-in precision (fp32/bf16 autocast), compilation (CUDA graphs) and
  pinned host readback.
"""
from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(globals(), {
    "render_gaussians": ".rasterize", "RenderResult": ".rasterize",
    "covariance_from_scale_rotation": ".covariance",
    "PRECISIONS": ".fastpath", "check_precision": ".fastpath", "autocast": ".fastpath",
    "compile_per_frame": ".fastpath", "PinnedReadback": ".fastpath",
})
