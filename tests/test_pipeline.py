"""End to end: the official-format checkpoint through load_model, reconstruct() and render() on CPU.

With the kit's weights (``kit_*`` fixtures) they must reproduce the kit's seed-0 reference (every
Gaussian attribute, the 32-channel splat, and the neural-rendered image); the rest of the
behaviour is tested on the project's synthetic weights and FLAME and the astronaut photo."""
import numpy as np
import pytest
import torch

from gagavatar.engine import load_model
from gagavatar.engine.avatar import N_EXPRESSION, Avatar
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.flame import load_flame
from gagavatar.engine.model import resize_for_dino
from gagavatar.engine.splatting import torch_backend

P = 296 * 296


# --- the kit's reference case -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def kit_model(kit_checkpoint):
    return load_model(kit_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def kit_source(case):
    return case["inputs"]["image_uint8"].float()[None] / 255.0, case["inputs"]["f_transform"][None]


@pytest.fixture(scope="module")
def kit_avatar(kit_model, kit_source):
    return kit_model.reconstruct(*kit_source)


@pytest.fixture(scope="module", params=["torch", "cpu"])
def kit_frame(request, kit_model, kit_avatar, case):
    """The kit's frame rendered with each CPU splatting backend (``cpu``: the compiled kernel)."""
    return kit_model.render(kit_avatar, case["outputs"]["flame_vertices"], case["inputs"]["t_transform"][None],
                            backend=request.param)


# --- the project's synthetic files ------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(official_checkpoint):
    return load_model(official_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def source(astronaut):
    """The astronaut ``[1, 3, 512, 512]`` in [0, 1] and a source camera ``[1, 3, 4]`` near the frontal one."""
    image = torch.from_numpy(astronaut.copy()).permute(2, 0, 1).float()[None] / 255.0
    return image, transform_from_pose(torch.tensor([[-0.05, 0.12, 0.02]]), torch.tensor([[0.03, -0.08, 9.35]]))


@pytest.fixture(scope="module")
def drive(flame_asset):
    """Driving FLAME vertices ``[1, 5023, 3]`` (seeded expression and jaw) and a target camera ``[1, 3, 4]``."""
    g = torch.Generator().manual_seed(0)
    vertices = load_flame(flame_asset)(expression=0.8 * torch.randn(1, 100, generator=g),
                                       pose=torch.tensor([[0.0, 0.0, 0.0, 0.15, 0.0, 0.0]]))
    return vertices, transform_from_pose(torch.tensor([[0.04, -0.18, -0.03]]), torch.tensor([[-0.05, 0.02, 9.6]]))


@pytest.fixture(scope="module")
def avatar(model, source):
    return model.reconstruct(*source)


@pytest.fixture(scope="module")
def frame(model, avatar, drive):
    return model.render(avatar, *drive)


def test_source_resize_is_the_official_loader(kit_source, case):
    ref = case["inputs"]["f_image_518"]
    assert torch.allclose(resize_for_dino(kit_source[0])[0], ref, atol=1e-6)


def test_checkpoint_weights_are_the_kit_weights(kit_model, case, kit):
    sd = kit_model.state_dict()
    assert kit.compare.verify_checkpoint(sd, case) == []
    assert not any(k.startswith("percep_loss.") for k in sd)


def test_expression_gaussians(kit_avatar, case, kit):
    g, out = kit_avatar.gaussians, case["outputs"]
    for k in ("colors", "opacities", "scales", "rotations"):
        kit.compare.check(out[f"gs_g_{k}"], g[k][:, :N_EXPRESSION], f"gs_g_{k}")


@pytest.mark.parametrize("branch", [0, 1])
def test_lifted_gaussians(kit_avatar, case, kit, branch):
    g, out = kit_avatar.gaussians, case["outputs"]
    sl = slice(N_EXPRESSION + branch * P, N_EXPRESSION + (branch + 1) * P)
    crop_idx = torch.tensor([r * 296 + c for r in range(100, 108) for c in range(8)])
    for k in ("colors", "opacities", "scales", "rotations", "xyz"):
        mine = g[k][:, sl]
        kit.compare.check(out[f"gs_l{branch}_{k}"], mine, f"gs_l{branch}_{k}")
        kit.compare.check(out[f"gs_l{branch}_{k}_crop"], mine[0, crop_idx], f"gs_l{branch}_{k}_crop")


def test_concatenated_gaussians(kit_avatar, case, kit):
    pipe = case["outputs"]["pipeline"]
    g = kit_avatar.gaussians
    assert kit_avatar.num_gaussians == pipe["num_gaussians"] == N_EXPRESSION + 2 * P
    for k, name in (("colors", "gs_l_colors"), ("opacities", "gs_l_opacities"), ("scales", "gs_l_scales"),
                    ("rotations", "gs_l_rotations")):
        kit.compare.check(pipe[f"gs_{k}"], g[k], name)
    xyz = g["xyz"].clone()
    xyz[:, :N_EXPRESSION] = case["outputs"]["flame_vertices"]
    kit.compare.check(pipe["gs_xyz"], xyz, "gs_l_xyz")


def test_splat_matches_official(kit_frame, case, kit):
    pipe = case["outputs"]["pipeline"]
    kit.compare.check_stats(pipe["render_32ch"], kit_frame.coarse, "pipeline_render")
    kit.compare.check_stats(pipe["render_32ch_crop"], kit_frame.coarse[0, :, 250:258, 250:258], "pipeline_render")
    kit.compare.check_stats(pipe["gen_image"], kit_frame.coarse[:, :3], "pipeline_gen")


def test_splat_float32_mode_matches_official(kit_model, kit_avatar, case, kit, monkeypatch):
    """The rasterizer's float32 mode (devices without float64: Apple MPS) meets the same statistical criteria."""
    monkeypatch.setattr(torch_backend, "has_float64", lambda device: False)
    pipe = case["outputs"]["pipeline"]
    frame = kit_model.render(kit_avatar, case["outputs"]["flame_vertices"], case["inputs"]["t_transform"][None],
                             backend="torch")
    kit.compare.check_stats(pipe["render_32ch"], frame.coarse, "pipeline_render")
    kit.compare.check_stats(pipe["render_32ch_crop"], frame.coarse[0, :, 250:258, 250:258], "pipeline_render")
    kit.compare.check_stats(pipe["gen_image"], frame.coarse[:, :3], "pipeline_gen")
    kit.compare.check_stats(pipe["sr_gen_image"], frame.image, "pipeline_sr")


def test_neural_render_matches_official(kit_frame, case, kit):
    pipe = case["outputs"]["pipeline"]
    kit.compare.check_stats(pipe["sr_gen_image"], kit_frame.image, "pipeline_sr")
    kit.compare.check_stats(pipe["sr_gen_image_crop"], kit_frame.image[0, :, 250:258, 250:258], "pipeline_sr")


def test_frame_outputs(frame):
    assert frame.image.shape == (1, 3, 512, 512) and frame.coarse.shape == (1, 32, 512, 512)
    assert frame.alpha.shape == (1, 1, 512, 512) and frame.depth.shape == (1, 1, 512, 512)
    a = frame.alpha
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and float(a.mean()) > 0.05
    covered = a > 0.5
    d = frame.depth[covered]
    # the head sits ~9.5 units in front of the camera; splats are within ~2 units of it
    assert 7.0 < float(d.min()) and float(d.max()) < 12.0
    empty = a == 0
    assert bool(empty.any()) and float(frame.depth[empty].abs().max()) == 0.0


def test_render_is_deterministic_and_batched(model, avatar, source, drive, frame):
    verts, t = drive
    other = source[1]
    both = model.render(avatar, verts.expand(2, -1, -1), torch.cat([t, other]))
    assert torch.allclose(both.image[:1], frame.image, atol=1e-5)
    assert not torch.allclose(both.image[1:], frame.image, atol=1e-2)
    noisy = model.render(avatar, verts, t, randomize_noise=True)
    assert (noisy.image - frame.image).abs().max() > 1e-3


def test_avatar_file_round_trip(avatar, tmp_path, model, drive, frame):
    path = avatar.save(tmp_path / "a.npz")
    back = Avatar.load(path)
    for k, v in avatar.gaussians.items():
        assert torch.equal(back.gaussians[k], v)
    again = model.render(back, *drive)
    assert torch.equal(again.image, frame.image)
    ply = avatar.export_ply(tmp_path / "a.ply")
    head = ply.read_bytes()[:4000].split(b"end_header\n")[0].decode()
    assert "element vertex 180255" in head and "property float rot_3" in head
    names = [line.split()[-1] for line in head.splitlines() if line.startswith("property float")]
    body = np.frombuffer(ply.read_bytes()[len(head) + len("end_header\n"):], dtype="<f4")
    assert body.size == 180255 * len(names) and np.isfinite(body).all()
    table = torch.from_numpy(body.reshape(180255, len(names)).copy())
    col = {n: table[:, i] for i, n in enumerate(names)}
    # what a viewer builds (unit quaternion, exp scales) is the official covariance
    from gagavatar.engine.splatting.covariance import covariance_from_scale_rotation
    q = torch.nn.functional.normalize(torch.stack([col[f"rot_{i}"] for i in range(4)], -1), dim=-1)
    s = torch.stack([col[f"scale_{i}"] for i in range(3)], -1).exp()
    cov = covariance_from_scale_rotation(s.double(), q.double())
    ref = avatar.covariances()[0].double()
    assert torch.allclose(cov, ref, atol=1e-9, rtol=1e-3)
    assert torch.allclose(col["x"][N_EXPRESSION:], avatar.gaussians["xyz"][0, N_EXPRESSION:, 0])


def test_unbatched_reconstruct_and_render_equal_batched(model, source, avatar, drive, frame):
    """Unbatched inputs: an avatar of batch 1 equal to the batched one, and an unbatched frame equal to frame[0]."""
    single = model.reconstruct(source[0][0], source[1][0])
    assert single.batch_size == 1 and single.source_transform.shape == (1, 3, 4)
    for k, v in avatar.gaussians.items():
        assert torch.equal(single.gaussians[k], v), k
    one = model.render(avatar, drive[0][0], drive[1][0])
    for name in ("image", "coarse", "alpha", "depth"):
        assert torch.equal(getattr(one, name), getattr(frame, name)[0]), name


@pytest.mark.parametrize("call, message", [
    (lambda m, a, v, t: m.render(a, v.expand(2, -1, -1), t.expand(3, 3, 4)),
     "render: vertices batch 2 does not match transform batch 3"),
    (lambda m, a, v, t: m.render(a, v[0, :100], t), "render: vertices must be [B, 5023, 3] or [5023, 3], got [100, 3]"),
    (lambda m, a, v, t: m.render(a, v, t[:, :3]), "render: transform must be [B, 3, 4] or [3, 4], got [3, 3]"),
    (lambda m, a, v, t: m.reconstruct(torch.zeros(2, 3, 8, 8), t.expand(3, 3, 4)),
     "reconstruct: image batch 2 does not match transform batch 3"),
    (lambda m, a, v, t: m.reconstruct(torch.zeros(3, 8, 8), t, shape=torch.zeros(2, 300), vertices=v.expand(3, -1, -1)),
     "reconstruct: shape batch 2 does not match vertices batch 3"),
    (lambda m, a, v, t: m.reconstruct(torch.zeros(1, 4, 8, 8), t),
     "reconstruct: image must be [B, 3, H, W] or [3, H, W], got [1, 4, 8, 8]"),
])
def test_shape_errors_are_one_line(model, avatar, drive, call, message):
    with pytest.raises(ValueError) as err:
        call(model, avatar, drive[0], drive[1][0])
    assert str(err.value) == message
