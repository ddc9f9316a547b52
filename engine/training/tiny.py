"""TinyGAGAvatar: a small GAGAvatar for CPU smoke runs and the test suite.

Same assembly as :class:`~..model.GAGAvatar` (it reuses its ``gaussians_from_image`` and
``neural_renderer`` code, the real :class:`~..networks.generators.HarmonicEmbedding`,
:class:`~..networks.generators.LinearGSGenerator` and :class:`~..networks.generators.ConvGSGenerator`, 5,023
expression Gaussians bound to the FLAME vertices and dual lifting from a plane), with two stand-ins
small enough to train for a few dozen steps on a laptop CPU:

* :class:`TinyEncoder` instead of DINOv2 + DPT: a few strided convolutions on the source image
  resized to ``4 * plane_size``, the local map at ``plane_size^2`` and a pooled global feature;
* :class:`TinyRenderer` instead of the StyleUNet: three convolutions with StyleGAN-like noise
  injection (a learned strength, fresh noise when ``randomize_noise``), sigmoid to RGB.

Renders are ``render_size^2`` (default 64); all trainable, nothing frozen.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..avatar import N_EXPRESSION
from ..cameras import FOCAL
from ..model import GAGAvatar
from ..networks.generators import N_FEATURES, ConvGSGenerator, HarmonicEmbedding, LinearGSGenerator
from ..networks.noise import fresh_noise


class TinyEncoder(nn.Module):
    """``[B, 3, H, W]`` -> ``(local [B, channels, P, P], global [B, global_dim])``, P = ``plane_size``."""

    def __init__(self, channels: int = 32, plane_size: int = 16, global_dim: int = 64):
        super().__init__()
        self.plane_size = plane_size
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1))
        self.global_linear = nn.Linear(channels, global_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = 4 * self.plane_size
        x = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        local = self.convs(x)
        return local, self.global_linear(local.mean(dim=(2, 3)))


class TinyRenderer(nn.Module):
    """Neural renderer ``[B, 32, S, S]`` -> ``[B, 3, S, S]`` in 0..1 with noise injection."""

    def __init__(self, size: int, in_dim: int = N_FEATURES, hidden: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(in_dim, hidden, 3, padding=1)
        self.conv_mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, 3, 1)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.register_buffer("noise", torch.randn(1, 1, size, size))

    def forward(self, x: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        h = F.leaky_relu(self.conv_in(x), 0.2)
        noise = fresh_noise(h) if randomize_noise else self.noise.to(h.dtype)
        h = F.leaky_relu(self.conv_mid(h + self.noise_strength * noise), 0.2)
        return torch.sigmoid(self.conv_out(h))


class TinyGAGAvatar(nn.Module):
    """A small GAGAvatar with the training interface (see :mod:`.forward`).

    Args:
        render_size: side of the coarse and fine renders.
        plane_size: side of each dual-lifting plane (2 * plane_size^2 lifted Gaussians).
        channels: local feature channels; head_dim: learned per-vertex feature width;
        global_dim: global feature width.
    """

    def __init__(self, render_size: int = 64, plane_size: int = 16, channels: int = 32, head_dim: int = 32,
                 global_dim: int = 64):
        super().__init__()
        self.render_size = render_size
        self.plane_size = plane_size
        self.focal = FOCAL
        self.head_base = nn.Parameter(torch.randn(N_EXPRESSION, head_dim))
        self.base_model = TinyEncoder(channels, plane_size, global_dim)
        self.harmo_encoder = HarmonicEmbedding(4)
        self.gs_generator_g = LinearGSGenerator(in_dim=head_dim + global_dim, dir_dim=self.harmo_encoder.out_dim)
        self.gs_generator_l0 = ConvGSGenerator(in_dim=channels, dir_dim=self.harmo_encoder.out_dim)
        self.gs_generator_l1 = ConvGSGenerator(in_dim=channels, dir_dim=self.harmo_encoder.out_dim)
        self.upsampler = TinyRenderer(render_size)
        self._compiled: dict = {}

    gaussians_from_image = GAGAvatar.gaussians_from_image
    neural_renderer = GAGAvatar.neural_renderer
    _neural_renderer = GAGAvatar._neural_renderer
