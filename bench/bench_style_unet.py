"""Neural-renderer efficiency: the StyleUNet's FLOP rate against the machine's matmul rate, and
what the rest of a frame costs next to it (issue #10's CPU targets).

Usage::

    .venv/bin/python bench/bench_style_unet.py [--checkpoint GAGAvatar.pt --flame FLAME_with_eye.pt]
        [--device cpu|cuda] [--threads 2] [--rounds 5]

Without ``--checkpoint`` / ``--flame`` it uses synthetic official-format files (made once into
``.cache/bench-assets`` by ``engine.synthetic``); timings do not depend on the weights' values.

Everything is measured in one run, in ``--rounds`` rounds that take each measurement in turn
(so that a load on the machine hits all of them alike), keeping each one's best time:

* the matmul rate: one float32 ``2048 x 2048 @ 2048 x 2048`` product, GFLOP/s;
* the StyleUNet, batch 1 at 512^2, fp32 and bf16: its FLOPs are those of the official model's
  convolutions and linear layers (``torch.utils.flop_counter``, one multiply-add = 2 FLOPs), so
  ``rate = FLOPs / time`` and ``efficiency = rate / matmul rate`` (target: fp32 >= 0.85). The
  Winograd layers (:mod:`gagavatar.engine.networks.cpu_layers`) do fewer multiplications than
  these FLOPs count: the rate is the direct form's FLOPs over the time taken. ``fp32 direct``,
  every convolution oneDNN's direct form, is the baseline they are measured against;
* ``model.render`` of one frame per call (cached covariances, fp32), and the rest of it (rasterizer,
  Gaussian assembly, copies): each render call's time less that of the StyleUNet inside it (timed
  around its ``neural_renderer``), best of the rounds, as a ratio to the StyleUNet's best time
  (target <= 0.35). Both parts come from the same call, so a load that slows one call does not
  shift the difference as two best times taken from different rounds would. The rasterizer alone
  with the backend ``auto`` picks (on the CPU the compiled kernel, :mod:`engine.splatting.cpu_backend`)
  and with the torch backend.

``--buffers`` picks glibc's handling of large blocks (:mod:`engine.host_memory`): ``keep`` (what
the command lines do), ``default`` (glibc's own: every frame faults its buffers in afresh) or
``both`` (the default: one child process each, same arguments, both tables printed).

Prints a markdown table with the machine; ``--markdown FILE`` also writes it there.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from gagavatar.engine import load_flame, load_model
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.networks import cpu_layers
from gagavatar.engine.splatting.fastpath import resolve_precision
from gagavatar.engine.splatting.rasterize import resolve_backend

from bench_engine import DISTANCE, _sync, add_machine_arguments, device_name, setup_machine  # bench/

MATMUL_SIDE = 2048
ASSETS = Path(__file__).resolve().parent.parent / ".cache" / "bench-assets"


def synthetic_assets() -> tuple[Path, Path]:
    """``(GAGAvatar.pt, FLAME_with_eye.pt)`` synthetic official-format files in ``.cache/bench-assets``."""
    from gagavatar.engine import synthetic

    ckpt, flame = ASSETS / "GAGAvatar.pt", ASSETS / "FLAME_with_eye.pt"
    if not (ckpt.exists() and flame.exists()):
        synthetic.synthesize(ASSETS, seed=0)
    return ckpt, flame


def style_unet_flops(unet: torch.nn.Module, coarse: torch.Tensor) -> int:
    """FLOPs of one StyleUNet forward of ``coarse [1, 32, 512, 512]`` (convolutions and matmuls), as
    the official model computes them: counted under bf16 autocast, where the x2 upsampling is
    ``F.interpolate`` (the float32 CPU path makes it a transposed convolution, 0.5 GFLOP more)."""
    with FlopCounterMode(display=False) as counter, torch.autocast(coarse.device.type, dtype=torch.bfloat16):
        unet(coarse.clone().requires_grad_(True))   # autograd on: the counter's module tracker needs it
    return counter.get_total_flops()


def direct_convolutions(fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``fn(*args)`` with every convolution oneDNN's direct form (no Winograd layers: the baseline
    of :mod:`gagavatar.engine.networks.cpu_layers`)."""
    saved, cpu_layers.MIN_CHANNELS = cpu_layers.MIN_CHANNELS, math.inf
    try:
        return fn(*args, precision="fp32")
    finally:
        cpu_layers.MIN_CHANNELS = saved


def rounds(measurements: dict[str, Callable[[], object]], device: torch.device, n: int) -> dict[str, float]:
    """Best wall time in s of each measurement over ``n`` rounds (each round runs all in turn),
    after one untimed warm-up of each."""
    for fn in measurements.values():
        fn()
    best = {name: math.inf for name in measurements}
    for _ in range(n):
        for name, fn in measurements.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--flame", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--markdown", type=Path, help="also write the results, as markdown, to this file")
    add_machine_arguments(ap, buffers=("both", "keep", "default"))
    args = ap.parse_args()
    if args.buffers == "both":
        reports = []
        for mode in ("default", "keep"):
            run = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--buffers", mode, "--markdown", "-"],
                                 check=True, capture_output=True, text=True)
            reports.append(run.stdout)
        report = "\n".join(reports)
        print(report)
        if args.markdown:
            args.markdown.write_text(report)
        return
    device, kept = setup_machine(args)
    if args.checkpoint is None or args.flame is None:
        args.checkpoint, args.flame = synthetic_assets()

    model = load_model(args.checkpoint, device=device)
    flame = load_flame(args.flame, device=device)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 512, 512, generator=g).to(device)
    source = transform_from_pose(torch.tensor([0.0, 0.1, 0.0]), torch.tensor([0.0, 0.0, DISTANCE]))[None].to(device)
    view = transform_from_pose(torch.tensor([0.0, -0.2, 0.0]), torch.tensor([0.0, 0.0, DISTANCE]))[None].to(device)
    with torch.no_grad():
        avatar = model.reconstruct(image, source)
        avatar.covariances()
        vertices = flame(expression=torch.randn(1, 100, generator=g).to(device) * 0.5)
        coarse = model.splat(avatar, vertices, view).features
    flops = style_unet_flops(model.upsampler, coarse)
    a = torch.randn(MATMUL_SIDE, MATMUL_SIDE, generator=g).to(device)
    b = torch.randn(MATMUL_SIDE, MATMUL_SIDE, generator=g).to(device)
    bf16 = resolve_precision("auto", device) == "bf16"

    inside, rests = [], []   # the StyleUNet's time inside each render call; render - that, per call

    def neural_renderer(*a, **k):
        _sync(device)
        t0 = time.perf_counter()
        out = type(model).neural_renderer(model, *a, **k)
        _sync(device)
        inside.append(time.perf_counter() - t0)
        return out

    def render() -> None:
        _sync(device)
        t0 = time.perf_counter()
        model.render(avatar, vertices, view)
        _sync(device)
        rests.append(time.perf_counter() - t0 - inside[-1])

    model.neural_renderer = neural_renderer   # this instance's, timed
    with torch.no_grad():
        measurements = {
            "matmul": lambda: a @ b,
            "StyleUNet fp32": lambda: model.neural_renderer(coarse, precision="fp32"),
            "StyleUNet fp32 direct": lambda: direct_convolutions(model.neural_renderer, coarse),
            "StyleUNet bf16": lambda: model.neural_renderer(coarse, precision="bf16"),
            "render fp32": render,
            "rasterizer": lambda: model.splat(avatar, vertices, view),
            "rasterizer torch": lambda: model.splat(avatar, vertices, view, backend="torch"),
        }
        best = rounds(measurements, device, args.rounds)

    matmul_rate = 2 * MATMUL_SIDE ** 3 / best["matmul"]
    unet = best["StyleUNet fp32"]
    rest = min(rests[1:])   # the untimed warm-up's left out
    lines = [
        f"device: {device_name(device)}; torch {torch.__version__}; best of {args.rounds} rounds; "
        f"StyleUNet: {flops / 1e9:.1f} GFLOP per 512^2 frame; large buffers: "
        f"{'kept (engine.host_memory)' if kept else 'glibc default'}",
        "",
        "| measurement | ms | GFLOP/s | of the matmul rate | target |",
        "|---|---:|---:|---:|---|",
        f"| matmul fp32 {MATMUL_SIDE}^3 | {best['matmul'] * 1e3:.1f} | {matmul_rate / 1e9:.0f} | 1.00 | |",
    ]
    for p in ("fp32", "fp32 direct", "bf16"):
        t = best[f"StyleUNet {p}"]
        note = {"fp32": "≥ 0.85", "fp32 direct": f"x{t / unet:.2f} the time of fp32 (no Winograd layers)"}.get(
            p, f"x{unet / t:.2f} over fp32" + ("" if bf16 else " (auto keeps fp32 here)"))
        lines.append(f"| StyleUNet {p} | {t * 1e3:.1f} | {flops / t / 1e9:.0f} | {flops / t / matmul_rate:.2f} | {note} |")
    lines += [
        f"| model.render fp32, one frame | {best['render fp32'] * 1e3:.1f} | | | |",
        f"| rasterizer alone (backend {resolve_backend('auto', coarse)}) | {best['rasterizer'] * 1e3:.1f} | | | |",
        f"| rasterizer alone, torch backend | {best['rasterizer torch'] * 1e3:.1f} | | | |",
        "",
        f"rest of the frame (each render call less its StyleUNet, best): {rest * 1e3:.1f} ms = {rest / unet:.2f} x "
        f"the StyleUNet (target ≤ 0.35)",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown and str(args.markdown) != "-":
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
