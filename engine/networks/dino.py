"""DINOv2 ViT-B/14 (``dinov2_vitb14`` of the official torch hub), with the hub's parameter names.

Written from the architecture description so that the frozen DINOv2 weights stored in
GAGAvatar's checkpoint (``base_model.dino_model.*``) load with ``strict=True``:

* ``cls_token [1, 1, 768]``, ``pos_embed [1, 1370, 768]`` (1 class + 37 x 37 patch positions),
  ``mask_token [1, 768]`` (kept for the state dict; masking is a training-only feature of DINOv2),
* ``patch_embed.proj`` (14 x 14 stride-14 conv), ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
  norm2, mlp.fc1, mlp.fc2, ls2.gamma}`` for N in 0..11, and the final ``norm``.

Pre-norm transformer blocks with LayerScale, LayerNorm eps 1e-6, qkv bias, exact (erf) GELU, 12
heads of 64, no register tokens. GAGAvatar always feeds 518 x 518 images, where the positional
embedding is used as stored; other sizes would need the hub's bicubic resampling of it, which the
model never uses, so they are refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 518
"""Input side in pixels (37 patches of 14)."""
PATCH_SIZE = 14
EMBED_DIM = 768
DEPTH = 12
NUM_HEADS = 12
MLP_DIM = 3072
LN_EPS = 1e-6


def check_image(x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``[B, 3, 518, 518]`` image batch."""
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"DINOv2 expects a [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] image batch, got "
                         f"{tuple(x.shape)}; resize the image to {IMAGE_SIZE} x {IMAGE_SIZE} first")


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` of a residual branch."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention ``[B, N, D] -> [B, N, D]`` (fused qkv projection with bias)."""

    def __init__(self, dim: int = EMBED_DIM, num_heads: int = NUM_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # [B, N, 3, heads, D/heads] -> 3 x [B, heads, N, D/heads]
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """``fc1 -> GELU (erf) -> fc2``."""

    def __init__(self, dim: int = EMBED_DIM, hidden: int = MLP_DIM):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int = EMBED_DIM, num_heads: int = NUM_HEADS, mlp_dim: int = MLP_DIM):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Image ``[B, 3, H, W]`` -> patch tokens ``[B, (H/14) * (W/14), 768]`` (row-major patches)."""

    def __init__(self, patch_size: int = PATCH_SIZE, dim: int = EMBED_DIM):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT-B/14 backbone for ``518 x 518`` inputs (ImageNet-normalised by the caller)."""

    def __init__(self):
        super().__init__()
        n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, EMBED_DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, EMBED_DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(EMBED_DIM, eps=LN_EPS)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 518, 518]`` -> tokens ``[B, 1370, 768]`` (class token first, positions added)."""
        check_image(x)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 4, return_class_token: bool = False):
        """Outputs of the last ``n`` blocks, each passed through the final ``norm`` (hub semantics).

        Args:
            x: ``[B, 3, 518, 518]`` ImageNet-normalised image.
            n: number of final blocks to return (1..12).
            return_class_token: also return each block's class token.

        Returns:
            A tuple of ``n`` patch-token tensors ``[B, 1369, 768]`` (patch ``r * 37 + c``), or, with
            ``return_class_token``, a tuple of ``n`` pairs ``(patches [B, 1369, 768], cls [B, 768])``.
        """
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"n must be in 1..{len(self.blocks)}, got {n}")
        x = self.prepare_tokens(x)
        outputs = []
        first = len(self.blocks) - n
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= first:
                outputs.append(self.norm(x))
        if return_class_token:
            return tuple((out[:, 1:], out[:, 0]) for out in outputs)
        return tuple(out[:, 1:] for out in outputs)
