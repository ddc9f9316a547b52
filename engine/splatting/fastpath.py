"""Opt-in fast paths for the per-frame work: reduced precision, compilation, host readback.

None of them is on by default; with the defaults the engine computes exactly what the official
code computes (fp32, eager).

* :data:`PRECISIONS` / :func:`autocast`: the StyleUNet's convolutions under bf16 autocast;
  :func:`resolve_precision` turns ``"auto"`` into bf16 where the hardware computes it natively.
  :class:`~..networks.style_unet.StyleUNet` keeps modulation, demodulation and the style MLP in float32
  whatever the autocast state (fp16/bf16 StyleGAN decoders otherwise collapse to a flat colour).
* :func:`compile_per_frame`: ``torch.compile`` with CUDA graphs on CUDA.
* :class:`PinnedReadback`: device -> host copies through reusable page-locked buffers.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
from torch import Tensor

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Neural-renderer precisions: ``fp32`` (official) and ``bf16`` (convolutions in bfloat16)."""


AUTO = "auto"
"""bf16 where the hardware has it (:func:`fast_bf16`), fp32 elsewhere."""


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively, so that the bf16 renderer is faster:
    CUDA GPUs of compute capability 8.0 or later (Ampere on), and CPUs with AMX. Elsewhere bf16 is
    emulated, or (AVX-512 BF16 without AMX: oneDNN's bf16 convolutions against the fp32 Winograd
    layers) slower than fp32: 872 against 420 ms per StyleUNet frame on a 2-core Xeon with
    AVX-512 BF16 and no AMX. Apple MPS is left at fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return "amx_bf16" in _cpu_flags()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``"auto"`` resolved for ``device``: ``"bf16"`` where :func:`fast_bf16`, else ``"fp32"``.

    The bf16 renderer stays within 45 dB of fp32 on varied inputs (tests/test_fast_path.py) and the
    splatted features are computed in fp32 either way, so ``auto`` only trades that much fidelity
    for speed, and only where it buys speed.
    """
    if precision == AUTO:
        return "bf16" if fast_bf16(device) else "fp32"
    check_precision(precision)
    return precision


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` unless ``precision`` is a key of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op context for ``fp32``)."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def compile_per_frame(fn: Callable[..., Tensor], device: torch.device) -> Callable[..., Tensor]:
    """``torch.compile`` a per-frame function returning one tensor, for inputs on ``device``.

    On CUDA the mode is ``"reduce-overhead"`` (the compiled graph is replayed as a CUDA graph;
    each call starts a new graph step and returns a clone, so earlier outputs are never
    overwritten by later calls). Elsewhere the default inductor mode. Shapes are static: each
    new input shape (e.g. batch size) compiles once more, at the first call with it (seconds
    to minutes).
    """
    if device.type != "cuda":
        return torch.compile(fn, dynamic=False)
    compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

    def run(*args) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args).clone()
    return run


class PinnedReadback:
    """Device -> host copies through page-locked staging buffers reused across frames.

    Calling it on CUDA tensors starts every copy asynchronously into a pinned buffer kept per
    argument position, shape and dtype (allocated on first use), then waits once for the
    current streams. Host tensors are returned as they are. The returned tensors ARE the
    staging buffers: they are overwritten by the next call with the same shapes, so consume
    (or copy) them first.
    """

    def __init__(self):
        self._buffers: dict[tuple[int, tuple[int, ...], torch.dtype], Tensor] = {}

    def _buffer(self, position: int, t: Tensor) -> Tensor:
        key = (position, tuple(t.shape), t.dtype)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return self._buffers[key]

    def __call__(self, *tensors: Tensor) -> list[Tensor]:
        """Host copies of ``tensors`` (any shapes), in order."""
        out = []
        streams = set()
        for i, t in enumerate(tensors):
            if t.device.type != "cuda":
                out.append(t.detach())
                continue
            out.append(self._buffer(i, t).copy_(t.detach(), non_blocking=True))
            streams.add(torch.cuda.current_stream(t.device))
        for stream in streams:
            stream.synchronize()
        return out
