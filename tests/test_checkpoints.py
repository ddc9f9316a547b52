"""engine/checkpoints.py: official and compact formats, validation errors, safe loading, info."""
import math
import os
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch

from gagavatar.engine import checkpoints as ck
from gagavatar.engine.errors import AssetError, UnsafeFileError


@pytest.fixture(scope="module")
def spec(kit):
    return kit.mk.load_spec()


@pytest.fixture(scope="module")
def official(official_checkpoint):
    """(state_dict, meta_cfg) of the official-format fixture, read once (memory-mapped)."""
    return ck.read_checkpoint(official_checkpoint)


def _tiny_state_dict(perceptual=True):
    """Every official key with its official shape, each a broadcast scalar (a few bytes on disk)."""
    return OrderedDict((key, torch.full((1,), 0.5).expand(shape)) for key, shape in ck.official_layout().items()
                       if perceptual or not key.startswith("percep_loss."))


def _save(obj, path):
    torch.save(obj, path)
    return path


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``, i.e. creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# ------------------------------------------------------------------ layout and official reads
def test_layout_matches_official_spec(spec):
    expected = [(e["key"], tuple(e["shape"])) for e in spec["entries"]]
    assert list(ck.official_layout().items()) == expected
    assert len(ck.PERCEPTUAL_LAYOUT) == 36
    assert all(k.startswith("percep_loss.") for k in ck.PERCEPTUAL_LAYOUT)


def test_read_official(official, official_checkpoint):
    sd, meta = official
    assert list(sd) == list(ck.official_layout()) and len(sd) == 597
    assert all(v.dtype == torch.float32 and tuple(v.shape) == ck.official_layout()[k] for k, v in sd.items())
    assert meta["MODEL"]["NAME"] == "GAGAvatar" and ck.is_synthetic(meta)
    raw = torch.load(official_checkpoint, map_location="cpu", weights_only=True, mmap=True)
    assert list(raw) == ["model", "meta_cfg"]             # the published file's two entries, in order
    assert {"", "base_model.dino_model.blocks.11", "percep_loss.net.slice5"} <= set(sd._metadata)


def test_read_the_kits_official_file(kit_checkpoint, spec, kit, case):
    sd, meta = ck.read_checkpoint(kit_checkpoint)
    assert list(sd) == [e["key"] for e in spec["entries"]]
    assert meta == spec["meta_cfg"] and not ck.is_synthetic(meta)
    assert kit.compare.verify_checkpoint(sd, case) == []
    assert set(sd._metadata) == set(spec["module_versions"])


def test_split_perceptual(official):
    sd, _ = official
    model_sd, percep_sd = ck.split_perceptual(sd)
    assert len(model_sd) == 561 and len(percep_sd) == 36
    assert list(percep_sd) == list(ck.PERCEPTUAL_LAYOUT)
    assert not any(k.startswith("percep_loss") for k in model_sd)
    assert all(percep_sd[k] is sd[k] for k in percep_sd)
    assert "percep_loss.vggface" in percep_sd._metadata and "percep_loss.vggface" not in model_sd._metadata
    assert "base_model" in model_sd._metadata


def test_info_official(official_checkpoint):
    info = ck.checkpoint_info(official_checkpoint)
    assert info["format"] == "official"
    assert info["tensors"] == 597
    assert info["parameters"] == sum(math.prod(shape) for shape in ck.official_layout().values()) == 186_800_582
    assert info["dtype"] == "float32"
    assert info["perceptual"] is True and info["synthetic"] is True
    assert info["meta_cfg"]["DATASET"]["POINT_PLANE_SIZE"] == 296
    assert info["file_size"] == os.path.getsize(official_checkpoint)


# ------------------------------------------------------------------ writing
def test_official_resave_round_trip(official, tmp_path):
    sd, meta = official
    model_sd, percep_sd = ck.split_perceptual(sd)
    out = ck.save_official(model_sd, meta, tmp_path / "again.pt", percep_sd=percep_sd)
    try:
        with zipfile.ZipFile(out) as z:
            assert "archive/data.pkl" in z.namelist()  # Fabric's in-memory-buffer archive name
        raw = torch.load(out, map_location="cpu", weights_only=True, mmap=True)
        assert list(raw) == ["model", "meta_cfg"]
        back, meta2 = ck.read_checkpoint(out)
        assert list(back) == list(sd) and meta2 == meta
        assert all(torch.equal(back[k], sd[k]) for k in sd)
        assert back._metadata == sd._metadata
        assert [p.name for p in tmp_path.iterdir()] == ["again.pt"]
    finally:
        out.unlink()


def test_compact_round_trip_and_load_model(official, official_checkpoint, tmp_path):
    sd, _ = official
    model_sd, _ = ck.split_perceptual(sd)
    meta = {"MODEL": {"NAME": "GAGAvatar"}, "TRAIN": {"STEPS": [1, 2]}, "NOTE": None}
    p32 = ck.save_model(sd, tmp_path / "c32.pt", meta_cfg=meta)
    model = ck.load_model(official_checkpoint)
    p16 = ck.save_model(model, tmp_path / "c16.pt", fp16=True)
    try:
        assert not model.training
        msd = model.state_dict()
        assert list(msd) == list(model_sd)
        assert all(torch.equal(msd[k], model_sd[k]) for k in model_sd)

        back32, meta32 = ck.read_checkpoint(p32)
        assert meta32 == meta
        assert list(back32) == list(model_sd)
        assert all(back32[k].dtype == torch.float32 and torch.equal(back32[k], model_sd[k]) for k in model_sd)

        back16, meta16 = ck.read_checkpoint(p16)
        assert meta16 == ck.DEFAULT_META_CFG
        for k, v in model_sd.items():
            assert back16[k].dtype == torch.float32
            assert torch.equal(back16[k], v.half().float()), k
            assert torch.allclose(back16[k], v, rtol=2.0 ** -11, atol=6.2e-5), k
        ratio = p16.stat().st_size / p32.stat().st_size
        assert 0.45 < ratio < 0.55

        del back16, back32, model, msd
        info = ck.checkpoint_info(p16)
        assert (info["format"], info["tensors"], info["dtype"], info["perceptual"]) == \
            ("gagavatar-compact", 561, "float16", False)

        m16 = ck.load_model(p16, dtype=torch.float64)
        assert all(p.dtype == torch.float64 for p in m16.parameters())
        assert torch.equal(m16.head_base, model_sd["head_base"].half().double())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c16.pt", "c32.pt"]
    finally:
        p32.unlink()
        p16.unlink()


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    real_save = torch.save

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        ck.save_model(_tiny_state_dict(), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    ck.save_model(_tiny_state_dict(), target)
    assert ck.checkpoint_info(target)["format"] == "gagavatar-compact"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_save_refuses_bad_input(tmp_path):
    sd = _tiny_state_dict()
    del sd["head_base"]
    with pytest.raises(AssetError, match="head_base"):
        ck.save_model(sd, tmp_path / "x.pt")
    with pytest.raises(TypeError, match="meta_cfg.MODEL"):
        ck.save_model(_tiny_state_dict(), tmp_path / "x.pt", meta_cfg={"MODEL": object()})
    model_sd, percep = ck.split_perceptual(_tiny_state_dict())
    del percep["percep_loss.net.slice1.0.bias"]
    with pytest.raises(AssetError, match="percep_loss.net.slice1.0.bias"):
        ck.save_official(model_sd, {}, tmp_path / "x.pt", percep_sd=percep)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ errors
def test_missing_file(tmp_path):
    with pytest.raises(AssetError) as e:
        ck.read_checkpoint(tmp_path / "GAGAvatar.pt")
    msg = _one_line_error(e)
    assert "not found" in msg and "gagavatar assets download" in msg and "GAGAVATAR_ASSETS" in msg
    with pytest.raises(AssetError, match="folder"):
        ck.load_model(tmp_path)


def test_truncated_and_not_torch(official_checkpoint, tmp_path):
    trunc = tmp_path / "trunc.pt"
    with open(official_checkpoint, "rb") as f:
        trunc.write_bytes(f.read(3_000_000))
    with pytest.raises(AssetError, match="truncated or corrupt") as e:
        ck.read_checkpoint(trunc)
    _one_line_error(e)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(AssetError, match="empty"):
        ck.read_checkpoint(empty)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(AssetError, match="not a PyTorch checkpoint"):
        ck.read_checkpoint(text)

    npz = tmp_path / "avatar.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("xyz.npy", b"\x93NUMPY")
    with pytest.raises(AssetError, match="not a PyTorch checkpoint"):
        ck.read_checkpoint(npz)


def test_pickle_payload_never_runs(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()  # the payload is live when unpickled normally

    marker = tmp_path / "marker"
    evil = _save({"model": _tiny_state_dict(), "meta_cfg": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError) as e:
        ck.read_checkpoint(evil)
    assert "nothing in it was run" in _one_line_error(e)
    with pytest.raises(UnsafeFileError):
        ck.checkpoint_info(evil)

    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    with pytest.raises(AssetError, match="not a PyTorch checkpoint"):
        ck.load_model(raw)
    assert not marker.exists()


def test_wrong_kind(flame_asset, tmp_path):
    with pytest.raises(AssetError, match="FLAME asset") as e:
        ck.read_checkpoint(flame_asset)
    assert "GAGAvatar.pt" in _one_line_error(e)

    lightning = _save({"state_dict": _tiny_state_dict()}, tmp_path / "lightning.ckpt")
    with pytest.raises(AssetError, match="not a GAGAvatar checkpoint.*state_dict"):
        ck.read_checkpoint(lightning)

    tensor = _save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(AssetError, match="holds a Tensor"):
        ck.read_checkpoint(tensor)

    newer = _save({"format": "gagavatar-compact", "version": 2, "model": {}, "meta_cfg": {}}, tmp_path / "v2.pt")
    with pytest.raises(AssetError, match="update the add-on"):
        ck.read_checkpoint(newer)

    other = _save({"model": _tiny_state_dict(), "meta_cfg": {"MODEL": {"NAME": "GAGAvatar_v2"}}},
                  tmp_path / "other.pt")
    with pytest.raises(AssetError, match="GAGAvatar_v2"):
        ck.read_checkpoint(other)


def test_layout_errors(tmp_path):
    good = _save({"model": _tiny_state_dict(), "meta_cfg": ck.DEFAULT_META_CFG}, tmp_path / "good.pt")
    sd, _ = ck.read_checkpoint(good)  # the full layout (tiny storage) passes
    assert len(sd) == 597

    no_percep = _save({"model": _tiny_state_dict(perceptual=False)}, tmp_path / "np.pt")
    sd, meta = ck.read_checkpoint(no_percep)
    assert len(sd) == 561 and meta == {}

    bad_sd = _tiny_state_dict()
    del bad_sd["base_model.dino_model.blocks.3.attn.qkv.weight"]
    del bad_sd["gs_generator_l0.gaussian_conv.0.weight"]
    bad_sd["head_base"] = torch.zeros(5023, 128)
    bad_sd["extra.weight"] = torch.zeros(2)
    bad = _save({"model": bad_sd, "meta_cfg": {}}, tmp_path / "bad.pt")
    with pytest.raises(AssetError) as e:
        ck.read_checkpoint(bad)
    msg = _one_line_error(e)
    assert "2 missing (base_model.dino_model.blocks.3.attn.qkv.weight, gs_generator_l0.gaussian_conv.0.weight)" in msg
    assert "1 unexpected (extra.weight)" in msg
    assert "head_base [5023, 128] instead of [5023, 256]" in msg

    partial = _tiny_state_dict()
    del partial["percep_loss.vggface.network.28.bias"]
    with pytest.raises(AssetError, match=r"1 missing \(percep_loss.vggface.network.28.bias\)"):
        ck.read_checkpoint(_save({"model": partial}, tmp_path / "partial.pt"))

    ints = _tiny_state_dict()
    ints["head_base"] = torch.zeros(5023, 256, dtype=torch.int32)
    with pytest.raises(AssetError, match="not floating-point tensors \\(head_base\\)"):
        ck.read_checkpoint(_save({"model": ints}, tmp_path / "ints.pt"))

    many = OrderedDict((k, v) for k, v in _tiny_state_dict().items() if not k.startswith("upsampler."))
    with pytest.raises(AssetError, match=r"285 missing \(upsampler\.[^,]+, [^,]+, [^,]+, \.\.\. 282 more\)"):
        ck.read_checkpoint(_save({"model": many}, tmp_path / "many.pt"))
