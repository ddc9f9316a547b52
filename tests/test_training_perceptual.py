"""Perceptual loss, LPIPS and fine-tuning exports against the official-format checkpoint."""
import pytest
import torch
from torch import nn

from gagavatar.engine.checkpoints import PERCEPTUAL_PREFIX, load_model, read_checkpoint, split_perceptual
from gagavatar.engine.errors import AssetError
from gagavatar.engine.training.config import Config
from gagavatar.engine.training.perceptual import (ALEX_CHANNELS, VGGFACE_DAG_NAMES, load_face_perceptual,
                                                  load_lpips, official_state_dict)


@pytest.fixture(scope="module")
def percep_sd(official_checkpoint):
    return split_perceptual(read_checkpoint(official_checkpoint)[0])[1]


@pytest.fixture(scope="module")
def loss(official_checkpoint):
    return load_face_perceptual(official_checkpoint)


def _reference(sd, img0, img1):
    """The official FacePerceptualLoss forward, written the way torchvision builds the networks
    (all 31 VGG layers run, in-place ReLUs, AlexNet features 0-11 in slices)."""
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        layers += [nn.MaxPool2d(2, 2)] if v == "M" else [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
        cin = v if v != "M" else cin
    vgg = nn.Sequential(*layers)
    vgg.load_state_dict({k[len("percep_loss.vggface.network."):]: v for k, v in sd.items() if ".vggface." in k})
    alex = nn.Sequential(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2),
                         nn.ReLU(True), nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
                         nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True), nn.Conv2d(256, 256, 3, padding=1),
                         nn.ReLU(True), nn.MaxPool2d(3, 2))
    alex.load_state_dict({k.split(".", 3)[3]: v for k, v in sd.items() if ".net.slice" in k})
    taps = {1: 0, 6: 1, 11: 2, 18: 3, 25: 4}

    def run_vgg(x):
        out = [None] * 5
        for i, layer in enumerate(vgg):
            x = layer(x)
            if i in taps:
                out[taps[i]] = x
        return out

    def run_alex(x):
        out = []
        for start, stop in ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)):
            for layer in alex[start:stop]:
                x = layer(x)
            out.append(x)
        return out
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    vmean = torch.tensor([129.186279296875, 104.76238250732422, 93.59396362304688]).view(1, 3, 1, 1)
    a0, a1 = run_alex((img0 - mean) / std), run_alex((img1 - mean) / std)
    v0, v1 = run_vgg(img0 * 255 - vmean), run_vgg(img1 * 255 - vmean)
    norm = lambda f: f / (torch.sqrt((f ** 2).sum(1, keepdim=True)) + 1e-10)  # noqa: E731
    total = 0
    for w, x0, x1, y0, y1 in zip((0.1, 0.1, 1.0, 1.0, 1.0), a0, a1, v0, v1):
        total = total + (norm(x0) - norm(x1)).abs().sum(1, keepdim=True).mean() * w
        total = total + (norm(y0) - norm(y1)).abs().sum(1, keepdim=True).mean() * w * 0.5
    return total


def test_official_perceptual_weights_load_strictly_and_the_loss_behaves(loss, percep_sd):
    assert official_state_dict(loss).keys() == percep_sd.keys()
    assert all(torch.equal(official_state_dict(loss)[k], percep_sd[k]) for k in percep_sd)
    assert not any(p.requires_grad for p in loss.parameters())
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 96, 96, generator=gen)
    b = (a + 0.2 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    assert float(loss(a, a)) == 0.0
    x = b.clone().requires_grad_()
    value = loss(x, a)
    assert float(value.detach()) > 0
    value.backward()
    assert x.grad.abs().sum() > 0
    loss.train()
    assert not loss.training
    with torch.no_grad():
        assert float(loss(b, a)) == pytest.approx(float(_reference(percep_sd, b, a)), rel=1e-4)


def test_perceptual_weights_from_the_original_files(percep_sd, loss):
    """VGG-Face's vgg_face_dag.pth names + torchvision's AlexNet names give the same network."""
    dag, tv = {}, {}
    for i, name in VGGFACE_DAG_NAMES.items():
        for p in ("weight", "bias"):
            dag[f"{name}.{p}"] = percep_sd[f"{PERCEPTUAL_PREFIX}vggface.network.{i}.{p}"]
    dag["fc8.weight"] = torch.zeros(2622, 4096)
    for k, v in percep_sd.items():
        if ".net.slice" in k:
            tv["features." + k.split(".", 3)[3]] = v
    tv["classifier.1.weight"] = torch.zeros(4096, 9216)
    rebuilt = load_face_perceptual(dag, tv)
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in loss.state_dict().items())
    with pytest.raises(AssetError, match="lack 26 entries .*vggface.*alexnet") as err:
        load_face_perceptual(tv)
    assert "\n" not in str(err.value)


def test_lpips_uses_the_checkpoints_alexnet_and_needs_its_lin_layers(official_checkpoint, tmp_path):
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(ALEX_CHANNELS)}
    torch.save(lin, tmp_path / "alex.pth")
    metric = load_lpips(official_checkpoint, tmp_path / "alex.pth")
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 64, 64, generator=gen)
    b = a.flip(-1)
    d = metric(a, b)
    assert d.shape == (3,) and (d > 0).all() and torch.equal(metric(a, a), torch.zeros(3))
    # LPIPS: sum over levels of the spatial mean of w_l . (unit(f0) - unit(f1))^2, inputs mapped to [-1, 1]
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    f0, f1 = metric.net((2 * a - 1 - shift) / scale), metric.net((2 * b - 1 - shift) / scale)
    unit = lambda f: f / (f.norm(dim=1, keepdim=True) + 1e-10)  # noqa: E731
    manual = sum(((unit(x) - unit(y)) ** 2 * lin[f"lin{i}.model.1.weight"]).sum(1).mean((1, 2))
                 for i, (x, y) in enumerate(zip(f0, f1)))
    assert torch.allclose(d, manual, rtol=1e-5)
    with pytest.raises(AssetError, match="lin.*alex.pth"):
        load_lpips(official_checkpoint)


def test_finetuning_from_the_official_checkpoint_exports_both_formats(official_checkpoint, flame_asset, tmp_path,
                                                                      percep_sd):
    from gagavatar.engine.flame import load_flame
    from gagavatar.engine.training.datasets import TrackedFrames
    from gagavatar.engine.training.trainer import Trainer
    cfg = Config()
    cfg.model.init = str(official_checkpoint)
    cfg.train.out_dir, cfg.train.device = str(tmp_path / "run"), "cpu"
    empty = TrackedFrames({}, None, {}, {}, {"train": []}, tmp_path, "plain")
    trainer = Trainer(cfg, data=empty, flame=load_flame(flame_asset))     # perceptual weights from model.init
    assert trainer.perceptual is not None
    official, compact = trainer.export()
    sd, meta = read_checkpoint(official)
    assert meta["OPTIMIZE"] == {"NAME": "Adam", "LR_DECAY_RATE": 0.1, "LR_DECAY_ITER": 200000, "LEARNING_RATE": 1e-4}
    model_sd, exported_percep = split_perceptual(sd)
    assert exported_percep.keys() == percep_sd.keys()
    reference = trainer.model.state_dict()
    assert all(torch.equal(model_sd[k], reference[k]) for k in reference)
    reloaded = load_model(compact)
    assert all(torch.equal(v, reference[k]) for k, v in reloaded.state_dict().items())
