"""Driving sequences: per-frame FLAME expression/jaw/eyes and camera, and their files.

Formats (chosen by suffix):

* ``.npz`` (ours, read with ``allow_pickle=False``): arrays ``expression [T,100]``, ``jaw [T,3]``,
  ``eyes [T,6]``, ``transform [T,3,4]``, ``fps []``, optional ``shape [300]``, ``bbox [T,4]``,
  ``landmarks [T,70,2]``, ``missing [T]`` (bool), ``source`` (a 0-d unicode array: the tracked
  photo or video) and ``start_time`` (seconds into the source video at frame 0: where its sound
  starts, for ``gagavatar render``).
* ``.pkl`` (the official tracker's ``optim.pkl`` / ``smoothed.pkl``): a dict ``frame key ->
  {shapecode, expcode, posecode (global 3 + jaw 3), eyecode, transform_matrix, bbox}``; frame keys
  are sorted naturally (``f2`` before ``f10``); read through :mod:`.safe_pickle`. The official files
  carry no frame rate: 25 fps is assumed.
* ``.pt`` (the official ``render_results/tracked/tracked.pt`` cache of ``inference.py``): a dict
  ``image name -> record`` with the keys above plus ``image`` / ``vis_image`` (ignored here), written
  by ``torch.save`` with numpy arrays. Read with ``torch.load(weights_only=True)``; numpy arrays,
  which that refuses, are then read from the archive's ``data.pkl`` through :mod:`.safe_pickle`.
  Written with tensors (loadable with ``weights_only=True`` anywhere).
"""
from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from .atomic import atomic_write, write_npz
from .errors import GAGAvatarError, UnsafeFileError
from .safe_load import load_torch
from .safe_pickle import safe_load
from .shapes import ShapeError, batch_size

__all__ = ["DrivingSequence", "save_sequence", "load_sequence"]

DEFAULT_FPS = 25.0
"""Frame rate assumed for official tracker files (they store none)."""
PathLike = Union[str, os.PathLike]
PER_FRAME = {"expression": (100,), "jaw": (3,), "eyes": (6,), "transform": (3, 4), "bbox": (4,), "landmarks": (70, 2)}
"""Per-frame arrays and their shape in one frame (a sequence holds ``[T, *shape]``)."""


@dataclass
class DrivingSequence:
    """Per-frame FLAME parameters and cameras (float32 tensors, ``T`` frames).

    The per-frame arrays (:data:`PER_FRAME`, and ``missing``) may be given for one frame without the
    frame axis (``expression [100]``, ``transform [3, 4]``, ...): they are stored as ``[1, ...]``.
    Wrong shapes, or frame counts that differ, raise a one-line :class:`~.shapes.ShapeError`.
    """

    expression: torch.Tensor
    jaw: torch.Tensor
    eyes: torch.Tensor
    transform: torch.Tensor
    fps: float = DEFAULT_FPS
    shape: Optional[torch.Tensor] = None
    bbox: Optional[torch.Tensor] = None
    landmarks: Optional[torch.Tensor] = None
    missing: Optional[torch.Tensor] = None
    source: str = ""
    start_time: float = 0.0

    def __post_init__(self) -> None:
        for name in ("expression", "jaw", "eyes", "transform", "shape", "bbox", "landmarks"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value,
                                                    dtype=torch.float32))
        if self.expression.dim() == 0 or self.expression.shape[0] == 0:
            raise GAGAvatarError("driving sequence: it has no frames: track a video or photo with a visible face")
        if self.shape is not None and self.shape.shape != (300,):
            raise ShapeError(f"driving sequence: shape must be [300], got {list(self.shape.shape)}")
        frames = {}
        for name, dims in PER_FRAME.items():
            value = getattr(self, name)
            if value is not None:
                if batch_size("driving sequence", name, value, dims, batch="T") is None:
                    setattr(self, name, value[None])  # one frame, given without the frame axis
                frames[name] = getattr(self, name).shape[0]
        if self.missing is not None:
            self.missing = torch.as_tensor(np.asarray(self.missing), dtype=torch.bool).reshape(-1)
            frames["missing"] = self.missing.shape[0]
        if len(set(frames.values())) > 1:
            counts = ", ".join(f"{name} {n}" for name, n in frames.items())
            raise ShapeError(f"driving sequence: frame counts differ ({counts}): re-track the source or fix the file")
        T = frames["expression"]
        if self.missing is None:
            self.missing = torch.zeros(T, dtype=torch.bool)
        for name in (*PER_FRAME, "shape"):
            value = getattr(self, name)
            bad = None if value is None else ~torch.isfinite(value)
            if bad is not None and bad.any():  # one NaN coefficient would make every FLAME vertex NaN
                where = "" if name == "shape" else f" (first at frame {int(bad.reshape(T, -1).any(-1).nonzero()[0])})"
                raise GAGAvatarError(f"driving sequence: {name} holds NaN or infinite values{where}: "
                                     "re-track the source or fix the file")
        self.start_time = float(self.start_time)
        self.fps = float(self.fps)
        if not self.fps > 0:
            raise GAGAvatarError(f"driving sequence: fps must be positive, got {self.fps}")

    @property
    def num_frames(self) -> int:
        """Number of frames ``T``."""
        return int(self.expression.shape[0])

    def __len__(self) -> int:
        return self.num_frames


def _natural_key(key: Any) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(key))]


def _records(seq: DrivingSequence) -> dict:
    out = {}
    for t in range(seq.num_frames):
        rec = {"expcode": seq.expression[t].numpy(),
               "posecode": np.concatenate([np.zeros(3, np.float32), seq.jaw[t].numpy()]),
               "eyecode": seq.eyes[t].numpy(), "transform_matrix": seq.transform[t].numpy()}
        if seq.shape is not None:
            rec["shapecode"] = seq.shape.numpy()
        if seq.bbox is not None:
            rec["bbox"] = seq.bbox[t].numpy()
        out[f"f_{t}"] = rec
    return out


def _from_records(data: Any, path: Path) -> DrivingSequence:
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise GAGAvatarError(f"{path} is not a tracker file (expected frame -> parameters records): re-run tracking")
    frames = [data[k] for k in sorted(data, key=_natural_key)]

    def stack(key: str, width: tuple) -> Optional[np.ndarray]:
        if not all(key in f for f in frames):
            return None
        return np.stack([np.asarray(f[key].cpu() if torch.is_tensor(f[key]) else f[key], np.float32).reshape(width)
                         for f in frames])
    try:
        pose = stack("posecode", (6,))
        exp, eyes, tr = stack("expcode", (100,)), stack("eyecode", (6,)), stack("transform_matrix", (3, 4))
        if pose is None or exp is None or tr is None:
            raise ValueError("missing keys")
        shape = stack("shapecode", (300,))
        if np.abs(pose[:, :3]).max() > 1e-6:
            warnings.warn(f"{path.name}: FLAME global poses in posecode are ignored (GAGAvatar keeps the head pose "
                          "in transform_matrix)", stacklevel=3)
        return DrivingSequence(expression=exp, jaw=pose[:, 3:], transform=tr,
                               eyes=eyes if eyes is not None else np.zeros((len(frames), 6), np.float32),
                               shape=None if shape is None else shape[0], bbox=stack("bbox", (4,)),
                               source=str(path))
    except ValueError as e:
        raise GAGAvatarError(f"{path} is not a readable tracker file ({e}): re-run tracking") from None


def _load_torch_records(path: Path) -> Any:
    """A ``torch.save``-written file's content: tensors via ``weights_only=True``, numpy arrays via safe_pickle."""
    try:
        return load_torch(path, "re-run tracking", "tracked.pt")
    except UnsafeFileError:
        pass  # numpy arrays (the official cache) or something unsafe: let the restricted unpickler decide
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(names) != 1:
                raise zipfile.BadZipFile("no data.pkl")
            payload = z.read(names[0])
    except zipfile.BadZipFile:
        raise GAGAvatarError(f"{path} is not a readable tracked.pt (not a torch archive): re-run tracking") from None
    return safe_load(io.BytesIO(payload))


SAVE_SUFFIXES = (".npz", ".pkl", ".pt")
"""The file types :func:`save_sequence` writes."""


def check_save_path(path: PathLike) -> Path:
    """``path`` as a :class:`Path` if :func:`save_sequence` can write it; else a one-line error (check
    before tracking, not after)."""
    path = Path(path)
    if path.suffix.lower() not in SAVE_SUFFIXES:
        raise GAGAvatarError(f"cannot write a driving sequence as {path.name}: use {', '.join(SAVE_SUFFIXES)}")
    return path


def save_sequence(seq: DrivingSequence, path: PathLike) -> None:
    """Write ``seq`` to ``path`` (``.npz``, ``.pkl`` or ``.pt``), atomically."""
    path = check_save_path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = {k: getattr(seq, k).numpy() for k in ("expression", "jaw", "eyes", "transform", "missing")}
        arrays.update({k: getattr(seq, k).numpy() for k in ("shape", "bbox", "landmarks") if getattr(seq, k) is not None})
        arrays["fps"] = np.asarray(seq.fps, np.float64)
        arrays["source"] = np.asarray(seq.source, dtype=np.str_)
        arrays["start_time"] = np.asarray(seq.start_time, np.float64)
        atomic_write(path, lambda f: write_npz(f, arrays))
    elif suffix == ".pkl":
        atomic_write(path, lambda f: pickle.dump(_records(seq), f, protocol=4))
    elif suffix == ".pt":
        recs = {k: {n: torch.from_numpy(np.asarray(v)) for n, v in r.items()} for k, r in _records(seq).items()}
        atomic_write(path, lambda f: torch.save(recs, f))


_NPZ_REMEDY = "make one with `gagavatar track`"


def _read_npz(path: Path) -> dict[str, Any]:
    """The members of a sequence ``.npz`` (never unpickled), the per-frame ones checked to be numbers.

    Raises:
        GAGAvatarError: empty, not a zip archive (or truncated), damaged, holding pickled objects,
            lacking ``expression``/``jaw``/``eyes``/``transform``, or holding arrays of non-numbers.
    """
    if path.stat().st_size == 0:
        raise GAGAvatarError(f"{path} is not a readable .npz sequence (it is empty): {_NPZ_REMEDY}")
    if not zipfile.is_zipfile(path):
        raise GAGAvatarError(f"{path} is not a readable .npz sequence (not a zip archive, or truncated): "
                             f"{_NPZ_REMEDY}")
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise GAGAvatarError(f"{path} holds pickled Python objects, which are never loaded (nothing in it "
                                 f"was run): {_NPZ_REMEDY}") from None
        raise GAGAvatarError(f"{path} is not a readable .npz sequence ({e}): {_NPZ_REMEDY}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise GAGAvatarError(f"{path} is not a readable .npz sequence ({e or type(e).__name__}): "
                             f"{_NPZ_REMEDY}") from None
    lacking = [k for k in ("expression", "jaw", "eyes", "transform") if k not in d]
    if lacking:
        raise GAGAvatarError(f"{path} lacks {', '.join(lacking)}: it is not a driving sequence ({_NPZ_REMEDY})")
    for k in ("expression", "jaw", "eyes", "transform", "shape", "bbox", "landmarks", "missing"):
        if k in d and not (isinstance(d[k], np.ndarray) and d[k].dtype.kind in "biuf"):
            kind = d[k].dtype if isinstance(d[k], np.ndarray) else type(d[k]).__name__
            raise GAGAvatarError(f"{path}: {k} is not an array of numbers ({kind}): {_NPZ_REMEDY}")
    return d


def _npz_number(d: dict[str, Any], key: str, default: float, path: Path) -> float:
    """``d[key]`` as one finite float (``default`` when absent)."""
    if key not in d:
        return default
    v = d[key]
    if not (isinstance(v, np.ndarray) and v.dtype.kind in "biuf" and v.size == 1 and np.isfinite(v).all()):
        raise GAGAvatarError(f"{path}: {key} is not one finite number: {_NPZ_REMEDY}")
    return float(v.reshape(()))


def load_sequence(path: PathLike) -> DrivingSequence:
    """Read a driving sequence written by :func:`save_sequence` or the official tracker."""
    path = Path(path)
    if not path.is_file():
        raise GAGAvatarError(f"driving sequence {path} not found: check the path")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        d = _read_npz(path)
        opt = {k: d[k] for k in ("shape", "bbox", "landmarks", "missing") if k in d}
        return DrivingSequence(expression=d["expression"], jaw=d["jaw"], eyes=d["eyes"], transform=d["transform"],
                               fps=_npz_number(d, "fps", DEFAULT_FPS, path), source=str(d.get("source", path)),
                               start_time=_npz_number(d, "start_time", 0.0, path), **opt)
    if suffix == ".pkl":
        return _from_records(safe_load(path), path)
    if suffix == ".pt":
        return _from_records(_load_torch_records(path), path)
    raise GAGAvatarError(f"cannot read a driving sequence from {path.name}: use .npz, .pkl or .pt")
