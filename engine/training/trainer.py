"""The training loop (official ``train.py`` + ``configure_optimizers``), resumable bit for bit.

* Optimiser: Adam, ``betas = (0, 0.99)``, ``lr = 1e-4``; parameters whose name contains
  ``style_mlp`` or ``final_linear`` (the StyleUNet's style path) at ``0.1 * lr``; the frozen DINOv2
  is not optimised. ``LinearLR`` from 1 to 0.1 over 200k iterations, stepped every iteration.
* Each iteration: a batch of (source, target) pairs of one video each (:class:`~.datasets.
  TrainPairSampler`), the differentiable reenactment (:func:`~.forward.reenact`, fresh StyleUNet
  noise as the official training), the official losses (:func:`~.losses.gagavatar_losses`).
* Every ``checkpoint_every`` iterations and at the end, in ``OUT/checkpoints/``: ``state.pt`` (model,
  optimiser, scheduler, RNG states, iteration, config: resuming from it reproduces the
  uninterrupted run exactly on CPU) and, for the GAGAvatar model, ``latest.pt`` in the official
  format (with the perceptual weights when known) and ``latest_compact.pt`` (ours); files are
  written atomically. Validation PSNR/SSIM on the ``val`` split's first frames go to ``val.csv``.
* Logs: ``OUT/log.csv`` (means over each ``log_every`` window) and TensorBoard event files when
  ``tensorboard`` is installed; the resolved config in ``OUT/config.toml``.
* Several processes (launched by ``torchrun``, joined by :func:`~.distributed.process_group`):
  the model runs in ``DistributedDataParallel``, ``train.batch_size`` is the global batch and
  each process trains on its consecutive share (:class:`~.datasets.TrainPairSampler`) with its
  rows of the global batch's noise (:func:`~..networks.noise.global_batch_rows`); the losses are
  per-sample means, so the averaged gradients are one process's gradient of the global batch.
  Every process seeds alike and loads the same state; rank 0 alone validates and writes logs,
  checkpoints and exports; the logged losses and PSNR are global-batch means.
"""
from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoints import atomic_save, read_checkpoint, save_model, save_official, split_perceptual
from ..errors import AssetError, Cancelled, GAGAvatarError
from ..networks.noise import global_batch_rows
from ..safe_load import load_torch
from . import distributed
from .config import Config, config_from_dict, official_meta_cfg, to_toml
from .datasets import PairDataset, TrainPairSampler, TrackedFrames, evaluation_pairs, open_dataset, shard_size
from .forward import ReenactmentPass, render_size
from .losses import LOSS_NAMES, LossWeights, gagavatar_losses, psnr_of_mse
from .perceptual import FacePerceptualLoss, load_face_perceptual, official_state_dict, read_weights
from .tiny import TinyGAGAvatar

STATE_FORMAT = "gagavatar-train-state"
STATE_VERSION = 1
SLOW_PARAMS = ("style_mlp", "final_linear")
"""Substrings of the parameter names trained at ``slow_lr_scale * lr`` (official)."""
DINO_PREFIX = "base_model.dino_model."
LOG_FIELDS = ("iteration", "lr", "loss", *LOSS_NAMES, "psnr", "seconds")
VAL_FIELDS = ("iteration", "psnr", "ssim", "frames")

Progress = Callable[[int, int], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given (CUDA checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GAGAvatarError("train.device asks for CUDA but no CUDA GPU is available: set device = \"cpu\"")
    return torch.device(name)


def build_model(cfg: Config) -> nn.Module:
    """The model of ``cfg.model`` on the CPU: fine-tuned from ``init``, or initialised from scratch
    (GAGAvatar: frozen DINOv2 from ``dino``, ``head_base ~ N(0, 1)`` as the official code)."""
    from ..model import GAGAvatar
    m = cfg.model
    if m.kind == "tiny":
        if m.init:
            raise GAGAvatarError("model.init is for the GAGAvatar model; tiny models train from scratch")
        return TinyGAGAvatar(render_size=m.tiny_render_size, plane_size=m.tiny_plane_size)
    model = GAGAvatar()
    if m.init:
        state_dict, _ = read_checkpoint(m.init)
        model.load_state_dict(split_perceptual(state_dict)[0], strict=True)
        return model
    if not m.dino:
        raise GAGAvatarError("training GAGAvatar from scratch needs the frozen DINOv2 weights: set model.dino "
                             "to GAGAvatar.pt or dinov2_vitb14_pretrain.pth (or set model.init to fine-tune)")
    weights = read_weights(m.dino, "pass GAGAvatar.pt or the DINOv2 hub file dinov2_vitb14_pretrain.pth")
    if any(k.startswith(DINO_PREFIX) for k in weights):
        weights = {k[len(DINO_PREFIX):]: v for k, v in weights.items() if k.startswith(DINO_PREFIX)}
    try:
        model.base_model.dino_model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise AssetError(f"{m.dino} does not hold DINOv2 ViT-B/14 weights ({str(err).splitlines()[0][:100]}): "
                         f"pass GAGAvatar.pt or dinov2_vitb14_pretrain.pth") from err
    nn.init.normal_(model.head_base)
    return model


def build_perceptual(cfg: Config) -> FacePerceptualLoss | None:
    """The perceptual loss network, or None when its weight is 0."""
    if not cfg.loss.percep:
        return None
    sources = list(cfg.loss.perceptual) or ([cfg.model.init] if cfg.model.init else [])
    if not sources:
        raise GAGAvatarError("the perceptual loss needs VGG-Face and AlexNet weights: fine-tune from the official "
                             "GAGAvatar.pt (model.init), list weight files in loss.perceptual, or set loss.percep = 0")
    return load_face_perceptual(*sources)


def parameter_groups(model: nn.Module, lr: float, slow_scale: float) -> list[dict[str, Any]]:
    """Adam groups: trainable parameters at ``lr``, those named like :data:`SLOW_PARAMS` at ``slow_scale * lr``."""
    normal, slow = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (slow if any(s in name for s in SLOW_PARAMS) else normal).append(p)
    groups = [{"params": normal, "lr": lr}]
    if slow:
        groups.append({"params": slow, "lr": lr * slow_scale})
    return groups


class CsvLog:
    """An append-only CSV with a fixed header; on resume, rows past the resumed iteration are dropped."""

    def __init__(self, path: Path, fields: tuple[str, ...], resume_at: int | None):
        self.path, self.fields = path, fields
        rows = []
        if resume_at is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_at]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})


def _tensorboard(path: Path):
    """A TensorBoard ``SummaryWriter`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


class Trainer:
    """Train (or fine-tune) a model as configured.

    Args:
        cfg: the configuration (:mod:`.config`).
        data: the dataset (default: ``open_dataset(cfg.data.root, cfg.data.layout)``).
        flame: FLAME on the CPU (default: ``load_flame(cfg.data.flame)``).
        model: a model with the training interface (default: :func:`build_model`); moved to the device.
        perceptual: the perceptual loss network (default: :func:`build_perceptual`).

    Under torchrun it must be made inside :func:`~.distributed.process_group` (as ``gagavatar
    train`` does); ``launch`` is then this process's place, None in a single-process run.
    """

    def __init__(self, cfg: Config, data: TrackedFrames | None = None, flame: nn.Module | None = None,
                 model: nn.Module | None = None, perceptual: FacePerceptualLoss | None = None):
        self.cfg = cfg
        self.launch = distributed.joined()
        self.device = resolve_device(cfg.train.device)
        if self.launch is not None:
            self.device = self.launch.device(self.device)
        self.shard = shard_size(cfg.train.batch_size, self.world_size)
        if len(cfg.optim.betas) != 2:
            raise GAGAvatarError("optim.betas must hold two numbers")
        torch.manual_seed(cfg.train.seed)
        self.model = (model if model is not None else build_model(cfg)).to(self.device).train()
        self.reenactment: nn.Module = ReenactmentPass(self.model, cfg.train.precision == "bf16", cfg.train.backend)
        if self.launch is not None:
            # static_graph: GAGAvatar has parameters that never get a gradient (the official toRGB.*
            # and one refinenet unit); the set is the same every step.
            self.reenactment = DistributedDataParallel(
                self.reenactment, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                static_graph=True)
        if perceptual is None:
            perceptual = build_perceptual(cfg)
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        if data is None:
            if not cfg.data.root:
                raise GAGAvatarError("set data.root to the dataset folder (`build-dataset` makes one from videos)")
            data = open_dataset(cfg.data.root, cfg.data.layout)
        if flame is None:
            from ..flame import load_flame
            if not cfg.data.flame:
                raise GAGAvatarError("set data.flame to FLAME_with_eye.pt (or FLAME's generic_model.pkl)")
            flame = load_flame(cfg.data.flame)
        self.data, self.flame = data, flame
        self.samples = PairDataset(data, flame, render_size(self.model), cfg.data.identity)
        o = cfg.optim
        self.optimizer = torch.optim.Adam(parameter_groups(self.model, o.lr, o.slow_lr_scale), lr=o.lr,
                                          betas=tuple(o.betas))
        self.scheduler = torch.optim.lr_scheduler.LinearLR(self.optimizer, start_factor=1.0,
                                                           end_factor=o.lr_end_factor, total_iters=o.lr_decay_iters)
        self.weights = LossWeights(cfg.loss.img, cfg.loss.box, cfg.loss.percep, cfg.loss.point)
        self.iteration = 0
        self.out_dir = Path(cfg.train.out_dir)

    @property
    def rank(self) -> int:
        """This process's rank (0 without torchrun)."""
        return self.launch.rank if self.launch is not None else 0

    @property
    def world_size(self) -> int:
        """Processes training together (1 without torchrun)."""
        return self.launch.world_size if self.launch is not None else 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the logs, checkpoints and exports (rank 0; the only one alone)."""
        return self.launch is None or self.launch.is_main

    # ------------------------------------------------------------------ one step
    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on a collated batch (this process's share of the global batch);
        returns the loss terms, ``loss`` and ``psnr`` of the global batch."""
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        with global_batch_rows(self.rank * self.shard, self.cfg.train.batch_size):
            coarse, image, lifted = self.reenactment(b["source_image"], b["source_transform"], b["target_vertices"],
                                                     b["target_transform"])
        terms = gagavatar_losses(coarse[:, :3], image, b["target_image"], b["target_bbox"],
                                 b["target_vertices"], lifted, self.perceptual, self.weights,
                                 self.cfg.loss.box_size or None)
        logged = torch.stack([*(v.detach() for v in terms.values()), F.mse_loss(image.detach(), b["target_image"])])
        if self.launch is not None:
            logged = distributed.mean_over_ranks(logged)
        result = dict(zip(terms, logged[:-1].tolist()))
        if not math.isfinite(result["loss"]):
            raise GAGAvatarError(f"the loss became {result['loss']} at iteration {self.iteration + 1}: "
                                 f"lower optim.lr or resume from the last checkpoint")
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        result["psnr"] = float(psnr_of_mse(logged[-1]))
        return result

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.out_dir / "checkpoints" / "state.pt"

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (loadable with ``torch.load(weights_only=True)``)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "iteration": self.iteration,
                "model_kind": self.cfg.model.kind, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng, "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.iteration = int(state["iteration"])

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load a training state (default ``OUT/checkpoints/state.pt``); returns its iteration."""
        state = read_state(path or self.state_path)
        if state["model_kind"] != self.cfg.model.kind:
            raise GAGAvatarError(f"the saved run trained a {state['model_kind']!r} model, the config a "
                                 f"{self.cfg.model.kind!r} one: use the run's config")
        self.load_state_dict(state)
        return self.iteration

    def save(self) -> list[Path]:
        """Write ``state.pt`` and, for GAGAvatar, the exported checkpoints (:meth:`export`); only
        rank 0 writes (the others return ``[]``)."""
        if not self.is_main:
            return []
        atomic_save(self.state_dict(), self.state_path)
        return [self.state_path, *self.export()]

    def export(self) -> list[Path]:
        """For GAGAvatar: ``latest.pt`` (official format, with the perceptual weights when known) and
        ``latest_compact.pt`` (ours) beside ``state.pt``; nothing for other models nor off rank 0."""
        from ..model import GAGAvatar
        if not isinstance(self.model, GAGAvatar) or not self.is_main:
            return []
        folder = self.state_path.parent
        meta = official_meta_cfg(self.cfg)
        percep = official_state_dict(self.perceptual) if self.perceptual is not None else None
        return [save_official(self.model.state_dict(), meta, folder / "latest.pt", percep_sd=percep),
                save_model(self.model, folder / "latest_compact.pt", meta_cfg=meta)]

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """PSNR/SSIM over the first ``data.val_frames`` frames of the ``val`` split (paper protocol)."""
        from .evaluate import evaluate_reenactment
        return evaluate_reenactment(self.model, self.data, self.flame, split="val", batch_size=self.cfg.train.batch_size,
                                    max_frames=self.cfg.data.val_frames, backend=self.cfg.train.backend)

    # ------------------------------------------------------------------ loop
    def _anywhere(self, flag: bool) -> bool:
        """``flag``, or under torchrun whether it is true on any process."""
        return distributed.any_rank(flag, self.device) if self.launch is not None else flag

    def _barrier(self) -> None:
        """Under torchrun, wait until every process is here (rank 0 done writing)."""
        if self.launch is not None:
            dist.barrier()

    def fit(self, progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, float]:
        """Train from the current iteration to ``train.iterations``; returns the last logged means.

        Cancelling (``cancel()`` true, on any process) saves the state first, then raises
        :class:`Cancelled`. Under torchrun every process calls it (all with a ``cancel`` or none);
        they return together, once rank 0 has written the last checkpoint.
        """
        t = self.cfg.train
        resume_at = self.iteration if self.iteration else None
        log = val_log = board = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.toml").write_text(to_toml(self.cfg))
            log = CsvLog(self.out_dir / "log.csv", LOG_FIELDS, resume_at)
            val_log = CsvLog(self.out_dir / "val.csv", VAL_FIELDS, resume_at)
            board = _tensorboard(self.out_dir / "tensorboard")
        sampler = TrainPairSampler(self.data, self.cfg.data.split, t.batch_size, t.seed, self.iteration, t.iterations,
                                   self.rank, self.world_size)
        # Its own generator: the loader must not draw from the global RNG (resumed runs stay exact).
        loader = torch.utils.data.DataLoader(self.samples, batch_sampler=sampler, num_workers=self.cfg.data.num_workers,
                                             pin_memory=self.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(t.seed))
        has_val = self.is_main and self.cfg.data.val_frames > 0 and bool(evaluation_pairs(self.data, "val"))
        window: list[dict[str, float]] = []
        last: dict[str, float] = {}
        started = time.perf_counter()
        try:
            for batch in loader:
                lr = self.optimizer.param_groups[0]["lr"]
                window.append(self.step(batch))
                it = self.iteration
                if it % t.log_every == 0 or it == t.iterations:
                    last = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    seconds = (time.perf_counter() - started) / len(window)
                    if log is not None:
                        log.write({"iteration": it, "lr": lr, **last, "seconds": seconds})
                    if board is not None:
                        for k, v in last.items():
                            board.add_scalar(f"train/{k}", v, it)
                        board.add_scalar("train/lr", lr, it)
                    window, started = [], time.perf_counter()
                if it % t.checkpoint_every == 0 or it == t.iterations:
                    if has_val:
                        val = self.validate()
                        val_log.write({"iteration": it, "psnr": val["PSNR"], "ssim": val["SSIM"],
                                       "frames": val["frames"]})
                        if board is not None:
                            board.add_scalar("val/psnr", val["PSNR"], it)
                            board.add_scalar("val/ssim", val["SSIM"], it)
                    self.save()
                if progress is not None:
                    progress(it, t.iterations)
                if cancel is not None and self._anywhere(cancel()) and it < t.iterations:
                    self.save()
                    self._barrier()
                    raise Cancelled(f"training cancelled at iteration {it}; its state is saved: resume with --resume")
            self._barrier()
        finally:
            if board is not None:
                board.close()
        return last


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state written by :meth:`Trainer.save` (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise GAGAvatarError(f"no training state at {path}: start the run without --resume")
    state = load_torch(path, "resume from another checkpoint or restart", "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise AssetError(f"{path} is not a gagavatar training state: pass OUT/checkpoints/state.pt")
    if state.get("version") != STATE_VERSION:
        raise AssetError(f"{path} is a training state of version {state.get('version')!r}; this gagavatar reads "
                         f"version {STATE_VERSION}")
    return state


def load_trained_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A model for evaluation, in eval mode: from a training state (any model kind) or a GAGAvatar
    checkpoint (official or compact)."""
    from ..checkpoints import load_model
    path = Path(path)
    state = read_state(path) if _is_state(path) else None
    if state is None:
        return load_model(path, device=device)
    cfg = config_from_dict(state["config"])
    cfg.model.init = cfg.model.dino = ""
    if cfg.model.kind == "tiny":
        model = build_model(cfg)
    else:
        from ..model import GAGAvatar
        model = GAGAvatar()
    model.load_state_dict(state["model"], strict=True)
    return model.to(device).eval()


def _is_state(path: Path) -> bool:
    """Whether ``path`` is a torch archive holding a training state (``format`` entry), read lazily."""
    try:
        obj = load_torch(path, "", mmap=True)
    except GAGAvatarError:  # not a (safe) torch file: let the checkpoint loader explain
        return False
    return isinstance(obj, dict) and obj.get("format") == STATE_FORMAT


def prepare_run(cfg: Config, resume: bool = False) -> Trainer:
    """A :class:`Trainer` for ``cfg``, resumed from ``OUT/checkpoints/state.pt`` when ``resume``
    (without it, an existing run in ``train.out_dir`` is an error: nothing is overwritten)."""
    trainer = Trainer(cfg)
    if resume:
        trainer.resume()
    elif trainer.state_path.exists():
        raise GAGAvatarError(f"{trainer.out_dir} already holds a run: pass --resume to continue it or set "
                             f"train.out_dir to a new folder")
    return trainer
