"""GAGAvatar: one-shot reconstruction (once per source image) and driving (per frame).

Module and parameter names match the official ``GAGAvatar.pt`` state dict (minus the
training-only ``percep_loss.*``), so the released weights load with ``strict=True``.

Data flow::

    image [B,3,512,512] --resize 518--> DINOBase --> local [B,256,296,296], global [B,768]
    local  --ConvGSGenerator l0/l1--> 2 x 296^2 Gaussians lifted forward/backward from the plane
    global + head_base[5023,256] --LinearGSGenerator--> 5,023 expression Gaussians
    per frame: expression xyz = FLAME vertices; splat 32 channels at 512^2 (focal 12);
               StyleUNet --> image [B,3,512,512]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .avatar import N_EXPRESSION, Avatar
from .cameras import FOCAL, IMAGE_SIZE, PLANE_SIZE, build_points_planes
from .networks.dino_base import DINOBase
from .networks.generators import ConvGSGenerator, HarmonicEmbedding, LinearGSGenerator
from .networks.style_unet import StyleUNet
from .shapes import broadcast
from .splatting.fastpath import PinnedReadback, autocast, compile_per_frame, resolve_precision
from .splatting.rasterize import render_gaussians

DINO_SIZE = 518
"""DINOv2 input side: 37 x 37 patches of 14 px."""


@dataclass
class Frame:
    """One driven render, all ``[B, *, 512, 512]`` (``[*, 512, 512]`` from unbatched inputs).

    Attributes:
        image: neural-rendered RGB, sRGB-encoded, 0..1.
        coarse: the 32 splatted feature channels before the neural renderer (0-2 are RGB-like).
        alpha: accumulated splatting opacity, 0..1.
        depth: alpha-weighted mean view-space depth of the splats (world units; 0 where empty).
    """

    image: torch.Tensor
    coarse: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor

    def to_host(self, readback: PinnedReadback | None = None) -> "Frame":
        """This frame on the host (tensors already there are kept as they are).

        With a :class:`~.splatting.fastpath.PinnedReadback` the four copies go through its page-locked
        buffers with one wait (the result is overwritten by that readback's next call);
        without, plain ``.cpu()`` copies.
        """
        tensors = (self.image, self.coarse, self.alpha, self.depth)
        return Frame(*(readback(*tensors) if readback is not None else (t.cpu() for t in tensors)))


def resize_for_dino(image: torch.Tensor) -> torch.Tensor:
    """Resize ``[B, 3, H, W]`` to 518^2 exactly as the official data loader does
    (torchvision ``resize(antialias=True)`` = bilinear, ``align_corners=False``, antialiased)."""
    return F.interpolate(image.float(), size=(DINO_SIZE, DINO_SIZE), mode="bilinear",
                         align_corners=False, antialias=True)


class GAGAvatar(nn.Module):
    """The GAGAvatar network. Use :meth:`reconstruct` once per source, :meth:`render` per frame."""

    def __init__(self):
        super().__init__()
        self.head_base = nn.Parameter(torch.zeros(N_EXPRESSION, 256))
        self.base_model = DINOBase(output_dim=256)
        for p in self.base_model.dino_model.parameters():
            p.requires_grad_(False)
        self.harmo_encoder = HarmonicEmbedding(4)
        self.gs_generator_g = LinearGSGenerator(in_dim=1024, dir_dim=self.harmo_encoder.out_dim)
        self.gs_generator_l0 = ConvGSGenerator(in_dim=256, dir_dim=self.harmo_encoder.out_dim)
        self.gs_generator_l1 = ConvGSGenerator(in_dim=256, dir_dim=self.harmo_encoder.out_dim)
        self.upsampler = StyleUNet(in_size=IMAGE_SIZE, in_dim=32, out_dim=3, out_size=IMAGE_SIZE)
        self.focal = FOCAL
        self.plane_size = PLANE_SIZE
        self._compiled: dict[str, Callable[[torch.Tensor, bool, str], torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.head_base.device

    # ------------------------------------------------------------- reconstruction
    def gaussians_from_image(self, image_518: torch.Tensor, transform: torch.Tensor) -> dict[str, torch.Tensor]:
        """Static Gaussians from a 518^2 source image (differentiable; used by training).

        Args:
            image_518: ``[B, 3, 518, 518]`` in 0..1.
            transform: ``[B, 3, 4]`` source camera.
        Returns:
            dict of ``[B, 180255, *]`` (expression rows' ``xyz`` are zeros) plus ``lifted_xyz``
            ``[B, 2*296^2, 3]`` (the dual-lifting points, for the lifting-distance loss).
        """
        B = image_518.shape[0]
        plane_points, plane_dirs = build_points_planes(transform, self.plane_size, self.focal)
        local, glob = self.base_model(image_518)
        direnc = self.harmo_encoder(plane_dirs)
        g = self.gs_generator_g(
            torch.cat([self.head_base[None].expand(B, -1, -1), glob[:, None].expand(-1, N_EXPRESSION, -1)], dim=-1),
            direnc)
        g["xyz"] = image_518.new_zeros(B, N_EXPRESSION, 3)
        l0 = self.gs_generator_l0(local, direnc)
        l1 = self.gs_generator_l1(local, direnc)
        l0["xyz"] = plane_points + l0["positions"] * plane_dirs[:, None]
        l1["xyz"] = plane_points - l1["positions"] * plane_dirs[:, None]
        out = {k: torch.cat([g[k], l0[k], l1[k]], dim=1) for k in ("xyz", "colors", "opacities", "scales", "rotations")}
        out["lifted_xyz"] = torch.cat([l0["xyz"], l1["xyz"]], dim=1)
        return out

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor, transform: torch.Tensor, shape: torch.Tensor | None = None,
                    vertices: torch.Tensor | None = None) -> Avatar:
        """Reconstruct avatars from source crops in one forward pass.

        Every input may also come unbatched (``image [3, H, W]``, ``transform [3, 4]``, ...): batch
        sizes must agree, size 1 and unbatched inputs are shared by the whole batch. The avatar
        keeps its batch dimension: unbatched inputs give an avatar of batch 1, which :meth:`render`
        drives with batched or unbatched frames.

        Args:
            image: ``[B, 3, H, W]`` in 0..1 (the 512^2 head crop on black, as tracked); resized
                to 518^2 here exactly as the official loader does.
            transform: ``[B, 3, 4]`` source camera (official convention).
            shape: optional ``[B, 300]`` FLAME identity, kept in the avatar for driving.
            vertices: optional ``[B, 5023, 3]`` source FLAME vertices (for previews/export).
        Raises:
            ShapeError: (a ``ValueError``) an input of the wrong shape, or batch sizes that disagree.
        """
        _, (image, transform, shape, vertices) = broadcast(
            "reconstruct", image=(image, (3, "H", "W")), transform=(transform, (3, 4)), shape=(shape, (300,)),
            vertices=(vertices, (N_EXPRESSION, 3)))
        image = image.to(self.device, torch.float32)
        transform = transform.to(self.device, torch.float32)
        g = self.gaussians_from_image(resize_for_dino(image), transform)
        g.pop("lifted_xyz")
        return Avatar(g, source_transform=transform, shape=shape, source_vertices=vertices)

    # ------------------------------------------------------------- driving
    def splat(self, avatar: Avatar, vertices: torch.Tensor, transform: torch.Tensor, focal=None,
              center=(0.0, 0.0), background: torch.Tensor | None = None, backend: str = "auto"):
        """Rasterize the avatar with its expression Gaussians at ``vertices``.

        Args:
            vertices: ``[B, 5023, 3]`` FLAME vertices (x5) of the frames.
            transform: ``[B, 3, 4]`` cameras of the frames.
            focal, center: normalised focal (default 12) and NDC principal-point offset.
        Returns:
            :class:`~.splatting.rasterize.RenderResult` at 512^2 (features ``[B, 32, 512, 512]``).
        """
        B = vertices.shape[0]
        if avatar.batch_size not in (1, B):
            raise ValueError(f"avatar batch {avatar.batch_size} does not match {B} frames")
        g = avatar.gaussians
        xyz = torch.cat([vertices.to(g["xyz"]), g["xyz"][:, N_EXPRESSION:].expand(B, -1, -1)], dim=1)
        gaussians = {"xyz": xyz, "covars": avatar.covariances().expand(B, -1, -1, -1)}
        for k in ("colors", "opacities", "scales", "rotations"):
            gaussians[k] = g[k].expand(B, -1, -1)
        return render_gaussians(gaussians, transform.to(xyz), focal=self.focal if focal is None else focal,
                                size=(IMAGE_SIZE, IMAGE_SIZE), background=background, center=center, backend=backend)

    def neural_renderer(self, coarse: torch.Tensor, randomize_noise: bool = False, precision: str = "fp32",
                        compiled: bool = False) -> torch.Tensor:
        """StyleUNet: ``[B, 32, 512, 512]`` splatted features -> ``[B, 3, 512, 512]`` sRGB in 0..1, float32.

        Deterministic by default (the checkpoint's stored noise); the official inference draws
        fresh noise per frame (``randomize_noise=True``), which flickers in video.

        Args:
            precision: ``"fp32"`` (official), ``"bf16"`` (the convolutions run under bf16
                autocast, modulation, demodulation and the style MLP stay float32) or ``"auto"``
                (bf16 where the device computes it natively: :func:`~.splatting.fastpath.resolve_precision`).
            compiled: run through :func:`~.splatting.fastpath.compile_per_frame` (CUDA graphs on CUDA); the
                first call per input shape and device type compiles.
        """
        precision = resolve_precision(precision, coarse.device)
        if not compiled:
            return self._neural_renderer(coarse, randomize_noise, precision)
        kind = coarse.device.type
        if kind not in self._compiled:
            self._compiled[kind] = compile_per_frame(self._neural_renderer, coarse.device)
        return self._compiled[kind](coarse, randomize_noise, precision)

    def _neural_renderer(self, coarse: torch.Tensor, randomize_noise: bool, precision: str) -> torch.Tensor:
        """Eager :meth:`neural_renderer` (the function that ``compiled=True`` compiles)."""
        with autocast(coarse.device, precision):
            image = self.upsampler(coarse, randomize_noise=randomize_noise)
        return image.float()

    @torch.no_grad()
    def render(self, avatar: Avatar, vertices: torch.Tensor, transform: torch.Tensor, focal=None,
               center=(0.0, 0.0), background: torch.Tensor | None = None, backend: str = "auto",
               randomize_noise: bool = False, precision: str = "fp32", compiled: bool = False) -> Frame:
        """Drive the avatar: ``[B, 5023, 3]`` FLAME vertices + ``[B, 3, 4]`` cameras -> :class:`Frame`.

        Batched over frames (an avatar of batch 1 is shared by all B frames). Vertices and cameras
        may also come unbatched (``[5023, 3]``, ``[3, 4]``): batch sizes must agree, size 1 and
        unbatched inputs are shared by all frames, and the frame is unbatched when both are; other
        shapes raise a :class:`~.shapes.ShapeError` (a ``ValueError``). ``precision`` and ``compiled``
        apply to the neural renderer (see :meth:`neural_renderer`); the defaults are the official
        fp32 eager computation. Nothing here waits for the device: on CUDA with ``backend="gsplat"``
        the only host sync is gsplat's own (its tile-intersection count).
        """
        batch, (vertices, transform) = broadcast("render", vertices=(vertices, (N_EXPRESSION, 3)),
                                                 transform=(transform, (3, 4)))
        r = self.splat(avatar, vertices.to(self.device), transform.to(self.device), focal, center, background, backend)
        image = self.neural_renderer(r.features, randomize_noise, precision, compiled)
        out = {"image": image, "coarse": r.features, "alpha": r.alpha, "depth": r.depth}
        return Frame(**(out if batch is not None else {k: t[0] for k, t in out.items()}))
