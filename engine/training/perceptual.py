"""Perceptual networks: GAGAvatar's training loss (VGG-Face + AlexNet) and the LPIPS metric.

:class:`FacePerceptualLoss` reproduces the official ``core/libs/utils_perceptual.py`` loss
(``loss_type='l1', weighted=True``) with the official parameter names, so the ``percep_loss.*``
entries of ``GAGAvatar.pt`` load into it with ``strict=True``:

* ``vggface.network.{0..30}``: VGG16 ``features`` (convolutions at 0, 2, 5, 7, 10, 12, 14, 17,
  19, 21, 24, 26, 28) with VGG-Face weights; the outputs of the ReLUs 1, 6, 11, 18 and 25
  (``relu_1_1 .. relu_5_1``) are compared, on ``255 * image - (129.19, 104.76, 93.59)``;
* ``net.slice{1..5}``: torchvision's AlexNet ``features`` split after ReLUs 1, 4, 7, 9 and 11
  (module names keep torchvision's indices), on ImageNet-normalised images.

Per level ``l``: features are L2-normalised over channels, the absolute difference is summed over
channels and averaged; ``loss = sum_l w_l (alex_l + 0.5 vgg_l)``, ``w = (0.1, 0.1, 1, 1, 1)``.
The convolutions after ``relu_5_1`` (26, 28) are in the state dict but never run.

:class:`LPIPS` is LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018): the same AlexNet
features plus five 1x1 ``lin{l}.model.1`` layers. GAGAvatar's checkpoint holds the AlexNet but not
the ``lin`` layers; they come from LPIPS's ``weights/v0.1/alex.pth``.

Weight files are read with ``torch.load(weights_only=True)``; :func:`perceptual_state_dict`
accepts the official checkpoint, VGG-Face's ``vgg_face_dag.pth`` and torchvision's AlexNet file.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import PERCEPTUAL_PREFIX
from ..errors import AssetError
from ..safe_load import load_torch

ALEX_CHANNELS = (64, 192, 384, 256, 256)
LEVEL_WEIGHTS = (0.1, 0.1, 1.0, 1.0, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE_MEAN = (129.186279296875, 104.76238250732422, 93.59396362304688)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

#: VGG16 ``features`` layout: output channels per conv, "M" = 2x2 max pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: Indices (in ``features``) of the ReLUs compared by the loss: relu_1_1, relu_2_1, relu_3_1, relu_4_1, relu_5_1.
VGG_TAPS = (1, 6, 11, 18, 25)
#: VGG-Face ``vgg_face_dag.pth`` conv names by ``features`` index.
VGGFACE_DAG_NAMES = {0: "conv1_1", 2: "conv1_2", 5: "conv2_1", 7: "conv2_2", 10: "conv3_1", 12: "conv3_2",
                     14: "conv3_3", 17: "conv4_1", 19: "conv4_2", 21: "conv4_3", 24: "conv5_1", 26: "conv5_2",
                     28: "conv5_3"}
#: AlexNet slices: (slice name, torchvision ``features`` indices).
_ALEX_SLICES = (("slice1", (0, 1)), ("slice2", (2, 3, 4)), ("slice3", (5, 6, 7)), ("slice4", (8, 9)),
                ("slice5", (10, 11)))

WEIGHTS_REMEDY = ("pass the official GAGAvatar.pt (it holds percep_loss.*), or VGG-Face's vgg_face_dag.pth "
                  "together with torchvision's alexnet-owt-7be5be79.pth")
LPIPS_REMEDY = ("pass LPIPS v0.1 alex.pth (weights/v0.1/alex.pth of the lpips package) for the lin layers and "
                "AlexNet weights (the official GAGAvatar.pt or torchvision's alexnet-owt-7be5be79.pth)")


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


def _alexnet_layer(index: int) -> nn.Module:
    convs = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
             10: (256, 256, 3, 1, 1)}
    if index in convs:
        cin, cout, k, s, p = convs[index]
        return nn.Conv2d(cin, cout, k, stride=s, padding=p)
    if index in (2, 5):
        return nn.MaxPool2d(3, 2)
    return nn.ReLU()


class VGGFaceFeatures(nn.Module):
    """VGG16 features (``network.*``) returning the five ``relu_k_1`` maps of ``[B, 3, H, W]`` input."""

    def __init__(self):
        super().__init__()
        self.network = _vgg16_features()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.network[:VGG_TAPS[-1] + 1]):
            x = layer(x)
            if i in VGG_TAPS:
                out.append(x)
        return out


class AlexNetFeatures(nn.Module):
    """AlexNet features in five slices (``slice{1..5}.{torchvision index}``); returns their outputs."""

    def __init__(self):
        super().__init__()
        for name, indices in _ALEX_SLICES:
            block = nn.Sequential()
            for i in indices:
                block.add_module(str(i), _alexnet_layer(i))
            self.add_module(name, block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for name, _ in _ALEX_SLICES:
            x = getattr(self, name)(x)
            out.append(x)
        return out


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """L2-normalise ``[B, C, H, W]`` over channels (as LPIPS' ``normalize_tensor``)."""
    return features / (torch.sqrt(torch.sum(features ** 2, dim=1, keepdim=True)) + eps)


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FacePerceptualLoss(nn.Module):
    """GAGAvatar's perceptual loss between two ``[B, 3, H, W]`` batches in 0..1 (a scalar).

    Frozen and always in eval mode. Gradients flow to the inputs.
    """

    def __init__(self):
        super().__init__()
        self.vggface = VGGFaceFeatures()
        self.net = AlexNetFeatures()
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("vggface_mean", torch.tensor(VGGFACE_MEAN).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def train(self, mode: bool = True) -> "FacePerceptualLoss":
        """Stays in eval mode (as the official loss, which calls ``eval()`` on every forward)."""
        return super().train(False)

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        alex0 = self.net((image0 - self.imagenet_mean) / self.imagenet_std)
        alex1 = self.net((image1 - self.imagenet_mean) / self.imagenet_std)
        vgg0 = self.vggface(image0 * 255.0 - self.vggface_mean)
        vgg1 = self.vggface(image1 * 255.0 - self.vggface_mean)
        loss = image0.new_zeros(())
        for w, a0, a1, v0, v1 in zip(LEVEL_WEIGHTS, alex0, alex1, vgg0, vgg1):
            loss = loss + (_unit(a0) - _unit(a1)).abs().sum(1).mean() * w
            loss = loss + (_unit(v0) - _unit(v1)).abs().sum(1).mean() * (w * 0.5)
        return loss


class LPIPS(nn.Module):
    """LPIPS v0.1 (AlexNet): ``forward(a, b)`` with ``[B, 3, H, W]`` images in 0..1 -> ``[B]`` distances."""

    def __init__(self):
        super().__init__()
        self.net = AlexNetFeatures()
        for i, c in enumerate(ALEX_CHANNELS):
            self.add_module(f"lin{i}", nn.Module())
            getattr(self, f"lin{i}").model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def train(self, mode: bool = True) -> "LPIPS":
        """Stays in eval mode (no dropout)."""
        return super().train(False)

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        f0 = self.net(((image0 * 2.0 - 1.0) - self.shift) / self.scale)
        f1 = self.net(((image1 * 2.0 - 1.0) - self.shift) / self.scale)
        total = image0.new_zeros(image0.shape[0])
        for i, (a, b) in enumerate(zip(f0, f1)):
            d = getattr(self, f"lin{i}").model((_unit(a) - _unit(b)) ** 2)
            total = total + d.mean(dim=(1, 2, 3))
        return total


# ------------------------------------------------------------------------------ weight files
def read_weights(path: str | os.PathLike, remedy: str) -> Mapping[str, torch.Tensor]:
    """A flat ``name -> tensor`` mapping from a torch file (``weights_only``; ``{'model': ...}`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"weights file {path} not found: {remedy}")
    obj = load_torch(path, remedy, "torch weights file", mmap=zipfile.is_zipfile(path))
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AssetError(f"{path} is not a state dict of tensors: {remedy}")
    return obj


def _convert(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the entries of one known file layout to :class:`FacePerceptualLoss` / :class:`LPIPS` names."""
    out: dict[str, torch.Tensor] = {}
    for k, v in weights.items():
        if k.startswith(PERCEPTUAL_PREFIX):
            out[k[len(PERCEPTUAL_PREFIX):]] = v
        elif k.startswith(("vggface.network.", "net.slice", "lin")):
            out[k] = v
    if "conv1_1.weight" in weights:                                          # vgg_face_dag.pth
        for i, name in VGGFACE_DAG_NAMES.items():
            for p in ("weight", "bias"):
                out[f"vggface.network.{i}.{p}"] = weights[f"{name}.{p}"]
    if "features.0.weight" in weights and tuple(weights["features.0.weight"].shape) == (64, 3, 11, 11):
        for name, indices in _ALEX_SLICES:                                   # torchvision alexnet
            for i in indices:
                for p in ("weight", "bias"):
                    if f"features.{i}.{p}" in weights:
                        out[f"net.{name}.{i}.{p}"] = weights[f"features.{i}.{p}"]
    return out


def perceptual_state_dict(sources: Sequence[str | os.PathLike | Mapping[str, torch.Tensor]],
                          module: nn.Module, remedy: str = WEIGHTS_REMEDY) -> dict[str, torch.Tensor]:
    """Collect ``module``'s state dict from weight files or state dicts (later sources win).

    Understood layouts: GAGAvatar checkpoints (``percep_loss.*``), our own names, VGG-Face's
    ``vgg_face_dag.pth`` (``conv1_1.weight`` ...), torchvision's AlexNet (``features.N.*``) and LPIPS'
    ``alex.pth`` (``lin{l}.model.1.weight``). Raises :class:`AssetError` naming what is missing.
    """
    found: dict[str, torch.Tensor] = {}
    for src in sources:
        found.update(_convert(src if isinstance(src, Mapping) else read_weights(src, remedy)))
    expected = module.state_dict()
    missing = [k for k in expected if k not in found]
    if missing:
        parts = sorted({k.split(".")[0] for k in missing})
        raise AssetError(f"the perceptual weights lack {len(missing)} entries ({', '.join(parts)}): {remedy}")
    wrong = [k for k in expected if tuple(found[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise AssetError(f"perceptual weight {wrong[0]} has shape {list(found[wrong[0]].shape)}, expected "
                         f"{list(expected[wrong[0]].shape)}: {remedy}")
    return {k: found[k].float() for k in expected}


def load_face_perceptual(*sources, device="cpu") -> FacePerceptualLoss:
    """:class:`FacePerceptualLoss` with weights from ``sources`` (see :func:`perceptual_state_dict`)."""
    loss = FacePerceptualLoss()
    loss.load_state_dict(perceptual_state_dict(sources, loss), strict=True)
    return loss.to(device)


def load_lpips(*sources, device="cpu") -> LPIPS:
    """:class:`LPIPS` with the AlexNet (e.g. from ``GAGAvatar.pt``) and the ``lin`` layers (``alex.pth``)."""
    metric = LPIPS()
    metric.load_state_dict(perceptual_state_dict(sources, metric, LPIPS_REMEDY), strict=True)
    return metric.to(device)


def official_state_dict(loss: FacePerceptualLoss) -> dict[str, torch.Tensor]:
    """``loss``'s weights under the official ``percep_loss.*`` names (for ``save_official``)."""
    return {PERCEPTUAL_PREFIX + k: v for k, v in loss.state_dict().items()}
