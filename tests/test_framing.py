"""engine/framing.py through OpenCV cameras: any intrinsics and resolution, from scripts and from
`gagavatar render --camera`; the source camera at 512^2 reproduces the network's own frame."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gagavatar.engine import cli, framing, load_model
from gagavatar.engine.cameras import transform_from_pose, transform_to_opencv
from gagavatar.engine.flame import load_flame
from gagavatar.engine.sequence import DrivingSequence, save_sequence


@pytest.fixture(scope="module")
def scene(official_checkpoint, flame_asset, astronaut):
    """(model, avatar, driving vertices [5023, 3], the source camera [3, 4])."""
    model = load_model(official_checkpoint)
    flame = load_flame(flame_asset)
    image = torch.from_numpy(astronaut.copy()).permute(2, 0, 1).float() / 255.0
    source = transform_from_pose(torch.tensor([-0.05, 0.12, 0.02]), torch.tensor([0.03, -0.08, 9.35]))
    with torch.no_grad():
        avatar = model.reconstruct(image, source, shape=torch.zeros(300), vertices=flame()[0])
        vertices = flame(expression=0.5 * torch.randn(1, 100, generator=torch.Generator().manual_seed(0)))[0]
    return model, avatar, vertices, source


def _opencv(transform, width=512, height=512, shift=(0.0, 0.0)):
    view, K = transform_to_opencv(transform)
    K = K.double().numpy().copy()
    K[0, 2] += shift[0]
    K[1, 2] += shift[1]
    return {"K": K.tolist(), "R": view[:3, :3].double().numpy().tolist(), "t": view[:3, 3].double().numpy().tolist(),
            "width": width, "height": height}


def _srgb(layers):
    return (framing.linear_to_srgb(layers.combined[..., :3]) * 255 + 0.5).astype(np.int16)


def test_the_source_camera_reproduces_the_networks_frame(scene):
    """The crop is centred as the source camera's: through that camera at 512^2 it is the whole frame."""
    model, avatar, vertices, transform = scene
    with torch.no_grad():
        direct = model.render(avatar, vertices, transform).image.clamp(0, 1)
    cam = _opencv(transform)
    layers = framing.render_opencv(model, avatar, vertices.numpy(), cam["K"], cam["R"], cam["t"], 512, 512)
    expected = (direct.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int16)
    assert layers.combined.shape == (512, 512, 4)
    assert np.abs(_srgb(layers) - expected).max() <= 1          # the sRGB round trip only


def test_any_resolution_and_principal_point(scene):
    """A 320x240 frame whose principal point moves 40 px right shows the same head 40 px right."""
    model, avatar, vertices, transform = scene
    base = _opencv(transform, 320, 240, shift=(-96.0, -136.0))
    moved = _opencv(transform, 320, 240, shift=(-56.0, -136.0))
    a = framing.render_opencv(model, avatar, vertices.numpy(), base["K"], base["R"], base["t"], 320, 240)
    b = framing.render_opencv(model, avatar, vertices.numpy(), moved["K"], moved["R"], moved["t"], 320, 240)
    assert a.combined.shape == (240, 320, 4) and a.depth.shape == (240, 320)
    assert a.combined[..., 3].mean() > 0.2                     # the head is in the frame
    assert np.abs(b.combined[:, 40:] - a.combined[:, :-40]).max() < 1e-4


def test_a_camera_is_checked(tmp_path):
    bad = tmp_path / "cam.json"
    bad.write_text(json.dumps({"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "R": np.eye(3).tolist(), "t": [0, 0, 9]}))
    with pytest.raises(Exception, match="lacks width, height"):
        framing.read_camera(bad)
    bad.write_text(json.dumps({"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "R": (2 * np.eye(3)).tolist(), "t": [0, 0, 9],
                               "width": 64, "height": 64}))
    with pytest.raises(Exception, match="R must be a 3x3 rotation"):
        framing.read_camera(bad)
    bad.write_text("{")
    with pytest.raises(Exception, match="not a readable JSON camera"):
        framing.read_camera(bad)


def test_render_camera_on_the_command_line(scene, assets_dir, tmp_path, monkeypatch, capsys):
    model, avatar, vertices, transform = scene
    monkeypatch.setenv("GAGAVATAR_ASSETS", str(assets_dir))
    avatar.save(tmp_path / "a.npz")
    seq = DrivingSequence(expression=torch.zeros(2, 100), jaw=torch.zeros(2, 3), eyes=torch.zeros(2, 6),
                          transform=transform.expand(2, 3, 4))
    save_sequence(seq, tmp_path / "drive.npz")
    (tmp_path / "wide.json").write_text(json.dumps(_opencv(transform, 384, 256, shift=(-64.0, -128.0))))
    assert cli.main(["render", str(tmp_path / "a.npz"), "--drive", str(tmp_path / "drive.npz"), "-o",
                     str(tmp_path / "frames"), "--camera", str(tmp_path / "wide.json")]) == 0
    frames = sorted((tmp_path / "frames").iterdir())
    assert [f.name for f in frames] == ["frame_00000.png", "frame_00001.png"]
    assert np.asarray(Image.open(frames[0])).shape == (256, 384, 3)

    (tmp_path / "odd.json").write_text(json.dumps(_opencv(transform, 383, 256)))
    assert cli.main(["render", str(tmp_path / "a.npz"), "-o", str(tmp_path / "odd.mp4"),
                     "--camera", str(tmp_path / "odd.json")]) == 2
    assert cli.main(["render", str(tmp_path / "a.npz"), "-o", str(tmp_path / "x.mp4"),
                     "--camera", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-2:] == ["error: H.264 video needs an even width and height, the camera's frame is 383x256: change it "
                        "by a pixel or render PNG frames", f"error: camera file {tmp_path / 'none.json'} not found: "
                        "check the path"]
    assert not (tmp_path / "odd.mp4").exists() and not (tmp_path / "x.mp4").exists()
