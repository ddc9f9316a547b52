"""GAGAvatar's image encoder: DINOv2 ViT-B/14 plus a DPT-style head.

``DINOBase`` maps the 518 x 518 source image to a local feature map ``[B, 256, 296, 296]`` (the
input of the dual-lifting Gaussian generators) and a global feature ``[B, 768]`` (the input of
the expression-Gaussian MLP). Submodule names match the official state dict under the
``base_model.`` prefix. The official behaviour reproduced here (conformance kit, items 12-16):

* ImageNet normalisation happens inside; the *normalised* image, resized with antialiasing to
  each level's size (148, 74, 37, 19), is concatenated as 3 channels in front of each projected
  DINO feature map before the ``layer_rn`` 3 x 3 convs.
* Every resampling in the head is bilinear with ``align_corners=True``; the residual units are
  pre-activation (``x + conv2(relu(conv1(relu(x))))``); ``refinenet.0`` has a single input, so
  its ``resConfUnit1`` is in the state dict but never used.
* The global feature is the first *patch* token (top-left patch) of the last block after the
  final norm, not the class token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dino import EMBED_DIM, IMAGE_SIZE, PATCH_SIZE, DinoVisionTransformer, check_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROJECT_DIMS = (256, 512, 1024, 1024)
"""Channels of the four projected DINO levels (blocks 8, 9, 10, 11)."""
HIDDEN_DIM = 256


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit ``x + conv2(relu(conv1(relu(x))))`` (3 x 3 convs with bias)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """DPT fusion: ``out_conv(resize(rcu2(x + rcu1(skip))))``, or ``out_conv(resize(rcu2(x)))``
    without ``skip`` (all maps ``[B, features, h, w]``).

    The resize is bilinear with ``align_corners=True`` to ``size``, or x2 when ``size`` is None.
    The official code applies the 1 x 1 ``out_conv`` after the resize; both are linear and the
    resampling weights sum to one, so they commute; the conv runs here before the (always
    upsampling) resize, at the lower resolution.
    """

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        return F.interpolate(self.out_conv(x), size=size, mode="bilinear", align_corners=True)


class DINOBase(nn.Module):
    """DINOv2 ViT-B/14 features + DPT head (GAGAvatar's ``base_model``).

    Args:
        output_dim: channels of the local feature map (256 in GAGAvatar).
    """

    def __init__(self, output_dim: int = 256):
        super().__init__()
        self.dino_model = DinoVisionTransformer()
        self.projects = nn.ModuleList(nn.Conv2d(EMBED_DIM, d, kernel_size=1) for d in PROJECT_DIMS)
        d0, d1, _, d3 = PROJECT_DIMS
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(d0, d0, kernel_size=4, stride=4),        # 37 -> 148
            nn.ConvTranspose2d(d1, d1, kernel_size=2, stride=2),        # 37 -> 74
            nn.Identity(),                                              # 37
            nn.Conv2d(d3, d3, kernel_size=3, stride=2, padding=1),      # 37 -> 19
        ])
        self.layer_rn = nn.ModuleList(
            nn.Conv2d(d + 3, HIDDEN_DIM, kernel_size=3, padding=1, bias=False) for d in PROJECT_DIMS)
        self.refinenet = nn.ModuleList(FeatureFusionBlock(HIDDEN_DIM) for _ in range(4))
        self.output_conv = nn.Conv2d(HIDDEN_DIM, output_dim, kernel_size=3, padding=1)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, output_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode source images.

        Args:
            image: ``[B, 3, 518, 518]`` RGB in 0..1.
            output_size: optional side of the local map; it is then resized bilinearly with
                ``align_corners=True`` (the official ``forward_expression`` passes none).

        Returns:
            ``(local [B, output_dim, 296, 296], global [B, 768])``.
        """
        check_image(image)
        x = (image - self.image_mean) / self.image_std
        tokens = self.dino_model.get_intermediate_layers(x, len(PROJECT_DIMS))
        side = IMAGE_SIZE // PATCH_SIZE
        rns = []
        for i, t in enumerate(tokens):
            f = t.transpose(1, 2).reshape(t.shape[0], EMBED_DIM, side, side)
            f = self.resize_layers[i](self.projects[i](f))
            small = F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            rns.append(self.layer_rn[i](torch.cat([small, f], dim=1)))
        path = self.refinenet[0](rns[3], size=rns[2].shape[-2:])
        path = self.refinenet[1](path, rns[2], size=rns[1].shape[-2:])
        path = self.refinenet[2](path, rns[1], size=rns[0].shape[-2:])
        path = self.refinenet[3](path, rns[0])
        out = self.output_conv(path)
        if output_size is not None:
            out = F.interpolate(out, size=output_size, mode="bilinear", align_corners=True)
        return out, tokens[-1][:, 0]
