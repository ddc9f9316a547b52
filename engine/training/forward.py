"""The differentiable reenactment pass used for training and evaluation.

Works with any model that has GAGAvatar's training interface (:class:`~..model.GAGAvatar` and
:class:`~.tiny.TinyGAGAvatar`):

* ``gaussians_from_image(image_518 [B,3,518,518], transform [B,3,4])`` -> dict of ``[B, N, *]``
  Gaussians (``xyz, colors, opacities, scales, rotations``; the first 5,023 rows are the
  expression Gaussians) plus ``lifted_xyz [B, L, 3]``;
* ``neural_renderer(coarse [B, 32, S, S], randomize_noise)`` -> ``[B, 3, S, S]`` in 0..1;
* ``focal`` (normalised) and optionally ``render_size`` (``S``; 512 when absent, GAGAvatar).

As in the official ``forward``, the expression Gaussians are placed at the target FLAME vertices,
everything is splatted from the target camera (gradients flow through the rasterizer: the torch
rasterizer supports autograd, gsplat on CUDA too) and the neural renderer refines the 32-channel
coarse image. Splatting always runs in float32, outside autocast.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..avatar import N_EXPRESSION
from ..cameras import IMAGE_SIZE
from ..splatting.rasterize import render_gaussians

GAUSSIAN_KEYS = ("xyz", "colors", "opacities", "scales", "rotations")


def render_size(model: nn.Module) -> int:
    """Side of the model's coarse and fine renders (GAGAvatar: 512)."""
    return int(getattr(model, "render_size", IMAGE_SIZE))


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when ``enabled``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


@dataclass
class Reenactment:
    """Output of :func:`reenact`: ``coarse [B, 32, S, S]``, ``image [B, 3, S, S]`` (fine),
    ``lifted_xyz [B, L, 3]`` (None when reenacting from cached Gaussians)."""

    coarse: torch.Tensor
    image: torch.Tensor
    lifted_xyz: torch.Tensor | None


def encode(model: nn.Module, source_518: torch.Tensor, source_transform: torch.Tensor,
           amp: bool = False) -> dict[str, torch.Tensor]:
    """Source images -> Gaussians (+ ``lifted_xyz``), float32."""
    with autocast(source_518.device, amp):
        g = model.gaussians_from_image(source_518, source_transform)
    return {k: v.float() for k, v in g.items()}


def splat(model: nn.Module, gaussians: dict[str, torch.Tensor], vertices: torch.Tensor, transform: torch.Tensor,
          backend: str = "auto") -> torch.Tensor:
    """Coarse features ``[B, 32, S, S]`` with the expression Gaussians at ``vertices [B, 5023, 3]``.

    ``gaussians`` of batch 1 are shared by all ``B`` frames.
    """
    B = vertices.shape[0]
    g = {k: gaussians[k].expand(B, -1, -1) for k in GAUSSIAN_KEYS}
    g["xyz"] = torch.cat([vertices.to(g["xyz"]), g["xyz"][:, N_EXPRESSION:]], dim=1)
    size = render_size(model)
    with torch.autocast(vertices.device.type, enabled=False):
        return render_gaussians(g, transform.float(), focal=model.focal, size=(size, size), backend=backend).features


def reenact(model: nn.Module, source_518: torch.Tensor, source_transform: torch.Tensor, vertices: torch.Tensor,
            transform: torch.Tensor, randomize_noise: bool = False, amp: bool = False,
            backend: str = "auto") -> Reenactment:
    """The full differentiable pass (official ``GAGAvatar.forward``): source -> target render."""
    g = encode(model, source_518, source_transform, amp)
    return render(model, g, vertices, transform, randomize_noise, amp, backend, lifted=g["lifted_xyz"])


def render(model: nn.Module, gaussians: dict[str, torch.Tensor], vertices: torch.Tensor, transform: torch.Tensor,
           randomize_noise: bool = False, amp: bool = False, backend: str = "auto",
           lifted: torch.Tensor | None = None) -> Reenactment:
    """Splat + neural renderer from already encoded ``gaussians`` (see :func:`splat`)."""
    coarse = splat(model, gaussians, vertices, transform, backend)
    with autocast(coarse.device, amp):
        image = model.neural_renderer(coarse, randomize_noise=randomize_noise)
    return Reenactment(coarse=coarse, image=image.float(), lifted_xyz=lifted)


class ReenactmentPass(nn.Module):
    """The training pass (:func:`reenact` with fresh noise) as a module: ``DistributedDataParallel``
    synchronises the gradients of what runs through the ``forward`` of the module it wraps.

    ``forward(source_518, source_transform, vertices, transform)`` returns ``(coarse [B, 32, S, S],
    image [B, 3, S, S], lifted_xyz [B, L, 3])`` (a tuple: DDP follows the tensors of its output).
    """

    def __init__(self, model: nn.Module, amp: bool = False, backend: str = "auto"):
        super().__init__()
        self.model, self.amp, self.backend = model, amp, backend

    def forward(self, source_518: torch.Tensor, source_transform: torch.Tensor, vertices: torch.Tensor,
                transform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = reenact(self.model, source_518, source_transform, vertices, transform, randomize_noise=True,
                      amp=self.amp, backend=self.backend)
        return out.coarse, out.image, out.lifted_xyz
