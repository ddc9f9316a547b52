"""Engine benchmark: reconstruction and per-frame driving, official-mode baseline vs fast modes.

Usage::

    .venv/bin/python bench/bench_engine.py --checkpoint GAGAvatar.pt --flame FLAME_with_eye.pt \
        [--device cpu|cuda] [--frames 4] [--repeat 3] [--threads 2] [--markdown results.md]

Without real weights, make synthetic official-format files (the timings do not depend on the
weights' values)::

    .venv/bin/gagavatar assets synthesize /tmp/gaga-assets --seed 0

Prints, in one run, a markdown table with one row per mode: reconstruction time (until the
avatar is ready to drive), drive ms/frame, FPS, ratio to the baseline, peak memory during the
drive (RSS high-water mark on CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and fidelity
against the fp32 baseline of the same run (minimum image PSNR over the frames, maximum absolute
error of the 32 coarse channels). Modes:

* ``baseline``: the official inference structure: fp32, one frame per call, covariances
  rebuilt every frame (no caching), torch rasterizer.
* ``cached``: covariances of the static avatar computed once, at reconstruction.
* ``cached +bf16``: one frame per call with the StyleUNet under bf16 autocast (modulation and
  demodulation stay fp32): what ``precision="auto"`` picks where the hardware has bf16 (Blender's
  viewport).
* ``batched xT``: cached + all T frames in one call; ``+bf16`` as above.
* CUDA only: the same with gsplat, one frame per call and batched, and ``+graphs`` (the neural
  renderer through ``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs; compiled once
  per batch size during the warm-up, which is not timed). Also the number of host syncs while
  driving in the last mode (``torch.cuda.set_sync_debug_mode``).

Also the parts of one frame (rasterizer, neural renderer fp32/bf16) and the peak memory of the
whole run. Each drive is timed as the best of ``--repeat`` runs after one warm-up run.
"""
from __future__ import annotations

import argparse
import math
import platform
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gagavatar.engine import load_flame, load_model
from gagavatar.engine.avatar import N_EXPRESSION, Avatar
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.host_memory import keep_large_buffers
from gagavatar.engine.model import GAGAvatar
from gagavatar.engine.splatting.rasterize import render_gaussians

DISTANCE = 9.3
"""Camera distance of the benchmark frames (FLAME x5 units, the tracker's typical value)."""


@dataclass(frozen=True)
class Mode:
    """One way of driving: ``batch`` frames per call (1 = the per-sample loop)."""

    name: str
    batch: int
    cached: bool = True
    backend: str = "torch"
    precision: str = "fp32"
    compiled: bool = False


@dataclass
class Result:
    """Measurements of one mode; times in seconds, memory in MiB, ``psnr`` in dB."""

    mode: Mode
    reconstruction: float
    per_frame: float
    peak_mib: float
    psnr: float
    coarse_max_err: float


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of ``image`` against ``reference`` (same shape, values in 0..1; inf when equal)."""
    mse = torch.mean((image.double() - reference.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def max_abs_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest ``|x - reference|`` over all elements."""
    return (x.double() - reference.double()).abs().max().item()


def fidelity(frames: list[tuple[torch.Tensor, torch.Tensor]], reference: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[float, float]:
    """``(min image PSNR dB, max coarse abs error)`` over frames of ``(image [1, 3, H, W], coarse [1, 32, H, W])``."""
    return (min(psnr(f[0], r[0]) for f, r in zip(frames, reference, strict=True)),
            max(max_abs_error(f[1], r[1]) for f, r in zip(frames, reference, strict=True)))


def modes_for(device: torch.device, frames: int, gsplat: bool = True) -> list[Mode]:
    """The modes run on ``device``, baseline first; batched modes drive all ``frames`` at once.

    The CPU adds the compiled splatting kernel (backend ``cpu``); CUDA adds the compiled (CUDA-graph)
    neural renderer and, with ``gsplat``, the gsplat modes.
    """
    T = frames
    modes = [Mode("baseline", 1, cached=False), Mode("cached", 1), Mode("cached +bf16", 1, precision="bf16"),
             Mode(f"batched x{T}", T), Mode(f"batched x{T} +bf16", T, precision="bf16")]
    if device.type == "cpu":   # the compiled CPU splatting kernel (what auto picks there)
        modes += [Mode("cpu kernel", 1, backend="cpu"), Mode("cpu kernel +bf16", 1, backend="cpu", precision="bf16"),
                  Mode(f"cpu kernel x{T} +bf16", T, backend="cpu", precision="bf16")]
    if device.type != "cuda":
        return modes
    modes.append(Mode(f"batched x{T} +bf16 +graphs", T, precision="bf16", compiled=True))
    if gsplat:
        for b in (1, T):
            modes += [Mode(f"gsplat x{b}", b, backend="gsplat"),
                      Mode(f"gsplat x{b} +bf16", b, backend="gsplat", precision="bf16"),
                      Mode(f"gsplat x{b} +bf16 +graphs", b, backend="gsplat", precision="bf16", compiled=True)]
    return modes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeat: int, warmup: bool = True) -> tuple[float, object]:
    """``(best wall time in s over repeat runs, last output)``, after one untimed warm-up run."""
    if warmup:
        fn()
    _sync(device)
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak-memory count (CUDA allocator stats, or the process's RSS high-water mark)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    """Peak since :func:`reset_peak_memory`: ``max_memory_allocated`` on CUDA, VmHWM (RSS) elsewhere, MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from ``/proc/cpuinfo`` with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    return f"{model.group(1) if model else platform.processor()}, {torch.get_num_threads()} threads"


def uncached_frame(model: GAGAvatar, avatar: Avatar, vertices: torch.Tensor, transform: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Official-mode frame: covariances rebuilt from scales/rotations, torch rasterizer, fp32.

    ``vertices [1, 5023, 3]``, ``transform [1, 3, 4]`` -> ``(image [1, 3, 512, 512], coarse [1, 32, 512, 512])``.
    """
    g = dict(avatar.gaussians)
    g["xyz"] = torch.cat([vertices, g["xyz"][:, N_EXPRESSION:]], 1)
    coarse = render_gaussians(g, transform, backend="torch").features
    return model.neural_renderer(coarse), coarse


def drive(model: GAGAvatar, avatar: Avatar, mode: Mode, vertices: torch.Tensor, transforms: torch.Tensor
          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Render every frame of ``vertices [T, 5023, 3]`` / ``transforms [T, 3, 4]`` in ``mode``.

    Returns ``(image [1, 3, 512, 512], coarse [1, 32, 512, 512])`` per frame.
    """
    out = []
    for i in range(0, vertices.shape[0], mode.batch):
        v, t = vertices[i:i + mode.batch], transforms[i:i + mode.batch]
        if not mode.cached:
            out.append(uncached_frame(model, avatar, v, t))
            continue
        f = model.render(avatar, v, t, backend=mode.backend, precision=mode.precision, compiled=mode.compiled)
        out += [(f.image[j:j + 1], f.coarse[j:j + 1]) for j in range(f.image.shape[0])]
    return out


def host_syncs(fn: Callable[[], object]) -> int:
    """Number of host-device synchronisations CUDA's sync debug mode reports during ``fn()``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def table(results: list[Result], device: torch.device) -> str:
    """Markdown table of ``results`` (the first one is the baseline)."""
    mem = "peak VRAM MiB" if device.type == "cuda" else "peak RSS MiB"
    base = results[0].per_frame
    lines = [f"| mode | reconstruction ms | ms/frame | FPS | x baseline | {mem} | image PSNR dB (min) | coarse max abs err |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.mode.name} | {r.reconstruction * 1e3:.1f} | {r.per_frame * 1e3:.2f} | {1 / r.per_frame:.2f} "
                     f"| {base / r.per_frame:.2f} | {r.peak_mib:.0f} | {r.psnr:.1f} | {r.coarse_max_err:.2e} |")
    return "\n".join(lines)


def add_machine_arguments(ap: argparse.ArgumentParser, buffers: tuple[str, ...] = ("keep", "default")) -> None:
    """``--device``, ``--threads`` and ``--buffers`` (the first of ``buffers`` is the default)."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--buffers", choices=buffers, default=buffers[0],
                    help="glibc's large blocks: kept between frames (engine.host_memory, as the command lines "
                         "do), glibc's default" + (", or both in turn" if "both" in buffers else ""))


def setup_machine(args: argparse.Namespace) -> tuple[torch.device, bool]:
    """Apply :func:`add_machine_arguments`' options and turn TF32 off: ``(device, buffers kept)``."""
    kept = keep_large_buffers() if args.buffers == "keep" else False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device(args.device), kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--flame", required=True)
    ap.add_argument("--frames", type=int, default=4, help="frames driven per mode (= batch of the batched modes)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", type=Path, help="also write the results, as markdown, to this file")
    ap.add_argument("--no-gsplat", action="store_true", help="leave out the gsplat modes (CUDA)")
    add_machine_arguments(ap)
    args = ap.parse_args()
    device, kept = setup_machine(args)
    header = (f"device: {device_name(device)}; torch {torch.__version__}; {args.frames} frames at 512^2, "
              f"best of {args.repeat} after a warm-up; large CPU buffers: {'kept' if kept else 'glibc default'}")
    print(header, flush=True)

    model = load_model(args.checkpoint, device=device)
    flame = load_flame(args.flame, device=device)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 512, 512, generator=g).to(device)
    src = transform_from_pose(torch.tensor([0.0, 0.1, 0.0]), torch.tensor([0.0, 0.0, DISTANCE]))[None].to(device)
    T = args.frames
    aa = torch.stack([torch.zeros(T), torch.linspace(-0.3, 0.3, T), torch.zeros(T)], -1)
    transforms = transform_from_pose(aa, torch.tensor([0.0, 0.0, DISTANCE]).expand(T, 3)).to(device)
    with torch.no_grad():
        verts = flame(expression=torch.randn(T, 100, generator=g).to(device) * 0.5)

    def reconstruct(cached: bool) -> Avatar:
        avatar = model.reconstruct(image, src)
        if cached:
            avatar.covariances()
        return avatar

    recon = {c: best_time(lambda: reconstruct(c), device, args.repeat) for c in (False, True)}
    avatar = recon[True][1]
    with torch.no_grad():
        coarse = uncached_frame(model, avatar, verts[:1], transforms[:1])[1]
        backends = ("torch", "gsplat") if device.type == "cuda" and not args.no_gsplat else ("torch", "cpu")
        parts = [(f"rasterizer {b}", lambda b=b: model.splat(avatar, verts[:1], transforms[:1], backend=b))
                 for b in backends]
        parts += [(f"neural renderer {p}", lambda p=p: model.neural_renderer(coarse, precision=p)) for p in ("fp32", "bf16")]
        part_lines = []
        for name, fn in parts:
            part_lines.append(f"- {name}: {best_time(fn, device, args.repeat)[0] * 1e3:.1f} ms")
            print(part_lines[-1], flush=True)

    setup_peak = peak_memory_mib(device)  # model load, reconstruction and the parts above
    modes = modes_for(device, T, gsplat=not args.no_gsplat)
    results, reference = [], None
    for mode in modes:
        reset_peak_memory(device)
        with torch.no_grad():
            t, frames = best_time(lambda: drive(model, avatar, mode, verts, transforms), device, args.repeat)
        if reference is None:
            reference = frames
        results.append(Result(mode, recon[mode.cached][0], t / T, peak_memory_mib(device), *fidelity(frames, reference)))
        print(f"- {mode.name}: {t / T * 1e3:.1f} ms/frame", flush=True)
    report = (f"{header}\n\n{table(results, device)}\n\nparts of one frame (batch 1, cached covariances):\n"
              + "\n".join(part_lines)
              + f"\n\npeak memory of the whole run (loading and reconstruction included): "
              f"{max([setup_peak] + [r.peak_mib for r in results]):.0f} MiB\n")
    if device.type == "cuda":
        with torch.no_grad():
            syncs = host_syncs(lambda: drive(model, avatar, modes[-1], verts, transforms))
        report += f"\nhost syncs while driving the {T} frames in mode `{modes[-1].name}`: {syncs}\n"
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
