"""Build a plain-layout training dataset from videos with our tracker.

For every video: :func:`~..tracking.video.track_video` gives one identity and per-frame
parameters, cameras, face boxes and landmarks in each frame's 512^2 head crop; up to
``frames_per_video`` tracked frames evenly spread over the video are kept (the paper samples
25-75 frames per video to avoid near-duplicates), cut to the same crops, matted to black (as the
official tracker's crops) and written with the matching sub-sequence::

    ROOT/<video name>/frames/000000.png ...
    ROOT/<video name>/sequence.npz
    ROOT/dataset.json            {"train": [...], "val": [...], "test": [...]} (the last videos
                                 given go to test, the ones before them to val)

The video is read once (:func:`~..tracking.video.read_meshes`); the tracker and the crops use the
same face meshes and :func:`~..tracking.video.crop_boxes`, and every kept frame is checked against
the sequence (its landmarks mapped into the crop must equal the sequence's), so crops and cameras
cannot silently disagree.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import Cancelled, GAGAvatarError
from ..flame import FLAME
from ..sequence import DrivingSequence, save_sequence
from .datasets import FRAMES_DIR, SEQUENCE_FILE, SPLITS_FILE

LANDMARK_TOLERANCE_PX = 1e-3
"""Largest disagreement (crop pixels) between the sequence's landmarks and the recomputed crops."""

Progress = Callable[[int, int], None]


def sample_frames(usable: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` indices of the true entries of ``usable``, evenly spread, first and last included."""
    idx = np.flatnonzero(usable)
    if len(idx) <= count:
        return idx
    return idx[np.unique(np.linspace(0, len(idx) - 1, count).round().astype(int))]


def subsequence(seq: DrivingSequence, keep: np.ndarray) -> DrivingSequence:
    """The frames ``keep`` of ``seq``."""
    k = torch.from_numpy(keep)
    pick = lambda t: None if t is None else t[k]  # noqa: E731
    return DrivingSequence(expression=seq.expression[k], jaw=seq.jaw[k], eyes=seq.eyes[k], transform=seq.transform[k],
                           fps=seq.fps, shape=seq.shape, bbox=pick(seq.bbox), landmarks=pick(seq.landmarks),
                           missing=seq.missing[k], source=seq.source)


def _read_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """RGB frames ``wanted`` of a video."""
    cap = cv2.VideoCapture(str(path))
    out, t = {}, 0
    try:
        while len(out) < len(wanted):
            ok, bgr = cap.read()
            if not ok:
                break
            if t in wanted:
                out[t] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t += 1
    finally:
        cap.release()
    if len(out) != len(wanted):
        raise GAGAvatarError(f"{path.name} returned fewer frames on a second read: re-encode the video")
    return out


def build_video(path: Path, folder: Path, flame: FLAME, frames_per_video: int, matting: bool = True,
                cancel: Callable[[], bool] | None = None) -> int:
    """Track one video and write its folder (see the module docstring); returns the frames written."""
    from ..tracking.crop import crop_image, to_crop
    from ..tracking.image import CROP_SIZE
    from ..tracking.landmarks import mesh_to_70
    from ..tracking.matting import SelfieMatte
    from ..tracking.video import crop_boxes, read_meshes, track_video
    meshes, fps = read_meshes(path, None, cancel)
    seq = track_video(path, flame=flame, cancel=cancel, meshes=(meshes, fps))
    found = ~seq.missing.numpy()
    boxes = crop_boxes(meshes)
    keep = sample_frames(found, frames_per_video)
    for t in keep:
        lmk = to_crop(mesh_to_70(meshes[t]), boxes[t], CROP_SIZE)
        if np.abs(lmk - seq.landmarks[t].numpy()).max() > LANDMARK_TOLERANCE_PX:
            raise GAGAvatarError(f"frame {t} of {path.name}: the tracker's crop could not be reproduced; "
                                 f"update gagavatar (dataset builder and tracker disagree)")
    images = _read_frames(path, set(int(t) for t in keep))
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / FRAMES_DIR).mkdir(parents=True)
    matte = SelfieMatte() if matting else None
    try:
        for i, t in enumerate(keep):
            if cancel is not None and cancel():
                raise Cancelled("dataset building cancelled")
            crop = crop_image(images[int(t)], boxes[t], CROP_SIZE)
            if matte is not None:
                crop, _ = matte(crop)
            rgb = (crop.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            if not cv2.imwrite(str(tmp / FRAMES_DIR / f"{i:06d}.png"), rgb[..., ::-1]):
                raise GAGAvatarError(f"cannot write frames into {tmp}: check the output folder")
        save_sequence(subsequence(seq, keep), tmp / SEQUENCE_FILE)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if matte is not None:
            matte.close()
    return len(keep)


def build_dataset(videos: Sequence[str | os.PathLike], root: str | os.PathLike, frames_per_video: int = 75,
                  val_videos: int = 0, test_videos: int = 0, flame: FLAME | None = None,
                  assets: str | os.PathLike | None = None, matting: bool = True, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None) -> Path:
    """Track ``videos`` into a plain dataset at ``root`` (see the module docstring); returns ``root``.

    ``flame`` defaults to ``FLAME_with_eye.pt`` from ``assets`` (or the asset folder). Video folder
    names are the file stems (made unique). ``progress(done, total)`` counts videos.
    """
    paths = [Path(v) for v in videos]
    for p in paths:
        if not p.is_file():
            raise GAGAvatarError(f"video {p} not found: check the path")
    if val_videos + test_videos >= len(paths) and (val_videos or test_videos):
        raise GAGAvatarError(f"{len(paths)} videos cannot fill {val_videos} val + {test_videos} test videos and "
                             f"leave some for training")
    if flame is None:
        from ..assets import asset_path
        from ..flame import load_flame
        flame = load_flame(asset_path("FLAME_with_eye.pt", assets))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for i, p in enumerate(paths):
        name, n = p.stem, 1
        while name in names:
            n += 1
            name = f"{p.stem}_{n}"
        names.append(name)
        build_video(p, root / name, flame, frames_per_video, matting, cancel)
        if progress is not None:
            progress(i + 1, len(paths))
    n_train = len(names) - val_videos - test_videos
    splits = {"train": names[:n_train], "val": names[n_train:n_train + val_videos],
              "test": names[n_train + val_videos:]}
    (root / SPLITS_FILE).write_text(json.dumps(splits, indent=1))
    return root
