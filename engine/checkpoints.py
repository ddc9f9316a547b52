"""Read, validate and write GAGAvatar checkpoints.

Two on-disk formats, both torch zip archives read with ``torch.load(weights_only=True)`` (no
pickled code is ever run):

* ``official``: the published ``GAGAvatar.pt``, ``{'model': state_dict, 'meta_cfg': dict}`` as
  written by lightning Fabric; 597 float32 entries, including the training-only perceptual loss
  (``percep_loss.*``, VGG-Face + AlexNet) that inference ignores.
* ``gagavatar-compact`` (version 1): ``{'format', 'version', 'model', 'meta_cfg'}`` without the
  perceptual weights, floating tensors optionally stored as float16 (restored to float32 on load).

The reference layout (key -> shape) is the :class:`~.model.GAGAvatar` module's own state dict
(built on the meta device, so nothing is allocated) plus :data:`PERCEPTUAL_LAYOUT`.
"""
from __future__ import annotations

import functools
import os
import types
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .errors import AssetError
from .safe_load import ZIP_MAGIC, file_head, load_torch

OFFICIAL_FORMAT = "official"
COMPACT_FORMAT = "gagavatar-compact"
COMPACT_VERSION = 1
PERCEPTUAL_PREFIX = "percep_loss."

#: meta_cfg stored when none is given: the values the official inference reads or hard-codes.
DEFAULT_META_CFG: dict[str, Any] = {
    "MODEL": {"NAME": "GAGAvatar", "TASK": "DynamicGaussian"},
    "DATASET": {"FLAME_SCALE": 5.0, "FOCAL_LENGTH": 12.0, "POINT_PLANE_SIZE": 296},
}

SYNTHETIC_KEY = "SYNTHETIC"
"""The ``meta_cfg`` entry marking weights made by :mod:`.synthetic` (the official loader ignores it)."""

MODEL_REMEDY = ("get GAGAvatar.pt with `gagavatar assets download` (or set GAGAVATAR_ASSETS to "
                "the folder that holds it)")

_SHOWN = 3  # how many offending keys an error message names


def _perceptual_layout() -> dict[str, tuple[int, ...]]:
    """The official ``percep_loss.*`` entries: VGG-Face (VGG16 convs) then AlexNet features."""
    vgg = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
           (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
           (26, 512, 512), (28, 512, 512)]
    alex = [("slice1.0", 3, 64, 11), ("slice2.3", 64, 192, 5), ("slice3.6", 192, 384, 3),
            ("slice4.8", 384, 256, 3), ("slice5.10", 256, 256, 3)]
    layout: dict[str, tuple[int, ...]] = {}
    for index, cin, cout in vgg:
        layout[f"{PERCEPTUAL_PREFIX}vggface.network.{index}.weight"] = (cout, cin, 3, 3)
        layout[f"{PERCEPTUAL_PREFIX}vggface.network.{index}.bias"] = (cout,)
    for name, cin, cout, k in alex:
        layout[f"{PERCEPTUAL_PREFIX}net.{name}.weight"] = (cout, cin, k, k)
        layout[f"{PERCEPTUAL_PREFIX}net.{name}.bias"] = (cout,)
    return layout


#: key -> shape of the 36 training-only perceptual-loss entries of the official checkpoint.
PERCEPTUAL_LAYOUT = types.MappingProxyType(_perceptual_layout())


@functools.lru_cache(maxsize=1)
def model_layout() -> types.MappingProxyType:
    """key -> shape of every state-dict entry of :class:`GAGAvatar` (the official order, no perceptual loss)."""
    from .model import GAGAvatar
    with torch.device("meta"):
        model = GAGAvatar()
    return types.MappingProxyType({k: tuple(v.shape) for k, v in model.state_dict().items()})


def official_layout() -> dict[str, tuple[int, ...]]:
    """key -> shape of all 597 entries of the official ``GAGAvatar.pt``, in its order."""
    return {**model_layout(), **PERCEPTUAL_LAYOUT}


def load_torch_file(path: str | os.PathLike, remedy: str) -> Any:
    """``torch.load`` a torch zip archive safely (CPU, ``weights_only``, memory-mapped).

    Every failure is an :class:`AssetError` whose message ends with ``remedy``; a file that asks
    to unpickle anything but plain data raises :class:`~.errors.UnsafeFileError` and nothing of it runs.
    """
    path = Path(path)
    if file_head(path, remedy, len(ZIP_MAGIC)) != ZIP_MAGIC:
        raise AssetError(f"{path} is not a PyTorch checkpoint (not a torch zip archive): {remedy}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise AssetError(f"{path} is truncated or corrupt (incomplete download?): {remedy}") from err
    if not any(n.endswith("/data.pkl") for n in names):
        raise AssetError(f"{path} is a zip archive but not a PyTorch checkpoint: {remedy}")
    return load_torch(path, remedy, "PyTorch checkpoint", mmap=True)


def _first(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _check_layout(state_dict: Mapping, name: str, remedy: str) -> None:
    """Raise AssetError unless ``state_dict`` has the model's keys and shapes (perceptual: all or none)."""
    expected = dict(model_layout())
    if any(k.startswith(PERCEPTUAL_PREFIX) for k in state_dict):
        expected.update(PERCEPTUAL_LAYOUT)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    not_float = [k for k in expected if k in state_dict and not (
        isinstance(state_dict[k], torch.Tensor) and state_dict[k].is_floating_point())]
    wrong = [f"{k} {list(state_dict[k].shape)} instead of {list(expected[k])}" for k in expected
             if k in state_dict and k not in not_float and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if not_float:
        problems.append(f"{len(not_float)} not floating-point tensors ({_first(not_float)})")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape ({_first(wrong)})")
    if problems:
        raise AssetError(f"{name} does not match the GAGAvatar layout: {'; '.join(problems)}: {remedy}")


def _read_raw(path: str | os.PathLike) -> tuple[str, Mapping, dict]:
    """(format, state dict as stored, meta_cfg) of a validated checkpoint."""
    path = Path(path)
    obj = load_torch_file(path, MODEL_REMEDY)
    remedy = f"use the official GAGAvatar.pt or a file written by save_model ({MODEL_REMEDY})"
    if not isinstance(obj, Mapping):
        raise AssetError(f"{path} is not a GAGAvatar checkpoint (it holds a {type(obj).__name__}): {remedy}")
    if "flame_model" in obj or "lmk_embeddings" in obj:
        raise AssetError(f"{path} is the FLAME asset (FLAME_with_eye.pt), not the GAGAvatar model: "
                         f"pass GAGAvatar.pt as the model and FLAME_with_eye.pt as FLAME")
    if "format" in obj:
        if obj["format"] != COMPACT_FORMAT:
            raise AssetError(f"{path} has the unknown checkpoint format {obj['format']!r}: {remedy}")
        if obj.get("version") != COMPACT_VERSION:
            raise AssetError(f"{path} is a {COMPACT_FORMAT} file of version {obj.get('version')!r}, "
                             f"this add-on reads version {COMPACT_VERSION}: update the add-on")
        fmt = COMPACT_FORMAT
    elif "model" in obj:
        fmt = OFFICIAL_FORMAT
    else:
        raise AssetError(f"{path} is not a GAGAvatar checkpoint (top-level keys: "
                         f"{_first([str(k) for k in obj])}): {remedy}")
    state_dict, meta_cfg = obj.get("model"), obj.get("meta_cfg", {})
    if not isinstance(state_dict, Mapping) or not isinstance(meta_cfg, Mapping):
        raise AssetError(f"{path} has no 'model' state dict or a malformed 'meta_cfg': {remedy}")
    model_cfg = meta_cfg.get("MODEL")
    model_name = model_cfg.get("NAME", "GAGAvatar") if isinstance(model_cfg, Mapping) else "GAGAvatar"
    if model_name != "GAGAvatar":
        raise AssetError(f"{path} holds a {model_name!r} model, not GAGAvatar: {remedy}")
    _check_layout(state_dict, path.name, remedy)
    return fmt, state_dict, dict(meta_cfg)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and validate an official or compact checkpoint.

    Returns ``(state_dict, meta_cfg)``: an ordered float32 state dict (with ``percep_loss.*``
    when the file has them; see :func:`split_perceptual`) and the plain ``meta_cfg`` dict.
    Float32 tensors stay memory-mapped from the file. Raises :class:`AssetError` (missing,
    truncated, corrupt, wrong kind, wrong layout) or :class:`~.errors.UnsafeFileError`.
    """
    _, raw, meta_cfg = _read_raw(path)
    state_dict = OrderedDict((k, v if v.dtype == torch.float32 else v.float()) for k, v in raw.items())
    if hasattr(raw, "_metadata"):
        state_dict._metadata = raw._metadata
    return state_dict, meta_cfg


def _split_metadata(state_dict: Mapping) -> tuple[dict, dict]:
    metadata = getattr(state_dict, "_metadata", None) or {}
    prefix = PERCEPTUAL_PREFIX.rstrip(".")
    is_percep = {k: k == prefix or k.startswith(PERCEPTUAL_PREFIX) for k in metadata}
    return ({k: v for k, v in metadata.items() if not is_percep[k]},
            {k: v for k, v in metadata.items() if is_percep[k]})


def split_perceptual(state_dict: Mapping[str, torch.Tensor]
                     ) -> tuple[OrderedDict[str, torch.Tensor], OrderedDict[str, torch.Tensor]]:
    """Split a state dict into ``(model_sd, percep_sd)``; ``percep_sd`` holds the ``percep_loss.*``
    entries (unused at inference, kept for training), both in order and with their ``_metadata``."""
    model_sd = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(PERCEPTUAL_PREFIX))
    percep_sd = OrderedDict((k, v) for k, v in state_dict.items() if k.startswith(PERCEPTUAL_PREFIX))
    model_sd._metadata, percep_sd._metadata = _split_metadata(state_dict)
    return model_sd, percep_sd


def _plain(value: Any, where: str = "meta_cfg") -> Any:
    """A copy of ``value`` made of dicts, lists and scalars only (loadable with weights_only)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} is a {type(value).__name__}; meta_cfg may only hold dicts, lists, "
                    f"strings, numbers, booleans and None")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save ``obj`` to a temporary file next to ``path``, then rename it into place.

    Saved through a file object, like Fabric's in-memory buffer, so the archive folder is
    ``archive/`` whatever the file is called.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def _cpu_tensors(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> OrderedDict:
    out = OrderedDict()
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        out[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
    return out


def save_model(model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor],
               path: str | os.PathLike, fp16: bool = False,
               meta_cfg: Mapping | None = None) -> Path:
    """Write a ``gagavatar-compact`` checkpoint atomically and return its path.

    ``percep_loss.*`` entries are left out; ``fp16=True`` stores floating tensors as float16
    (about half the size; :func:`read_checkpoint` restores float32). ``meta_cfg`` defaults to
    :data:`DEFAULT_META_CFG`.
    """
    state_dict = model_or_state_dict
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    model_sd, _ = split_perceptual(state_dict)
    _check_layout(model_sd, "the state dict to save", "pass a GAGAvatar model or its state_dict()")
    obj = {"format": COMPACT_FORMAT, "version": COMPACT_VERSION,
           "model": _cpu_tensors(model_sd, torch.float16 if fp16 else torch.float32),
           "meta_cfg": _plain(DEFAULT_META_CFG if meta_cfg is None else meta_cfg)}
    return atomic_save(obj, path)


def save_official(state_dict: Mapping[str, torch.Tensor], meta_cfg: Mapping,
                  path: str | os.PathLike,
                  percep_sd: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write the official ``{'model', 'meta_cfg'}`` layout (float32) atomically and return its path.

    The perceptual weights come from ``percep_sd`` if given, else from ``state_dict``'s own
    ``percep_loss.*`` entries; only a file that has them loads into the official code with
    ``strict=True``.
    """
    model_sd, own_percep = split_perceptual(state_dict)
    percep = own_percep if percep_sd is None else split_perceptual(percep_sd)[1]
    out = _cpu_tensors(model_sd, torch.float32)
    out.update(_cpu_tensors(percep, torch.float32))
    _check_layout(out, "the state dict to save", "pass a GAGAvatar state dict (and the official percep_loss.* weights)")
    metadata = {**model_sd._metadata, **percep._metadata}
    if metadata:
        out._metadata = metadata
    return atomic_save({"model": out, "meta_cfg": _plain(meta_cfg)}, path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build :class:`GAGAvatar` from an official or compact checkpoint, on ``device`` in eval mode.

    The file's ``meta_cfg`` is kept as ``model.meta_cfg`` (see :func:`is_synthetic`)."""
    from .model import GAGAvatar
    state_dict, meta_cfg = read_checkpoint(path)
    model_sd, _ = split_perceptual(state_dict)
    with torch.device(device):  # no throw-away CPU copy when loading onto a GPU
        model = GAGAvatar()
    model.load_state_dict(model_sd, strict=True)
    model.meta_cfg = meta_cfg
    return model.to(device=device, dtype=dtype).eval()


def is_synthetic(meta_cfg: Mapping | None) -> bool:
    """Whether a checkpoint's ``meta_cfg`` marks synthetic weights (``gagavatar assets synthesize``)."""
    return isinstance(meta_cfg, Mapping) and isinstance(meta_cfg.get(SYNTHETIC_KEY), Mapping)


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a validated checkpoint for ``gagavatar info``.

    Keys: ``path``, ``format`` (``official`` / ``gagavatar-compact``), ``tensors`` (entries),
    ``parameters`` (elements, perceptual weights included), ``dtype`` (stored dtype(s), e.g.
    ``float32``), ``perceptual`` (has the ``percep_loss.*`` weights), ``synthetic`` (made by
    ``gagavatar assets synthesize``: not a trained model), ``meta_cfg``, ``file_size`` (bytes).
    """
    path = Path(path)
    fmt, raw, meta_cfg = _read_raw(path)
    return {
        "path": str(path),
        "format": fmt,
        "tensors": len(raw),
        "parameters": sum(v.numel() for v in raw.values()),
        "dtype": ", ".join(sorted({str(v.dtype).removeprefix("torch.") for v in raw.values()})),
        "perceptual": any(k.startswith(PERCEPTUAL_PREFIX) for k in raw),
        "synthetic": is_synthetic(meta_cfg),
        "meta_cfg": meta_cfg,
        "file_size": path.stat().st_size,
    }
