"""Training and evaluation (engine/training): data, losses, metrics, the loop, resume, CLI.

Everything runs on the CPU with TinyGAGAvatar on a synthetic dataset made here: FLAME-driven
(synthetic FLAME) renders of coloured Gaussians at the mesh vertices, with known tracks.
"""
import csv
import json
import math
import pickle
import tomllib

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from gagavatar.engine.cameras import FOCAL, transform_from_pose, transform_to_opencv
from gagavatar.engine.errors import GAGAvatarError
from gagavatar.engine.flame import load_flame
from gagavatar.engine.sequence import DrivingSequence, save_sequence
from gagavatar.engine.splatting.rasterize import render_gaussians
from gagavatar.engine.training import cli, metrics
from gagavatar.engine.training.config import Config, config_from_dict, load_config, to_toml
from gagavatar.engine.training.datasets import (PairDataset, TrainPairSampler, evaluation_pairs, open_dataset)
from gagavatar.engine.training.evaluate import Hooks, evaluate_reenactment, format_table
from gagavatar.engine.training.forward import reenact
from gagavatar.engine.training.losses import (LossWeights, crop_resize, expand_bbox, gagavatar_losses,
                                              lifting_loss, nearest_indices)
from gagavatar.engine.training.trainer import Trainer, load_trained_model, parameter_groups, read_state

SIZE = 64


@pytest.fixture(scope="module")
def flame(flame_asset):
    return load_flame(flame_asset)


def _render_video(flame, shape, frames, gen):
    """Frames ``[T, H, W, 3]`` uint8 and the DrivingSequence of one synthetic video."""
    with torch.no_grad():
        rest = flame(shape=torch.zeros(1, 300))[0]
        colors = torch.sigmoid(3 * torch.stack([torch.sin(6 * rest[:, 0]), torch.cos(5 * rest[:, 1]),
                                                torch.sin(4 * rest[:, 2] + 3 * rest[:, 1])], -1))
        exp = torch.randn(frames, 100, generator=gen) * 0.5
        jaw = torch.zeros(frames, 3)
        jaw[:, 0] = torch.rand(frames, generator=gen) * 0.2
        aa = torch.zeros(frames, 3)
        aa[:, 1] = (torch.rand(frames, generator=gen) - 0.5) * 0.6
        tr = transform_from_pose(aa, torch.tensor([0.0, 0.0, 9.5]).expand(frames, 3))
        verts = flame(shape=shape[None].expand(frames, -1), expression=exp,
                      pose=torch.cat([torch.zeros(frames, 3), jaw], 1))
        n = verts.shape[1]
        r = render_gaussians({"xyz": verts, "colors": colors[None].expand(frames, -1, -1),
                              "opacities": torch.full((frames, n, 1), 0.9), "scales": torch.full((frames, n, 3), 0.03),
                              "rotations": torch.tensor([1.0, 0, 0, 0]).expand(frames, n, 4)},
                             tr, size=(SIZE, SIZE), backend="torch")
        view, K = transform_to_opencv(tr, FOCAL, (SIZE, SIZE))
        pix = (verts @ view[:, :3, :3].transpose(1, 2) + view[:, None, :3, 3]) @ K.transpose(1, 2)
        pix = pix[..., :2] / pix[..., 2:]
        bbox = torch.cat([pix.amin(1), pix.amax(1)], 1) / SIZE
    images = (r.features.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    seq = DrivingSequence(expression=exp, jaw=jaw, eyes=torch.zeros(frames, 6), transform=tr, shape=shape, bbox=bbox)
    return images, seq


def make_plain_dataset(root, flame, videos=2, frames=6, seed=0, splits=None):
    gen = torch.Generator().manual_seed(seed)
    for v in range(videos):
        images, seq = _render_video(flame, torch.randn(300, generator=gen) * 0.5, frames, gen)
        d = root / f"vid{v}"
        (d / "frames").mkdir(parents=True)
        for t, img in enumerate(images):
            cv2.imwrite(str(d / "frames" / f"{t:04d}.png"), img[..., ::-1])
        save_sequence(seq, d / "sequence.npz")
    if splits is not None:
        (root / "dataset.json").write_text(json.dumps(splits))
    return root


@pytest.fixture(scope="module")
def plain_root(tmp_path_factory, flame):
    return make_plain_dataset(tmp_path_factory.mktemp("plain"), flame,
                              splits={"train": ["vid0", "vid1"], "val": ["vid0"], "test": ["vid0", "vid1"]})


@pytest.fixture(scope="module")
def one_identity(tmp_path_factory, flame):
    return make_plain_dataset(tmp_path_factory.mktemp("one"), flame, videos=1, frames=6, seed=3)


def tiny_config(root, out, iterations, **train):
    cfg = Config()
    cfg.model.kind = "tiny"
    cfg.data.root, cfg.data.num_workers, cfg.data.val_frames = str(root), 0, 0
    cfg.loss.percep = 0.0
    cfg.optim.lr = 1e-3
    t = cfg.train
    t.out_dir, t.iterations, t.batch_size, t.log_every, t.checkpoint_every, t.device = str(out), iterations, 2, 1, 1000, "cpu"
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def _log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ losses
def test_lifting_loss_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(2, 300, 3, generator=gen)
    dst = (torch.randn(2, 2000, 3, generator=gen) * 1.5).requires_grad_()
    d2 = ((src.double()[:, :, None] - dst.detach().double()[:, None]) ** 2).sum(-1)
    expected_idx = d2.argmin(-1)
    expected = (d2.min(-1).values * 10).mean()
    assert torch.equal(nearest_indices(src, dst, chunk=5000), expected_idx)   # several chunks
    assert torch.equal(nearest_indices(src, dst), expected_idx)
    loss = lifting_loss(src, dst)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    used = torch.zeros(2, 2000, dtype=torch.bool)
    used.scatter_(1, expected_idx, True)
    assert (dst.grad.abs().sum(-1) > 0).eq(used).all()   # gradient only on the chosen lifted points


def test_expand_bbox_and_crop():
    box = torch.tensor([[0.4, 0.3, 0.6, 0.7]])
    side = math.sqrt(0.2 * 0.4) * 1.1
    assert torch.allclose(expand_bbox(box), torch.tensor([[0.5 - side / 2, 0.5 - side / 2, 0.5 + side / 2,
                                                           0.5 + side / 2]]))
    near_edge = expand_bbox(torch.tensor([[0.0, 0.0, 0.2, 0.2]]))   # shrunk to stay inside the image
    assert torch.allclose(near_edge, torch.tensor([[0.0, 0.0, 0.2, 0.2]]), atol=1e-6)
    img = torch.rand(1, 3, 32, 32)
    assert torch.allclose(crop_resize(img, torch.tensor([[0, 0, 32, 32]]), 32), img, atol=1e-6)
    assert torch.allclose(crop_resize(img, torch.tensor([[8, 4, 24, 20]]), 16), img[..., 4:20, 8:24], atol=1e-6)


def test_loss_terms_vanish_for_a_perfect_render_and_sum_up():
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(2, 3, 32, 32, generator=gen)
    bbox = torch.tensor([[0.2, 0.2, 0.8, 0.8]] * 2)
    verts = torch.stack([torch.arange(50.0), torch.zeros(50), torch.zeros(50)], -1).expand(2, -1, -1)   # 1 apart
    lifted = torch.cat([verts, torch.randn(2, 30, 3, generator=gen) + 10], 1)
    zero = gagavatar_losses(target, target, target, bbox, verts, lifted, None, LossWeights(percep=0), box_size=16)
    assert all(float(zero[k]) == 0 for k in zero)
    other = gagavatar_losses(target.flip(-1), target * 0.5, target, bbox, verts + 0.1, lifted, None,
                             LossWeights(box=2, percep=0), box_size=16)
    assert float(other["img_loss"]) == pytest.approx(
        float((target.flip(-1) - target).abs().mean() + (target * 0.5 - target).abs().mean()) / 2, rel=1e-6)
    assert float(other["point_loss"]) == pytest.approx(10 * 0.03, rel=1e-4)
    assert float(other["loss"]) == pytest.approx(sum(float(other[k]) for k in
                                                     ("img_loss", "box_loss", "percep_loss", "point_loss")))
    with pytest.raises(ValueError):
        gagavatar_losses(target, target, target, bbox, verts, lifted, None)   # percep on, no network


def test_rasterizer_gradients_match_finite_differences():
    """Training backpropagates through the torch rasterizer: its gradients must be right."""
    gen = torch.Generator().manual_seed(0)
    n = 60
    g = {"xyz": torch.randn(1, n, 3, generator=gen) * 0.4, "colors": torch.rand(1, n, 4, generator=gen),
         "opacities": torch.rand(1, n, 1, generator=gen) * 0.8 + 0.1,
         "scales": torch.rand(1, n, 3, generator=gen) * 0.05 + 0.03, "rotations": torch.randn(1, n, 4, generator=gen)}
    tr = transform_from_pose(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 9.5]]))

    def f(**over):
        return render_gaussians({**g, **over}, tr, size=(24, 24), backend="torch").features.square().sum()

    params = {k: v.clone().requires_grad_() for k, v in g.items()}
    f(**params).backward()
    for key in ("xyz", "colors", "opacities", "scales"):
        grad = params[key].grad
        i = int(grad[0, :, 0].abs().argmax())
        eps = 1e-3
        up, down = g[key].clone(), g[key].clone()
        up[0, i, 0] += eps
        down[0, i, 0] -= eps
        fd = (f(**{key: up}) - f(**{key: down})) / (2 * eps)
        assert float(grad[0, i, 0]) == pytest.approx(float(fd), rel=0.05, abs=1e-2), key


# ------------------------------------------------------------------------------ metrics
def test_psnr_and_ssim_match_skimage():
    gen = torch.Generator().manual_seed(4)
    gt = torch.rand(3, 3, 48, 40, generator=gen)
    gt[1] = torch.linspace(0, 1, 40).expand(3, 48, 40)        # a structured image too
    pred = (gt + 0.08 * torch.randn(gt.shape, generator=gen)).clamp(0, 1)
    pred[2] = gt[2]
    p, s = metrics.psnr(pred, gt), metrics.ssim(pred, gt)
    gray = lambda x: (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).double().numpy()  # noqa: E731
    for i in range(2):
        assert float(p[i]) == pytest.approx(peak_signal_noise_ratio(gt[i].double().numpy(), pred[i].double().numpy(),
                                                                    data_range=1.0), rel=1e-9)
        assert float(s[i]) == pytest.approx(structural_similarity(gray(gt[i]), gray(pred[i]), data_range=1.0,
                                                                  gaussian_weights=True, sigma=1.5,
                                                                  use_sample_covariance=False), abs=1e-9)
    assert math.isinf(float(p[2])) and float(s[2]) == pytest.approx(1.0)


def test_table_has_the_papers_layout():
    table = format_table({"Ours": ({"PSNR": 21.834, "SSIM": 0.8181, "LPIPS": float("nan")}, {"CSIM": 0.6333})})
    lines = table.splitlines()
    assert "Self Reenactment" in lines[0] and "Cross Reenactment" in lines[0]
    assert [c.strip() for c in lines[1].strip("|").split("|")] == [
        "Method", "PSNR↑", "SSIM↑", "LPIPS↓", "CSIM↑", "AED↓", "APD↓", "AKD↓", "CSIM↑", "AED↓", "APD↓"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        "Ours", "21.83", "0.818", "-", "-", "-", "-", "-", "0.633", "-", "-"]


# ------------------------------------------------------------------------------ data
def test_plain_dataset_splits_pairs_and_samples(plain_root, flame):
    data = open_dataset(plain_root)
    assert data.layout == "plain" and sorted(data.videos) == ["vid0", "vid1"]
    assert list(data.split_videos("val")) == ["vid0"]
    sampler = TrainPairSampler(data, "train", batch_size=3, seed=7, start=0, stop=10)
    batches = list(sampler)
    assert len(batches) == 10 and batches == list(TrainPairSampler(data, "train", 3, 7, 0, 10))
    assert list(TrainPairSampler(data, "train", 3, 7, 4, 10)) == batches[4:]          # resumable
    assert batches != list(TrainPairSampler(data, "train", 3, 8, 0, 10))
    for src, tgt in (p for b in batches for p in b):
        assert src != tgt and data.video_of[src] == data.video_of[tgt]
    epoch = [p[1] for b in batches[:4] for p in b]                                  # 12 frames = one epoch
    assert sorted(epoch) == sorted(data.splits["train"])

    self_pairs = evaluation_pairs(data, "test")
    assert self_pairs == [("vid0/0", [f"vid0/{t}" for t in range(1, 6)]), ("vid1/0", [f"vid1/{t}" for t in range(1, 6)])]
    assert [s for s, _ in evaluation_pairs(data, "test", cross=True)] == ["vid1/0", "vid0/0"]

    pairs = PairDataset(data, flame, image_size=32)
    s = pairs[("vid0/1", "vid0/3")]
    assert s["source_image"].shape == (3, 518, 518) and s["target_image"].shape == (3, 32, 32)
    tr = data.tracks["vid0/3"]
    t = lambda a: torch.from_numpy(a)[None]  # noqa: E731
    expected = flame(shape=t(tr.shape), expression=t(tr.expression), pose=t(tr.pose), eyes=t(tr.eyes))[0]
    assert torch.allclose(s["target_vertices"], expected)
    cross = PairDataset(data, flame, 32, identity="source")[("vid1/0", "vid0/3")]
    expected = flame(shape=t(data.tracks["vid1/0"].shape), expression=t(tr.expression), pose=t(tr.pose))[0]
    assert torch.allclose(cross["target_vertices"], expected)


def test_official_layout_is_read(tmp_path, flame):
    import lmdb
    gen = torch.Generator().manual_seed(5)
    records, images = {}, {}
    for video in ("clipA", "clipB"):
        frames, seq = _render_video(flame, torch.randn(300, generator=gen) * 0.5, 3, gen)
        for t in range(3):
            key = f"{video}_{t * 10}"
            images[key] = frames[t]
            records[key] = {"shapecode": seq.shape.numpy(), "expcode": seq.expression[t].numpy(),
                            "posecode": np.concatenate([np.zeros(3, np.float32), seq.jaw[t].numpy()]),
                            "eyecode": seq.eyes[t].numpy(), "transform_matrix": seq.transform[t].numpy(),
                            "bbox": seq.bbox[t].numpy()}
    with open(tmp_path / "optim.pkl", "wb") as f:
        pickle.dump(records, f, protocol=4)
    (tmp_path / "dataset.json").write_text(json.dumps({"train": list(records), "val": [], "test": list(records)}))
    env = lmdb.open(str(tmp_path / "img_lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, img in images.items():
            txn.put(key.encode(), cv2.imencode(".png", img[..., ::-1])[1].tobytes())
    env.close()
    data = open_dataset(tmp_path)
    assert data.layout == "official" and data.videos["clipA"] == ["clipA_0", "clipA_10", "clipA_20"]
    assert np.array_equal(data.images["clipB_20"], images["clipB_20"])
    assert evaluation_pairs(data, "test")[1] == ("clipB_0", ["clipB_10", "clipB_20"])
    assert evaluation_pairs(data, "val") == []
    sample = PairDataset(data, flame, SIZE)[("clipA_0", "clipA_20")]
    assert torch.allclose(sample["target_image"], torch.from_numpy(images["clipA_20"]).permute(2, 0, 1) / 255.0)
    assert torch.equal(sample["target_bbox"], torch.from_numpy(records["clipA_20"]["bbox"]))


def test_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(GAGAvatarError, match="not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(GAGAvatarError, match="build-dataset"):
        open_dataset(tmp_path)
    (tmp_path / "vid" / "frames").mkdir(parents=True)
    save_sequence(DrivingSequence(expression=torch.zeros(2, 100), jaw=torch.zeros(2, 3), eyes=torch.zeros(2, 6),
                                  transform=torch.zeros(2, 3, 4)), tmp_path / "vid" / "sequence.npz")
    with pytest.raises(GAGAvatarError, match="0 frames but its sequence has 2") as err:
        open_dataset(tmp_path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ config
def test_config_defaults_are_the_papers_and_files_override(tmp_path):
    cfg = Config()
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.slow_lr_scale, cfg.optim.lr_end_factor,
            cfg.optim.lr_decay_iters, cfg.train.batch_size, cfg.train.iterations) == (
        1e-4, [0.0, 0.99], 0.1, 0.1, 200_000, 8, 200_000)
    assert config_from_dict(tomllib.loads(to_toml(cfg))) == cfg
    (tmp_path / "c.toml").write_text('[data]\nroot = "ds"\n[train]\niterations = 5\n[optim]\nlr = 2e-4\n')
    loaded = load_config(tmp_path / "c.toml")
    assert loaded.data.root == str(tmp_path / "ds") and loaded.train.iterations == 5 and loaded.optim.lr == 2e-4
    for bad, match in (('[train]\nitrations = 5\n', "unknown setting train.itrations"),
                       ('[train]\niterations = "5"\n', "must be a int"),
                       ('[train]\nprecision = "fp16"\n', "fp32, bf16")):
        (tmp_path / "bad.toml").write_text(bad)
        with pytest.raises(GAGAvatarError, match=match):
            load_config(tmp_path / "bad.toml")


def test_official_parameter_groups():
    from gagavatar.engine.model import GAGAvatar
    with torch.device("meta"):
        model = GAGAvatar()
    normal, slow = parameter_groups(model, 1e-4, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    slow_names = {names[id(p)] for p in slow["params"]}
    assert slow["lr"] == pytest.approx(1e-5) and normal["lr"] == 1e-4
    assert slow_names and all("style_mlp" in n or "final_linear" in n for n in slow_names)
    assert "upsampler.final_linear.weight" in slow_names and "upsampler.stylegan_decoder.style_mlp.1.weight" in slow_names
    optimised = {id(p) for p in normal["params"]} | {id(p) for p in slow["params"]}
    assert not any(id(p) in optimised for p in model.base_model.dino_model.parameters())   # DINOv2 frozen
    assert len(optimised) == sum(1 for n, p in model.named_parameters() if not n.startswith("base_model.dino_model."))


# ------------------------------------------------------------------------------ training
def test_training_lowers_the_loss_and_overfits_one_identity(one_identity, flame, tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_config(one_identity, tmp_path / "run", 36)
    data = open_dataset(one_identity)
    trainer = Trainer(cfg, data=data, flame=flame)
    before = evaluate_reenactment(trainer.model, data, flame, split="train")
    trainer.fit()
    after = evaluate_reenactment(trainer.model, data, flame, split="train")
    rows = _log(tmp_path / "run" / "log.csv")
    loss = [float(r["loss"]) for r in rows]
    assert len(rows) == 36
    assert np.mean(loss[-4:]) < 0.5 * np.mean(loss[:4])
    assert after["frames"] == 5 and after["PSNR"] > before["PSNR"] + 3.0 and after["SSIM"] > before["SSIM"]
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"]) <= 1e-3                     # linear decay
    assert (tmp_path / "run" / "checkpoints" / "state.pt").is_file()                # saved at the end


def test_resume_reproduces_the_uninterrupted_run_exactly(plain_root, flame, tmp_path):
    torch.set_num_threads(2)
    data = open_dataset(plain_root)
    full = Trainer(tiny_config(plain_root, tmp_path / "full", 8, checkpoint_every=4), data, flame)
    full.fit()
    first = Trainer(tiny_config(plain_root, tmp_path / "split", 4), data, flame)
    first.fit()
    state = read_state(tmp_path / "split" / "checkpoints" / "state.pt")
    assert state["iteration"] == 4
    second = Trainer(tiny_config(plain_root, tmp_path / "split", 8), data, flame)
    assert second.resume() == 4
    second.fit()
    a, b = full.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.optimizer.state_dict()["state"][0]["exp_avg_sq"],
                       second.optimizer.state_dict()["state"][0]["exp_avg_sq"])
    assert full.scheduler.state_dict() == second.scheduler.state_dict()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_log(tmp_path / "full" / "log.csv")) == strip(_log(tmp_path / "split" / "log.csv"))
    # a reloaded model renders exactly like the trained one
    model = load_trained_model(tmp_path / "split" / "checkpoints" / "state.pt")
    s = PairDataset(data, flame, SIZE)[("vid0/0", "vid0/2")]
    args = (s["source_image"][None], s["source_transform"][None], s["target_vertices"][None], s["target_transform"][None])
    with torch.no_grad():
        assert torch.equal(reenact(model, *args).image, reenact(second.model.eval(), *args).image)


def test_evaluation_hooks_and_cross_reenactment(plain_root, flame):
    data = open_dataset(plain_root)
    model = load_trained_model_tiny()
    seen = []

    def identity(images):
        seen.append(images.shape)
        return images.mean(dim=(2, 3))
    hooks = Hooks(identity=identity, expression=lambda x: x[:, :, :4, :4].flatten(1),
                  pose=lambda x: x.mean(dim=(1, 2)), keypoints=lambda x: x[:, 0, :5, :2] * 10)
    self_res = evaluate_reenactment(model, data, flame, "test", hooks=hooks, batch_size=4)
    assert self_res["frames"] == 10 and set(self_res) == {"PSNR", "SSIM", "CSIM", "AED", "APD", "AKD", "frames"}
    assert -1 <= self_res["CSIM"] <= 1 and self_res["AED"] >= 0
    cross = evaluate_reenactment(model, data, flame, "test", cross=True, hooks=hooks, max_frames=3)
    assert cross["frames"] == 3 and set(cross) == {"CSIM", "AED", "APD", "frames"}
    assert all(s[-1] == SIZE for s in seen)


def load_trained_model_tiny():
    from gagavatar.engine.training.tiny import TinyGAGAvatar
    torch.manual_seed(0)
    return TinyGAGAvatar(render_size=SIZE).eval()


def test_cli_train_resume_and_evaluate(plain_root, flame_asset, tmp_path, capsys):
    torch.set_num_threads(2)
    (tmp_path / "c.toml").write_text(
        f'[model]\nkind = "tiny"\n[data]\nroot = "{plain_root}"\nflame = "{flame_asset}"\nnum_workers = 0\n'
        f'val_frames = 2\n[loss]\npercep = 0.0\n[train]\nout_dir = "run"\niterations = 2\nbatch_size = 2\n'
        f'log_every = 1\ndevice = "cpu"\n')
    assert cli.main(["train", str(tmp_path / "c.toml")]) == 0
    assert len(_log(tmp_path / "run" / "val.csv")) == 1
    assert cli.main(["train", str(tmp_path / "c.toml")]) == 2                           # would overwrite
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "c.toml"), "--resume", "--set", "train.iterations=3"]) == 0
    assert [r["iteration"] for r in _log(tmp_path / "run" / "log.csv")] == ["1", "2", "3"]
    capsys.readouterr()
    state = str(tmp_path / "run" / "checkpoints" / "state.pt")
    assert cli.main(["evaluate", "--model", state, "--data", str(plain_root), "--flame", str(flame_asset),
                     "--max-frames", "2", "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "Self Reenactment" in out and "| Ours |" in out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["self"]["frames"] == 2 and results["cross"]["frames"] == 2
    assert cli.main(["train-config"]) == 0
    assert config_from_dict(tomllib.loads(capsys.readouterr().out)) == Config()
    (tmp_path / "c.toml").write_text('[model]\nkind = "tiny"\n[loss]\npercep = 0.0\n')
    assert cli.main(["train", str(tmp_path / "c.toml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_step_with_the_official_perceptual_weights(plain_root, flame, official_checkpoint, tmp_path):
    from gagavatar.engine.training.perceptual import load_face_perceptual
    cfg = tiny_config(plain_root, tmp_path / "run", 1)
    cfg.loss.percep = 1.0
    trainer = Trainer(cfg, open_dataset(plain_root), flame, perceptual=load_face_perceptual(official_checkpoint))
    before = {k: v.clone() for k, v in trainer.perceptual.state_dict().items()}
    trainer.fit()
    row = _log(tmp_path / "run" / "log.csv")[0]
    assert float(row["percep_loss"]) > 0
    assert float(row["loss"]) == pytest.approx(sum(float(row[k]) for k in ("img_loss", "box_loss", "percep_loss",
                                                                            "point_loss")), rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in trainer.perceptual.state_dict().items())   # frozen


def test_bf16_autocast_step(plain_root, flame, tmp_path):
    cfg = tiny_config(plain_root, tmp_path / "run", 2, precision="bf16")
    trainer = Trainer(cfg, open_dataset(plain_root), flame)
    trainer.fit()
    rows = _log(tmp_path / "run" / "log.csv")
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
