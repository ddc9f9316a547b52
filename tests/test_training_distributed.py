"""Data-parallel training (engine/training/distributed.py): torchrun, DDP over gloo on the CPU.

Two processes with a global batch of 4 (2 each) must train what one process with a batch of 4
trains, and a resumed two-process run must be the uninterrupted one bit for bit. NCCL (CUDA) is
the same code with another backend; it needs GPUs and is not run here.
"""
import csv
import subprocess
import sys

import pytest
import torch

from gagavatar.engine.errors import GAGAvatarError
from gagavatar.engine.flame import load_flame
from gagavatar.engine.networks.noise import fresh_noise, global_batch_rows
from gagavatar.engine.training import cli
from gagavatar.engine.training.config import load_config, to_toml
from gagavatar.engine.training.datasets import TrainPairSampler, open_dataset, shard_size
from gagavatar.engine.training.distributed import Launch, torchrun_launch
from gagavatar.engine.training.losses import LossWeights, gagavatar_losses
from gagavatar.engine.training.perceptual import FacePerceptualLoss
from gagavatar.engine.training.trainer import Trainer, build_model, read_state
from tests.test_training import make_plain_dataset, tiny_config

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, flame_asset):
    return make_plain_dataset(tmp_path_factory.mktemp("plain"), load_flame(flame_asset))


def _config(tmp_path, name, root, flame_asset, iterations):
    """A tiny run's config file writing to ``tmp_path/name``: official lr, global batch 4."""
    cfg = tiny_config(root, tmp_path / name, iterations, batch_size=4)
    cfg.optim.lr = 1e-4
    cfg.data.flame = str(flame_asset)
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(cfg))
    return path


def _torchrun(config, logs, *args):
    """``gagavatar train`` in two gloo processes; returns each rank's (stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--log-dir", str(logs), "--redirects", "3", "-m", "gagavatar", "train", str(config), *args],
                          capture_output=True, text=True, timeout=300)
    out = {r: tuple(next(logs.glob(f"*/attempt_0/{r}/{s}.log")).read_text() for s in ("stdout", "stderr"))
           for r in (0, 1)}
    assert proc.returncode == 0, f"{proc.stderr[-1500:]}\n{out[0][1][-1500:]}\n{out[1][1][-1500:]}"
    return out


def _losses(run):
    with open(run / "log.csv", newline="") as f:
        return [(r["iteration"], [float(r[k]) for k in ("loss", "img_loss", "box_loss", "point_loss", "psnr")])
                for r in csv.DictReader(f)]


def _gradient(state):
    """The last step's gradient of every parameter, flattened: Adam's ``exp_avg`` with ``betas[0] = 0``."""
    assert state["config"]["optim"]["betas"][0] == 0
    return torch.cat([s["exp_avg"].flatten() for _, s in sorted(state["optimizer"]["state"].items())])


def test_a_torchrun_launch_is_read_from_the_environment(monkeypatch):
    assert torchrun_launch({}) is None
    launch = torchrun_launch(TORCHRUN_ENV)
    assert launch == Launch(rank=1, world_size=2, local_rank=1) and not launch.is_main
    assert launch.device(torch.device("cpu")) == torch.device("cpu")
    assert launch.device(torch.device("cuda")) == torch.device("cuda", 1)       # LOCAL_RANK picks the GPU
    for env, match in (({"RANK": "0"}, "not WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"),
                       ({**TORCHRUN_ENV, "RANK": "2"}, "outside WORLD_SIZE=2")):
        with pytest.raises(GAGAvatarError, match=match) as err:
            torchrun_launch(env)
        assert "\n" not in str(err.value)
    with pytest.raises(GAGAvatarError, match="LOCAL_RANK"):
        launch.device(torch.device("cuda", 0))
    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(GAGAvatarError, match="not joined to the other processes"):   # no process group
        Trainer(tiny_config("", "", 1))


def test_each_rank_gets_its_consecutive_share_of_the_global_batch(data_root):
    data = open_dataset(data_root)
    whole = list(TrainPairSampler(data, "train", 4, 7, 2, 6))
    for world in (2, 4):
        shares = [list(TrainPairSampler(data, "train", 4, 7, 2, 6, rank, world)) for rank in range(world)]
        assert all(len(s) == 4 and len(s[0]) == 4 // world for s in shares)
        assert [sum((s[i] for s in shares), []) for i in range(4)] == whole
    with pytest.raises(GAGAvatarError, match="train.batch_size = 6 is the global batch, split over 4") as err:
        shard_size(6, 4)
    assert "\n" not in str(err.value)


def test_each_rank_draws_its_rows_of_the_global_batch_noise():
    features = torch.zeros(4, 8, 6, 5)
    torch.manual_seed(3)
    whole = fresh_noise(features)
    after = torch.get_rng_state()
    rows = []
    for rank in range(2):
        torch.manual_seed(3)
        with global_batch_rows(2 * rank, 4):
            rows.append(fresh_noise(features[:2]))
        assert torch.equal(torch.get_rng_state(), after)      # the generator advanced as one process's
    assert whole.shape == (4, 1, 6, 5) and torch.equal(torch.cat(rows), whole)


def test_the_losses_of_equal_shards_average_to_the_loss_of_the_batch():
    """Every term is a per-sample mean: averaging the shards' gradients is exact."""
    gen = torch.Generator().manual_seed(5)
    target, coarse, fine = (torch.rand(4, 3, 32, 32, generator=gen) for _ in range(3))
    bbox = torch.tensor([[0.2, 0.1, 0.8, 0.9], [0.0, 0.0, 0.5, 0.6], [0.3, 0.3, 0.7, 0.7], [0.1, 0.4, 1.0, 0.9]])
    verts, lifted = torch.randn(4, 50, 3, generator=gen), torch.randn(4, 80, 3, generator=gen)
    perceptual = FacePerceptualLoss()
    weights = LossWeights(box=2.0, percep=1.0, point=0.5)

    def terms(s):
        return gagavatar_losses(coarse[s], fine[s], target[s], bbox[s], verts[s], lifted[s], perceptual, weights, 64)
    whole, halves = terms(slice(0, 4)), (terms(slice(0, 2)), terms(slice(2, 4)))
    for k, v in whole.items():
        assert float(v) > 0 and float(v) == pytest.approx((float(halves[0][k]) + float(halves[1][k])) / 2, rel=1e-5), k


def test_two_gloo_processes_train_as_one_and_resume_exactly(data_root, flame_asset, tmp_path):
    torch.set_num_threads(2)
    assert cli.main(["train", str(_config(tmp_path, "one", data_root, flame_asset, 3))]) == 0
    ranks = _torchrun(_config(tmp_path, "two", data_root, flame_asset, 3), tmp_path / "logs-two")
    assert ranks[0][0] == f"trained 3 iterations -> {tmp_path / 'two' / 'checkpoints'}\n"
    assert ranks[1] == ("", "")                                                    # rank 1 prints nothing
    one, two = read_state(tmp_path / "one/checkpoints/state.pt"), read_state(tmp_path / "two/checkpoints/state.pt")
    torch.manual_seed(42)
    start = build_model(load_config(tmp_path / "one.toml")).state_dict()
    moved = max(float((one["model"][k] - start[k]).abs().max()) for k in start)
    differ = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in start)
    assert differ < 1e-5 < moved / 10                     # the same parameters, and they did train
    g1, g2 = _gradient(one), _gradient(two)
    assert float((g1 - g2).norm() / g1.norm()) < 1e-5    # the averaged gradient is the global batch's
    assert torch.equal(one["rng"]["torch"], two["rng"]["torch"])     # the same noise drawn
    logged_one, logged_two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [i for i, _ in logged_two] == ["1", "2", "3"]                           # written once, by rank 0
    for (_, a), (_, b) in zip(logged_one, logged_two, strict=True):
        assert b == pytest.approx(a, rel=1e-5)                                     # global-batch means

    # Resumed by both processes from rank 0's state: bit for bit the uninterrupted two-process run.
    _torchrun(tmp_path / "two.toml", tmp_path / "logs-resume", "--resume", "--set", "train.iterations=5")
    _torchrun(_config(tmp_path, "full", data_root, flame_asset, 5), tmp_path / "logs-full")
    resumed = read_state(tmp_path / "two/checkpoints/state.pt")
    full = read_state(tmp_path / "full/checkpoints/state.pt")
    assert resumed["iteration"] == full["iteration"] == 5
    assert all(torch.equal(resumed["model"][k], full["model"][k]) for k in full["model"])
    assert all(torch.equal(resumed["optimizer"]["state"][i][n], full["optimizer"]["state"][i][n])
               for i in full["optimizer"]["state"] for n in full["optimizer"]["state"][i])
    assert resumed["scheduler"] == full["scheduler"]
    assert torch.equal(resumed["rng"]["torch"], full["rng"]["torch"])
    assert _losses(tmp_path / "two") == _losses(tmp_path / "full")
