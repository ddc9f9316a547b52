"""Benchmark the torch rasterizer on a GAGAvatar-like scene (180k Gaussians, 512^2, focal 12).

The scene is procedural: 5023 tiny Gaussians on a head-sized ellipsoid plus two 296^2 point
planes through the origin facing the camera at distance 9.3, scales 0.004-0.044 (skewed to the
small end: ``0.004 * 11^(u^4)``), 32 channels.
The baseline is a straightforward per-pixel loop (Python loop over pixels, each compositing its
depth-sorted Gaussians front to back with torch ops); it is timed on a subset of pixels in the
same run and extrapolated per pixel to the full image. On the CPU the compiled kernel (backend
``cpu``) is timed too, on CUDA gsplat.

Run: ``.venv/bin/python bench/bench_rasterizer.py [--device cpu|cuda] [--size 512]``.
"""
from __future__ import annotations

import argparse
import time

import torch

from gagavatar.engine.cameras import FOCAL, build_camera_matrices, transform_from_pose
from gagavatar.engine.splatting.covariance import covariance_from_scale_rotation
from gagavatar.engine.splatting.rasterize import render_gaussians
from gagavatar.engine.splatting.torch_backend import ALPHA_MAX, ALPHA_MIN, T_MIN, preprocess, tan_half_fov


def make_scene(device: torch.device, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """GAGAvatar-sized Gaussians (N = 5023 + 2 * 296^2) and a frontal camera at distance 9.3."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(5023, 3, generator=g)
    head = torch.nn.functional.normalize(d, dim=-1) * torch.tensor([0.75, 1.0, 0.85])
    lin = torch.linspace(-0.95, 0.95, 296)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    planes = [torch.stack([xx, yy, torch.full_like(xx, z)], -1).reshape(-1, 3) for z in (0.05, -0.05)]
    xyz = torch.cat([head] + planes)
    xyz = xyz + 0.01 * torch.randn(xyz.shape, generator=g)
    n = xyz.shape[0]
    gaussians = {
        "xyz": xyz,
        "colors": torch.rand(n, 32, generator=g),
        "opacities": torch.rand(n, 1, generator=g),
        "scales": 0.004 * 11.0 ** torch.rand(n, 3, generator=g) ** 4,   # 0.004-0.044, mostly tiny
        "rotations": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
    }
    gaussians = {k: v[None].to(device) for k, v in gaussians.items()}
    transform = transform_from_pose(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 9.3]])).to(device)
    return gaussians, transform


def baseline_per_pixel(gaussians: dict[str, torch.Tensor], transform: torch.Tensor, size: int,
                       n_pixels: int) -> float:
    """Seconds per pixel of a naive per-pixel loop (same preprocessing, tile rule ignored)."""
    cov = covariance_from_scale_rotation(gaussians["scales"][0], gaussians["rotations"][0])
    V, P, _ = build_camera_matrices(transform, FOCAL)
    tf = tan_half_fov(FOCAL)
    pre = preprocess(gaussians["xyz"][0], cov, V[0], P[0], tf, tf, size, size)
    order = torch.sort(pre["depth"], stable=True).indices
    order = order[pre["valid"][order]]
    xy, conic, op = pre["means2D"][order], pre["conic"][order], gaussians["opacities"][0, order, 0]
    colors = gaussians["colors"][0, order]
    gen = torch.Generator().manual_seed(1)
    pix = torch.randint(0, size * size, (n_pixels,), generator=gen)
    t0 = time.perf_counter()
    for p in pix.tolist():
        dx, dy = xy[:, 0] - p % size, xy[:, 1] - p // size
        power = -0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) - conic[:, 1] * dx * dy
        alpha = torch.clamp(op * torch.exp(power), max=ALPHA_MAX)
        hit = torch.nonzero((power <= 0) & (alpha >= ALPHA_MIN)).squeeze(1)
        T, out = 1.0, torch.zeros(colors.shape[1])
        for i, a in zip(hit.tolist(), alpha[hit].tolist()):
            if T * (1 - a) < T_MIN:
                break
            out += colors[i] * (a * T)
            T *= 1 - a
    return (time.perf_counter() - t0) / n_pixels


def timeit(fn, repeats: int, sync) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-pixels", type=int, default=64)
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gaussians, transform = make_scene(dev)
    size = (args.size, args.size)
    with torch.no_grad():
        r = render_gaussians(gaussians, transform, size=size, backend="torch")
        visible = int((r.radii > 0).sum())
        t_ours = timeit(lambda: render_gaussians(gaussians, transform, size=size, backend="torch"), args.repeats, sync)
        t_base = baseline_per_pixel({k: v.cpu() for k, v in gaussians.items()}, transform.cpu(), args.size,
                                    args.baseline_pixels) * args.size ** 2
    print(f"scene: {gaussians['xyz'].shape[1]} Gaussians ({visible} visible), {args.size}^2, device {dev}")
    print(f"torch rasterizer: {t_ours * 1e3:.1f} ms/frame ({1 / t_ours:.2f} FPS)")
    print(f"per-pixel loop baseline (CPU, {args.baseline_pixels} random pixels, extrapolated): "
          f"{t_base * 1e3:.0f} ms/frame ({1 / t_base:.4f} FPS); speed-up x{t_base / t_ours:.0f}")
    if dev.type == "cpu":
        with torch.no_grad():
            t_cpu = timeit(lambda: render_gaussians(gaussians, transform, size=size, backend="cpu"), args.repeats, sync)
        print(f"cpu kernel: {t_cpu * 1e3:.1f} ms/frame ({1 / t_cpu:.2f} FPS); torch/cpu x{t_ours / t_cpu:.1f}")
    if dev.type == "cuda":
        t_gs = timeit(lambda: render_gaussians(gaussians, transform, size=size, backend="gsplat"), args.repeats, sync)
        print(f"gsplat: {t_gs * 1e3:.1f} ms/frame ({1 / t_gs:.2f} FPS); torch/gsplat x{t_ours / t_gs:.1f}")


if __name__ == "__main__":
    main()
