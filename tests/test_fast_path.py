"""Opt-in fast paths (engine/splatting/fastpath.py): bf16 neural renderer, compiled renderer, no host syncs,
host readback, and the benchmark's fidelity metrics. CUDA-only parts (CUDA graphs, pinned
buffers, gsplat) cannot run here; their CPU-visible behaviour is tested."""
import math
from pathlib import Path

import pytest
import torch

from gagavatar.engine import load_model
from gagavatar.engine import model as model_module
from gagavatar.engine.avatar import GAUSSIAN_KEYS, Avatar
from gagavatar.engine.cameras import transform_from_pose
from gagavatar.engine.model import Frame, GAGAvatar
from gagavatar.engine.networks import style_unet
from gagavatar.engine.networks.style_unet import StyleUNet
from gagavatar.engine.splatting import fastpath
from gagavatar.engine.splatting.rasterize import RenderResult
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]

MIN_PSNR_DB = 45.0
"""The issue's fidelity bar for every fast path against fp32 official mode."""


@pytest.fixture(scope="module")
def bench():
    """bench/bench_engine.py as a module (bench/ is not a package)."""
    return load_script("bench/bench_engine.py")  # in sys.modules: its dataclasses resolve annotations through it


@pytest.fixture(scope="module")
def model(official_checkpoint):
    return load_model(official_checkpoint, device="cpu")


def _noise(seed: int) -> torch.Tensor:
    """A ``[1, 32, 512, 512]`` renderer input in [0, 0.5), as the kit's StyleUNet input (seeded)."""
    return 0.5 * torch.rand(1, 32, 512, 512, generator=torch.Generator().manual_seed(seed))


def _inputs() -> dict[str, torch.Tensor]:
    """Varied ``[1, 32, 512, 512]`` renderer inputs: noise, a brighter one, and a smooth splat-like
    image (a blob on black)."""
    noise = _noise(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 512), torch.linspace(-1, 1, 512), indexing="ij")
    blob = torch.exp(-(xx ** 2 + 1.5 * yy ** 2) / 0.3)
    channels = torch.linspace(-1.0, 1.0, 32)[:, None, None]
    return {"noise": noise, "bright": 2.0 * _noise(1), "blob": (blob * channels + 0.1 * noise[0] * blob)[None]}


@pytest.mark.parametrize("name", ["noise", "bright", "blob"])
def test_bf16_renderer_is_faithful_and_keeps_modulation_fp32(model, bench, monkeypatch, name):
    coarse = _inputs()[name]
    with torch.no_grad():
        ref = model.neural_renderer(coarse)
    linears, rsqrts, autocast_on = [], [], []
    real_linear, real_rsqrt = style_unet._linear_fp32, torch.rsqrt

    def spy_linear(x, layer):
        autocast_on.append(torch.is_autocast_enabled("cpu"))
        out = real_linear(x, layer)
        linears.append(out.dtype)
        return out

    def spy_rsqrt(x):
        out = real_rsqrt(x)
        rsqrts.append(out.dtype)
        return out
    monkeypatch.setattr(style_unet, "_linear_fp32", spy_linear)
    monkeypatch.setattr(torch, "rsqrt", spy_rsqrt)
    with torch.no_grad():
        out = model.neural_renderer(coarse, precision="bf16")
    monkeypatch.undo()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # autocast was on; every modulation (and the style code and MLP) still ran in fp32
    assert any(autocast_on) and len(linears) > 30 and all(d == torch.float32 for d in linears)
    # every demodulation factor (and the style normalisation) is fp32
    assert len(rsqrts) > 15 and all(d == torch.float32 for d in rsqrts)
    assert MIN_PSNR_DB <= bench.psnr(out, ref) < 100  # close to fp32, yet really computed in bf16
    assert out.std() > 0.9 * ref.std()  # no collapse towards a flat colour


def test_precision_is_checked(model):
    with pytest.raises(ValueError, match="precision"):
        model.neural_renderer(torch.zeros(1, 32, 8, 8), precision="fp16")


def test_fp32_default_is_unchanged(model):
    coarse = _noise(0)
    with torch.no_grad():
        assert torch.equal(model.neural_renderer(coarse), model.upsampler(coarse))


def test_compiled_renderer_matches_eager(monkeypatch):
    """The compiled path on CPU (compiled with the fast ``aot_eager`` backend and ``fullgraph``,
    so any graph break fails): compiled once per device type, same output as eager."""
    calls = []
    real_compile = torch.compile

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return real_compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)
    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    net = GAGAvatar()
    net.upsampler = StyleUNet(in_size=8, in_dim=32, out_dim=3, out_size=8).eval()
    x = torch.rand(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            eager = net.neural_renderer(x, precision=precision)
            compiled = net.neural_renderer(x, precision=precision, compiled=True)
            assert compiled.dtype == torch.float32
            torch.testing.assert_close(compiled, eager, atol=1e-5 if precision == "fp32" else 1e-2, rtol=0)
    assert calls == [{"dynamic": False}]  # one compile, default (non CUDA-graph) mode on CPU


def test_render_has_no_host_syncs(monkeypatch):
    """model.render's own code (splat assembly, neural renderer, both precisions) never reads a
    tensor value on the host; the rasterizer is stubbed (the torch one syncs by design, gsplat's
    one sync is in its C++ code)."""
    torch.manual_seed(0)
    net = GAGAvatar().eval()
    n = 5023 + 64
    avatar = Avatar({k: torch.rand(1, n, w) for k, w in GAUSSIAN_KEYS.items()})
    vertices = torch.rand(2, 5023, 3)
    transforms = transform_from_pose(torch.zeros(2, 3), torch.tensor([0.0, 0.0, 9.3]).expand(2, 3))

    def fake_render(gaussians, transform, **kwargs):
        B = gaussians["xyz"].shape[0]
        feats = (gaussians["colors"].mean(1) + gaussians["covars"].mean((1, 2, 3))[:, None])[..., None, None]
        plane = torch.ones(B, 1, 512, 512)
        return RenderResult(feats.expand(B, 32, 512, 512), plane, plane, torch.zeros(B, n, dtype=torch.int32))

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync: a tensor value was read on the host")
    monkeypatch.setattr(model_module, "render_gaussians", fake_render)
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for precision in ("fp32", "bf16"):
        frame = net.render(avatar, vertices, transforms, backend="gsplat", precision=precision)
        assert frame.image.shape == (2, 3, 512, 512)


def test_frame_to_host():
    frame = Frame(*(torch.rand(1, c, 4, 4) for c in (3, 32, 1, 1)))
    host = frame.to_host()
    assert all(torch.equal(a, b) for a, b in zip(vars(host).values(), vars(frame).values()))
    pinned = frame.to_host(fastpath.PinnedReadback())
    # host tensors pass through untouched: no staging copy on CPU
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(vars(pinned).values(), vars(frame).values()))


def test_autocast_context():
    device = torch.device("cpu")
    with fastpath.autocast(device, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with fastpath.autocast(device, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError):
        fastpath.autocast(device, "int8")


def test_bench_fidelity_metrics(bench):
    ref = torch.zeros(1, 3, 4, 4)
    assert bench.psnr(ref, ref) == math.inf
    assert bench.psnr(ref + 0.1, ref) == pytest.approx(20.0)
    coarse = torch.zeros(1, 32, 4, 4)
    bad = coarse.clone()
    bad[0, 5, 1, 2] = -3e-3
    frames = [(ref + 0.01, coarse), (ref + 0.1, bad)]
    reference = [(ref, coarse), (ref, coarse)]
    psnr_db, err = bench.fidelity(frames, reference)
    assert psnr_db == pytest.approx(20.0) and err == pytest.approx(3e-3)
    with pytest.raises(ValueError):
        bench.fidelity(frames[:1], reference)


def test_bench_modes(bench):
    cpu = bench.modes_for(torch.device("cpu"), 4)
    assert cpu[0].name == "baseline" and not cpu[0].cached and cpu[0].batch == 1
    assert {m.backend for m in cpu} == {"torch", "cpu"} and not any(m.compiled for m in cpu)
    assert {(m.batch, m.precision) for m in cpu if m.backend == "cpu"} == {(1, "fp32"), (1, "bf16"), (4, "bf16")}
    cuda = bench.modes_for(torch.device("cuda"), 8)
    assert {m.backend for m in cuda} == {"torch", "gsplat"} and cuda[-1].compiled and cuda[-1].batch == 8
    assert {m.precision for m in cuda} == set(fastpath.PRECISIONS)
    assert {m.backend for m in bench.modes_for(torch.device("cuda"), 8, gsplat=False)} == {"torch"}


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(model, monkeypatch):
    monkeypatch.setattr(fastpath, "_cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16"})
    assert fastpath.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(fastpath, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert fastpath.resolve_precision("auto", torch.device("cpu")) == "fp32"
    # AVX-512 BF16 without AMX: oneDNN's bf16 convolutions are slower than the fp32 Winograd layers.
    monkeypatch.setattr(fastpath, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert fastpath.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert fastpath.resolve_precision("auto", torch.device("cuda")) == "fp32"      # Turing: bf16 is emulated
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fastpath.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert fastpath.resolve_precision("auto", torch.device("mps")) == "fp32"
    assert fastpath.resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        fastpath.resolve_precision("fp16", torch.device("cpu"))
    # the renderer follows the resolution: auto on a CPU without bf16 units is the exact fp32 path
    coarse = _noise(2)[:, :, :64, :64]
    with torch.no_grad():
        assert torch.equal(model.neural_renderer(coarse, precision="auto"), model.neural_renderer(coarse))
        monkeypatch.setattr(fastpath, "_cpu_flags", lambda: {"amx_bf16"})
        assert torch.equal(model.neural_renderer(coarse, precision="auto"),
                           model.neural_renderer(coarse, precision="bf16"))
