"""Cameras: the official matrices and plane against the kit, and conversion round trips."""
import pytest
import torch

from gagavatar.engine import cameras
from gagavatar.engine.networks.generators import HarmonicEmbedding


def test_official_camera_matrices(case, kit):
    for tag, key in (("t", "t_transform"), ("f", "f_transform")):
        V, P, campos = cameras.build_camera_matrices(case["inputs"][key][None])
        out = case["outputs"]
        kit.compare.check(out[f"cam_{tag}_view"], V, f"cam_{tag}_view")
        kit.compare.check(out[f"cam_{tag}_fullproj"], P, f"cam_{tag}_fullproj")
        kit.compare.check(out[f"cam_{tag}_campos"], campos, f"cam_{tag}_campos")


def test_points_plane_and_direction_encoding(case, kit):
    points, dirs = cameras.build_points_planes(case["inputs"]["f_transform"])
    kit.compare.check(case["outputs"]["plane_points"], points[0], "plane_points")
    kit.compare.check(case["outputs"]["plane_dirs"], dirs[0], "plane_dirs")
    kit.compare.check(case["outputs"]["plane_direnc"], HarmonicEmbedding(4)(dirs), "plane_direnc")


def _random_transforms(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    aa = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    T = torch.cat([(torch.rand(n, 2, generator=g) - 0.5) * 0.4, 8 + 3 * torch.rand(n, 1, generator=g)], -1)
    return cameras.transform_from_pose(aa, T)


def _project_official(X, transform, focal, size):
    """Pixel coordinates (centre of pixel i at i + 0.5) through the official full projection."""
    H, W = size
    V, P, _ = cameras.build_camera_matrices(transform[None], focal)
    ph = X @ P[0, :3] + P[0, 3]
    ndc = ph[:, :3] / ph[:, 3:]
    return torch.stack([((ndc[:, 0] + 1) * W - 1) / 2 + 0.5, ((ndc[:, 1] + 1) * H - 1) / 2 + 0.5], -1)


def test_transform_is_rotation_and_head_faces_camera():
    tr = _random_transforms(8)
    R = tr[:, :, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(8, 3, 3), atol=1e-5)
    # frontal tracker camera: centre on +Z at distance T_z, looking at the origin
    front = cameras.transform_from_pose(torch.zeros(3), torch.tensor([0.0, 0.0, 9.3]))
    assert torch.allclose(cameras.camera_center(front), torch.tensor([0.0, 0.0, 9.3]), atol=1e-6)
    x_cam = torch.zeros(1, 3) @ front[:, :3] + front[:, 3]
    assert x_cam[0, 2] > 0  # origin is in front of the camera (+Z forward)


@pytest.mark.parametrize("size,focal,center", [((512, 512), 12.0, (0.0, 0.0)), ((300, 640), (9.0, 14.0), (0.1, -0.2))])
def test_opencv_projection_matches_official(size, focal, center):
    tr = _random_transforms(4, seed=1)
    X = torch.randn(50, 3) * 0.5
    view, K = cameras.transform_to_opencv(tr, focal, size, center)
    for b in range(4):
        V, P, _ = cameras.build_camera_matrices(tr[b][None], focal, center)
        ph = X @ P[0, :3] + P[0, 3]
        ndc = ph[:, :3] / ph[:, 3:]
        H, W = size
        official = torch.stack([((ndc[:, 0] + 1) * W - 1) / 2 + 0.5, ((ndc[:, 1] + 1) * H - 1) / 2 + 0.5], -1)
        xc = X @ view[b, :3, :3].T + view[b, :3, 3]
        uv = (xc @ K[b].T)[:, :2] / xc[:, 2:]
        assert torch.allclose(uv, official, atol=2e-3), (uv - official).abs().max()
    tr2, f2, c2 = cameras.opencv_to_transform(view, K, size)
    assert torch.allclose(tr2, tr, atol=1e-6)
    fx, fy = (focal, focal) if not isinstance(focal, tuple) else focal
    assert torch.allclose(f2[0], torch.full((4,), float(fx))) and torch.allclose(f2[1], torch.full((4,), float(fy)))
    assert torch.allclose(c2[0], torch.full((4,), center[0]), atol=1e-6)


def test_blender_round_trip_and_axes():
    tr = _random_transforms(6, seed=2)
    M, lens, sensor = cameras.transform_to_blender(tr, 12.0, 36.0)
    assert lens == pytest.approx(216.0) and sensor == 36.0
    assert torch.allclose(M[:, :3, :3] @ M[:, :3, :3].transpose(1, 2), torch.eye(3).expand(6, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(M[:, :3, :3]), torch.ones(6), atol=1e-5)
    # Blender cameras look down their local -Z: the head (origin) must be in front
    to_origin = -M[:, :3, 3]
    forward = -M[:, :3, 2]
    assert (torch.nn.functional.cosine_similarity(to_origin, forward, dim=-1) > 0.9).all()
    back, focal = cameras.blender_to_transform(M, lens, sensor)
    assert focal == pytest.approx(12.0)
    assert torch.allclose(back, tr, atol=1e-5)
    # scale on the camera object is ignored
    scaled = M.clone()
    scaled[:, :3, :3] *= 2.5
    assert torch.allclose(cameras.blender_to_transform(scaled, lens, sensor)[0], tr, atol=1e-5)


def test_frontal_blender_camera_is_identity_rotation():
    front = cameras.transform_from_pose(torch.zeros(3), torch.tensor([0.0, 0.0, 9.3]))
    M, _, _ = cameras.transform_to_blender(front)
    assert torch.allclose(M[:3, :3], torch.eye(3), atol=1e-6)
    assert torch.allclose(M[:3, 3], torch.tensor([0.0, 0.0, 9.3]), atol=1e-6)


def test_look_at_centres_target():
    tr = cameras.look_at_transform((1.0, 2.0, 9.0))
    uv = _project_official(torch.zeros(1, 3), tr, 12.0, (512, 512))
    assert torch.allclose(uv, torch.tensor([[256.0, 256.0]]), atol=1e-3)
    # facing the head (which looks at +Z), the subject's left (+X) is on the image right, +Y up
    for front in (cameras.look_at_transform((0.0, 0.0, 9.0)),
                  cameras.transform_from_pose(torch.zeros(3), torch.tensor([0.0, 0.0, 9.0]))):
        uv = _project_official(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]), front, 12.0, (512, 512))
        assert uv[0, 0] > 300 and uv[1, 1] < 200


def test_bad_transform_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[B, 3, 4\]"):
        cameras.build_camera_matrices(torch.zeros(4, 4))
