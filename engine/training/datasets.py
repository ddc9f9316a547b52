"""Training and evaluation data: tracked video frames, in the official layout or ours.

Official layout (the GAGAvatar tracker's output, as ``core/data/loader_track.py`` reads it)::

    ROOT/img_lmdb/        LMDB: key "<video>_<frame>" -> JPEG/PNG bytes (or a torch-saved uint8
                          [3, H, W] tensor) of the 512^2 head crop on black
    ROOT/optim.pkl        {key: {shapecode, expcode, posecode, eyecode, transform_matrix, bbox}}
    ROOT/dataset.json     {"train": [keys], "val": [keys], "test": [keys]}

The video of a key is the part before the first ``_`` (the second part for keys starting with
``img_``); frames sort by the number after the last ``_``. Reading it needs the ``lmdb`` package.

Plain layout (ours; :func:`~.build.build_dataset` writes it from videos)::

    ROOT/<video>/sequence.npz       a DrivingSequence (shape, expression, jaw, eyes, transform,
                                    bbox or landmarks; frames flagged ``missing`` are skipped)
    ROOT/<video>/frames/*.png|jpg   its frames (512^2 crops), one per sequence frame, in name order
    ROOT/dataset.json               optional {"train": [videos], "val": [...], "test": [...]}

Without ``dataset.json`` every frame belongs to every split. Boxes are normalised
``x0, y0, x1, y1`` of the crop; a sequence without ``bbox`` uses its landmarks' bounding box.

Pairs: a training pair is a target frame and another frame of the same video as the source
(:class:`TrainPairSampler`, deterministic in ``(seed, iteration)`` so runs resume exactly);
evaluation uses each video's first frame as the source of its other frames (self-reenactment)
or the next video's first frame (cross-reenactment, as the official ``cross_id``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import GAGAvatarError
from ..model import resize_for_dino
from ..safe_load import load_torch
from ..safe_pickle import safe_load
from ..sequence import load_sequence

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SEQUENCE_FILE = "sequence.npz"
FRAMES_DIR = "frames"
SPLITS_FILE = "dataset.json"


@dataclass
class FrameTrack:
    """Tracked parameters of one frame (float32 numpy): ``shape [300]``, ``expression [100]``,
    ``pose [6]`` (global + jaw), ``eyes [6]``, ``transform [3, 4]``, ``bbox [4]`` (normalised)."""

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    eyes: np.ndarray
    transform: np.ndarray
    bbox: np.ndarray


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def official_video_id(key: str) -> str:
    """Video of an official frame key (``loader_track.get_video_id``)."""
    parts = key.split("_")
    return parts[1] if parts[0] == "img" and len(parts) > 1 else parts[0]


def _decode(payload: bytes, key: str) -> np.ndarray:
    """JPEG/PNG bytes, or a torch-saved ``[3, H, W]`` tensor -> ``[H, W, 3]`` uint8 RGB."""
    import cv2
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if img is not None:
        return np.ascontiguousarray(img[..., ::-1])
    try:
        t = load_torch(payload, "rebuild the dataset", "tensor")
    except GAGAvatarError as err:
        raise GAGAvatarError(f"image {key} in the dataset is neither an image file nor a tensor: "
                             f"rebuild the dataset") from err
    if not torch.is_tensor(t) or t.dim() != 3 or t.shape[0] != 3:
        raise GAGAvatarError(f"image {key} in the dataset is not a [3, H, W] tensor: rebuild the dataset")
    t = t if t.dtype == torch.uint8 else t.float().clamp(0, 255).round().to(torch.uint8)
    return t.permute(1, 2, 0).contiguous().numpy()


class LMDBImages:
    """Frames in an LMDB (opened lazily, once per process, read-only)."""

    def __init__(self, path: Path):
        if importlib.util.find_spec("lmdb") is None:
            raise GAGAvatarError("the official dataset layout stores frames in LMDB: `pip install lmdb` "
                                 "(or convert it to the plain layout)")
        self.path = path
        self._env = None
        self._pid = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_env": None, "_pid": None}

    def __getitem__(self, key: str) -> np.ndarray:
        import lmdb
        if self._env is None or self._pid != os.getpid():
            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, meminit=False)
            self._pid = os.getpid()
        with self._env.begin(write=False) as txn:
            payload = txn.get(key.encode())
        if payload is None:
            raise GAGAvatarError(f"frame {key} is listed in the dataset but not in {self.path}: rebuild the dataset")
        return _decode(bytes(payload), key)


class FileImages:
    """Frames stored as image files, ``key -> path``."""

    def __init__(self, paths: Mapping[str, Path]):
        self.paths = dict(paths)

    def __getitem__(self, key: str) -> np.ndarray:
        path = self.paths[key]
        try:
            return _decode(path.read_bytes(), str(path))
        except OSError as err:
            raise GAGAvatarError(f"cannot read frame {path} ({err.strerror}): check the dataset folder") from err


@dataclass
class TrackedFrames:
    """A tracked dataset: ``tracks`` and ``images`` by frame key, ``videos`` (video -> keys in frame
    order), ``video_of`` (key -> video) and ``splits`` (split -> keys)."""

    tracks: dict[str, FrameTrack]
    images: LMDBImages | FileImages
    videos: dict[str, list[str]]
    video_of: dict[str, str]
    splits: dict[str, list[str]]
    root: Path
    layout: str

    def split_videos(self, split: str) -> dict[str, list[str]]:
        """Videos of ``split`` with their frames of that split, in frame order (sorted by video)."""
        if split not in self.splits:
            raise GAGAvatarError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        keys = set(self.splits[split])
        out: dict[str, list[str]] = {}
        for video in sorted(self.videos):
            frames = [k for k in self.videos[video] if k in keys]
            if frames:
                out[video] = frames
        return out


def _read_splits(root: Path, known: Sequence[str], expand) -> dict[str, list[str]]:
    path = root / SPLITS_FILE
    if not path.is_file():
        return {s: list(known) for s in SPLITS}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GAGAvatarError(f"{path} is not readable JSON ({err}): fix or delete it") from err
    if not isinstance(data, dict):
        raise GAGAvatarError(f"{path} must map split names to lists: fix or delete it")
    known_set = set(known)
    splits = {}
    for s in SPLITS:
        entries = data.get(s, [])
        keys = [k for e in entries for k in expand(str(e))]
        unknown = [k for k in keys if k not in known_set]
        if unknown:
            raise GAGAvatarError(f"{path} lists {len(unknown)} unknown entries in {s!r} (e.g. {unknown[0]}): "
                                 f"fix dataset.json")
        splits[s] = keys
    return splits


def _vec(record: Mapping, name: str, width, key: str) -> np.ndarray:
    if name not in record:
        raise GAGAvatarError(f"optim.pkl frame {key} has no {name!r}: re-run the tracker")
    return np.asarray(record[name], np.float32).reshape(width)


def open_official(root: Path) -> TrackedFrames:
    """Open the official layout (see the module docstring)."""
    data = safe_load(root / "optim.pkl")
    if not isinstance(data, dict) or not data:
        raise GAGAvatarError(f"{root / 'optim.pkl'} is not a tracker file (frame key -> records): re-run the tracker")
    tracks = {}
    for key, rec in data.items():
        if not isinstance(rec, dict):
            raise GAGAvatarError(f"optim.pkl frame {key} is not a record: re-run the tracker")
        tracks[str(key)] = FrameTrack(
            shape=_vec(rec, "shapecode", (300,), key), expression=_vec(rec, "expcode", (100,), key),
            pose=_vec(rec, "posecode", (6,), key), eyes=_vec(rec, "eyecode", (6,), key),
            transform=_vec(rec, "transform_matrix", (3, 4), key), bbox=_vec(rec, "bbox", (4,), key))
    video_of = {k: official_video_id(k) for k in tracks}
    videos: dict[str, list[str]] = {}
    for k in tracks:
        videos.setdefault(video_of[k], []).append(k)
    for v in videos:
        videos[v].sort(key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else 0)
    splits = _read_splits(root, list(tracks), lambda e: [e])
    return TrackedFrames(tracks, LMDBImages(root / "img_lmdb"), videos, video_of, splits, root, "official")


def _bbox_from_landmarks(landmarks: torch.Tensor, side: int) -> torch.Tensor:
    lo, hi = landmarks[:, :68].amin(1), landmarks[:, :68].amax(1)
    return torch.cat([lo, hi], dim=1) / side


def open_plain(root: Path, crop_size: int = 512) -> TrackedFrames:
    """Open our plain layout (see the module docstring); landmark boxes assume ``crop_size`` pixels."""
    tracks, paths, videos, video_of = {}, {}, {}, {}
    for seq_path in sorted(root.glob(f"*/{SEQUENCE_FILE}")):
        video = seq_path.parent.name
        seq = load_sequence(seq_path)
        frames = sorted((p for p in (seq_path.parent / FRAMES_DIR).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
                        key=lambda p: _natural(p.name))
        if len(frames) != seq.num_frames:
            raise GAGAvatarError(f"{seq_path.parent} has {len(frames)} frames but its sequence has "
                                 f"{seq.num_frames}: rebuild this video's folder")
        if seq.bbox is not None:
            bbox = seq.bbox
        elif seq.landmarks is not None:
            bbox = _bbox_from_landmarks(seq.landmarks, crop_size)
        else:
            raise GAGAvatarError(f"{seq_path} has neither face boxes nor landmarks: re-track it with `gagavatar track`")
        shape = seq.shape if seq.shape is not None else torch.zeros(300)
        keys = []
        for t in range(seq.num_frames):
            if bool(seq.missing[t]):
                continue
            key = f"{video}/{t}"
            tracks[key] = FrameTrack(
                shape=shape.numpy(), expression=seq.expression[t].numpy(),
                pose=np.concatenate([np.zeros(3, np.float32), seq.jaw[t].numpy()]), eyes=seq.eyes[t].numpy(),
                transform=seq.transform[t].numpy(), bbox=bbox[t].numpy())
            paths[key] = frames[t]
            video_of[key] = video
            keys.append(key)
        if keys:
            videos[video] = keys
    if not tracks:
        raise GAGAvatarError(f"{root} holds no <video>/{SEQUENCE_FILE} with frames: build it with "
                             f"`python -m gagavatar.engine.training build-dataset`")
    splits = _read_splits(root, list(tracks), lambda e: videos.get(e, [e]))
    return TrackedFrames(tracks, FileImages(paths), videos, video_of, splits, root, "plain")


def open_dataset(root: str | os.PathLike, layout: str = "auto") -> TrackedFrames:
    """Open a dataset folder; ``layout`` is ``"official"``, ``"plain"`` or ``"auto"`` (by its content)."""
    root = Path(root)
    if not root.is_dir():
        raise GAGAvatarError(f"dataset folder {root} not found: set data.root to a dataset folder")
    if layout == "auto":
        layout = "official" if (root / "optim.pkl").is_file() else "plain"
    if layout == "official":
        return open_official(root)
    if layout == "plain":
        return open_plain(root)
    raise GAGAvatarError(f"unknown dataset layout {layout!r}: use 'auto', 'official' or 'plain'")


# ------------------------------------------------------------------------------ pairs
Pair = tuple[str, str]
"""(source key, target key)."""


def shard_size(batch_size: int, world_size: int) -> int:
    """Samples per process when the global batch ``batch_size`` is split over ``world_size``
    processes (a one-line error unless it divides)."""
    if batch_size % world_size:
        raise GAGAvatarError(f"train.batch_size = {batch_size} is the global batch, split over {world_size} "
                             f"processes: set it to a multiple of {world_size}")
    return batch_size // world_size


class TrainPairSampler(torch.utils.data.Sampler):
    """Batches of training pairs for iterations ``start .. stop - 1``, a pure function of the seed.

    Sample ``p = iteration * batch + j`` is target ``perm_e[p mod n]`` of the split's frames, with
    ``perm_e`` a permutation drawn for epoch ``e = p // n``; its source is another frame of the same
    video drawn from ``(seed, p)`` (the target itself for one-frame videos).

    In data-parallel training ``batch_size`` is the global batch and process ``rank`` of
    ``world_size`` gets its consecutive share: samples ``j = rank * b .. (rank + 1) * b - 1`` of
    each batch, ``b = batch_size / world_size``.
    """

    def __init__(self, data: TrackedFrames, split: str, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1):
        self.videos = data.split_videos(split)
        self.frames = [k for keys in self.videos.values() for k in keys]
        if not self.frames:
            raise GAGAvatarError(f"the {split!r} split of {data.root} is empty: check dataset.json")
        self.video_of = data.video_of
        self.batch_size, self.seed, self.start, self.stop = batch_size, seed, start, stop
        self.shard = shard_size(batch_size, world_size)
        self.first = rank * self.shard
        self._epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _perm(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.frames)))
        return self._epoch[1]

    def pair(self, position: int) -> Pair:
        """The pair of global sample ``position``."""
        n = len(self.frames)
        target = self.frames[int(self._perm(position // n)[position % n])]
        candidates = [k for k in self.videos[self.video_of[target]] if k != target] or [target]
        choice = int(np.random.default_rng([self.seed, position, 1]).integers(len(candidates)))
        return candidates[choice], target

    def batch(self, iteration: int) -> list[Pair]:
        """This process's share of the pairs of ``iteration`` (all of them in a single process)."""
        base = iteration * self.batch_size + self.first
        return [self.pair(base + j) for j in range(self.shard)]

    def __iter__(self) -> Iterator[list[Pair]]:
        for it in range(self.start, self.stop):
            yield self.batch(it)


def evaluation_pairs(data: TrackedFrames, split: str, cross: bool = False) -> list[tuple[str, list[str]]]:
    """``[(source key, target keys)]`` per video of ``split``: the paper's protocol (source = the first
    frame; targets = the other frames). ``cross``: the source is the next video's first frame."""
    videos = data.split_videos(split)
    names = sorted(videos)
    if cross and len(names) < 2:
        raise GAGAvatarError(f"cross-reenactment needs at least two videos in the {split!r} split")
    out = []
    for i, v in enumerate(names):
        source = videos[names[(i + 1) % len(names)]][0] if cross else videos[v][0]
        targets = videos[v][1:]
        if targets:
            out.append((source, targets))
    return out


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


class PairDataset(torch.utils.data.Dataset):
    """Samples of ``(source key, target key)`` pairs (index the dataset with the pair).

    A sample holds ``source_image [3, 518, 518]`` (resized as the official loader does),
    ``source_transform [3, 4]``, ``target_image [3, S, S]`` (``S = image_size``),
    ``target_vertices [5023, 3]`` (FLAME of the target's expression, jaw, eyes and global pose with
    the ``identity``'s shape: ``"target"`` as the official training loader, ``"source"`` as its
    driving loader and cross-reenactment), ``target_transform [3, 4]``, ``target_bbox [4]`` and
    the two keys.
    """

    def __init__(self, data: TrackedFrames, flame: torch.nn.Module, image_size: int, identity: str = "target"):
        if identity not in ("target", "source"):
            raise GAGAvatarError(f"data.identity must be 'target' or 'source', got {identity!r}")
        self.data, self.flame, self.image_size, self.identity = data, flame, image_size, identity

    def source(self, key: str) -> dict[str, torch.Tensor]:
        """``source_image [3, 518, 518]`` and ``source_transform [3, 4]`` of frame ``key``."""
        image = _to_tensor(self.data.images[key])
        return {"source_image": resize_for_dino(image[None])[0],
                "source_transform": torch.from_numpy(self.data.tracks[key].transform)}

    def image(self, key: str) -> torch.Tensor:
        """Frame ``key`` as ``[3, S, S]`` in 0..1 (resized, antialiased, when it is not ``S^2``)."""
        return _resize(_to_tensor(self.data.images[key]), self.image_size)

    @torch.no_grad()
    def target(self, key: str, shape: np.ndarray) -> dict[str, torch.Tensor]:
        """Target fields of frame ``key``, with FLAME identity ``shape``."""
        tr = self.data.tracks[key]
        t = lambda a: torch.from_numpy(np.asarray(a))[None]  # noqa: E731
        vertices = self.flame(shape=t(shape), expression=t(tr.expression), pose=t(tr.pose), eyes=t(tr.eyes))[0]
        return {"target_image": self.image(key),
                "target_vertices": vertices.float().cpu(), "target_transform": torch.from_numpy(tr.transform),
                "target_bbox": torch.from_numpy(tr.bbox)}

    def __getitem__(self, pair: Pair) -> dict:
        source_key, target_key = pair
        ident = self.data.tracks[source_key if self.identity == "source" else target_key].shape
        return {**self.source(source_key), **self.target(target_key, ident),
                "source_key": source_key, "target_key": target_key}
