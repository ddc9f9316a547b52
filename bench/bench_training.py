"""Training benchmark: the lifting-loss nearest-neighbour search and the training step.

Usage::

    .venv/bin/python bench/bench_training.py [--device cpu|cuda] [--plane 296] [--threads 2] \
        [--checkpoint GAGAvatar.pt --flame FLAME_with_eye.pt --batch 8]

Prints, in one run:

* nearest neighbours of 5,023 FLAME vertices among ``2 * plane^2`` lifted points: the baseline is
  the naive exact search (broadcast differences, 64 rows at a time); ours (``nearest_indices``,
  fused exact distances in 4M-distance chunks) with its ratio to the baseline; the inexact
  ``|a|^2 - 2ab + |b|^2`` search (what faiss' flat index computes) for reference, with the number
  of vertices whose neighbour it gets wrong;
* with ``--checkpoint`` (CUDA): seconds per GAGAvatar training iteration at ``--batch``, fp32
  (baseline, as the official training) and bf16 autocast, with the ratio.
"""
from __future__ import annotations

import argparse

import torch

from bench_engine import best_time  # bench/ is the script's folder, first on sys.path
from gagavatar.engine.training.losses import nearest_indices


def bench_nearest(device: torch.device, plane: int) -> None:
    gen = torch.Generator().manual_seed(0)
    src = (torch.randn(1, 5023, 3, generator=gen) * 0.4).to(device)
    dst = (torch.randn(1, 2 * plane * plane, 3, generator=gen) * 0.6).to(device)

    def naive():
        return torch.cat([((src[0, i:i + 64, None] - dst[0, None]) ** 2).sum(-1).argmin(1)
                          for i in range(0, src.shape[1], 64)])[None]

    def mm_trick():
        return torch.cdist(src, dst, compute_mode="use_mm_for_euclid_dist").argmin(-1)

    t_base, ref = best_time(naive, device, 1)
    t_ours, ours = best_time(lambda: nearest_indices(src, dst), device, 3)
    t_mm, approx = best_time(mm_trick, device, 3)
    print(f"nearest neighbours, 5023 x {dst.shape[1]} on {device.type}:")
    print(f"  baseline (naive exact)   {t_base * 1e3:9.1f} ms")
    print(f"  ours (exact, chunked)    {t_ours * 1e3:9.1f} ms   x{t_base / t_ours:.2f}   "
          f"identical: {torch.equal(ours, ref)}")
    print(f"  mm trick (inexact)       {t_mm * 1e3:9.1f} ms   x{t_base / t_mm:.2f}   "
          f"wrong neighbours: {int((approx != ref).sum())}")


def bench_step(args, device: torch.device) -> None:
    from gagavatar.engine.training.config import Config
    from gagavatar.engine.training.datasets import TrackedFrames
    from gagavatar.engine.training.trainer import Trainer
    from gagavatar.engine.flame import load_flame
    from gagavatar.engine.cameras import transform_from_pose
    from gagavatar.engine.model import resize_for_dino
    B = args.batch
    flame = load_flame(args.flame)
    gen = torch.Generator().manual_seed(0)
    tr = transform_from_pose(torch.zeros(B, 3), torch.tensor([0.0, 0.0, 9.5]).expand(B, 3))
    batch = {"source_image": resize_for_dino(torch.rand(B, 3, 512, 512, generator=gen)), "source_transform": tr,
             "target_image": torch.rand(B, 3, 512, 512, generator=gen), "target_transform": tr,
             "target_vertices": flame(expression=torch.randn(B, 100, generator=gen) * 0.5),
             "target_bbox": torch.tensor([[0.3, 0.3, 0.7, 0.7]]).expand(B, 4)}
    def seconds_per_step(precision: str) -> float:
        cfg = Config()
        cfg.model.init, cfg.train.device, cfg.train.precision = args.checkpoint, device.type, precision
        empty = TrackedFrames({}, None, {}, {}, {"train": []}, ".", "plain")
        trainer = Trainer(cfg, data=empty, flame=flame)
        return best_time(lambda: trainer.step(batch), device, 3)[0]

    times = {}
    for precision in ("fp32", "bf16"):
        times[precision] = seconds_per_step(precision)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"GAGAvatar training step, batch {B} on {device.type}:")
    print(f"  baseline (fp32)          {times['fp32']:9.3f} s/it")
    print(f"  bf16 autocast            {times['bf16']:9.3f} s/it   x{times['fp32'] / times['bf16']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--plane", type=int, default=296, help="lifting plane side (2 * plane^2 points)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--checkpoint", help="GAGAvatar.pt: also time full training steps")
    p.add_argument("--flame", help="FLAME_with_eye.pt (with --checkpoint)")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench_nearest(device, args.plane)
    if args.checkpoint:
        if not args.flame:
            p.error("--checkpoint needs --flame")
        bench_step(args, device)


if __name__ == "__main__":
    main()
