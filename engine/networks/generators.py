"""Gaussian generators of GAGAvatar: the direction encoding, the FLAME-vertex MLP and the
dual-lifting convolutional heads.

Both generators reproduce the official code's quirks, which the released weights were trained
with (conformance kit, items 17-21):

* :class:`LinearGSGenerator` normalises the quaternions across the 5,023 points (``dim=1`` of
  ``[B, 5023, 4]``), so the expression Gaussians' quaternions are tiny and unnormalised.
* :class:`ConvGSGenerator` applies the colour sigmoid to image *columns* 0-2 of all 32 channels
  (``colors[..., :3]`` on a ``[B, 32, H, W]`` map) and leaves channels 0-2 elsewhere raw.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

N_FEATURES = 32
"""Feature channels per Gaussian (3 RGB-like + 29 latent), splatted and fed to the StyleUNet."""


class HarmonicEmbedding(nn.Module):
    """Direction encoding ``[..., 3] -> [..., 27]`` (PyTorch3D's HarmonicEmbedding(4) layout).

    Output: ``sin(x_i * 2^k)`` for ``i`` in x, y, z and ``k`` in 0..3, then the same with
    ``+ pi/2`` (cosines, computed as shifted sines), then the input itself.
    """

    def __init__(self, n_harmonic: int = 4):
        super().__init__()
        self.register_buffer("_frequencies", 2.0 ** torch.arange(n_harmonic, dtype=torch.float32), persistent=False)
        self.register_buffer("_zero_half_pi", torch.tensor([0.0, 0.5 * math.pi]), persistent=False)
        self.out_dim = n_harmonic * 2 * 3 + 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = (x[..., None] * self._frequencies).reshape(*x.shape[:-1], -1)
        return torch.cat([torch.sin(t + self._zero_half_pi[0]), torch.sin(t + self._zero_half_pi[1]), x], dim=-1)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class LinearGSGenerator(nn.Module):
    """Expression-Gaussian attributes from per-vertex features (the "global" branch).

    Input ``features [B, V, in_dim]`` (learned per-vertex base ``[V, 256]`` concatenated with the
    image's global feature ``[768]``) and ``direnc [B, 27]``. Output dict of ``[B, V, *]``:
    ``colors`` (32; sigmoid on channels 0-2), ``opacities`` (1, sigmoid), ``scales``
    (3, ``0.05 * sigmoid``, world units), ``rotations`` (4, ``w, x, y, z``, normalised across
    points, see the module docstring).
    """

    def __init__(self, in_dim: int = 1024, dir_dim: int = 27):
        super().__init__()
        h = in_dim // 4
        self.feature_layers = nn.Sequential(
            nn.Linear(in_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
            nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        self.color_layers = _mlp(h + dir_dim, 128, N_FEATURES)
        self.opacity_layers = _mlp(h + dir_dim, 128, 1)
        self.scale_layers = _mlp(h + dir_dim, 128, 3)
        self.rotation_layers = _mlp(h + dir_dim, 128, 4)

    def forward(self, features: torch.Tensor, direnc: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.feature_layers(features)
        x = torch.cat([x, direnc[:, None].expand(-1, x.shape[1], -1)], dim=-1)
        colors = self.color_layers(x)
        colors = torch.cat([torch.sigmoid(colors[..., :3]), colors[..., 3:]], dim=-1)
        return {
            "colors": colors,
            "opacities": torch.sigmoid(self.opacity_layers(x)),
            "scales": torch.sigmoid(self.scale_layers(x)) * 0.05,
            "rotations": F.normalize(self.rotation_layers(x), dim=1),
        }


class ConvGSGenerator(nn.Module):
    """One lifting head: per-pixel Gaussians from the local feature map.

    Input ``feature [B, in_dim, H, W]`` and ``direnc [B, 27]``. Output dict of ``[B, H*W, *]``
    (point ``n = row * W + col``): ``colors`` (32), ``opacities`` (1), ``scales`` (3),
    ``rotations`` (4, unit per point) and ``positions`` (1, the lifting distance in 0..1 along
    the source viewing direction).
    """

    OUT_DIM = N_FEATURES + 1 + 3 + 4 + 1

    def __init__(self, in_dim: int = 256, dir_dim: int = 27):
        super().__init__()
        h = in_dim // 2
        self.gaussian_conv = nn.Sequential(
            nn.Conv2d(in_dim + dir_dim, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, self.OUT_DIM, 1))

    def forward(self, feature: torch.Tensor, direnc: torch.Tensor) -> dict[str, torch.Tensor]:
        B, _, H, W = feature.shape
        x = torch.cat([feature, direnc[:, :, None, None].expand(-1, -1, H, W)], dim=1)
        p = self.gaussian_conv(x)
        colors = p[:, :N_FEATURES]
        # Official quirk: the sigmoid hits image columns 0-2 of every channel.
        colors = torch.cat([torch.sigmoid(colors[..., :3]), colors[..., 3:]], dim=-1)
        out = {
            "colors": colors,
            "opacities": torch.sigmoid(p[:, 32:33]),
            "scales": torch.sigmoid(p[:, 33:36]) * 0.05,
            "rotations": F.normalize(p[:, 36:40], dim=1),
            "positions": torch.sigmoid(p[:, 40:41]),
        }
        return {k: v.permute(0, 2, 3, 1).reshape(B, H * W, v.shape[1]) for k, v in out.items()}
