"""Engine benchmark: reconstruction and per-frame driving, official-mode baseline vs fast modes.

Usage::

    .venv/bin/python bench/bench_engine.py --checkpoint GAGAvatar.pt --flame FLAME_with_eye.pt \
        [--device cpu|cuda] [--frames 4] [--threads 2]

Without real weights, make official-format files with the conformance kit (the timings do not
depend on the weights' values)::

    python ../shared/conformance/make_official_checkpoint.py /tmp/gaga.pt --seed 0
    python ../shared/conformance/make_flame_asset.py /tmp/flame.pt --seed 0

Prints, in one run, ms/frame, FPS and the ratio to the baseline of each mode, plus peak memory:

* ``baseline``: the official inference structure — fp32, one frame at a time, covariances
  rebuilt every frame (no caching), torch rasterizer.
* ``cached``: covariances of the static avatar computed once (they do not change per frame).
* ``batched``: cached + several frames per forward pass.
* on CUDA also ``gsplat`` and ``gsplat+bf16`` (StyleUNet under bf16 autocast, modulation in fp32),
  with the fidelity of each fast mode against the fp32 baseline (image PSNR, coarse max error).
"""
from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from gagavatar.engine import load_flame, load_model
from gagavatar.engine.avatar import Avatar
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.rasterize import render_gaussians


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeat):
    fn()  # warm-up (JIT, allocator)
    _sync(device)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _psnr(a, b):
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--flame", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=4, help="frames per batched call")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    model = load_model(args.checkpoint, device=device)
    flame = load_flame(args.flame, device=device)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 512, 512, generator=g).to(device)
    src = transform_from_pose(torch.tensor([0.0, 0.1, 0.0]), torch.tensor([0.0, 0.0, 9.3]))[None].to(device)
    t_rec, avatar = _time(lambda: model.reconstruct(image, src), device, args.repeat)
    print(f"reconstruction          {t_rec * 1e3:9.1f} ms")

    T = args.frames
    aa = torch.stack([torch.zeros(T), torch.linspace(-0.3, 0.3, T), torch.zeros(T)], -1)
    transforms = transform_from_pose(aa, torch.tensor([0.0, 0.0, 9.3]).expand(T, 3)).to(device)
    with torch.no_grad():
        verts = flame(expression=torch.randn(T, 100, generator=g).to(device) * 0.5)

    def uncached_splat(i, backend="torch"):
        gs = {k: v for k, v in avatar.gaussians.items()}
        gs["xyz"] = torch.cat([verts[i:i + 1], gs["xyz"][:, 5023:]], 1)
        return render_gaussians(gs, transforms[i:i + 1], backend=backend)

    def baseline():
        return [model.neural_renderer(uncached_splat(i).features) for i in range(T)]

    with torch.no_grad():
        t_r, r = _time(lambda: uncached_splat(0), device, args.repeat)
        t_n, _ = _time(lambda: model.neural_renderer(r.features), device, args.repeat)
        t_base, base_imgs = _time(baseline, device, 1)
    base = t_base / T
    print(f"  rasterizer (torch)    {t_r * 1e3:9.1f} ms")
    print(f"  neural renderer       {t_n * 1e3:9.1f} ms")
    rows = [("baseline", base, None)]

    cached_avatar = Avatar(avatar.gaussians, avatar.source_transform)
    with torch.no_grad():
        t, frames = _time(lambda: [model.render(cached_avatar, verts[i:i + 1], transforms[i:i + 1], backend="torch")
                                   for i in range(T)], device, 1)
    rows.append(("cached", t / T, min(_psnr(f.image, b) for f, b in zip(frames, base_imgs))))
    with torch.no_grad():
        t, fr = _time(lambda: model.render(cached_avatar, verts, transforms, backend="torch"), device, 1)
    rows.append((f"batched x{T}", t / T, min(_psnr(fr.image[i:i + 1], base_imgs[i]) for i in range(T))))
    if device.type == "cuda":
        with torch.no_grad():
            t, fr = _time(lambda: model.render(cached_avatar, verts, transforms, backend="gsplat"), device, args.repeat)
            rows.append(("gsplat", t / T, min(_psnr(fr.image[i:i + 1], base_imgs[i]) for i in range(T))))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                t, fr = _time(lambda: model.render(cached_avatar, verts, transforms, backend="gsplat"), device, args.repeat)
            rows.append(("gsplat+bf16", t / T, min(_psnr(fr.image[i:i + 1].float(), base_imgs[i]) for i in range(T))))

    print(f"\n{'mode':16s} {'ms/frame':>10s} {'FPS':>8s} {'x baseline':>11s} {'min PSNR dB':>12s}")
    for name, sec, psnr in rows:
        p = "-" if psnr is None else f"{psnr:.1f}"
        print(f"{name:16s} {sec * 1e3:10.1f} {1 / sec:8.2f} {base / sec:11.2f} {p:>12s}")
    print(f"\npeak memory {_peak_mb(device):.0f} MB ({'VRAM' if device.type == 'cuda' else 'RSS'})")


if __name__ == "__main__":
    main()
