"""Issue #12, bad input in general: every command, given a hostile, broken or odd file, says what is wrong
in one ``error:`` line (exit code 2; 130 on Ctrl-C), shows no traceback and leaves nothing behind; valid
but unusual photos work.

Called through the CLI entry point like tests/test_cli.py. Cases already covered elsewhere are not
repeated here: a missing input, a bad output name, NaN or zero frames in a sequence
(tests/test_sequence.py), truncated, non-torch or pickled checkpoints (tests/test_checkpoints.py), an
ffmpeg failing at the end of a video (tests/test_cli.py).
"""
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from gagavatar.engine import checkpoints as ck
from gagavatar.engine import cli
from gagavatar.engine.avatar import Avatar

PROGRESS = re.compile(r"^(render|track)\b.*\d+%\|")


def run(*argv):
    return cli.main([str(a) for a in argv])


def messages(err: str) -> list[str]:
    """The lines of stderr that are not tqdm progress bars nor ``warning:`` lines."""
    lines = (line.rsplit("\r", 1)[-1].strip() for line in err.splitlines())
    return [line for line in lines if line and not PROGRESS.match(line) and not line.startswith("warning:")]


def one_line_error(code: int, err: str, *words: str) -> str:
    """Assert exit code 2 and exactly one ``error:`` line (holding ``words``), no traceback; return it."""
    lines = messages(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def assets_env(assets_dir, monkeypatch):
    monkeypatch.setenv("GAGAVATAR_ASSETS", str(assets_dir))
    return assets_dir


@pytest.fixture(scope="module")
def reference(assets_dir, astronaut, tmp_path_factory):
    """The astronaut photo tracked (``landmarks [70, 2]``, crop pixels) and reconstructed, once."""
    d = tmp_path_factory.mktemp("reference")
    Image.fromarray(astronaut).save(d / "astronaut.png")
    assert run("track", d / "astronaut.png", "-o", d / "track.npz", "--assets", assets_dir) == 0
    assert run("reconstruct", d / "astronaut.png", "-o", d / "avatar.npz", "--assets", assets_dir,
               "--device", "cpu") == 0
    with np.load(d / "track.npz") as z:
        landmarks = z["landmarks"][0]
    return SimpleNamespace(photo=d / "astronaut.png", avatar=d / "avatar.npz", landmarks=landmarks)


def _subprocess_env(assets_dir) -> dict:
    return {**os.environ, "GAGAVATAR_ASSETS": str(assets_dir)}


# ------------------------------------------------------------------ broken images
def _jpeg_bytes(rgb) -> bytes:
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def _animated_gif(path, rgb):
    frames = [Image.fromarray(rgb), Image.fromarray(np.ascontiguousarray(rgb[:, ::-1]))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


BAD_IMAGES = {
    "truncated.jpg": (lambda p, rgb: p.write_bytes(_jpeg_bytes(rgb)[:20000]), ["truncated.jpg", "truncated"]),
    "folder.jpg": (lambda p, rgb: p.mkdir(), ["is a folder, not an image"]),
    "animated.gif": (_animated_gif, ["animated.gif is an animation (2 frames)", "still photo", "video"]),
    "tiny.png": (lambda p, rgb: Image.fromarray(cv2.resize(rgb, (24, 24), interpolation=cv2.INTER_AREA)).save(p),
                 ["24x24", "at least 64 pixels"]),
    "empty.jpg": (lambda p, rgb: p.write_bytes(b""), ["empty.jpg is empty"]),
    "notes.png": (lambda p, rgb: p.write_text("shopping list: eggs, milk\n"),
                  ["cannot read notes.png as an image (not a picture file"]),
}


@pytest.mark.parametrize("command", ["track", "reconstruct"])
@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_broken_images_are_one_line_and_write_nothing(name, command, astronaut, assets_env, tmp_path, capsys):
    make, words = BAD_IMAGES[name]
    make(tmp_path / name, astronaut)
    out = tmp_path / ("drive.npz" if command == "track" else "avatar.npz")
    extra = ["--device", "cpu"] if command == "reconstruct" else []
    code = run(command, tmp_path / name, "-o", out, *extra)
    one_line_error(code, capsys.readouterr().err, *words)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_video_given_to_reconstruct_says_to_track_it(astronaut, assets_env, tmp_path, capsys):
    (tmp_path / "talk.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    code = run("reconstruct", tmp_path / "talk.mp4", "-o", tmp_path / "avatar.npz", "--device", "cpu")
    one_line_error(code, capsys.readouterr().err, "talk.mp4 is a video", "gagavatar track")
    assert [p.name for p in tmp_path.iterdir()] == ["talk.mp4"]


# ------------------------------------------------------------------ broken videos
def _gray_clip(path, rgb):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 128))
    for _ in range(4):
        writer.write(np.full((128, 128, 3), 128, np.uint8))
    writer.release()


BAD_VIDEOS = {
    "empty.mp4": (lambda p, rgb: p.write_bytes(b""), ["empty.mp4 is empty"]),
    "corrupt.mp4": (lambda p, rgb: p.write_bytes(np.random.default_rng(0).bytes(200_000)),
                    ["cannot open corrupt.mp4 as a video"]),
    "gray.mp4": (_gray_clip, ["no face found in any frame of gray.mp4"]),
}


@pytest.mark.parametrize("name", list(BAD_VIDEOS))
def test_broken_videos_are_one_line_and_write_nothing(name, astronaut, assets_env, tmp_path, capfd):
    """capfd: FFmpeg (inside OpenCV) writes its own complaints straight to file descriptor 2."""
    make, words = BAD_VIDEOS[name]
    make(tmp_path / name, astronaut)
    code = run("track", tmp_path / name, "-o", tmp_path / "drive.npz")
    one_line_error(code, capfd.readouterr().err, *words)
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ------------------------------------------------------------------ broken driving sequences
class _Evil:
    """Unpickling this creates the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _arrays(T=4):
    return dict(expression=np.zeros((T, 100), np.float32), jaw=np.zeros((T, 3), np.float32),
                eyes=np.zeros((T, 6), np.float32), transform=np.tile(np.eye(3, 4, dtype=np.float32), (T, 1, 1)),
                fps=np.float64(25.0))


def _npz(path, **changes):
    arrays = {k: v for k, v in {**_arrays(), **changes}.items() if v is not None}
    np.savez(path, **arrays)


def _truncated_npz(path):
    _npz(path)
    path.write_bytes(path.read_bytes()[:900])


BAD_SEQUENCES = {
    "missing keys": (lambda p: _npz(p, jaw=None, eyes=None), ["lacks jaw, eyes", "not a driving sequence"]),
    "mismatched lengths": (lambda p: _npz(p, jaw=np.zeros((6, 3), np.float32)), ["jaw"]),
    "object array": (lambda p: _npz(p, expression=np.array([_Evil(p.parent / "pwned")], dtype=object)),
                     ["pickled", "never loaded"]),
    "text array": (lambda p: _npz(p, expression=np.full((4, 100), "x")), ["expression is not an array of numbers"]),
    "fps not a number": (lambda p: _npz(p, fps=np.array("fast")), ["fps is not one finite number"]),
    "not a zip": (lambda p: p.write_text("expression,jaw\n0,0\n"), ["not a readable .npz sequence (not a zip archive"]),
    "truncated": (_truncated_npz, ["not a readable .npz sequence (not a zip archive, or truncated)"]),
    "empty": (lambda p: p.write_bytes(b""), ["not a readable .npz sequence (it is empty)"]),
}


@pytest.mark.parametrize("case", list(BAD_SEQUENCES))
def test_broken_driving_sequences_are_one_line_and_never_unpickled(case, reference, assets_env, tmp_path, capsys):
    make, words = BAD_SEQUENCES[case]
    make(tmp_path / "drive.npz")
    code = run("render", reference.avatar, "--drive", tmp_path / "drive.npz", "-o", tmp_path / "out.mp4",
               "--device", "cpu")
    one_line_error(code, capsys.readouterr().err, *words)
    assert [p.name for p in tmp_path.iterdir()] == ["drive.npz"]  # no output, no marker of the pickle


# ------------------------------------------------------------------ broken checkpoints
def _bad_checkpoint(path, problem) -> str:
    """An official-layout checkpoint (broadcast scalars: tiny on disk) with one key missing or one tensor
    of the wrong shape; the key."""
    layout = ck.official_layout()
    sd = OrderedDict((k, torch.full((1,), 0.5).expand(shape)) for k, shape in layout.items())
    key = next(k for k, shape in layout.items() if len(shape) >= 2 and not k.startswith(ck.PERCEPTUAL_PREFIX))
    if problem == "missing":
        del sd[key]
    else:
        sd[key] = torch.full((1,), 0.5).expand(layout[key][0] + 1, *layout[key][1:])
    torch.save({"model": sd, "meta_cfg": dict(ck.DEFAULT_META_CFG)}, path)
    return key


@pytest.mark.parametrize("command", ["info", "reconstruct"])
@pytest.mark.parametrize("problem", ["missing", "wrong shape"])
def test_checkpoint_with_a_bad_tensor_names_the_key(problem, command, assets_dir, astronaut, tmp_path, capsys):
    bad = tmp_path / "assets"
    bad.mkdir()
    for item in assets_dir.iterdir():
        if item.name != "GAGAvatar.pt":
            (bad / item.name).symlink_to(item.resolve())
    key = _bad_checkpoint(bad / "GAGAvatar.pt", problem)
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(astronaut).save(work / "me.png")
    if command == "info":
        code = run("info", bad / "GAGAvatar.pt")
    else:
        code = run("reconstruct", work / "me.png", "-o", work / "avatar.npz", "--assets", bad, "--device", "cpu")
    line = one_line_error(code, capsys.readouterr().err, "GAGAvatar.pt does not match the GAGAvatar layout", key,
                          "missing" if problem == "missing" else "wrong shape")
    assert "gagavatar assets download" in line
    assert [p.name for p in work.iterdir()] == ["me.png"]


# ------------------------------------------------------------------ Ctrl-C
def _holds_data(folder: Path) -> bool:
    """Whether a file under ``folder`` has bytes (files come and go while the render writes)."""
    try:
        return any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob("*"))
    except FileNotFoundError:
        return False


def _interruptible() -> None:
    """preexec_fn: Ctrl-C's default action, as in a terminal. A test run started in the background
    of a non-interactive shell (``nohup ... &``) inherits SIGINT ignored, and Python then installs
    no KeyboardInterrupt handler, while ffmpeg still stops."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("output", ["out.mp4", "frames"])
def test_ctrl_c_during_a_render_exits_130_and_leaves_nothing(output, reference, assets_dir, tmp_path):
    """SIGINT to the whole process group (what Ctrl-C in a terminal does: ffmpeg gets it too) once the
    first frame is being written: exit code 130, one line, no output and no staging or temporary file."""
    proc = subprocess.Popen([sys.executable, "-m", "gagavatar", "render", str(reference.avatar), "-o",
                             str(tmp_path / output), "--frames", "40", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_interruptible,   # and should it crash, every thread's stack:
                            env={**_subprocess_env(assets_dir), "PYTHONFAULTHANDLER": "1"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if _holds_data(tmp_path):   # the video's temporary file, or a PNG in the frames' staging folder
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and messages(err) == ["cancelled"] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a full disk
def _file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG (File too large), as on a full disk."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # ffmpeg killed by SIGXFSZ: no core file
    return apply


def _run_limited(limit, assets_dir, *argv):
    proc = subprocess.run([sys.executable, "-m", "gagavatar", *map(str, argv)], capture_output=True, text=True,
                          preexec_fn=_file_size_limit(limit), env=_subprocess_env(assets_dir), timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("command, output, limit", [
    ("reconstruct", "avatar.npz", 1_000_000),
    ("track", "drive.npz", 1000),
    ("render", "out.mp4", 1000),
    ("render", "frames", 1000),
])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(command, output, limit, reference, assets_dir,
                                                             tmp_path):
    src = {"reconstruct": reference.photo, "track": reference.photo, "render": reference.avatar}[command]
    extra = {"reconstruct": ["--device", "cpu"], "track": [], "render": ["--frames", "1", "--device", "cpu"]}
    code, err = _run_limited(limit, assets_dir, command, src, "-o", tmp_path / output, *extra[command])
    line = one_line_error(code, err, str(tmp_path / output))
    assert "File too large" in line or "free space" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ valid but odd photos work
def _exif_rotated(path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6   # "rotate 90 clockwise to display": the stored pixels are turned counter-clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(path, exif=exif, quality=95)


def _rgba(path, rgb):
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0   # a transparent strip: composited over black
    Image.fromarray(np.dstack([rgb, alpha])).save(path)


def _two_faces(path, rgb):
    """The photo, and beside it a smaller copy turned by 25 degrees (its landmarks would be ~35 px off)."""
    two = np.zeros((600, 1100, 3), np.uint8)
    two[44:556, 20:532] = rgb
    turned = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((256, 256), 25, 1.0), (512, 512))
    two[100:484, 650:1034] = cv2.resize(turned, (384, 384), interpolation=cv2.INTER_AREA)
    Image.fromarray(two).save(path)


ODD_PHOTOS = {
    "rgb16.png": lambda p, rgb: cv2.imwrite(str(p), (rgb.astype(np.uint16) * 257)[..., ::-1]),
    "rgba.png": _rgba,
    "gray.png": lambda p, rgb: Image.fromarray(rgb).convert("L").save(p),
    "cmyk.jpg": lambda p, rgb: Image.fromarray(rgb).convert("CMYK").save(p, quality=95),
    "exif_rotated.jpg": _exif_rotated,
    "huge.jpg": lambda p, rgb: cv2.imwrite(str(p), cv2.resize(rgb, (4000, 4000), interpolation=cv2.INTER_CUBIC)
                                           [..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]),
    "two_faces.png": _two_faces,
    "still.gif": lambda p, rgb: Image.fromarray(rgb).save(p),   # one frame: a valid (palette) image
}


@pytest.mark.parametrize("name", list(ODD_PHOTOS))
def test_odd_but_valid_photos_track_like_the_plain_one(name, reference, astronaut, assets_env, tmp_path, capsys):
    """Each variant of the astronaut photo is tracked; its landmarks (crop pixels) land where the plain
    PNG's do. Two faces: the larger is used, with a warning line."""
    ODD_PHOTOS[name](tmp_path / name, astronaut)
    assert run("track", tmp_path / name, "-o", tmp_path / "drive.npz") == 0
    err = capsys.readouterr().err
    with np.load(tmp_path / "drive.npz") as z:
        landmarks = z["landmarks"][0]
    assert np.median(np.linalg.norm(landmarks - reference.landmarks, axis=1)) < 3.0
    assert ("warning: 2 faces found in two_faces.png: using the largest" in err) == (name == "two_faces.png"), err
    assert "Traceback" not in err


def test_an_exif_rotated_photo_reconstructs_the_upright_avatar(astronaut, assets_env, tmp_path):
    """The avatar of an EXIF-rotated JPEG is the one of its upright pixels (a PNG written from them), not
    of the sideways stored ones: orientation is applied before tracking (JPEG noise alone moves the fit)."""
    from PIL import ImageOps
    _exif_rotated(tmp_path / "rotated.jpg", astronaut)
    with Image.open(tmp_path / "rotated.jpg") as img:
        assert img.size == (512, 512) and np.abs(np.asarray(img).astype(int) - np.rot90(astronaut)).mean() < 4
        upright = ImageOps.exif_transpose(img)
    assert np.abs(np.asarray(upright).astype(int) - astronaut).mean() < 4
    upright.save(tmp_path / "upright.png")
    for name in ("rotated.jpg", "upright.png"):
        assert run("reconstruct", tmp_path / name, "-o", tmp_path / f"{name}.npz", "--device", "cpu") == 0
    mine, upright = Avatar.load(tmp_path / "rotated.jpg.npz"), Avatar.load(tmp_path / "upright.png.npz")
    assert torch.allclose(mine.source_transform, upright.source_transform, atol=1e-5)
    for key, value in upright.gaussians.items():
        assert torch.allclose(mine.gaussians[key], value, atol=1e-4), key
