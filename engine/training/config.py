"""Training configuration: a TOML file (or YAML with PyYAML installed) over the paper's defaults.

Every setting has the official value as its default (``configs/model/gaga.yaml`` and
``configure_optimizers``); a file only lists what it changes. Relative paths are relative to the
config file. Example (fine-tuning the released model on a dataset)::

    [model]
    init = "GAGAvatar.pt"

    [data]
    root = "my_dataset"
    flame = "FLAME_with_eye.pt"

    [train]
    out_dir = "runs/finetune"
    iterations = 20000

``python -m gagavatar.engine.training train-config`` prints every setting with its default.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GAGAvatarError


@dataclass
class ModelConfig:
    """``kind``: ``"gagavatar"`` (the paper's model) or ``"tiny"`` (:class:`~.tiny.TinyGAGAvatar`).
    ``init``: checkpoint to start from (official or compact; fine-tuning); empty = from scratch.
    ``dino``: from scratch only, a file with the frozen DINOv2 ViT-B/14 weights (``GAGAvatar.pt``
    or the hub's ``dinov2_vitb14_pretrain.pth``). ``tiny_*``: sizes of the tiny model."""

    kind: str = "gagavatar"
    init: str = ""
    dino: str = ""
    tiny_render_size: int = 64
    tiny_plane_size: int = 16


@dataclass
class DataConfig:
    """``root``: dataset folder; ``layout``: ``auto``/``official``/``plain``; ``flame``: FLAME file;
    ``split``: training split; ``identity``: FLAME shape of the target vertices (``target`` =
    official training loader, ``source``); ``num_workers``: loader processes; ``val_frames``:
    frames of the ``val`` split evaluated at each checkpoint (paper protocol; 0 = none)."""

    root: str = ""
    layout: str = "auto"
    flame: str = ""
    split: str = "train"
    identity: str = "target"
    num_workers: int = 8
    val_frames: int = 16


@dataclass
class OptimConfig:
    """Adam with ``lr``/``betas``; parameters named ``*style_mlp*``/``*final_linear*`` get
    ``lr * slow_lr_scale``; the rate decays linearly to ``lr_end_factor`` over ``lr_decay_iters``."""

    lr: float = 1.0e-4
    betas: list = field(default_factory=lambda: [0.0, 0.99])
    slow_lr_scale: float = 0.1
    lr_end_factor: float = 0.1
    lr_decay_iters: int = 200_000


@dataclass
class LossConfig:
    """Weights of the four official terms (1 = official) and the perceptual weights. ``perceptual``:
    files holding them (empty: taken from ``model.init``, which the official checkpoint has);
    ``box_size``: side of the face crops (0 = render size)."""

    img: float = 1.0
    box: float = 1.0
    percep: float = 1.0
    point: float = 1.0
    perceptual: list = field(default_factory=list)
    box_size: int = 0


@dataclass
class TrainConfig:
    """Loop settings. ``precision``: ``fp32`` or ``bf16`` (autocast for the encoder, generators and
    neural renderer; splatting, StyleUNet modulation and losses stay float32). ``backend``: the
    rasterizer (``auto`` = gsplat on CUDA, else torch). ``device``: ``auto``/``cpu``/``cuda``/..."""

    out_dir: str = "runs/gagavatar"
    iterations: int = 200_000
    batch_size: int = 8
    seed: int = 42
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "auto"
    checkpoint_every: int = 10_000
    log_every: int = 100


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


_PATHS = {("model", "init"), ("model", "dino"), ("data", "root"), ("data", "flame"), ("train", "out_dir")}
_CHOICES = {("model", "kind"): ("gagavatar", "tiny"), ("data", "layout"): ("auto", "official", "plain"),
            ("data", "identity"): ("target", "source"), ("train", "precision"): ("fp32", "bf16"),
            ("train", "backend"): ("auto", "torch", "gsplat")}


def config_from_dict(values: dict[str, Any], base_dir: str | os.PathLike = ".", where: str = "config") -> Config:
    """A :class:`Config` from nested ``{section: {key: value}}`` (unknown or mistyped keys raise)."""
    cfg = Config()
    base = Path(base_dir)
    for section, entries in values.items():
        if section not in {f.name for f in dataclasses.fields(cfg)}:
            raise GAGAvatarError(f"{where}: unknown section [{section}]: use model, data, optim, loss or train")
        if not isinstance(entries, dict):
            raise GAGAvatarError(f"{where}: [{section}] must be a table of settings")
        sub = getattr(cfg, section)
        for key, value in entries.items():
            if key not in {f.name for f in dataclasses.fields(sub)}:
                raise GAGAvatarError(f"{where}: unknown setting {section}.{key} (see `python -m "
                                     f"gagavatar.engine.training train-config`)")
            default = getattr(sub, key)
            if isinstance(default, bool) != isinstance(value, bool) or not isinstance(
                    value, (float, int) if isinstance(default, float) else type(default)):
                raise GAGAvatarError(f"{where}: {section}.{key} must be a {type(default).__name__}, got {value!r}")
            if (section, key) in _CHOICES and value not in _CHOICES[section, key]:
                raise GAGAvatarError(f"{where}: {section}.{key} must be one of {', '.join(_CHOICES[section, key])}")
            if (section, key) in _PATHS and value:
                value = str(base / Path(value).expanduser())
            if (section, key) == ("loss", "perceptual"):
                value = [str(base / Path(v).expanduser()) for v in value]
            setattr(sub, key, float(value) if isinstance(default, float) else value)
    return cfg


def load_config(path: str | os.PathLike) -> Config:
    """Read a ``.toml`` (or ``.yaml``/``.yml`` with PyYAML) config file; relative paths are resolved
    against its folder."""
    path = Path(path)
    if not path.is_file():
        raise GAGAvatarError(f"config file {path} not found: write one (`python -m gagavatar.engine.training train-config`)")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise GAGAvatarError("YAML configs need PyYAML (`pip install pyyaml`); or write the config as TOML") from err
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise GAGAvatarError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise GAGAvatarError(f"{path} is not valid TOML: {err}") from err
    if not isinstance(values, dict):
        raise GAGAvatarError(f"{path} must hold sections of settings")
    return config_from_dict(values, path.parent, str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def to_toml(cfg: Config) -> str:
    """``cfg`` as TOML text (each section's settings, documented in this module)."""
    lines = []
    for section, entries in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in entries.items()]
        lines.append("")
    return "\n".join(lines)


def official_meta_cfg(cfg: Config) -> dict[str, Any]:
    """The ``meta_cfg`` stored in official-format checkpoints (the official config's fields)."""
    from ..cameras import FOCAL, PLANE_SIZE
    return {
        "MODEL": {"NAME": "GAGAvatar", "TASK": "DynamicGaussian"},
        "OPTIMIZE": {"NAME": "Adam", "LR_DECAY_RATE": cfg.optim.lr_end_factor,
                     "LR_DECAY_ITER": cfg.optim.lr_decay_iters, "LEARNING_RATE": cfg.optim.lr},
        "TRAIN": {"BATCH_SIZE": cfg.train.batch_size, "TRAIN_ITER": cfg.train.iterations,
                  "CHECK_INTERVAL": cfg.train.checkpoint_every},
        "DATASET": {"FLAME_SCALE": 5.0, "FOCAL_LENGTH": FOCAL, "POINT_PLANE_SIZE": PLANE_SIZE,
                    "PATH": cfg.data.root},
    }
