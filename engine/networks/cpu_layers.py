"""Winograd F(2x2, 3x3) convolutions for the StyleUNet on the CPU, at inference (``gag_wino_conv``
in ``engine/splatting/cpu_kernel.c``, the library of :func:`..splatting.cpu_backend.library`).

A 3x3 convolution (stride 1, padding 1) computes each 2x2 output tile from a 4x4 input tile. In
Winograd's transformed domain that is 16 elementwise products summed over the input channels: 16
matrix products ``[tiles, C] x [C, Co]``, 2.25x fewer multiply-adds than the direct form's 9
``[pixels, C] x [C, Co]``. The kernel does it in blocks of 48 tiles whose input transform,
products (FMA register blocks) and output transform stay in the cache, and:

* applies the layer's epilogue in the output transform (a per-channel scale, i.e. StyleGAN's
  demodulation and gain, the bias, the noise and the leaky ReLU) and a per-channel input scale
  (the style) in the input transform, so a modulated convolution's weights are transformed once,
  not per frame;
* upsamples its input x2 on the way where the network convolves an upsampled image (the
  decoder's first convolution of each level, the U-Net's ResBlock(up)): bilinear weights of 3x3
  source pixels per tile, instead of a pass that writes and reads an image 4x larger;
* runs on torch's own OpenMP threads (:func:`..splatting.cpu_backend.openmp`): they spin for a
  while after each of torch's parallel regions, and took the cores from threads of our own (10%
  of the network); elsewhere on the worker threads of :mod:`..splatting.cpu_backend`.

Its float32 error is that of a direct convolution: the transforms only add and subtract and the
weight transform's halves are exact (2-4e-6 against float64 on unit-variance data, where oneDNN's
direct form is off by 5e-6-1.5e-5); per output, the sums run in channel order whatever the vector
width and thread count. From 64 input channels at 32^2 and up, the layers run 1.1-1.5x the speed
of oneDNN's direct convolution on a 2-core Xeon, and the StyleUNet x1.2 (docs/PERFORMANCE.md);
with 32 channels or fewer they do not gain.

The transformed weights ``[16, C, Co]`` (16/9 of a weight's memory, 99 MB for the StyleUNet) are
kept while a weight is unchanged, and freed with it. Used for inference (gradients off) at batch
1 on float32 CPU tensors where the compiled kernel is available; elsewhere the callers run
``F.conv2d``.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor

from ..splatting import cpu_backend

MIN_CHANNELS = 64
MIN_PIXELS = 32 * 32
"""Input channels and image size from which the Winograd form is used: where it is faster than
oneDNN's direct form on the CPU. Below 32^2 it still is, a little (a few ms of a frame on a 2-core
Xeon), but the StyleUNet's layers there have 256-512 channels, and their transformed weights would
take another 170 MB."""

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
"""The weight transform: ``G g G^T`` of each 3x3 kernel ``g`` is its 4x4 transformed kernel."""

_weights: dict[int, tuple[tuple, Tensor]] = {}
"""Transformed weights by ``id`` of the weight tensor: ``(key, [16, C, Co])``, ``key`` its storage
and version; an entry goes with its weight."""


def _compiled(*tensors: Tensor) -> bool:
    """Whether the kernel computes on ``tensors``: float32 on the CPU, batch 1, gradients off
    (``torch.no_grad`` or ``inference_mode``: the kernel has no backward), not inside
    ``torch.compile``, no CPU autocast, and the kernel built."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and tensors[0].shape[0] == 1
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and cpu_backend.library() is not None)


def winograd_usable(x: Tensor, weight: Tensor, upsample: bool = False) -> bool:
    """Whether :func:`winograd_conv3x3` computes ``conv2d(x, weight, padding=1)`` (of ``x``
    upsampled x2 with ``upsample``) here, and is faster: ``x [1, C, H, W]`` with ``C >=
    MIN_CHANNELS``, the convolved image's ``H, W`` even and ``H W >= MIN_PIXELS``, ``weight [Co, C,
    3, 3]`` with ``Co`` a multiple of 16, and :func:`_compiled`."""
    f = 2 if upsample else 1
    return (x.dim() == 4 and x.shape[1] >= MIN_CHANNELS and (f * x.shape[2]) % 2 == 0 and (f * x.shape[3]) % 2 == 0
            and f * f * x.shape[2] * x.shape[3] >= MIN_PIXELS and weight.shape[1:] == (x.shape[1], 3, 3)
            and weight.shape[0] % 16 == 0 and _compiled(x, weight))


def transformed_weight(weight: Tensor) -> Tensor:
    """``weight [Co, C, 3, 3]`` -> ``G weight G^T`` as ``[16, C, Co]`` float32 (position ``4 i + j``
    of the 4x4 tile first), computed in float64; kept while ``weight`` is unchanged."""
    key = (weight.data_ptr(), weight._version)
    held = _weights.get(id(weight))
    if held is not None and held[0] == key:
        return held[1]
    if held is None:
        weakref.finalize(weight, _weights.pop, id(weight), None)
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("pi,ocij,qj->pqco", g, weight.detach().double(), g)
    out = u.reshape(16, weight.shape[1], weight.shape[0]).float().contiguous()
    _weights[id(weight)] = (key, out)
    return out


def winograd_conv3x3(x: Tensor, weight: Tensor, *, style: Tensor | None = None, scale: Tensor | None = None,
                     bias: Tensor | None = None, noise: Tensor | None = None, noise_weight: float = 0.0,
                     slope: float | None = None, upsample: bool = False) -> Tensor:
    """``act(conv2d(x * style, weight, padding=1) * scale + bias + noise * noise_weight)`` by
    Winograd F(2x2, 3x3), where :func:`winograd_usable` says so; with ``upsample``, of ``x``
    upsampled x2 first (bilinear, ``align_corners=False``, as ``F.interpolate``), on the fly.

    Args:
        x: ``[1, C, H, W]`` float32 CPU (H, W even; any with ``upsample``), any memory format.
        weight: ``[Co, C, 3, 3]`` float32, ``Co`` a multiple of 16 (its transform is kept between calls).
        style: ``[C]`` per-input-channel factor, or None.
        scale: ``[Co]`` per-output-channel factor, or None.
        bias: ``[Co]``, or None.
        noise: ``[H, W]`` (any shape of ``H * W`` elements), times ``noise_weight``, or None.
        slope: leaky ReLU slope applied last, or None for none.

    Returns:
        ``[1, Co, H, W]`` (``[1, Co, 2H, 2W]`` with ``upsample``) float32, channels-last.
    """
    lib = cpu_backend.library()
    channels, height, width = x.shape[1], x.shape[2] * (1 + upsample), x.shape[3] * (1 + upsample)
    wt = transformed_weight(weight)
    out_channels = wt.shape[2]
    x = x.contiguous(memory_format=torch.channels_last)
    # Each per-channel or per-pixel vector as the kernel reads it: float32, contiguous.
    style, scale, bias, noise = (None if v is None else v.detach().reshape(-1).float().contiguous()
                                 for v in (style, scale, bias, noise))
    # What the kernel indexes by, checked (it writes the output through them).
    assert height % 2 == 0 and width % 2 == 0 and out_channels % 16 == 0 and wt.shape[1] == channels
    assert style is None or style.numel() == channels
    assert all(v is None or v.numel() == out_channels for v in (scale, bias))
    assert noise is None or noise.numel() == height * width
    out = torch.empty(1, out_channels, height, width, memory_format=torch.channels_last)
    args = (height, width, channels, out_channels, int(upsample), x, wt, style, scale, bias, noise, noise_weight,
            -1.0 if slope is None else slope)
    tiles = (height // 2) * (width // 2)
    if team := cpu_backend.openmp():
        # On torch's OpenMP threads: they spin a while after torch's own work and took the cores from
        # threads of our own (the StyleUNet ran 509 ms with our pool, 431 ms with torch's team).
        failed = lib.gag_wino_conv_team(*team, max(1, torch.get_num_threads()), *map(cpu_backend._address, args), 0,
                                        tiles, out.data_ptr())
    else:
        workers = max(1, torch.get_num_threads())
        bounds = [tiles * w // workers for w in range(workers + 1)]
        failed = any(cpu_backend._parallel(lib.gag_wino_conv, [(*args, a, b, out) for a, b in zip(bounds, bounds[1:])
                                                                if b > a]))
    if failed:
        raise MemoryError("out of memory in a Winograd convolution")
    return out
