"""Self- and cross-reenactment evaluation on the paper's protocol, and its results table.

Protocol (paper Sec. 4.1): in each video of the evaluation split the first frame is the source
image and every other frame a driving/target frame. Self-reenactment compares the result with the
target frame (PSNR, SSIM, LPIPS) and drives with the target's tracked expression, jaw, eyes and
camera. Cross-reenactment (no ground truth) takes the next video's first frame as the source and
drives it with this video's frames, using the source's FLAME identity.

Built in: PSNR, SSIM (:mod:`.metrics`), LPIPS (when :class:`~.perceptual.LPIPS` weights are given).
Hooks for the networks the paper borrows, each a callable on ``[B, 3, S, S]`` images in 0..1:

* ``identity`` -> ``[B, D]`` face-recognition embeddings (ArcFace in the paper): CSIM = cosine
  similarity between the result and the source image;
* ``expression`` / ``pose`` -> ``[B, E]`` / ``[B, P]`` 3DMM coefficients (Deep3DFaceRecon in the
  paper): AED / APD = mean absolute difference between the result and the driving frame;
* ``keypoints`` -> ``[B, K, 2]`` landmarks (FAN in the paper): AKD = mean distance between the
  result's and the driving frame's (self-reenactment only, as in the paper).

Renders use the stored StyleUNet noise (deterministic), rendered at the model's render size.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import Cancelled
from . import metrics
from .datasets import PairDataset, TrackedFrames, evaluation_pairs
from .forward import encode, render, render_size

ImageFn = Callable[[torch.Tensor], torch.Tensor]
SELF_METRICS = ("PSNR", "SSIM", "LPIPS", "CSIM", "AED", "APD", "AKD")
CROSS_METRICS = ("CSIM", "AED", "APD")
HIGHER_IS_BETTER = {"PSNR": True, "SSIM": True, "LPIPS": False, "CSIM": True, "AED": False, "APD": False,
                    "AKD": False}
_DIGITS = {"PSNR": 2, "SSIM": 3, "LPIPS": 3, "CSIM": 3, "AED": 3, "APD": 3, "AKD": 3}


@dataclass
class Hooks:
    """Optional metric networks (see the module docstring); None = metric not computed."""

    identity: ImageFn | None = None
    expression: ImageFn | None = None
    pose: ImageFn | None = None
    keypoints: ImageFn | None = None


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def evaluate_reenactment(model: nn.Module, data: TrackedFrames, flame: nn.Module, split: str = "test",
                         cross: bool = False, lpips: nn.Module | None = None, hooks: Hooks = Hooks(),
                         batch_size: int = 8, max_frames: int | None = None, backend: str = "auto",
                         progress: Callable[[int, int], None] | None = None,
                         cancel: Callable[[], bool] | None = None) -> dict[str, float]:
    """Mean metrics over the target frames of ``split`` (see the module docstring).

    Args:
        model: a model with the training interface (:mod:`.forward`), on its device.
        data: the dataset; flame: CPU FLAME for the target vertices.
        cross: cross-reenactment instead of self-reenactment.
        max_frames: evaluate only the first that many target frames (protocol order).
    Returns:
        ``{metric: mean}`` for the metrics available in that mode, plus ``frames`` (count).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pairs = PairDataset(data, flame, render_size(model))
    jobs = evaluation_pairs(data, split, cross)
    total = sum(len(t) for _, t in jobs)
    if max_frames is not None:
        total = min(total, max_frames)
    scores: dict[str, list[float]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        scores.setdefault(name, []).extend(values.tolist())

    done = 0
    try:
        for source_key, targets in jobs:
            if done >= total:
                break
            src = pairs.source(source_key)
            g = encode(model, src["source_image"][None].to(device), src["source_transform"][None].to(device))
            src_embedding = hooks.identity(pairs.image(source_key)[None].to(device)) if hooks.identity else None
            for keys in _chunks(targets[:total - done], batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("evaluation cancelled")
                t = [pairs.target(k, data.tracks[source_key if cross else k].shape) for k in keys]
                batch = {n: torch.stack([s[n] for s in t]).to(device) for n in t[0]}
                out = render(model, g, batch["target_vertices"], batch["target_transform"], backend=backend)
                pred, gt = out.image.clamp(0, 1), batch["target_image"]
                if not cross:
                    add("PSNR", metrics.psnr(pred, gt))
                    add("SSIM", metrics.ssim(pred, gt))
                    if lpips is not None:
                        add("LPIPS", lpips(pred, gt))
                    if hooks.keypoints:
                        add("AKD", metrics.keypoint_distance(hooks.keypoints(pred), hooks.keypoints(gt)))
                if src_embedding is not None:
                    add("CSIM", metrics.cosine_similarity(hooks.identity(pred), src_embedding.expand(len(keys), -1)))
                if hooks.expression:
                    add("AED", metrics.mean_abs_difference(hooks.expression(pred), hooks.expression(gt)))
                if hooks.pose:
                    add("APD", metrics.mean_abs_difference(hooks.pose(pred), hooks.pose(gt)))
                done += len(keys)
                if progress is not None:
                    progress(done, total)
    finally:
        model.train(was_training)
    result = {k: metrics.mean_or_nan(v) for k, v in scores.items()}
    result["frames"] = done
    return result


def format_table(rows: dict[str, tuple[dict[str, float], dict[str, float]]]) -> str:
    """A Markdown table in the layout of the paper's Table 1.

    ``rows``: method name -> (self-reenactment results, cross-reenactment results); metrics that
    are absent or NaN print as ``-``.
    """
    def cell(results: dict[str, float], name: str) -> str:
        v = results.get(name)
        return "-" if v is None or math.isnan(v) else f"{v:.{_DIGITS[name]}f}"

    arrow = {True: "↑", False: "↓"}
    header = ["Method"] + [f"{m}{arrow[HIGHER_IS_BETTER[m]]}" for m in SELF_METRICS + CROSS_METRICS]
    groups = ["", "Self Reenactment"] + [""] * (len(SELF_METRICS) - 1) + ["Cross Reenactment"] + \
        [""] * (len(CROSS_METRICS) - 1)
    lines = ["| " + " | ".join(groups) + " |", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, (self_res, cross_res) in rows.items():
        cells = [name] + [cell(self_res, m) for m in SELF_METRICS] + [cell(cross_res, m) for m in CROSS_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
