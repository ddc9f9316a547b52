"""Image-quality metrics for evaluation, per image (``[B, 3, H, W]`` in 0..1 -> ``[B]``).

* :func:`psnr`: ``-10 log10(MSE)`` over all pixels and channels (data range 1), as
  ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=1)``.
* :func:`ssim`: the official validation's SSIM (torchmetrics on ``rgb_to_grayscale`` images):
  luma ``0.2989 R + 0.587 G + 0.114 B``, 11-tap Gaussian window of sigma 1.5, ``K1 = 0.01``,
  ``K2 = 0.03``, population covariances, averaged over the pixels whose window lies inside the
  image; equal to ``skimage.metrics.structural_similarity(gray_gt, gray_pred, data_range=1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
* LPIPS: :class:`~.perceptual.LPIPS`.

Computed in float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (``inf`` for identical images)."""
    mse = (prediction.double() - target.double()).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 1, H, W]`` luma (torchvision's ``rgb_to_grayscale`` weights)."""
    w = image.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (image * w).sum(1, keepdim=True)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``[B, C, H, W]``."""
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1), groups=x.shape[1])
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(x.shape[1], 1, -1, 1), groups=x.shape[1])


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of the grayscale images (see the module docstring)."""
    a, b = grayscale(prediction.double()), grayscale(target.double())
    if min(a.shape[-2:]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1} pixels, got {tuple(a.shape[-2:])}")
    w = _gaussian_window(a.dtype, a.device)
    mu_a, mu_b = _blur(a, w), _blur(b, w)
    var_a = _blur(a * a, w) - mu_a ** 2
    var_b = _blur(b * b, w) - mu_b ** 2
    cov = _blur(a * b, w) - mu_a * mu_b
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of ``[B, D]`` embeddings (CSIM)."""
    return F.cosine_similarity(a.double().flatten(1), b.double().flatten(1), dim=1)


def mean_abs_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row mean absolute difference of ``[B, ...]`` coefficients (AED, APD)."""
    return (a.double() - b.double()).abs().flatten(1).mean(1)


def keypoint_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean Euclidean distance of ``[B, K, 2]`` keypoints (AKD, in their units)."""
    return (a.double() - b.double()).norm(dim=-1).mean(-1)


def mean_or_nan(values: list[float]) -> float:
    """Mean of ``values`` (NaN for none)."""
    return sum(values) / len(values) if values else math.nan
