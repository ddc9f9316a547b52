"""Command line for training, evaluation and dataset building.

``python -m gagavatar.engine.training COMMAND`` (the ``gagavatar`` CLI registers the same
commands through :func:`add_subcommands`)::

    train CONFIG [--resume] [--set section.key=value ...]
    evaluate --model CKPT --data ROOT --flame FLAME [--mode self|cross|both] [--lpips alex.pth] ...
    build-dataset VIDEO [VIDEO ...] -o ROOT [--frames N] [--val N] [--test N]
    train-config                      print every training setting with its default (TOML)

``torchrun --nproc_per_node N -m gagavatar train CONFIG`` trains on N GPUs (data-parallel; see
docs/TRAINING.md).
"""
from __future__ import annotations

import argparse
import importlib
import json
import tomllib
from pathlib import Path

from ..console import Parser, progress_bar, run_command
from ..errors import GAGAvatarError


def _override(values: dict, assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as TOML, else taken as a string) to nested ``values``."""
    name, sep, raw = assignment.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise GAGAvatarError(f"--set {assignment!r}: write section.key=value, e.g. train.iterations=1000")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    values.setdefault(section, {})[key] = value


def cmd_train(args) -> int:
    from .config import config_from_dict, load_config
    from .distributed import process_group
    from .trainer import prepare_run, resolve_device
    cfg = load_config(args.config)
    if args.set:
        values = cfg.to_dict()
        for a in args.set:
            _override(values, a)
        cfg = config_from_dict(values, Path.cwd(), "--set")
    with process_group(resolve_device(cfg.train.device)):   # under torchrun; else nothing
        trainer = prepare_run(cfg, resume=args.resume)
        if not trainer.is_main:   # only rank 0 shows progress
            trainer.fit()
            return 0
        progress = progress_bar("train", unit="it")
        try:
            trainer.fit(progress)
        finally:
            progress.close()
    print(f"trained {trainer.iteration} iterations -> {trainer.state_path.parent}")
    return 0


def _hooks(spec: str | None):
    from .evaluate import Hooks
    if not spec:
        return Hooks()
    module, _, func = spec.partition(":")
    if not func:
        raise GAGAvatarError(f"--hooks {spec!r}: write module:function (a function returning evaluate.Hooks)")
    try:
        hooks = getattr(importlib.import_module(module), func)()
    except (ImportError, AttributeError) as err:
        raise GAGAvatarError(f"--hooks {spec}: cannot load it ({err})") from err
    if not isinstance(hooks, Hooks):
        raise GAGAvatarError(f"--hooks {spec} must return gagavatar.engine.training.evaluate.Hooks")
    return hooks


def cmd_evaluate(args) -> int:
    from ..flame import load_flame
    from .datasets import open_dataset
    from .evaluate import evaluate_reenactment, format_table
    from .perceptual import load_lpips
    from .trainer import load_trained_model, resolve_device
    device = resolve_device(args.device)
    model = load_trained_model(args.model, device)
    data = open_dataset(args.data, args.layout)
    flame = load_flame(args.flame)
    lpips = None
    if args.lpips:
        lpips = load_lpips(*(args.lpips_alexnet or [args.model]), args.lpips, device=device)
    hooks = _hooks(args.hooks)
    results = {}
    for mode in (("self", "cross") if args.mode == "both" else (args.mode,)):
        progress = progress_bar(f"{mode}-reenactment", unit="frame")
        try:
            results[mode] = evaluate_reenactment(model, data, flame, args.split, cross=mode == "cross", lpips=lpips,
                                                 hooks=hooks, batch_size=args.batch_size, max_frames=args.max_frames,
                                                 backend=args.backend, progress=progress)
        finally:
            progress.close()
    table = format_table({args.name: (results.get("self", {}), results.get("cross", {}))})
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_build_dataset(args) -> int:
    from .build import build_dataset
    progress = progress_bar("build", unit="video")
    try:
        root = build_dataset(args.videos, args.output, frames_per_video=args.frames, val_videos=args.val,
                             test_videos=args.test, assets=args.assets, progress=progress)
    finally:
        progress.close()
    print(f"dataset written to {root}")
    return 0


def cmd_train_config(args) -> int:
    from .config import Config, to_toml
    print(to_toml(Config()), end="")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``evaluate``, ``build-dataset`` and ``train-config`` on a subparsers object
    (each sets ``func``; call ``args.func(args)``)."""
    t = sub.add_parser("train", help="train or fine-tune GAGAvatar from a config file",
                       description="Train or fine-tune GAGAvatar. On several GPUs or machines launch it with "
                                   "torchrun (torchrun --nproc_per_node N -m gagavatar train CONFIG): "
                                   "train.batch_size is then the global batch.")
    t.add_argument("config", help="TOML (or YAML) config; `train-config` prints the defaults")
    t.add_argument("--resume", action="store_true", help="continue the run in train.out_dir")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a setting")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="self/cross-reenactment metrics on the paper's protocol")
    e.add_argument("--model", required=True, help="GAGAvatar.pt / compact checkpoint / training state.pt")
    e.add_argument("--data", required=True, help="dataset folder (official or plain layout)")
    e.add_argument("--layout", default="auto", choices=("auto", "official", "plain"))
    e.add_argument("--flame", required=True, help="FLAME_with_eye.pt")
    e.add_argument("--split", default="test")
    e.add_argument("--mode", default="both", choices=("self", "cross", "both"))
    e.add_argument("--lpips", metavar="ALEX_PTH", help="LPIPS v0.1 alex.pth (the lin layers); enables LPIPS")
    e.add_argument("--lpips-alexnet", action="append", metavar="FILE",
                   help="AlexNet weights for LPIPS (default: the model file's percep_loss.net)")
    e.add_argument("--hooks", metavar="MODULE:FUNCTION", help="a function returning evaluate.Hooks (CSIM/AED/APD/AKD)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-frames", type=int, help="evaluate only the first N target frames")
    e.add_argument("--device", default="auto")
    e.add_argument("--backend", default="auto", choices=("auto", "torch", "cpu", "gsplat"))
    e.add_argument("--name", default="Ours", help="method name in the table")
    e.add_argument("--out", help="also write the Markdown table here")
    e.add_argument("--json", help="also write the raw results here")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("build-dataset", help="track videos into a plain training dataset")
    b.add_argument("videos", nargs="+")
    b.add_argument("-o", "--output", required=True, help="dataset folder")
    b.add_argument("--frames", type=int, default=75, help="frames sampled per video (paper: 25-75)")
    b.add_argument("--val", type=int, default=0, help="videos put in the val split")
    b.add_argument("--test", type=int, default=0, help="videos put in the test split")
    b.add_argument("--assets", metavar="DIR", help="asset folder with FLAME_with_eye.pt")
    b.set_defaults(func=cmd_build_dataset)

    c = sub.add_parser("train-config", help="print the default training config (TOML)")
    c.set_defaults(func=cmd_train_config)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m gagavatar.engine.training",
                                     description="GAGAvatar training, evaluation and datasets")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))
