"""fit_flame on the synthetic FLAME: exact landmark model, projection convention, round trip."""
import math

import pytest
import torch

from gagavatar.engine.cameras import build_camera_matrices, rodrigues, transform_from_pose
from gagavatar.engine.flame import FLAME, load_flame
from gagavatar.engine.tracking.fit import contour_yaw, fit_flame, pose_from_transform, project
from gagavatar.engine.tracking.flame_landmarks import LandmarkModel


@pytest.fixture(scope="module")
def flame(flame_asset):
    return load_flame(flame_asset)


def official_pixels(points, transform, size=512):
    """The official renderer's projection (full_proj, ndc2Pix: pixel i centred at i), shifted to +0.5 centres."""
    _, full, _ = build_camera_matrices(transform)
    hom = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ full
    ndc = hom[..., :2] / (hom[..., 3:] + 1e-7)
    return ((ndc + 1.0) * size - 1.0) / 2.0 + 0.5


def test_projection_matches_official_renderer_geometry():
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(2, 50, 3, generator=g)
    tr = transform_from_pose(torch.tensor([[0.1, -0.3, 0.05], [0.0, 0.4, 0.0]]),
                             torch.tensor([[0.1, -0.2, 9.3], [0.0, 0.1, 10.0]]))
    assert torch.allclose(project(pts, tr), official_pixels(pts, tr), atol=2e-3)
    for size in (256, 640):  # other crop sizes scale about the crop centre
        assert torch.allclose(project(pts, tr, size), official_pixels(pts, tr, size), atol=2e-3)


def test_landmark_model_is_exact(flame):
    g = torch.Generator().manual_seed(2)
    B = 3
    shape, expr = torch.randn(B, 300, generator=g), torch.randn(B, 100, generator=g)
    jaw, eyes = 0.2 * torch.rand(B, 3, generator=g), 0.2 * torch.randn(B, 6, generator=g)
    yaw = torch.tensor([-0.5, 0.1, 0.3])
    ref = flame.landmarks(flame(shape=shape, expression=expr, pose=torch.cat([torch.zeros(B, 3), jaw], 1), eyes=eyes),
                          yaw=yaw)
    model = LandmarkModel(flame)
    mine = model(model.corners(yaw, B), torch.cat([shape, expr], 1), jaw, eyes)
    assert torch.allclose(mine, ref, atol=2e-5)
    folded = model(model.corners(yaw, B, shape=shape), expr, jaw, eyes)  # a fixed identity folded in
    assert torch.allclose(folded, ref, atol=2e-5)


def test_pose_from_transform_inverts_transform_from_pose():
    aa, t = torch.tensor([[0.2, -0.4, 0.1], [0.0, 0.0, 0.0]]), torch.tensor([[0.1, 0.2, 9.0], [0.0, 0.0, 9.5]])
    aa2, t2 = pose_from_transform(transform_from_pose(aa, t))
    assert torch.allclose(aa2, aa, atol=1e-5) and torch.allclose(t2, t)


def test_round_trip(flame):
    g = torch.Generator().manual_seed(1)
    B = 6
    shape = torch.zeros(B, 300)
    shape[:, :20] = 0.5 * torch.randn(1, 20, generator=g)      # one person
    expr = torch.zeros(B, 100)
    expr[:, :10] = 0.5 * torch.randn(B, 10, generator=g)
    jaw = torch.tensor([[0.0, 0, 0], [0.12, 0, 0], [0.25, 0.02, 0], [0.05, 0, 0], [0.18, 0, 0.01], [0.0, 0, 0]])
    deg = math.radians
    aa = torch.tensor([[0.0, deg(20), 0], [0.0, -deg(25), 0], [deg(10), 0, 0], [0, deg(8), deg(5)],
                       [-deg(12), deg(15), 0], [0.0, 0.0, 0.0]])
    trans = torch.tensor([[0.1, -0.1, 9.0], [0.0, 0.2, 10.0], [0.0, 0.0, 9.5], [-0.2, 0, 9.2], [0.1, 0.1, 9.7],
                          [0.0, -0.05, 9.4]])
    with torch.no_grad():
        verts = flame(shape=shape, expression=expr, pose=torch.cat([torch.zeros(B, 3), jaw], 1))
        yaw = FLAME.head_yaw(rodrigues(aa).transpose(1, 2))
        assert torch.allclose(yaw, contour_yaw(aa))
        truth = transform_from_pose(aa, trans)
        clean = official_pixels(flame.landmarks(verts, yaw=yaw), truth)
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=g)
    fit = fit_flame(noisy, flame)
    err = fit.projected - clean
    assert err.norm(dim=-1).median() <= 1.0
    # the synthetic contour table is random per degree of yaw: judge the offset on the 53 other points
    assert err[:, 17:].mean(dim=(0, 1)).abs().max() <= 0.3
    assert torch.allclose(fit.residual_px, (fit.projected - noisy).norm(dim=-1).mean(1))
    R = fit.transform[:, :, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(B, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(B), atol=1e-5)
    cos = (((truth[:, :, :3].transpose(1, 2) @ R).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    assert torch.rad2deg(torch.arccos(cos)).max() < 10
    assert (fit.pose[:, :3] == 0).all() and fit.shape.shape == (B, 300) and fit.expression.shape == (B, 100)


def test_fit_options_shared_fixed_shape_and_weights(flame):
    g = torch.Generator().manual_seed(4)
    B = 3
    shape = torch.zeros(300)
    shape[:10] = 0.5 * torch.randn(10, generator=g)
    expr = torch.zeros(B, 100)
    expr[:, :5] = 0.5 * torch.randn(B, 5, generator=g)
    aa = torch.tensor([[0.0, 0.2, 0.0], [0.1, -0.1, 0.0], [0.0, 0.0, 0.05]])
    truth = transform_from_pose(aa, torch.tensor([[0.0, 0.0, 9.5]]).expand(B, 3))
    with torch.no_grad():
        clean = official_pixels(flame.landmarks(flame(shape=shape[None], expression=expr), yaw=contour_yaw(aa)), truth)
    shared = fit_flame(clean, flame, shared_shape=True, iterations=150)
    assert torch.equal(shared.shape[0], shared.shape[1]) and torch.equal(shared.shape[0], shared.shape[2])
    # a fixed identity, a warm start, and 10 corrupted points given weight 0
    corrupt = clean.clone()
    corrupt[:, 20:30] += 80.0
    weights = torch.ones(B, 70)
    weights[:, 20:30] = 0
    fit = fit_flame(corrupt, flame, shape=shape, init=shared, weights=weights, iterations=150)
    assert torch.equal(fit.shape, shape.expand(B, 300))
    err = (fit.projected - clean)[:, 17:].norm(dim=-1)
    assert err.median() < 0.5
    used = weights > 0
    assert torch.allclose(fit.residual_px, ((fit.projected - corrupt).norm(dim=-1) * used).sum(1) / used.sum(1))
