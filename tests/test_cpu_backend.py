"""The CPU backend (the official kernel's compositing compiled from C): against the conformance kit's
references, against the torch backend, its dispatch (``auto``), and how it is built, cached and
refused. test_rasterizer.py runs it on the kit's dense scene and the early-stop case too."""
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import Tensor

from gagavatar.engine.cameras import build_camera_matrices, look_at_transform, transform_from_pose
from gagavatar.engine.splatting import cpu_backend, torch_backend
from gagavatar.engine.splatting.covariance import covariance_from_scale_rotation
from gagavatar.engine.splatting.rasterize import render_gaussians


def _scene(n=3000, channels=32, seed=0):
    """Seeded Gaussians in a 1.2-unit cube with the kit render case's spread of scales and opacities."""
    g = torch.Generator().manual_seed(seed)
    return {"xyz": torch.empty(1, n, 3).uniform_(-0.6, 0.6, generator=g),
            "colors": torch.empty(1, n, channels).uniform_(-1.4, 1.4, generator=g),
            "opacities": torch.empty(1, n, 1).uniform_(0.002, 0.999, generator=g),
            "scales": torch.exp(torch.empty(1, n, 3).uniform_(-4.9, -1.2, generator=g)),
            "rotations": torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1)}


CAMERA = transform_from_pose(torch.tensor([0.05, 0.15, 0.02]), torch.tensor([0.02, -0.03, 9.3]))[None]


@pytest.fixture(scope="module")
def lib():
    built = cpu_backend.library()
    assert built is not None, f"the CPU kernel did not build here: {cpu_backend.unavailable_reason()}"
    return built


def _kit_render(case, size, backend, background=None):
    i = case["inputs"]
    g = {"xyz": i["means"][None], "colors": i["colors"][None], "opacities": i["opacities"][None],
         "scales": i["scales"][None], "rotations": i["quats"][None]}
    return render_gaussians(g, i["cam_matrix"][None], focal=case["settings"]["focal"], size=(size, size),
                            background=background, backend=backend)


@pytest.mark.parametrize("size", [128, 40])
def test_render_case_matches_official(lib, kit, render_case, size):
    o = render_case["outputs"]
    r = _kit_render(render_case, size, "cpu")
    kit.compare.check_stats(o[f"image_{size}x{size}"], r.features[0], "render_case")
    assert torch.equal(r.radii[0], o[f"radii_{size}x{size}"].to(torch.int32))
    assert (r.alpha[0, 0] - (1 - o[f"final_T_{size}x{size}"])).abs().max() < 1e-5


def test_render_case_background(lib, kit, render_case):
    o = render_case["outputs"]
    r = _kit_render(render_case, 128, "cpu", background=o["bg_for_image_128x128_bg"])
    kit.compare.check_stats(o["image_128x128_bg"], r.features[0], "render_case")


@pytest.mark.parametrize("channels,size", [(32, (64, 64)), (70, (48, 80)), (1, (17, 33))])
def test_agrees_with_the_torch_backend(lib, channels, size):
    """Float rounding apart (the torch backend's power is the float64 value rounded once, the kernel's
    the official float32 expression), the two backends composite the same; more than 64 channels
    take two passes over the lists."""
    g = _scene(channels=channels)
    c = render_gaussians(g, CAMERA, focal=5.0, size=size, backend="cpu")   # the cube fills half the image
    t = render_gaussians(g, CAMERA, focal=5.0, size=size, backend="torch")
    assert torch.equal(c.radii, t.radii)
    for a, b in ((c.features, t.features), (c.alpha, t.alpha), (c.depth, t.depth)):
        err = (a - b).abs() / (1.0 + b.abs())   # depth is ~9 units
        assert err.mean() < 1e-6 and (err > 1e-4).float().mean() < 1e-3, (err.mean(), err.max())
    assert c.alpha.max() > 0.99 and c.alpha.min() == 0.0   # opaque and empty pixels both occur


def test_compiled_preprocessing_is_the_torch_one(lib):
    """``gag_preprocess`` is :func:`torch_backend.preprocess` (exact) in C: the same footprints
    (radii, tile rects, visibility), and the same projections up to float rounding (bit for bit
    where torch's float32 matmuls round as it does, as on the Xeons checked), also for
    Gaussians behind the camera, off to the side, degenerate or not finite."""
    g = _scene(n=4000)
    cov = covariance_from_scale_rotation(g["scales"], g["rotations"])[0]
    means = g["xyz"][0].clone()
    means[:4] = torch.tensor([[0.0, 0.0, 12.0], [float("nan"), 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 0.0, 9.2]])
    cov[4] = 0.0
    cov[5, 0, 0] = float("inf")
    V, P, _ = build_camera_matrices(CAMERA, 5.0)
    tf = torch_backend.tan_half_fov(5.0)
    camera = (means, cov, V[0], P[0], tf, tf, 56, 88)
    c, t = cpu_backend.preprocess_camera(lib, *camera), torch_backend.preprocess(*camera, exact=True)
    for key in ("radii", "rect_min", "rect_max", "valid"):
        assert torch.equal(c[key].long(), t[key].long()), key
    assert not t["valid"][:3].any() and t["valid"].float().mean() > 0.9   # behind, not finite, far off: dropped
    v = t["valid"]
    for key, rtol in (("means2D", 1e-6), ("depth", 1e-6), ("conic", 1e-4), ("cov2D", 1e-5)):
        torch.testing.assert_close(c[key][v], t[key][v], rtol=rtol, atol=1e-6, msg=key)


@pytest.mark.parametrize("seed", range(3))
def test_alpha_is_the_kernel_expression_with_exp_within_an_ulp(lib, seed):
    """One Gaussian seen alone: each pixel's feature is its alpha, ``o exp(power)`` with ``power`` the
    official float32 expression and ``exp`` within about an ulp (checked against float64, alpha's
    own product adding half an ulp); below 1/255 nothing."""
    g = torch.Generator().manual_seed(seed)
    one = {"xyz": torch.zeros(1, 1, 3), "colors": torch.ones(1, 1, 1), "opacities": torch.full((1, 1, 1), 0.9),
           "scales": torch.tensor([[[0.4, 0.15, 0.25]]]),
           "rotations": torch.nn.functional.normalize(torch.randn(1, 1, 4, generator=g), dim=-1)}
    size = (64, 64)
    V, P, _ = build_camera_matrices(CAMERA, 5.0)
    cov = covariance_from_scale_rotation(one["scales"], one["rotations"])
    tf = torch_backend.tan_half_fov(5.0)
    pre = torch_backend.preprocess(one["xyz"][0], cov[0], V[0], P[0], tf, tf, *size)
    acc, _ = cpu_backend.composite_camera(lib, pre, one["colors"][0], one["opacities"][0, :, 0], *size)
    f = lambda v: np.float32(v)  # noqa: E731
    (mx, my), (a, b, c) = pre["means2D"][0].numpy(), pre["conic"][0].numpy()
    dx = mx - np.arange(size[1], dtype=np.float32)[None, :]
    dy = my - np.arange(size[0], dtype=np.float32)[:, None]
    power = f(-0.5) * (a * dx * dx + c * dy * dy) - (b * dx) * dy   # float32, operation by operation
    alpha = 0.9 * np.exp(power.astype(np.float64))
    got = acc[0].numpy().astype(np.float64)
    inside = (alpha > (1 + 1e-5) / 255) & (alpha < 0.99 * (1 - 1e-5))
    assert inside.sum() > 500 and alpha.max() > 0.5   # a footprint of many pixels, rising towards 0.9
    ulp = np.spacing(alpha[inside].astype(np.float32)).astype(np.float64)
    assert (np.abs(got[inside] - alpha[inside]) <= 2.0 * ulp).all()
    assert (got[alpha < (1 - 1e-5) / 255] == 0).all()


@pytest.mark.skipif(cpu_backend.openmp() is None, reason="torch has no OpenMP team here")
@pytest.mark.parametrize("threads", [1, 3])
def test_torchs_team_and_our_threads_render_alike(lib, monkeypatch, threads):
    """The kernels on torch's OpenMP team (its ranges taken by whichever thread, tiles in turn) and
    on threads of our own (where torch has no OpenMP, and in forked children) give the same bits."""
    g = _scene(n=4000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        team = render_gaussians(g, CAMERA, focal=5.0, size=(96, 80), backend="cpu")
        monkeypatch.setattr(cpu_backend, "_openmp", None)
        ours = render_gaussians(g, CAMERA, focal=5.0, size=(96, 80), backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert team.alpha.min() == 0.0 and team.alpha.max() > 0.99   # empty pixels, and pixels that stopped
    for a, b in ((team.features, ours.features), (team.alpha, ours.alpha), (team.depth, ours.depth),
                 (team.radii, ours.radii)):
        assert torch.equal(a, b)


def test_same_result_on_any_number_of_threads(lib):
    g = _scene()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render_gaussians(g, CAMERA, size=(96, 96), backend="cpu")
        torch.set_num_threads(3)
        three = render_gaussians(g, CAMERA, size=(96, 96), backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.features, three.features) and torch.equal(one.alpha, three.alpha)


class _Interrupt(Exception):
    """Raised by the test's SIGINT handler, as Python's own raises KeyboardInterrupt."""


def _raise_interrupt(signum, frame):
    raise _Interrupt


def test_a_running_call_keeps_its_buffers_when_the_caller_is_interrupted():
    """Ctrl-C while the caller waits for the worker threads: the wait raises and the caller unwinds,
    dropping its tensors, while a call still runs. That call must keep its buffers until it returns
    (a Ctrl-C'd render crashed in ``gag_render_tiles`` reading tensors freed under it)."""
    started, release, done, seen = threading.Event(), threading.Event(), threading.Event(), []
    buffer = torch.arange(1 << 16, dtype=torch.float32)
    alive = weakref.ref(buffer)

    def call(index, address):   # what a C call sees: the buffer's address
        if index == 0:
            started.set()
            release.wait(30)
            still = alive()
            seen.append(still is not None and still.data_ptr() == address and float(still[-1]) == (1 << 16) - 1)
            del still
            done.set()
        return index

    def interrupt_the_wait():
        started.wait(30)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        threading.Thread(target=interrupt_the_wait, daemon=True).start()
        with pytest.raises(_Interrupt):
            cpu_backend._parallel(call, [(0, buffer), (1, buffer)])
        del buffer   # the caller's reference (the traceback went with pytest.raises)
        gc.collect()
        held = alive() is not None   # by the running call alone
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
    assert done.wait(30)
    assert held and seen == [True]
    for _ in range(300):   # let go once the call has returned (its worker then drops the queued call)
        gc.collect()
        if alive() is None:
            break
        time.sleep(0.1)
    assert alive() is None


def test_nothing_visible(lib):
    g = _scene(n=50)
    behind = look_at_transform((0.0, 0.0, -9.0), at=(0.0, 0.0, -20.0))[None]   # everything behind the camera
    r = render_gaussians(g, behind, size=(32, 32), backend="cpu", background=torch.full((32,), 0.5))
    assert (r.radii == 0).all() and (r.alpha == 0).all() and (r.features == 0.5).all() and (r.depth == 0).all()


def test_auto_picks_cpu_without_gradients_and_torch_with(lib, monkeypatch):
    g = _scene(n=400)
    calls = []
    monkeypatch.setattr(cpu_backend, "composite_camera",
                        lambda *a, f=cpu_backend.composite_camera: calls.append(1) or f(*a))
    auto = render_gaussians(g, CAMERA, size=(24, 24))
    assert calls and torch.equal(auto.features, render_gaussians(g, CAMERA, size=(24, 24), backend="cpu").features)
    calls.clear()
    g["colors"].requires_grad_(True)
    out = render_gaussians(g, CAMERA, size=(24, 24))
    assert not calls and out.features.requires_grad
    out.features.sum().backward()
    assert g["colors"].grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no backward: use backend 'torch'"):
        render_gaussians(g, CAMERA, size=(24, 24), backend="cpu")
    with torch.no_grad():
        render_gaussians(g, CAMERA, size=(24, 24))
    assert calls
    with pytest.raises(ValueError, match="'auto', 'torch', 'cpu' or 'gsplat'"):
        render_gaussians(g, CAMERA, size=(24, 24), backend="cycles")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A fresh kernel state building into ``tmp_path`` (restored afterwards)."""
    monkeypatch.setenv("GAGAVATAR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    cpu_backend.reset()
    yield tmp_path
    cpu_backend.reset()


def test_cc_may_be_a_command_line(fresh, monkeypatch):
    """``$CC`` is split as a shell would (``ccache gcc``, ``env VAR=1 gcc``)."""
    compiler = cpu_backend._compiler()[0]   # $CC unset here: the one on PATH
    monkeypatch.setenv("CC", f"env GAGAVATAR_TEST=1 {compiler}")
    assert cpu_backend._compiler() == ["env", "GAGAVATAR_TEST=1", compiler]
    assert cpu_backend.library() is not None


def test_built_once_and_cached(fresh):
    first = cpu_backend.library()
    assert first is not None
    built = list((fresh / "kernels").iterdir())
    assert len(built) == 1 and built[0].name.startswith("cpu_kernel-")
    stamp = built[0].stat().st_mtime_ns
    cpu_backend.reset()
    assert cpu_backend.library() is not None
    assert list((fresh / "kernels").iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_other_processes_reuse_the_build(fresh):
    """A second process (a farm node sharing the cache folder) loads the file the first one built."""
    cpu_backend.library()
    code = ("import subprocess, sys; from gagavatar.engine.splatting import cpu_backend;"
            "run = subprocess.run; subprocess.run = lambda cmd, *a, **k: (print('ran', cmd[1:2], file=sys.stderr),"
            " run(cmd, *a, **k))[1]; assert cpu_backend.library() is not None")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "--version" in out.stderr and "-march" not in out.stderr and "-O3" not in out.stderr   # asked, not built
    assert len(list((fresh / "kernels").iterdir())) == 1


@pytest.mark.parametrize("cc,reason", [("/nonexistent/cc", "does not run"), ("false", "failed"),
                                       ("env GAGAVATAR_NO_SUCH_COMPILER", "failed")])
def test_no_compiler_falls_back_to_torch_with_one_warning(fresh, monkeypatch, cc, reason):
    monkeypatch.setenv("CC", cc)
    g = _scene(n=300)
    with pytest.warns(RuntimeWarning, match="CPU kernel is unavailable.*torch rasterizer") as caught:
        auto = render_gaussians(g, CAMERA, size=(24, 24))
    assert len(caught) == 1 and reason in cpu_backend.unavailable_reason()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # said once per process
        again = render_gaussians(g, CAMERA, size=(24, 24))
    torch_only = render_gaussians(g, CAMERA, size=(24, 24), backend="torch")
    assert torch.equal(auto.features, torch_only.features) and torch.equal(again.features, torch_only.features)
    assert not [p for p in fresh.rglob("*") if p.is_file()]   # no half-built file left
    with pytest.raises(RuntimeError, match="unavailable.*use backend 'torch'"):
        render_gaussians(g, CAMERA, size=(24, 24), backend="cpu")


def test_turned_off_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("GAGAVATAR_CPU_KERNEL", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # off on purpose: nothing to warn about
        assert cpu_backend.library() is None
    assert cpu_backend.unavailable_reason() == "GAGAVATAR_CPU_KERNEL=0"
    assert not (fresh / "kernels").exists()


def test_a_library_without_every_function_is_refused(lib, tmp_path):
    source = tmp_path / "partial.c"
    source.write_text("int gag_bin_fill(void) { return 0; }\n")
    partial = tmp_path / "partial.so"
    subprocess.run([*cpu_backend._compiler(), "-shared", "-fPIC", "-o", str(partial), str(source)], check=True)
    with pytest.raises(RuntimeError, match="has no function gag_preprocess"):
        cpu_backend.load(partial)


def test_unwritable_cache_folder(fresh, monkeypatch):
    blocker = fresh / "file"
    blocker.write_text("not a folder")
    cpu_backend.set_cache_dir(blocker)
    try:
        with pytest.warns(RuntimeWarning, match="cannot write to"):
            assert cpu_backend.library() is None
    finally:
        cpu_backend.set_cache_dir(None)


def test_every_vector_width_gives_the_same_bits(lib, tmp_path, fma_flags):
    """4, 8 or 16 pixels per vector (SSE/NEON, AVX2, AVX-512 builds, with FMA where the CPU has it)
    and the CPU's own build composite bit for bit alike: frames rendered on different farm machines
    match."""
    cc = [*cpu_backend._compiler(), *fma_flags]
    g = _scene(n=2000, channels=70)   # two channel groups
    outs = []
    for lanes in (4, 8, 16):
        path = tmp_path / f"lanes{lanes}.so"
        subprocess.run([*cc, *cpu_backend.FLAGS, f"-DLANES={lanes}", "-o", str(path), str(cpu_backend.SOURCE), "-lm"],
                       check=True, capture_output=True)
        build = cpu_backend.load(path)
        outs.append(torch_backend.rasterize(*_camera_args(g), composite=lambda pre, c, o, h, w, b=build:
                                            cpu_backend.composite_camera(b, pre, c, o, h, w)))
    outs.append(torch_backend.rasterize(*_camera_args(g), composite=lambda pre, c, o, h, w:
                                        cpu_backend.composite_camera(lib, pre, c, o, h, w)))
    assert outs[0][1].min() < 0.5 < outs[0][1].max()
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


def _native_build(tmp_path, fma_flags, define: str):
    """The kernel built for this CPU (as :mod:`cpu_backend` builds it) with one more ``-D`` define."""
    path = tmp_path / f"{define.replace('=', '_')}.so"
    subprocess.run([*cpu_backend._compiler(), *fma_flags, *cpu_backend.FLAGS, *cpu_backend.NATIVE_FLAGS, f"-D{define}",
                    "-o", str(path), str(cpu_backend.SOURCE), "-lm"], check=True, capture_output=True)
    return cpu_backend.load(path)


def _same_bits(builds, g, size=(40, 72)) -> tuple[Tensor, ...]:
    """``g`` seen by ``CAMERA`` composited by each build, asserted bit for bit alike; the first's result."""
    outs = [torch_backend.rasterize(*_camera_args(g, size=size), composite=lambda pre, c, o, h, w, b=b:
                                    cpu_backend.composite_camera(b, pre, c, o, h, w)) for b in builds]
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)
    return outs[0]


def test_weights_summed_in_parts_give_the_same_bits(lib, tmp_path, fma_flags):
    """A tile row keeps its weights (alpha T per Gaussian) until their colour sums are taken, and
    takes them early when KEPT are waiting: a build that keeps 3 composites bit for bit as the CPU's
    own, on faint Gaussians (hundreds of contributions a pixel) and on the usual scene."""
    build = _native_build(tmp_path, fma_flags, "KEPT=3")
    faint = _scene(n=2000, channels=35)
    faint["opacities"] = faint["opacities"] * 0.02 + 0.005
    for g in (faint, _scene(n=2000, channels=35)):
        alpha = 1.0 - _same_bits((build, lib), g)[1]
    assert 0.5 < alpha.max()


def test_rows_passed_over_hold_nothing_that_adds(lib, tmp_path, fma_flags):
    """Row segments where no pixel can reach alpha >= 1/255 (row_hits) are passed over: a build that
    evaluates every one composites bit for bit alike, thin tilted Gaussians (strongly correlated
    conics) included."""
    build = _native_build(tmp_path, fma_flags, "ROW_TESTS=0")
    thin = _scene(n=3000, seed=1)
    thin["scales"][..., 0] *= 0.02
    for g in (thin, _scene(n=3000, seed=2)):
        _same_bits((build, lib), g, size=(64, 96))


def _camera_args(g, size=(40, 72), focal=5.0):
    """``torch_backend.rasterize``'s positional arguments for ``g`` seen by ``CAMERA``."""
    V, P, _ = build_camera_matrices(CAMERA, focal)
    cov = covariance_from_scale_rotation(g["scales"], g["rotations"])
    tf = torch_backend.tan_half_fov(focal)
    return g["xyz"], cov, g["colors"], g["opacities"], V, P, tf, tf, *size


def test_renders_in_a_forked_child(lib):
    """A forked child (a data loader's worker) gets threads of its own: the parent's, torch's
    OpenMP team included, do not exist there. In a fresh process: torch's own thread pool does not
    survive a fork after ``torch.set_num_threads`` (which other tests call). The child sends numpy
    arrays back: torch would copy its tensors into shared memory with a parallel region of the
    parent's OpenMP team, which waits for ever in a child (libgomp's, whoever ran the parent's)."""
    code = """if True:
        import multiprocessing, sys, torch
        from gagavatar.engine.splatting import cpu_backend
        from gagavatar.engine.splatting.rasterize import render_gaussians
        sys.path.insert(0, sys.argv[1])
        from test_cpu_backend import CAMERA, _scene
        def features(g):
            return render_gaussians(g, CAMERA, size=(32, 32), backend="cpu").features.numpy(), cpu_backend.openmp()
        if __name__ == "__main__":
            g = _scene(n=500)
            parent, team = features(g)   # the parent's threads exist now, the team's if torch has OpenMP
            with multiprocessing.get_context("fork").Pool(1) as pool:
                child, child_team = pool.apply_async(features, (g,)).get(timeout=60)
            assert (child == parent).all() and child_team is None, (team, child_team)
    """
    run = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
