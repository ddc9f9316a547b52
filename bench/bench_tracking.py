"""Tracking benchmark on CPU: landmarks, the FLAME fit alone, track_image and track_video (ms per frame).

Usage::

    .venv/bin/python bench/bench_tracking.py --flame FLAME_with_eye.pt [--frames 48] [--threads 2]

Without the real FLAME, the project's synthetic one has the same sizes (timings do not depend on
its values)::

    .venv/bin/gagavatar assets synthesize /tmp/gaga-assets --seed 0   # FLAME_with_eye.pt in there

The clip is the public-domain astronaut photo (scikit-image) shaken by small random motions.
The baseline is the fit step computed the straightforward way (the whole FLAME mesh, then its
landmarks, every iteration); the ratio shows what the landmark-only model saves.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch

from bench_engine import best_time  # bench/ is the script's folder, first on sys.path
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.flame import load_flame
from gagavatar.engine.tracking import fit_flame, track_image, track_video
from gagavatar.engine.tracking.crop import crop_box, head_box, to_crop
from gagavatar.engine.tracking.fit import contour_yaw, project
from gagavatar.engine.tracking.flame_landmarks import LandmarkModel
from gagavatar.engine.tracking.image import find_face
from gagavatar.engine.tracking.landmarks import FaceLandmarker, mesh_to_70


def _clip(path: Path, frames: int, size: int = 512) -> None:
    rng = np.random.default_rng(0)
    img = skimage.data.astronaut()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (size, size))
    for _ in range(frames):
        M = cv2.getRotationMatrix2D((256, 256), rng.uniform(-4, 4), rng.uniform(0.97, 1.03))
        M[:, 2] += rng.uniform(-10, 10, 2)
        frame = cv2.resize(cv2.warpAffine(img, M, (512, 512)), (size, size), interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _best(fn, repeat: int = 3) -> float:
    """Best wall time in s of ``repeat`` runs (no warm-up: the first run is part of what is timed)."""
    return best_time(fn, torch.device("cpu"), repeat, warmup=False)[0]


def _step_time(flame, batch: int, full_mesh: bool, iterations: int = 30) -> float:
    """ms per optimisation step (forward + backward of the projected landmarks)."""
    model = LandmarkModel(flame)
    params = [torch.zeros(batch, n, requires_grad=True) for n in (300, 100, 3, 6)]
    aa, trans = torch.zeros(batch, 3), torch.tensor([[0.0, 0.0, 9.5]]).expand(batch, 3)
    corners = model.corners(contour_yaw(aa), batch)

    def step():
        shape, expression, jaw, eyes = params
        if full_mesh:
            verts = flame(shape=shape, expression=expression, pose=torch.cat([torch.zeros_like(jaw), jaw], 1), eyes=eyes)
            lmk = flame.landmarks(verts, yaw=contour_yaw(aa))
        else:
            lmk = model(corners, torch.cat([shape, expression], 1), jaw, eyes)
        project(lmk, transform_from_pose(aa, trans)).square().sum().backward()
    step()
    return _best(lambda: [step() for _ in range(iterations)]) / iterations * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flame", required=True)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flame = load_flame(args.flame)
    photo = skimage.data.astronaut()

    print(f"CPU, {args.threads} threads, torch {torch.__version__}")
    for batch in (1, 32):
        base, ours = _step_time(flame, batch, True), _step_time(flame, batch, False)
        print(f"fit step, batch {batch:2d}: full mesh {base:7.2f} ms, landmark model {ours:6.2f} ms "
              f"(x{base / ours:.1f})")
    with FaceLandmarker() as finder:
        find_face(photo, finder)
        ms = _best(lambda: find_face(photo, finder)) * 1000
    print(f"face detection + 478-point mesh (512^2 photo): {ms:.1f} ms")
    with FaceLandmarker() as finder:
        mesh, _ = find_face(photo, finder)
    lmk = torch.from_numpy(to_crop(mesh_to_70(mesh), crop_box(head_box(mesh))))[None]
    ms = _best(lambda: fit_flame(lmk, flame)) * 1000
    print(f"fit_flame, one image, 300 iterations: {ms:.0f} ms")
    lmk32 = lmk.expand(32, -1, -1) + torch.randn(32, 70, 2)
    fit = fit_flame(lmk32[:1], flame)
    ms = _best(lambda: fit_flame(lmk32, flame, shape=fit.shape[0], init=fit, iterations=100), 1) * 1000
    print(f"fit_flame, video chunk of 32 (fixed identity, warm start, 100 iterations): {ms / 32:.1f} ms/frame")
    ms = _best(lambda: track_image(photo, flame), 1) * 1000
    print(f"track_image (load, detect, crop, matte, fit, overlay): {ms:.0f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        _clip(clip, args.frames)
        t0 = time.perf_counter()
        seq = track_video(clip, flame)
        ms = (time.perf_counter() - t0) * 1000
    print(f"track_video, {seq.num_frames} frames of 512^2: {ms / seq.num_frames:.1f} ms/frame "
          f"({ms / 1000:.1f} s in all, {int(seq.missing.sum())} frames without a face)")


if __name__ == "__main__":
    main()
