"""StyleUNet: GAGAvatar's neural renderer, 32-channel splatted features -> RGB.

A U-Net encodes the coarse render ``[B, 32, S, S]`` (S = 512) into one style code per sample
and, on its way back up, into per-level SFT conditions (``scale``, ``shift``); a StyleGAN2
decoder driven by that style modulates its features with the conditions after the first
(upsampling) convolution of every level (conformance kit, items 35-39)::

    x --1x1--> 16ch @ S --7 x ResBlock(down)--> 256ch @ 4 --3x3--> feat --Linear--> style_code [B,512]
    feat --7 x (+ skip, ResBlock(up), SFT branches)--> (scale_l, shift_l) l = 0..6, 8^2 .. S^2
    style_code --NormStyleCode, 8 x Linear--> latent [B,512] (one latent for every layer)
    const 512 @ 4 --StyleConv--> per level: StyleConv(up) * scale_l + shift_l --StyleConv--> ToRGB
    sum of ToRGB skips --sigmoid--> image [B, 3, S, S] in 0..1

Parameter and buffer names match the official ``upsampler.*`` state-dict entries, including
the ``toRGB.*`` convolutions (in the checkpoint, never used in forward) and the persistent
``stylegan_decoder.noises.noise0..14`` buffers.

Differences from the official forward, same function:

* ``randomize_noise`` defaults to ``False`` (the stored noise buffers): the official default
  draws fresh noise per call, which flickers in video.
* Modulation and demodulation run in float32 whatever the activation dtype or autocast state
  (float16 StyleGAN decoders otherwise collapse to flat colour); only the convolutions follow
  the input dtype.
* Modulated convolutions: for ``B == 1`` the weight is modulated directly (as the official
  code); for ``B > 1`` the input is scaled by the style, convolved with the shared weight in one
  batched call and the output multiplied by the demodulation factor (no grouped convolution).
  The ``sqrt(2)`` gain and the bias are folded into the convolution when ``B == 1``.
* Runs internally in ``channels_last`` (oneDNN's CPU convolutions are 2-3x faster on the
  high-resolution, few-channel layers) and returns a contiguous image; any input memory format
  is accepted. The convolution weights are stored ``channels_last`` too, so no call reorders
  them (the modulated weights are kept 4-D in memory, 5-D in state dicts).
* ResBlock(up) runs its 1x1 skip conv before the resize (they commute; fewer pixels).
* The demodulation's style-free factor ``sum weight^2`` is kept between inference calls, and
  float32 x2 upsampling on the CPU is a transposed convolution (same weights, float rounding).
* At inference on the CPU (float32, batch 1), the 3x3 convolutions with 64 or more input
  channels at 32^2 and up run as Winograd F(2x2, 3x3) (:mod:`.cpu_layers`: fewer
  multiplications, the same float32 rounding error), an x2 upsampling before one inside it; a
  modulated one takes the style on its input and the demodulation, bias, noise and leaky ReLU in
  its output pass.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_layers
from .noise import fresh_noise

UNET_CHANNELS = {4: 256, 8: 256, 16: 256, 32: 256, 64: 128, 128: 64, 256: 32, 512: 16, 1024: 8}
"""U-Net (and SFT) channels per resolution; the decoder uses twice as many."""

STYLE_DIM = 512
"""Style code / latent width."""

LRELU_SLOPE = 0.2


def _fp32(device: torch.device):
    """Context that disables autocast on ``device`` (a no-op when autocast is off)."""
    return torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type) else nullcontext()


def _linear_fp32(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` computed in float32: ``[B, in] -> [B, out]`` float32."""
    with _fp32(x.device):
        return F.linear(x.float(), layer.weight.float(), layer.bias.float())


def _conv(conv: nn.Conv2d, x: torch.Tensor, slope: float | None = None, upsample: bool = False) -> torch.Tensor:
    """``conv(x)`` (of ``x`` upsampled x2 with ``upsample``), then a leaky ReLU with ``slope`` (None:
    none); 3x3 convolutions through :func:`.cpu_layers.winograd_conv3x3` where it applies (CPU
    inference)."""
    if (conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            and cpu_layers.winograd_usable(x, conv.weight, upsample)):
        return cpu_layers.winograd_conv3x3(x, conv.weight, bias=conv.bias, slope=slope, upsample=upsample)
    out = conv(_resample(x, 2.0) if upsample else x)
    return out if slope is None else F.leaky_relu_(out, slope)


def _resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` (0.5 or 2), ``align_corners=False`` (official)."""
    if factor == 2.0 and x.device.type == "cpu" and x.dtype == torch.float32:
        return _upsample2_cpu(x)
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


_BILINEAR_X2 = (0.25, 0.75, 0.75, 0.25)
"""1-D taps of a bilinear x2 upsampling (``align_corners=False``) seen as a stride-2 transposed convolution."""
_upsample_kernels: dict[int, torch.Tensor] = {}
"""Its depthwise float32 kernels ``[C, 1, 4, 4]`` by channel count."""


def _upsample2_cpu(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling of float32 ``x [B, C, H, W]`` -> ``[B, C, 2H, 2W]`` as oneDNN computes it fastest.

    The edge-replicated input through a depthwise stride-2 transposed convolution with the 4 x 4
    outer product of :data:`_BILINEAR_X2` (cropped by 3 on each side) is ``F.interpolate``'s
    bilinear x2 with its edge clamping: the same weights (exact binary fractions), summed in
    another order (within a float rounding). On the CPU in float32 it runs 1.5-3x faster than
    ``F.interpolate`` on channels-last activations, mostly by touching fewer fresh pages (see
    :mod:`..host_memory`); in bfloat16 oneDNN's depthwise transposed convolution is the slower one.
    """
    C = x.shape[1]
    kernel = _upsample_kernels.get(C)
    if kernel is None:
        taps = torch.tensor(_BILINEAR_X2)
        kernel = (taps[:, None] * taps[None, :]).expand(C, 1, 4, 4).contiguous(memory_format=torch.channels_last)
        _upsample_kernels[C] = kernel
    return F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, stride=2, padding=3, groups=C)


class ResBlock(nn.Module):
    """U-Net residual block ``[B, cin, H, W] -> [B, cout, H*f, W*f]`` (f = 0.5 or 2).

    ``lrelu(conv2(resample(lrelu(conv1(x))))) + skip(resample(x))``; ``skip`` is a 1x1 conv
    without bias.
    """

    def __init__(self, in_channels: int, out_channels: int, factor: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _conv(self.conv1, x, LRELU_SLOPE)
        if self.factor > 1:
            out = _conv(self.conv2, out, LRELU_SLOPE, upsample=True)
        else:
            out = _conv(self.conv2, _resample(out, self.factor), LRELU_SLOPE)
        # The 1x1 skip conv and the resize commute: run the conv at the lower resolution.
        skip = _resample(self.skip(x), self.factor) if self.factor > 1 else self.skip(_resample(x, self.factor))
        return out + skip


def _weight_to_official(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: write the 4-D modulated weight in the official 5-D shape."""
    state_dict[prefix + "weight"] = state_dict[prefix + "weight"][None]


def _weight_from_official(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: accept the official 5-D ``[1, cout, cin, k, k]`` weight."""
    w = state_dict.get(prefix + "weight")
    if w is not None and w.dim() == 5 and w.shape[0] == 1:
        state_dict[prefix + "weight"] = w[0]


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (no bias), optional bilinear x2 upsampling of the input.

    ``weight [cout, cin, k, k]`` (``[1, cout, cin, k, k]`` in state dicts, as the official
    checkpoint; kept 4-D in memory so that ``Module.to(memory_format=torch.channels_last)``
    works); ``modulation``: Linear(512 -> cin), the per-input-channel style. Demodulation:
    ``rsqrt(sum_{cin,k,k} (w * style)^2 + 1e-8)`` per output channel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, demodulate: bool = True,
                 upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.demodulate = demodulate
        self.upsample = upsample
        self.eps = eps
        self.padding = kernel_size // 2
        self.modulation = nn.Linear(STYLE_DIM, in_channels)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.ones_(self.modulation.bias)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size)
                                   / math.sqrt(in_channels * kernel_size ** 2))
        self.register_state_dict_post_hook(_weight_to_official)
        self.register_load_state_dict_pre_hook(_weight_from_official)
        self._energy: tuple[tuple, torch.Tensor] | None = None

    def _weight_energy(self) -> torch.Tensor:
        """``sum_{k,k} weight^2``, ``[cin, cout]`` float32: the style-free factor of the demodulation.

        Kept between calls while the weight is unchanged (same storage and version) and no graph
        is being recorded for it, i.e. at eager inference; recomputed (and differentiable) in
        training and inside ``torch.compile`` (which traces it into its graph).
        """
        w = self.weight
        if (torch.is_grad_enabled() and w.requires_grad) or torch.compiler.is_compiling():
            return w.float().square().sum((2, 3)).t()
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._energy is None or self._energy[0] != key:
            self._energy = (key, w.detach().float().square().sum((2, 3)).t().contiguous())
        return self._energy[1]

    def forward(self, x: torch.Tensor, latent: torch.Tensor, gain: float = 1.0, bias: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, noise_weight: torch.Tensor | None = None,
                slope: float | None = None) -> torch.Tensor:
        """``x [B, cin, H, W]``, ``latent [B, 512]`` -> ``act(gain * modconv(x) + bias + noise_weight *
        noise)``, ``[B, cout, H', W']`` (H' = 2H when upsampling) in ``x``'s dtype; ``bias [1, cout, 1,
        1]``, ``noise [1 or B, 1, H', W']`` and ``noise_weight [1]`` (or None), ``act`` a leaky ReLU
        with ``slope`` (None: none). Wide 3x3 layers at batch 1 on the CPU run as
        :func:`.cpu_layers.winograd_conv3x3` (style on its input, demodulation, bias, noise and
        activation in its output pass)."""
        B = x.shape[0]
        with _fp32(x.device):
            style = _linear_fp32(latent, self.modulation)                      # [B, cin]
            w = self.weight.float()                                            # [cout, cin, k, k]
            scale = torch.full((B, w.shape[0]), gain, dtype=torch.float32, device=x.device)
            if self.demodulate:
                energy = style.square() @ self._weight_energy()                # [B, cout]
                scale = scale * torch.rsqrt(energy + self.eps)
        if B == 1:
            if self.padding == 1 and cpu_layers.winograd_usable(x, self.weight, self.upsample):
                return cpu_layers.winograd_conv3x3(x, self.weight, style=style, scale=scale, bias=bias, noise=noise,
                                                   noise_weight=0.0 if noise is None else float(noise_weight),
                                                   slope=slope, upsample=self.upsample)
            if self.upsample:
                x = _resample(x, 2.0)
            w = w * (scale.t() * style)[:, :, None, None]
            b = None if bias is None else bias.reshape(-1).to(x.dtype)
            out = F.conv2d(x, w.to(x.dtype), b, padding=self.padding)
        else:
            x = x * style.to(x.dtype)[:, :, None, None]
            if self.upsample:
                x = _resample(x, 2.0)
            out = F.conv2d(x, w.to(x.dtype), padding=self.padding)
            out = out * scale.to(x.dtype)[:, :, None, None]
            if bias is not None:
                out = out.add_(bias.to(x.dtype))
        if noise is not None:
            out = out.add_((noise_weight * noise).to(out.dtype))
        return out if slope is None else F.leaky_relu_(out, slope)


class StyleConv(nn.Module):
    """``lrelu(sqrt(2) * modconv(x) + weight * noise + bias)``; ``weight [1]`` is the noise strength."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, demodulate=True, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``noise [1 or B, 1, H', W']`` (None: fresh N(0, 1) per sample) -> ``[B, cout, H', W']``."""
        if noise is not None:
            return self.modulated_conv(x, latent, gain=math.sqrt(2.0), bias=self.bias, noise=noise,
                                       noise_weight=self.weight, slope=LRELU_SLOPE)
        out = self.modulated_conv(x, latent, gain=math.sqrt(2.0), bias=self.bias)
        out = out.add_((self.weight * fresh_noise(out)).to(out.dtype))
        return F.leaky_relu_(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation + bias, plus the previous skip (upsampled x2)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, latent: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, cin, H, W]``, ``skip [B, out, H/2, W/2]`` (or ``[.., H, W]`` without upsampling)."""
        out = self.modulated_conv(x, latent, bias=self.bias)
        if skip is None:
            return out
        return out.add_(_resample(skip, 2.0) if self.upsample else skip)


class NormStyleCode(nn.Module):
    """``x * rsqrt(mean(x^2, dim=1) + 1e-8)`` on ``[B, 512]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class ConstantInput(nn.Module):
    """Learned decoder input ``weight [1, C, size, size]``."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))


class StyleGAN2GeneratorCSFT(nn.Module):
    """StyleGAN2 decoder with SFT conditions (``stylegan_decoder.*`` in the checkpoint).

    ``noises.noise<i>`` (``[1, 1, r, r]``, ``r = 2^((i + 5) // 2)``) is the stored noise of layer
    ``i``: ``style_conv1`` then ``style_convs[0..]``.
    """

    def __init__(self, out_size: int, out_dim: int = 3, num_mlp: int = 8):
        super().__init__()
        log_size = int(math.log2(out_size))
        self.num_layers = 2 * (log_size - 2) + 1
        layers: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            linear = nn.Linear(STYLE_DIM, STYLE_DIM)
            nn.init.kaiming_normal_(linear.weight, a=LRELU_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LeakyReLU(LRELU_SLOPE)]
        self.style_mlp = nn.Sequential(*layers)
        ch = 2 * UNET_CHANNELS[4]
        self.constant_input = ConstantInput(ch, 4)
        self.style_conv1 = StyleConv(ch, ch, upsample=False)
        self.to_rgb1 = ToRGB(ch, out_dim, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, r, r))
        for level in range(3, log_size + 1):
            out_ch = 2 * UNET_CHANNELS[2 ** level]
            self.style_convs.append(StyleConv(ch, out_ch, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, upsample=False))
            self.to_rgbs.append(ToRGB(out_ch, out_dim, upsample=True))
            ch = out_ch

    def latent(self, style_code: torch.Tensor) -> torch.Tensor:
        """Style MLP in float32: ``[B, 512] -> [B, 512]``."""
        x = self.style_mlp[0](style_code.float())
        for layer in self.style_mlp[1:]:
            x = _linear_fp32(x, layer) if isinstance(layer, nn.Linear) else F.leaky_relu_(x, LRELU_SLOPE)
        return x

    def forward(self, latent: torch.Tensor, conditions: list[tuple[torch.Tensor, torch.Tensor]],
                randomize_noise: bool = False) -> torch.Tensor:
        """``latent [B, 512]``, ``conditions`` = (scale, shift) per level, ``[B, C_l, 8 * 2^l, ..]``
        -> pre-sigmoid image ``[B, out_dim, S, S]`` in the conditions' dtype."""
        B = latent.shape[0]
        dtype = conditions[0][0].dtype
        noises = [None if randomize_noise else getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        out = self.constant_input.weight.to(dtype).expand(B, -1, -1, -1)
        out = self.style_conv1(out, latent, noises[0])
        skip = self.to_rgb1(out, latent)
        for level, (scale, shift) in enumerate(conditions):
            out = self.style_convs[2 * level](out, latent, noises[2 * level + 1])
            out = torch.addcmul(shift, out, scale)
            out = self.style_convs[2 * level + 1](out, latent, noises[2 * level + 2])
            skip = self.to_rgbs[level](out, latent, skip)
        return skip


def _sft_branch(ch: int) -> nn.Sequential:
    """SFT condition branch ``[B, ch, H, W] -> [B, 2 ch, H, W]``: conv3x3 - lrelu - conv3x3."""
    return nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(LRELU_SLOPE, True), nn.Conv2d(ch, 2 * ch, 3, 1, 1))


def _branch(branch: nn.Sequential, feat: torch.Tensor) -> torch.Tensor:
    """``branch(feat)`` for a :func:`_sft_branch`, its convolutions through :func:`_conv`."""
    return _conv(branch[2], _conv(branch[0], feat, LRELU_SLOPE))


class StyleUNet(nn.Module):
    """GAGAvatar neural renderer ``[B, in_dim, S, S] -> [B, out_dim, out_size, out_size]`` in 0..1.

    Args:
        in_size: input side (must not exceed ``out_size``; smaller inputs are resized bilinearly).
        in_dim: input channels (32 splatted feature channels).
        out_dim: output channels (3, RGB).
        out_size: output side, a power of two in 8..1024 (512 for GAGAvatar).
    """

    def __init__(self, in_size: int = 512, in_dim: int = 32, out_dim: int = 3, out_size: int = 512):
        super().__init__()
        if out_size not in UNET_CHANNELS or out_size < 8 or in_size > out_size:
            raise ValueError(f"StyleUNet: unsupported sizes in {in_size} / out {out_size}")
        self.out_size = out_size
        log_size = int(math.log2(out_size))
        self.conv_body_first = nn.Conv2d(in_dim, UNET_CHANNELS[out_size], 1)
        ch = UNET_CHANNELS[out_size]
        self.conv_body_down = nn.ModuleList()
        for level in range(log_size, 2, -1):
            self.conv_body_down.append(ResBlock(ch, UNET_CHANNELS[2 ** (level - 1)], 0.5))
            ch = UNET_CHANNELS[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(ch, UNET_CHANNELS[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList()
        ch = UNET_CHANNELS[4]
        for level in range(3, log_size + 1):
            self.conv_body_up.append(ResBlock(ch, UNET_CHANNELS[2 ** level], 2.0))
            ch = UNET_CHANNELS[2 ** level]
        # In the official state dict, never used in forward (kept so strict loading works).
        self.toRGB = nn.ModuleList(nn.Conv2d(UNET_CHANNELS[2 ** level], 3, 1) for level in range(3, log_size + 1))
        self.final_linear = nn.Linear(UNET_CHANNELS[4] * 16, STYLE_DIM)
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(out_size, out_dim)
        self.condition_scale = nn.ModuleList(_sft_branch(UNET_CHANNELS[2 ** l]) for l in range(3, log_size + 1))
        self.condition_shift = nn.ModuleList(_sft_branch(UNET_CHANNELS[2 ** l]) for l in range(3, log_size + 1))
        # Convolution weights in the activations' layout: no per-call weight reorder (loading
        # copies into these tensors and keeps it).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        """``x [B, in_dim, S, S]`` -> ``[B, out_dim, out_size, out_size]`` in 0..1 (x's dtype).

        ``randomize_noise=False`` (default) uses the stored noise buffers: the output is a
        deterministic function of ``x``; ``True`` draws fresh noise per call and sample (official).
        """
        return self._forward(x, randomize_noise, None)

    def forward_with_internals(self, x: torch.Tensor, randomize_noise: bool = False) -> dict:
        """Like :meth:`forward`, also returning the intermediates (for tests and inspection).

        Returns a dict: ``image`` (as :meth:`forward`), ``style_code [B, 512]`` (``final_linear``
        output), ``style_latent [B, 512]`` (after the style MLP), ``cond_scale`` and
        ``cond_shift``: lists over the levels 8^2 .. S^2 of ``[B, 2 C_l, 8 * 2^l, 8 * 2^l]``.
        """
        internals: dict = {}
        internals["image"] = self._forward(x, randomize_noise, internals)
        return internals

    def _forward(self, x: torch.Tensor, randomize_noise: bool, internals: dict | None) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[-1] < self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        feat = F.leaky_relu_(self.conv_body_first(x), LRELU_SLOPE)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = _conv(self.final_conv, feat, LRELU_SLOPE)
        style_code = _linear_fp32(feat.reshape(feat.shape[0], -1), self.final_linear)
        conditions = []
        for block, skip, to_scale, to_shift in zip(self.conv_body_up, reversed(skips),
                                                   self.condition_scale, self.condition_shift):
            feat = block(feat + skip)
            conditions.append((_branch(to_scale, feat), _branch(to_shift, feat)))
        latent = self.stylegan_decoder.latent(style_code)
        if internals is not None:
            internals.update(style_code=style_code, style_latent=latent,
                             cond_scale=[c[0] for c in conditions], cond_shift=[c[1] for c in conditions])
        return torch.sigmoid(self.stylegan_decoder(latent, conditions, randomize_noise)).contiguous()
