"""StyleUNet neural renderer against the official outputs of the conformance case (seed 0)."""
import copy
import json
from pathlib import Path

import pytest
import torch

from gagavatar.engine.networks.style_unet import StyleUNet

PREFIX = "upsampler."
LEVELS = range(7)


def _unet(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    sub = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    del state
    model = StyleUNet(in_size=512, in_dim=32, out_dim=3, out_size=512).eval()
    model.load_state_dict(sub, strict=True)
    return model


@pytest.fixture(scope="module")
def unet(official_checkpoint):
    return _unet(official_checkpoint)


@pytest.fixture(scope="module")
def x():
    """A 32-channel 512^2 input in [0, 0.5), as the kit's (seeded)."""
    return 0.5 * torch.rand(1, 32, 512, 512, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def result(unet, x):
    with torch.no_grad():
        return unet.forward_with_internals(x)


@pytest.fixture(scope="module")
def kit_x(kit):
    return kit.compare.styleunet_input(0)


@pytest.fixture(scope="module")
def kit_result(kit_checkpoint, kit_x):
    """The internals of StyleUNet with the reference case's weights on the reference input."""
    with torch.no_grad():
        return _unet(kit_checkpoint).forward_with_internals(kit_x)


def test_state_dict_matches_official(kit):
    entries = json.loads((Path(kit.compare.__file__).parent / "official_state_dict.json").read_text())["entries"]
    official = [(e["key"][len(PREFIX):], list(e["shape"]), e["kind"]) for e in entries if e["key"].startswith(PREFIX)]
    model = StyleUNet()
    params = dict(model.named_parameters())
    mine = [(k, list(v.shape), "parameter" if k in params else "buffer") for k, v in model.state_dict().items()]
    assert mine == official
    StyleUNet().load_state_dict(model.state_dict(), strict=True)  # round trip through the 5-D weights


def test_input_is_the_case_input(kit, case, kit_x):
    assert kit.compare.tensor_sha256(kit_x) == case["inputs"]["styleunet_input_sha256"]


def test_output(kit, case, kit_result):
    image = kit_result["image"]
    assert image.shape == (1, 3, 512, 512) and image.dtype == torch.float32 and image.is_contiguous()
    kit.compare.check(case["outputs"]["styleunet_out"], image, "styleunet_out")
    kit.compare.check(case["outputs"]["styleunet_out_crop"], image[0, :, 250:258, 250:258], "styleunet_out_crop")


@pytest.mark.parametrize("name", ["style_code", "style_latent"])
def test_style(kit, case, kit_result, name):
    assert kit_result[name].dtype == torch.float32
    kit.compare.check(case["outputs"][f"styleunet_{name}"], kit_result[name], f"styleunet_{name}")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", ["scale", "shift"])
def test_sft_conditions(kit, case, kit_result, kind, level):
    assert len(kit_result[f"cond_{kind}"]) == len(LEVELS)
    name = f"styleunet_cond_{kind}{level}"
    kit.compare.check(case["outputs"][name], kit_result[f"cond_{kind}"][level], name)


def test_default_is_deterministic_and_randomize_noise_is_not(unet, x, result):
    with torch.no_grad():
        again = unet(x)
        noisy = unet(x, randomize_noise=True)
    assert torch.equal(again, result["image"])
    diff = (noisy - again).abs().max().item()
    assert diff > 1e-2  # the official randomize_noise=True run moved by 0.22 on the kit's case
    assert 0.0 <= noisy.min().item() and noisy.max().item() <= 1.0


def test_batch_matches_single_samples(unet, x, result):
    # a smooth input, as a render is: another style code and other conditions (a second noise
    # field gives nearly the same image, the weights average it out)
    other = torch.nn.functional.interpolate(x[:, :, ::32, ::32], size=x.shape[-2:], mode="bilinear")
    with torch.no_grad():
        batched = unet.forward_with_internals(torch.cat([x, other]))
        single = unet.forward_with_internals(other)
    for b, ref in enumerate((result, single)):
        torch.testing.assert_close(batched["image"][b], ref["image"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched["style_latent"][b], ref["style_latent"][0], atol=1e-5, rtol=1e-5)
    assert (batched["image"][0] - batched["image"][1]).abs().max() > 1e-2


def test_channels_last_module_and_input(unet, x, result):
    model = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, result["image"], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(0)
    model = StyleUNet(in_size=64, in_dim=32, out_dim=3, out_size=64).eval()
    x = torch.rand(2, 32, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.5
    with torch.no_grad():
        ref = model.forward_with_internals(x)
    return model, x, ref


def test_bf16_autocast_keeps_style_path_fp32(small_unet):
    model, x, ref = small_unet
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_with_internals(x)
    assert out["style_code"].dtype == torch.float32 and out["style_latent"].dtype == torch.float32
    assert out["cond_scale"][0].dtype == torch.bfloat16
    torch.testing.assert_close(out["image"].float(), ref["image"], atol=3e-2, rtol=0)


def test_bf16_weights(small_unet):
    model, x, ref = small_unet
    model = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        out = model.forward_with_internals(x.to(torch.bfloat16))
    assert out["image"].dtype == torch.bfloat16 and out["style_latent"].dtype == torch.float32
    torch.testing.assert_close(out["image"].float(), ref["image"], atol=5e-2, rtol=0)
    assert out["image"].float().std() > 0.5 * ref["image"].std()  # no collapse to a flat colour


def test_smaller_input_is_resized(small_unet):
    model, x, ref = small_unet
    with torch.no_grad():
        out = model(x[:, :, ::2, ::2])
    assert out.shape == ref["image"].shape


@pytest.mark.parametrize("batch", [1, 2])
def test_backward(small_unet, batch):
    model, x, _ = small_unet
    model = copy.deepcopy(model).train()
    inp = x[:batch].clone().requires_grad_(True)
    model(inp, randomize_noise=True).square().mean().backward()
    for name in ("stylegan_decoder.style_convs.0.modulated_conv.weight",
                 "stylegan_decoder.style_convs.0.modulated_conv.modulation.weight",
                 "condition_scale.0.2.weight", "final_linear.weight", "conv_body_first.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert torch.isfinite(inp.grad).all()


def test_weights_are_stored_channels_last_and_saved_in_the_official_shapes(small_unet):
    model, _, _ = small_unet
    conv = model.stylegan_decoder.style_convs[0].modulated_conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dim() == 4
    assert model.conv_body_first.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.state_dict()["stylegan_decoder.style_convs.0.modulated_conv.weight"].dim() == 5


def test_demodulation_follows_weight_changes(small_unet):
    """The style-free demodulation factor is kept between calls: an in-place weight change (an
    optimiser step, load_state_dict) and a move to another dtype are seen at once."""
    model, x, ref = small_unet
    model = copy.deepcopy(model)
    with torch.no_grad():
        model(x)
        for p in model.stylegan_decoder.parameters():
            p.mul_(1.1)
        changed = model(x)
        fresh = StyleUNet(in_size=64, in_dim=32, out_dim=3, out_size=64).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(changed, fresh(x), atol=0, rtol=0)
        assert (changed - ref["image"]).abs().max() > 1e-3
        model.load_state_dict(copy.deepcopy(small_unet[0]).state_dict())
        torch.testing.assert_close(model(x), ref["image"], atol=0, rtol=0)
        doubles = copy.deepcopy(model).double()(x.double())
    torch.testing.assert_close(doubles.float(), ref["image"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(1, 64, 32, 32), (2, 3, 17, 9), (1, 16, 1, 1)])
def test_cpu_upsampling_is_bilinear_x2(shape):
    """The CPU's float32 x2 upsampling (a transposed convolution) is F.interpolate's bilinear
    ``align_corners=False``, edges included, to float rounding; it also backpropagates."""
    from gagavatar.engine.networks.style_unet import _resample
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    out = _resample(x, 2.0)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
