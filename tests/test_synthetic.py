"""engine/synthetic.py and `gagavatar assets synthesize`: deterministic files in the official formats,
a face-like FLAME stand-in, and never a silent stand-in for the real weights."""
import numpy as np
import pytest
import torch

from gagavatar.engine import cli, synthetic
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.checkpoints import is_synthetic, official_layout, read_checkpoint
from gagavatar.engine.flame import load_flame
from gagavatar.engine.tracking.fit import project


def test_the_flame_stand_in_is_deterministic_and_seeded():
    a, b, c = synthetic.flame_arrays(0), synthetic.flame_arrays(0), synthetic.flame_arrays(1)
    for group in a:
        for key in a[group]:
            assert np.array_equal(a[group][key], b[group][key]), key
    assert not np.array_equal(a["flame_model"]["shapedirs"], c["flame_model"]["shapedirs"])
    faces = a["flame_model"]["f"]
    assert faces.shape == (9976, 3) and a["flame_model"]["v_template"].shape == (5023, 3)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert set(counts) == {1, 2} and (counts == 1).sum() == synthetic.NECK_VERTICES  # one open neck ring


def test_its_landmarks_look_like_a_face_to_a_frontal_camera(flame_asset):
    flame = load_flame(flame_asset)
    camera = transform_from_pose(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 9.35]]))
    p = project(flame.landmarks(flame()), camera)[0]
    x, y = p[:, 0], p[:, 1]
    assert x[36] < x[39] < x[42] < x[45] and x[68] < x[69]            # image-left eye first, as iBUG
    assert y[19] < y[37] < y[30] < y[51] < y[57] < y[8]              # brow, eye, nose, lips, chin
    assert x[0] < x[8] < x[16] and abs(float(x[8]) - 256) < 8      # the jaw contour around the centre
    face_width, face_height = float(x[16] - x[0]), float(y[8] - y[19])
    assert 0.6 < face_height / face_width < 1.2


def test_the_checkpoint_has_the_official_layout_and_is_marked(official_checkpoint):
    state, meta = read_checkpoint(official_checkpoint)
    assert list(state) == list(official_layout()) and is_synthetic(meta)
    again = synthetic.checkpoint_state(0, perceptual=False)     # the same values from the same seed
    for key in ("head_base", "upsampler.final_linear.weight", "gs_generator_l0.gaussian_conv.6.bias"):
        assert torch.equal(again[key], state[key]), key
    assert float(state["gs_generator_l1.gaussian_conv.6.bias"][40]) < -3.5  # lifted close to the plane


def test_synthesize_command_never_replaces_asset_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(synthetic, "write_checkpoint", lambda path, seed: path.write_bytes(b"ckpt"))
    assert cli.main(["assets", "synthesize", str(tmp_path / "a"), "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert "wrote GAGAvatar.pt and FLAME_with_eye.pt (seed 3)" in out.out
    assert "warning: synthetic weights, not a trained model" in out.err
    before = (tmp_path / "a" / "FLAME_with_eye.pt").read_bytes()
    assert cli.main(["assets", "synthesize", str(tmp_path / "a")]) == 2
    assert "exists and synthesize never replaces asset files" in capsys.readouterr().err
    assert (tmp_path / "a" / "FLAME_with_eye.pt").read_bytes() == before
    assert cli.main(["assets", "synthesize"]) == 2
    assert capsys.readouterr().err.strip() == ("error: assets synthesize needs a folder: gagavatar assets "
                                               "synthesize DIR [--seed N]")


@pytest.mark.parametrize("key, shape", [("x.mask_token", (1, 8)), ("a.modulation.bias", (8,)), ("a.norm1.weight", (8,)),
                                         ("b.conv.weight", (16, 4, 3, 3))])
def test_weight_scales(key, shape):
    mean, std = synthetic.weight_init(key, shape)
    expected = {"x.mask_token": (0.0, 0.0), "a.modulation.bias": (1.0, 0.02), "a.norm1.weight": (1.0, 0.05),
                "b.conv.weight": (0.0, 1 / 6)}[key]
    assert (mean, std) == pytest.approx(expected)
