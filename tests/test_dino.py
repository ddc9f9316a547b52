"""DINOv2 ViT-B/14 and DINOBase against the official outputs of the conformance case (seed 0, the kit's weights)."""
import json
from pathlib import Path

import pytest
import torch

from gagavatar.engine.networks.dino_base import DINOBase

PREFIX = "base_model."


@pytest.fixture(scope="module")
def encoder(kit_checkpoint):
    """DINOBase with the reference case's weights."""
    state = torch.load(kit_checkpoint, map_location="cpu", weights_only=True)["model"]
    base = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    del state
    model = DINOBase(output_dim=256).eval()
    model.load_state_dict(base, strict=True)
    return model


@pytest.fixture(scope="module")
def outputs(encoder, case):
    image = case["inputs"]["f_image_518"][None].float()
    with torch.no_grad():
        normalised = (image - encoder.image_mean) / encoder.image_std
        layers = encoder.dino_model.get_intermediate_layers(normalised, 4, return_class_token=True)
        local, global_ = encoder(image)
    return {"layers": layers, "local": local, "global": global_}


def test_state_dict_keys_match_official(encoder, kit):
    entries = json.loads((Path(kit.compare.__file__).parent / "official_state_dict.json").read_text())["entries"]
    official = [(e["key"][len(PREFIX):], list(e["shape"])) for e in entries if e["key"].startswith(PREFIX)]
    mine = [(k, list(v.shape)) for k, v in encoder.state_dict().items()]
    assert mine == official


@pytest.mark.parametrize("i", range(4))
def test_intermediate_layers(outputs, case, kit, i):
    patches, cls = outputs["layers"][i]
    kit.compare.check(case["outputs"][f"dino_layer{i}_patch"], patches, f"dino_layer{i}_patch")
    kit.compare.check(case["outputs"][f"dino_layer{i}_cls"], cls, f"dino_layer{i}_cls")


def test_global_is_first_patch_token(outputs, case, kit):
    kit.compare.check(case["outputs"]["dino_global"], outputs["global"], "dino_global")
    patches, cls = outputs["layers"][3]
    assert torch.equal(outputs["global"], patches[:, 0])
    assert not torch.allclose(outputs["global"], cls, atol=1e-2)


def test_local_features(outputs, case, kit):
    local = outputs["local"]
    assert local.shape == (1, 256, 296, 296)
    kit.compare.check(case["outputs"]["dino_local"], local, "dino_local")
    kit.compare.check(case["outputs"]["dino_local_crop"], local[0, :, 140:148, 0:8], "dino_local_crop")


def test_output_size_resizes_with_align_corners(encoder, outputs, case):
    image = case["inputs"]["f_image_518"][None].float()
    with torch.no_grad():
        local, global_ = encoder(image, output_size=148)
    expected = torch.nn.functional.interpolate(outputs["local"], size=148, mode="bilinear", align_corners=True)
    assert local.shape == (1, 256, 148, 148)
    torch.testing.assert_close(local, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(global_, outputs["global"])


@pytest.mark.parametrize("shape", [(1, 3, 512, 512), (1, 3, 518, 504), (1, 4, 518, 518), (3, 518, 518)])
def test_wrong_input_size_raises(shape):
    with pytest.raises(ValueError, match="518"):
        DINOBase(output_dim=256).eval()(torch.zeros(shape))
