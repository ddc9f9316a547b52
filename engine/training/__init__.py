"""Training, fine-tuning and evaluation of GAGAvatar as in the paper (see docs/TRAINING.md).

Modules:

* :mod:`.config`: the settings (TOML/YAML) with the paper's defaults;
* :mod:`.datasets`: tracked frames in the official layout (LMDB + optim.pkl) or ours, pair sampling;
* :mod:`.build`: a plain dataset from videos with our tracker;
* :mod:`.forward`: the differentiable reenactment pass (source image -> target render);
* :mod:`.losses`: L1, face-box, perceptual and lifting-distance losses (official ``calc_metrics``);
* :mod:`.perceptual`: VGG-Face + AlexNet perceptual loss (official weights) and LPIPS;
* :mod:`.trainer`: the resumable training loop and checkpoints;
* :mod:`.distributed`: several processes (GPUs, machines) launched by torchrun;
* :mod:`.metrics`, :mod:`.evaluate`: PSNR/SSIM/LPIPS (+ CSIM/AED/APD/AKD hooks), the results table;
* :mod:`.tiny`: a small model with the same interface for CPU runs and tests;
* :mod:`.cli`: ``python -m gagavatar.engine.training train|evaluate|build-dataset|train-config``.
"""
from .._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(globals(), {
    "Config": ".config", "load_config": ".config",
    "open_dataset": ".datasets", "PairDataset": ".datasets", "TrainPairSampler": ".datasets",
    "evaluation_pairs": ".datasets",
    "build_dataset": ".build",
    "reenact": ".forward",
    "gagavatar_losses": ".losses", "lifting_loss": ".losses",
    "FacePerceptualLoss": ".perceptual", "LPIPS": ".perceptual", "load_face_perceptual": ".perceptual",
    "load_lpips": ".perceptual",
    "Trainer": ".trainer", "prepare_run": ".trainer", "load_trained_model": ".trainer",
    "evaluate_reenactment": ".evaluate", "format_table": ".evaluate", "Hooks": ".evaluate",
    "TinyGAGAvatar": ".tiny",
    "add_subcommands": ".cli",
})
