"""The StyleUNet's Winograd convolutions on the CPU (engine/networks/cpu_layers.py): against float64
convolutions, where they apply, the transformed weights they keep, and the network through them.
test_style_unet.py checks the network against the conformance kit with them in use."""
import gc
import subprocess

import pytest
import torch
import torch.nn.functional as F

from gagavatar.engine.networks import cpu_layers
from gagavatar.engine.networks.style_unet import StyleUNet
from gagavatar.engine.splatting import cpu_backend


@pytest.fixture(scope="module")
def lib():
    built = cpu_backend.library()
    assert built is not None, f"the CPU kernel did not build here: {cpu_backend.unavailable_reason()}"
    return built


def _layer(channels, out_channels, height, width, seed=0):
    """Seeded input, weight and epilogue of a convolution: unit-variance input, weights scaled to
    unit-variance output."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, height, width, generator=g)
    w = torch.randn(out_channels, channels, 3, 3, generator=g) / (3 * channels ** 0.5)
    return x, w, {"style": torch.rand(channels, generator=g) + 0.5, "scale": torch.rand(out_channels, generator=g) + 0.5,
                  "bias": torch.randn(out_channels, generator=g), "noise": torch.randn(height, width, generator=g),
                  "noise_weight": 0.3, "slope": 0.2}


def _direct(x, w, style, scale, bias, noise, noise_weight, slope):
    """The same layer as a direct convolution, in ``x``'s dtype."""
    out = F.conv2d(x * style.to(x)[:, None, None], w.to(x), padding=1) * scale.to(x)[:, None, None]
    out = out + bias.to(x)[:, None, None] + noise.to(x) * noise_weight
    return F.leaky_relu(out, slope)


@pytest.mark.parametrize("shape", [(256, 64, 16, 16),     # one round, one thread
                                   (300, 48, 34, 18),     # odd tile counts, not square
                                   (32, 16, 50, 46),      # 575 tiles: blocks of 48 and a part block per thread
                                   (512, 96, 2, 6)])      # one tile row: every tile overhangs the border
def test_matches_a_float64_convolution_within_float32_rounding(lib, shape):
    channels, out_channels, height, width = shape
    x, w, epilogue = _layer(channels, out_channels, height, width)
    reference = _direct(x.double(), w.double(), **epilogue)
    with torch.no_grad():
        out = cpu_layers.winograd_conv3x3(x, w, **epilogue)
        direct_error = (_direct(x, w, **epilogue).double() - reference).abs().max().item()
    assert out.shape == (1, out_channels, height, width) and out.is_contiguous(memory_format=torch.channels_last)
    # Float32 rounding of a few 1e-6 on unit-scale outputs (a wrong tap or sign would be 1e-1).
    assert (out.double() - reference).abs().max().item() <= max(3 * direct_error, 5e-6)


@pytest.mark.parametrize("shape", [(64, 32, 16, 16), (96, 16, 5, 9), (256, 48, 1, 3)])
def test_upsampling_on_the_way_is_bilinear_upsampling_first(lib, shape):
    channels, out_channels, height, width = shape
    x, w, epilogue = _layer(channels, out_channels, 2 * height, 2 * width, seed=2)
    x = x[:, :, :height, :width]
    up = F.interpolate(x.double(), scale_factor=2.0, mode="bilinear", align_corners=False)
    reference = _direct(up, w.double(), **epilogue)
    with torch.no_grad():
        out = cpu_layers.winograd_conv3x3(x, w, upsample=True, **epilogue)
        direct_error = (_direct(up.float(), w, **epilogue).double() - reference).abs().max().item()
    assert out.shape == (1, out_channels, 2 * height, 2 * width)
    assert (out.double() - reference).abs().max().item() <= max(3 * direct_error, 5e-6)


def test_without_an_epilogue_it_is_the_convolution(lib):
    x, w, _ = _layer(256, 32, 8, 12, seed=1)
    with torch.no_grad():
        out = cpu_layers.winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), w)
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1), atol=1e-5, rtol=0)


def test_where_it_applies(lib):
    x, w = torch.randn(1, 256, 32, 32), torch.randn(64, 256, 3, 3)
    with torch.no_grad():
        assert cpu_layers.winograd_usable(x, w)
        assert cpu_layers.winograd_usable(torch.randn(1, 64, 512, 512), torch.randn(32, 64, 3, 3))
        assert not cpu_layers.winograd_usable(torch.randn(1, 32, 64, 64), torch.randn(64, 32, 3, 3))   # few channels
        assert not cpu_layers.winograd_usable(torch.randn(1, 256, 16, 16), w)     # small: not worth its memory
        assert not cpu_layers.winograd_usable(x, torch.randn(40, 256, 3, 3))      # outputs not in vectors of 16
        assert not cpu_layers.winograd_usable(torch.randn(1, 256, 31, 32), w)     # odd: no 2x2 tiling
        assert not cpu_layers.winograd_usable(torch.randn(2, 256, 32, 32), w)     # a batch
        assert not cpu_layers.winograd_usable(x.double(), w.double())
        assert not cpu_layers.winograd_usable(x, torch.randn(64, 256, 5, 5))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not cpu_layers.winograd_usable(x, w)
    assert not cpu_layers.winograd_usable(x, w)   # gradients on: it has no backward


def test_not_where_the_kernel_is_off(lib, monkeypatch, tmp_path):
    monkeypatch.setenv("GAGAVATAR_CPU_KERNEL", "0")
    monkeypatch.setenv("GAGAVATAR_CACHE_DIR", str(tmp_path))
    cpu_backend.reset()
    try:
        with torch.no_grad():
            assert not cpu_layers.winograd_usable(torch.randn(1, 256, 32, 32), torch.randn(64, 256, 3, 3))
    finally:
        cpu_backend.reset()


def test_transformed_weights_are_kept_until_the_weight_changes_or_goes(lib):
    w = torch.randn(8, 4, 3, 3)
    first = cpu_layers.transformed_weight(w)
    assert cpu_layers.transformed_weight(w) is first
    g = torch.tensor(cpu_layers._G, dtype=torch.float64)
    expected = torch.einsum("pi,ocij,qj->pqco", g, w.double(), g).reshape(16, 4, 8)
    torch.testing.assert_close(first.double(), expected, atol=1e-6, rtol=0)
    with torch.no_grad():
        w.mul_(2)   # in place: same storage, new version
    second = cpu_layers.transformed_weight(w)
    assert second is not first
    torch.testing.assert_close(second, 2 * first, atol=1e-6, rtol=0)
    key = id(w)
    del w
    gc.collect()
    assert key not in cpu_layers._weights


def test_the_same_bits_on_torch_threads_or_ours_and_any_thread_count(lib, monkeypatch):
    x, w, epilogue = _layer(128, 64, 36, 20, seed=3)
    assert cpu_backend.openmp() is not None   # torch's OpenMP runtime found (Linux, torch with OpenMP)
    team = cpu_backend.openmp()
    outs = []
    with torch.no_grad():
        for runtime in (team, None):   # None: as where no OpenMP runtime is found, our worker pool
            monkeypatch.setattr(cpu_backend, "_openmp", runtime)
            for threads in (1, 2, 3):
                monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
                outs.append(cpu_layers.winograd_conv3x3(x, w, **epilogue))
    assert all(torch.equal(outs[0], out) for out in outs[1:])


def test_every_vector_width_gives_the_same_bits(lib, tmp_path, fma_flags):
    """4, 8 or 16 floats per vector (SSE/NEON, AVX2, AVX-512 builds, all with FMA) compute alike."""
    if not fma_flags:
        pytest.skip("builds with -mfma: an x86 CPU with FMA")
    x, w, epilogue = _layer(96, 48, 20, 14, seed=4)
    x = x.contiguous(memory_format=torch.channels_last)
    wt = cpu_layers.transformed_weight(w)
    style, scale, bias = (epilogue[k].contiguous() for k in ("style", "scale", "bias"))
    outs = []
    for lanes in (4, 8, 16, None):
        if lanes is None:
            build = lib
        else:
            path = tmp_path / f"lanes{lanes}.so"
            subprocess.run([*cpu_backend._compiler(), *cpu_backend.FLAGS, *fma_flags, f"-DLANES={lanes}", "-o", str(path),
                            str(cpu_backend.SOURCE), "-lm"], check=True, capture_output=True)
            build = cpu_backend.load(path)
        out = torch.empty(1, 48, 20, 14, memory_format=torch.channels_last)
        assert build.gag_wino_conv(20, 14, 96, 48, 0, x.data_ptr(), wt.data_ptr(), style.data_ptr(), scale.data_ptr(),
                                   bias.data_ptr(), epilogue["noise"].data_ptr(), 0.3, 0.2, 0, 70, out.data_ptr()) == 0
        outs.append(out)
    torch.testing.assert_close(outs[0], F.leaky_relu(F.conv2d(x * style[:, None, None], w, padding=1)
                                                     * scale[:, None, None] + bias[:, None, None]
                                                     + 0.3 * epilogue["noise"], 0.2), atol=1e-5, rtol=0)
    for other in outs[1:]:
        assert torch.equal(outs[0], other)


@pytest.fixture(scope="module")
def unet():
    """A StyleUNet at 64^2: its 256- and 512-channel layers at 32^2-64^2 are Winograd's."""
    torch.manual_seed(0)
    return StyleUNet(in_size=64, in_dim=32, out_dim=3, out_size=64).eval()


def test_the_network_uses_it_at_inference_and_agrees_with_oneDNN(lib, unet, monkeypatch):
    x = torch.rand(1, 32, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.5
    calls = []
    winograd = cpu_layers.winograd_conv3x3
    monkeypatch.setattr(cpu_layers, "winograd_conv3x3",
                        lambda *a, **k: calls.append((a[0].shape[2] * (1 + k["upsample"]), k["upsample"])) or winograd(*a, **k))
    with torch.no_grad():
        out = unet.forward_with_internals(x)
    # Encoder, SFT branch and decoder (modulated) convolutions with 256+ input channels, 32^2-64^2.
    assert len(calls) >= 8 and {size for size, _ in calls} == {32, 64}
    assert sum(upsample for _, upsample in calls) >= 2   # the ResBlock's and the decoder's upsampling convolutions
    calls.clear()
    monkeypatch.setattr(cpu_layers, "MIN_CHANNELS", 10 ** 9)   # oneDNN's direct convolutions throughout
    with torch.no_grad():
        direct = unet.forward_with_internals(x)
    assert not calls
    torch.testing.assert_close(out["image"], direct["image"], atol=2e-6, rtol=0)
    for a, b in zip(out["cond_scale"] + out["cond_shift"], direct["cond_scale"] + direct["cond_shift"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_training_runs_oneDNN_and_has_gradients(lib, unet, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_layers, "winograd_conv3x3", lambda *a, **k: calls.append(1))
    x = torch.rand(1, 32, 64, 64, requires_grad=True)
    unet(x).sum().backward()
    assert not calls and x.grad is not None and x.grad.abs().sum() > 0
    unet.zero_grad(set_to_none=True)
