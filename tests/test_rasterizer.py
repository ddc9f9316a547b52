"""The torch rasterizer against the conformance kit's port of the official kernel (and its reference
renders), and its behaviour on a seeded scene; its float32 mode (devices without float64, Apple MPS);
the gsplat path; the CPU kernel on the dense scene (more of it in test_cpu_backend.py)."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gagavatar.engine.cameras import build_camera_matrices, look_at_transform, transform_from_pose, transform_to_opencv
from gagavatar.engine.errors import GAGAvatarError
from gagavatar.engine.splatting import cpu_backend, gsplat_backend, torch_backend
from gagavatar.engine.splatting.covariance import covariance_from_scale_rotation
from gagavatar.engine.splatting.rasterize import render_gaussians


@pytest.fixture(scope="module")
def scene():
    """A seeded scene laid out as the kit's render case (``inputs``, ``settings``): 2935 Gaussians
    with 32 channels in a 1.24-unit cube around the origin, seen by a camera 9.3 units away (focal 12)."""
    g = torch.Generator().manual_seed(0)
    n = 2935
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    cam = transform_from_pose(torch.tensor([0.05, 0.15, 0.02]), torch.tensor([0.02, -0.03, 9.3]))
    view, proj, _ = build_camera_matrices(cam[None], 12.0)
    return {"inputs": {"means": torch.empty(n, 3).uniform_(-0.62, 0.62, generator=g), "quats": quats,
                       "scales": torch.exp(torch.empty(n, 3).uniform_(-4.9, -1.2, generator=g)),
                       "opacities": torch.empty(n, 1).uniform_(0.002, 0.999, generator=g),
                       "colors": torch.empty(n, 32).uniform_(-1.4, 1.4, generator=g),
                       "cam_matrix": cam, "viewmatrix": view[0], "projmatrix": proj[0]},
            "settings": {"focal": 12.0, "tanfovx": 1 / 12.0, "tanfovy": 1 / 12.0}}


@pytest.fixture(params=["float64", "float32"])
def precision(request, monkeypatch):
    """Both modes of the torch backend; ``float32``: every device is taken for one without float64 (Apple MPS)."""
    if request.param == "float32":
        monkeypatch.setattr(torch_backend, "has_float64", lambda device: False)
    return request.param


class _Float64Ops(TorchDispatchMode):
    """Records the aten ops (forward and backward) with a float64 output in ``ops``; counts all ops in ``n``."""

    def __init__(self):
        super().__init__()
        self.ops, self.n = set(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.n += 1
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tree_leaves(out)):
            self.ops.add(str(func))
        return out


def _gaussians(case, batch=1):
    i = case["inputs"]
    g = {"xyz": i["means"], "colors": i["colors"], "opacities": i["opacities"],
         "scales": i["scales"], "rotations": i["quats"]}
    return {k: v[None].expand(batch, *v.shape) for k, v in g.items()}


def _render(case, size, background=None, **kw):
    return render_gaussians(_gaussians(case), case["inputs"]["cam_matrix"][None], focal=case["settings"]["focal"],
                            size=size, background=background, backend="torch", **kw)


@pytest.mark.parametrize("size", [128, 40])
def test_render_case_matches_official(kit, render_case, size, precision):
    o = render_case["outputs"]
    r = _render(render_case, (size, size))
    kit.compare.check_stats(o[f"image_{size}x{size}"], r.features[0], "render_case")
    assert torch.equal(r.radii[0], o[f"radii_{size}x{size}"].to(torch.int32))
    assert r.radii.dtype == torch.int32
    final_t = o[f"final_T_{size}x{size}"]
    assert (r.alpha[0, 0] - (1 - final_t)).abs().max() < 1e-5


def test_render_case_background(kit, render_case, precision):
    o = render_case["outputs"]
    bg = o["bg_for_image_128x128_bg"]
    r = _render(render_case, (128, 128), background=bg)
    kit.compare.check_stats(o["image_128x128_bg"], r.features[0], "render_case")
    plain = _render(render_case, (128, 128))
    expected = plain.features + (1 - plain.alpha) * bg[None, :, None, None]
    assert torch.allclose(r.features, expected, atol=1e-6)


def test_preprocess_matches_port(kit, render_case):
    i, o, s = render_case["inputs"], render_case["outputs"], render_case["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])
    pre = torch_backend.preprocess(i["means"], cov, i["viewmatrix"], i["projmatrix"], s["tanfovx"],
                                      s["tanfovy"], 128, 128)
    v = pre["valid"]
    assert torch.equal(v, o["radii_128x128"] > 0)
    for mine, ref in [("means2D", "means2D_128"), ("conic", "conic_128"), ("depth", "depth_128"),
                      ("cov3D", "cov3D"), ("cov2D", "cov2D_128")]:
        kit.compare.check(o[ref][v], pre[mine][v], "render_port")


@pytest.mark.parametrize("size", [128, 40])
def test_float32_mode_against_the_exact_path(kit, render_case, size):
    """Float32 mode vs the float64 path on the kit's render case: the same radii, the render within the
    kit's statistical render criteria (measured: max abs 3.6e-7, alpha 2.4e-7)."""
    i, s = render_case["inputs"], render_case["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])[None]
    args = (i["means"][None], cov, i["colors"][None], i["opacities"][None], i["viewmatrix"][None],
            i["projmatrix"][None], s["tanfovx"], s["tanfovy"], size, size)
    exact, f32 = torch_backend.rasterize(*args, exact=True), torch_backend.rasterize(*args, exact=False)
    kit.compare.check_stats(exact[0][0], f32[0][0], "render_case")
    assert (exact[1] - f32[1]).abs().max() < 1e-5
    assert torch.equal(exact[3], f32[3])


def test_float32_ndc2pix_is_the_double_value(render_case):
    """The error-free float32 ``ndc2Pix`` rounds to the double-evaluated value; preprocess is then identical."""
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 30.0, 1e4):
        v = (torch.rand(100_000, generator=g) * 2 - 1) * scale
        for size in (40, 128, 512, 4097):
            assert torch.equal(torch_backend._ndc2pix(v, size, False), torch_backend._ndc2pix(v, size, True))
    i, s = render_case["inputs"], render_case["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])
    pre = [torch_backend.preprocess(i["means"], cov, i["viewmatrix"], i["projmatrix"], s["tanfovx"], s["tanfovy"],
                                    128, 128, exact) for exact in (True, False)]
    for k, v in pre[0].items():
        assert torch.equal(v, pre[1][k]), k


def test_float32_mode_creates_no_float64(scene):
    """Forward and backward of the float32 mode run no op with a float64 output (the float64 path does)."""
    i, s = scene["inputs"], scene["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])[None]
    for exact in (False, True):
        means, colors = i["means"][None].clone().requires_grad_(), i["colors"][None].clone().requires_grad_()
        with _Float64Ops() as rec:
            out = torch_backend.rasterize(means, cov, colors, i["opacities"][None], i["viewmatrix"][None],
                                          i["projmatrix"][None], s["tanfovx"], s["tanfovy"], 48, 64, exact=exact)
            (out[0].sum() + out[2].sum()).backward()
        assert rec.n > 100 and means.grad.abs().sum() > 0
        assert bool(rec.ops) == exact, sorted(rec.ops)
    with _Float64Ops() as rec:   # and the fast (no-grad) path
        torch_backend.rasterize(i["means"][None], cov, i["colors"][None], i["opacities"][None], i["viewmatrix"][None],
                                i["projmatrix"][None], s["tanfovx"], s["tanfovy"], 48, 64, exact=False)
    assert rec.n > 100 and not rec.ops, sorted(rec.ops)


def test_mps_dispatch_renders_float32_on_the_device(scene, monkeypatch):
    """render_gaussians on a device without float64 (MPS) takes the float32 mode there, with no trip to the CPU."""
    assert not torch_backend.has_float64(torch.device("mps"))
    assert torch_backend.has_float64(torch.device("cpu")) and torch_backend.has_float64(torch.device("cuda"))
    g, tr = _gaussians(scene), scene["inputs"]["cam_matrix"]
    exact = render_gaussians(g, tr, size=(48, 64), backend="torch")
    asked = []
    with monkeypatch.context() as m, _Float64Ops() as rec:
        m.setattr(torch_backend, "has_float64", lambda device: asked.append(device) or False)
        m.setattr(torch.Tensor, "cpu", lambda self: pytest.fail("copied to the CPU"))
        r = render_gaussians(g, tr, size=(48, 64), backend="torch")
    assert asked == [torch.device("cpu")] and not rec.ops, sorted(rec.ops)
    i, s = scene["inputs"], scene["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])[None]
    f32 = torch_backend.rasterize(i["means"][None], cov, i["colors"][None], i["opacities"][None], i["viewmatrix"][None],
                                  i["projmatrix"][None], s["tanfovx"], s["tanfovy"], 48, 64, exact=False)
    assert all(torch.equal(a, b) for a, b in zip(_fields(r).values(), f32))
    assert torch.allclose(r.features, exact.features, atol=1e-5) and torch.equal(r.radii, exact.radii)


def test_batch_equals_singles(scene):
    g = _gaussians(scene, 2)
    g = {k: v.clone() for k, v in g.items()}
    g["colors"][1] = g["colors"][1].flip(-1)
    tr = torch.stack([scene["inputs"]["cam_matrix"],
                      look_at_transform((1.5, 0.5, 9.0)).to(scene["inputs"]["cam_matrix"])])
    both = render_gaussians(g, tr, size=(48, 64), backend="torch")
    for b in range(2):
        one = render_gaussians({k: v[b:b + 1] for k, v in g.items()}, tr[b:b + 1], size=(48, 64), backend="torch")
        for name in ("features", "alpha", "depth", "radii"):
            assert torch.equal(getattr(both, name)[b:b + 1], getattr(one, name)), name
    assert not torch.equal(both.features[0], both.features[1])


def test_covars_override_scales(scene):
    g = _gaussians(scene)
    ref = render_gaussians(g, scene["inputs"]["cam_matrix"], size=(32, 32), backend="torch")
    g2 = dict(g, covars=covariance_from_scale_rotation(g["scales"], g["rotations"]) * 4.0)
    big = render_gaussians(g2, scene["inputs"]["cam_matrix"], size=(32, 32), backend="torch")
    assert (big.radii >= ref.radii).all() and (big.radii > ref.radii).any()


def _one_point(depth=5.0, opacity=0.9, sigma=0.01):
    g = {"xyz": torch.tensor([[[0.0, 0.0, 0.0]]]), "colors": torch.tensor([[[1.0, 2.0]]]),
         "opacities": torch.tensor([[[opacity]]]), "scales": torch.full((1, 1, 3), sigma),
         "rotations": torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])}
    return g, look_at_transform((0.0, 0.0, depth))[None]


def test_principal_point_and_non_square():
    g, tr = _one_point()
    H, W, center = 31, 50, (0.22, -0.4)
    r = render_gaussians(g, tr, focal=(2.0, 3.0), size=(H, W), center=center, backend="torch")
    # the point projects onto the principal point: pixel ((1 + c) * S - 1) / 2 with centres at integers
    ex, ey = ((1 + center[0]) * W - 1) / 2, ((1 + center[1]) * H - 1) / 2
    peak = r.alpha[0, 0]
    y, x = divmod(int(peak.argmax()), W)
    assert (x, y) == (round(ex), round(ey))
    # per-axis focal: a round Gaussian is 1.5x taller than wide (fy / fx) in pixels
    V, P, _ = build_camera_matrices(tr, (2.0, 3.0), center)
    cov = covariance_from_scale_rotation(torch.full((1, 3), 0.05), torch.tensor([[1.0, 0, 0, 0]]))
    pre = torch_backend.preprocess(g["xyz"][0], cov, V[0], P[0], 1 / 2.0, 1 / 3.0, H, W)
    a, c = pre["cov2D"][0, 0] - 0.3, pre["cov2D"][0, 2] - 0.3
    fxp, fyp = 2.0 * W / 2, 3.0 * H / 2
    assert math.isclose(float(a), (fxp * 0.05 / 5.0) ** 2, rel_tol=1e-4)
    assert math.isclose(float(c), (fyp * 0.05 / 5.0) ** 2, rel_tol=1e-4)
    assert torch.allclose(pre["means2D"][0], torch.tensor([ex, ey]), atol=1e-4)


def test_alpha_depth_and_near_cull():
    g, tr = _one_point(depth=5.0, opacity=0.5)
    r = render_gaussians(g, tr, size=(15, 15), backend="torch")   # projects onto pixel (7, 7)
    covered = r.alpha > 0
    assert covered.any() and (r.alpha <= 0.5 + 1e-6).all()
    assert math.isclose(float(r.alpha[0, 0, 7, 7]), 0.5, rel_tol=1e-6)
    assert torch.allclose(r.depth[covered], torch.tensor(5.0), atol=1e-5)
    assert (r.depth[~covered] == 0).all()
    # colour = c * alpha with a zero background
    assert torch.allclose(r.features, torch.tensor([1.0, 2.0])[None, :, None, None] * r.alpha, atol=1e-6)
    near = render_gaussians(g, look_at_transform((0.0, 0.0, 0.2))[None], size=(16, 16), backend="torch")
    assert (near.radii == 0).all() and (near.alpha == 0).all()


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_early_stop_and_alpha_clamp(kit, backend):
    # coincident opaque Gaussians: alpha clamps at 0.99; the 2nd would leave T = 0.01 * 0.01, which
    # is just under 1e-4 in float32 -> compositing stops before it
    n = 6
    g = {"xyz": torch.zeros(1, n, 3), "colors": torch.arange(1.0, n + 1)[None, :, None],
         "opacities": torch.ones(1, n, 1), "scales": torch.full((1, n, 3), 0.05),
         "rotations": torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4)}
    g["xyz"][0, :, 2] = torch.linspace(0.0, 0.5, n)    # nearer to the camera = larger index
    tr = look_at_transform((0.0, 0.0, 5.0))
    r = render_gaussians(g, tr[None], size=(9, 9), backend=backend)
    assert math.isclose(float(r.features[0, 0, 4, 4]), n * 0.99, rel_tol=1e-6)   # front-most only
    assert math.isclose(float(r.alpha[0, 0, 4, 4]), 0.99, rel_tol=1e-6)
    ref, _ = kit.reference_rasterizer.render_gagavatar(g["xyz"][0], g["colors"][0], g["opacities"][0],
                                                           g["scales"][0], g["rotations"][0], tr, size=9)
    assert torch.allclose(r.features[0], ref, atol=1e-6)


@pytest.mark.parametrize("exact", [True, False])
def test_chunked_equals_unchunked(scene, exact):
    i, s = scene["inputs"], scene["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])[None]
    args = (i["means"][None], cov, i["colors"][None], i["opacities"][None], i["viewmatrix"][None],
            i["projmatrix"][None], s["tanfovx"], s["tanfovy"], 64, 64)
    full = torch_backend.rasterize(*args, exact=exact)
    small = torch_backend.rasterize(*args, max_pairs=500, exact=exact)
    for a, b in zip(full, small):
        assert torch.allclose(a, b, atol=1e-6)


def test_gsplat_camera_matches_projection(scene):
    from gsplat.cuda._torch_impl import _fully_fused_projection

    i = scene["inputs"]
    tr = torch.stack([i["cam_matrix"], look_at_transform((1.0, -0.5, 8.0))])
    H, W, focal, center = 96, 128, (12.0, 10.0), (0.1, -0.2)
    viewmats, Ks = gsplat_backend.gsplat_camera(tr, focal, (H, W), center)
    assert viewmats.shape == (2, 1, 4, 4) and Ks.shape == (2, 1, 3, 3)
    vm, K = transform_to_opencv(tr, focal, (H, W), center)
    assert torch.equal(viewmats[:, 0], vm) and torch.equal(Ks[:, 0], K)
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])
    V, P, _ = build_camera_matrices(tr, focal, center)
    for b in range(2):
        radii, means2d, depths, conics, _ = _fully_fused_projection(
            i["means"][None], cov[None], viewmats[b:b + 1], Ks[b:b + 1], W, H, eps2d=0.3, near_plane=0.2)
        pre = torch_backend.preprocess(i["means"], cov, V[b], P[b], 1 / focal[0], 1 / focal[1], H, W)
        both = pre["valid"] & (radii[0, 0] > 0).all(-1)
        assert both.sum() > 100
        assert torch.allclose(means2d[0, 0][both], pre["means2D"][both] + 0.5, atol=1e-3)
        assert torch.allclose(depths[0, 0][both], pre["depth"][both], rtol=1e-5)
        assert torch.allclose(conics[0, 0][both], pre["conic"][both], rtol=2e-3, atol=1e-6)


def test_gsplat_needs_cuda(scene):
    with pytest.raises(GAGAvatarError, match="CUDA.*backend='torch'"):
        render_gaussians(_gaussians(scene), scene["inputs"]["cam_matrix"], size=(16, 16),
                         backend="gsplat")


@pytest.mark.parametrize("mode", ["exact", "float32", "cpu kernel"])
def test_dense_offcentre_scene_matches_port(kit, mode):
    # deep overlapping stacks (early stop), non-square, per-axis focal, principal-point offset, chunking
    gen = torch.Generator().manual_seed(3)
    n = 1500
    g = {"xyz": torch.randn(1, n, 3, generator=gen) * 0.3, "colors": torch.rand(1, n, 4, generator=gen),
         "opacities": torch.rand(1, n, 1, generator=gen), "scales": 0.01 + 0.05 * torch.rand(1, n, 3, generator=gen),
         "rotations": torch.randn(1, n, 4, generator=gen)}
    tr = look_at_transform((0.5, 0.3, 6.0))[None]
    focal, center, H, W = (4.0, 5.0), (0.15, -0.1), 40, 56
    V, P, _ = build_camera_matrices(tr, focal, center)
    cov = covariance_from_scale_rotation(g["scales"][0], g["rotations"][0])
    ref, radii = kit.reference_rasterizer.render(g["xyz"][0], g["colors"][0], g["opacities"][0], V[0], P[0],
                                                 1 / focal[0], 1 / focal[1], H, W, cov3D_precomp=cov.reshape(n, 9)[:, [0, 1, 2, 4, 5, 8]])
    args = (g["xyz"], cov[None], g["colors"], g["opacities"], V, P, 1 / focal[0], 1 / focal[1], H, W)
    mine = (cpu_backend.rasterize(*args) if mode == "cpu kernel"
            else torch_backend.rasterize(*args, max_pairs=3000, exact=mode == "exact"))
    assert torch.equal(mine[3][0], radii)
    kit.compare.check_stats(ref, mine[0][0], "render_case")
    assert (mine[1] > 0.99).float().mean() > 0.1     # many pixels saturate


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("max_pairs", [torch_backend.MAX_PAIRS, 500])
def test_differentiable_path_equals_the_fast_path(scene, max_pairs, exact):
    """Inputs that require grad take the out-of-place compositing (training): same image, alpha, depth."""
    i, s = scene["inputs"], scene["settings"]
    cov = covariance_from_scale_rotation(i["scales"], i["quats"])[None]
    colors = i["colors"][None].clone()
    args = lambda c: (i["means"][None], cov, c, i["opacities"][None], i["viewmatrix"][None],  # noqa: E731
                      i["projmatrix"][None], s["tanfovx"], s["tanfovy"], 64, 64)
    fast = torch_backend.rasterize(*args(colors), max_pairs=max_pairs, exact=exact)
    leaf = colors.requires_grad_()
    slow = torch_backend.rasterize(*args(leaf), max_pairs=max_pairs, exact=exact)
    assert slow[0].requires_grad
    for a, b in zip(fast[:3], slow[:3]):
        assert torch.allclose(a, b.detach(), atol=1e-6)
    # and the gradients reach the colours
    slow[0].sum().backward()
    assert leaf.grad.abs().sum() > 0


def _fields(r):
    return {name: getattr(r, name) for name in ("features", "alpha", "depth", "radii")}


@pytest.mark.parametrize("covars", [False, True])
def test_unbatched_inputs_give_unbatched_results(scene, covars):
    """As gsplat takes means: ``xyz [N, 3]``, ``transform [3, 4]`` -> the batched result without its batch dim."""
    g = _gaussians(scene)
    if covars:
        g["covars"] = covariance_from_scale_rotation(g["scales"], g["rotations"])
    tr, bg = scene["inputs"]["cam_matrix"], torch.linspace(0.0, 1.0, 32)
    batched = render_gaussians(g, tr[None], size=(24, 32), background=bg, backend="torch")
    single = render_gaussians({k: v[0] for k, v in g.items()}, tr, size=(24, 32), background=bg, backend="torch")
    for name, value in _fields(single).items():
        assert value.shape == getattr(batched, name).shape[1:], name
        assert torch.equal(value, getattr(batched, name)[0]), name
    assert single.radii.shape == (g["xyz"].shape[1],) and single.features.shape == (32, 24, 32)


def test_one_unbatched_set_from_several_cameras(scene):
    g = {k: v[0] for k, v in _gaussians(scene).items()}
    tr = torch.stack([scene["inputs"]["cam_matrix"],
                      look_at_transform((1.5, 0.5, 9.0)).to(scene["inputs"]["cam_matrix"])])
    both = render_gaussians(g, tr, size=(16, 16), backend="torch")
    for b in range(2):
        one = render_gaussians(g, tr[b], size=(16, 16), backend="torch")
        for name, value in _fields(one).items():
            assert torch.equal(getattr(both, name)[b], value), name


@pytest.mark.parametrize("key, shape, message", [
    ("xyz", (4, 5, 6, 7), "xyz must be [B, N, 3] or [N, 3], got [4, 5, 6, 7]"),
    ("xyz", (2935, 4), "xyz must be [B, N, 3] or [N, 3], got [2935, 4]"),
    ("colors", (1, 2934, 32), "colors must be [B, 2935, C] or [2935, C], got [1, 2934, 32]"),
    ("opacities", (1, 2935), "opacities must be [B, 2935, 1] or [2935, 1], got [1, 2935]"),
    ("rotations", (1, 2935, 3), "rotations must be [B, 2935, 4] or [2935, 4], got [1, 2935, 3]"),
    ("transform", (1, 4, 4), "transform must be [B, 3, 4] or [3, 4], got [1, 4, 4]"),
    ("background", (1, 3), "background must be [B, 32] or [32], got [1, 3]"),
])
def test_bad_shapes_are_one_line_naming_expected_and_given(scene, key, shape, message):
    g, tr, bg = _gaussians(scene), scene["inputs"]["cam_matrix"], None
    if key == "transform":
        tr = torch.zeros(shape)
    elif key == "background":
        bg = torch.zeros(shape)
    else:
        g[key] = torch.zeros(shape)
    with pytest.raises(ValueError) as err:
        render_gaussians(g, tr, size=(8, 8), background=bg, backend="torch")
    assert str(err.value) == f"render_gaussians: {message}"


def test_disagreeing_batch_sizes_are_one_line(scene):
    with pytest.raises(ValueError, match=r"^render_gaussians: xyz batch 2 does not match transform batch 3$"):
        render_gaussians(_gaussians(scene, 2), scene["inputs"]["cam_matrix"].expand(3, 3, 4),
                         size=(8, 8), backend="torch")
