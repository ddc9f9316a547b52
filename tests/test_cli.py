"""The `gagavatar` command line: the main job end to end on synthetic assets, and clean errors."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data

from gagavatar.engine import cli
from gagavatar.engine.avatar import Avatar


def run(*argv):
    return cli.main([str(a) for a in argv])


@pytest.fixture
def assets_env(assets_dir, monkeypatch):
    monkeypatch.setenv("GAGAVATAR_ASSETS", str(assets_dir))
    return assets_dir


def test_help_and_version_via_python_m():
    out = subprocess.run([sys.executable, "-m", "gagavatar", "--help"], capture_output=True, text=True, check=True)
    for command in ("reconstruct", "render", "track", "info", "assets", "train", "evaluate", "build-dataset"):
        assert command in out.stdout


def test_training_commands_are_part_of_the_cli(capsys):
    assert run("train-config") == 0
    out = capsys.readouterr().out
    assert "[optim]" in out and "lr = 0.0001" in out


def test_assets_check(assets_env, tmp_path, capsys):
    assert run("assets", "check") == 0
    assert "GAGAvatar.pt" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("assets", "check", "--assets", empty) == 1
    assert "missing" in capsys.readouterr().out


def test_download_without_licence_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    assert run("assets", "download", "--assets", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "licen" in err.lower() and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_info(official_checkpoint, capsys):
    assert run("info", official_checkpoint) == 0
    out = capsys.readouterr().out
    assert "official" in out and "perceptual" in out


@pytest.mark.parametrize("argv", [
    ["render", "nope.npz", "-o", "{tmp}/out.mp4", "--device", "cpu"],
    ["reconstruct", "nope.png", "-o", "{tmp}/a.npz", "--device", "cpu"],
    ["info", "{tmp}/missing.pt"],
    ["render", "nope.npz", "-o", "{tmp}/out.xyz", "--device", "cpu"],   # neither a video nor a folder
    ["track", "{tmp}/clip.mp4", "-o", "{tmp}/drive.txt"],               # refused before any tracking
])
def test_user_errors_are_one_line_and_write_nothing(argv, assets_env, tmp_path, capsys):
    code = run(*[a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_assets_error_names_the_remedy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GAGAVATAR_ASSETS", str(tmp_path))
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), skimage.data.astronaut()[..., ::-1])
    assert run("reconstruct", img, "-o", tmp_path / "a.npz", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "gagavatar assets download" in err
    assert not (tmp_path / "a.npz").exists()


def test_reconstruct_and_render_main_job(assets_env, tmp_path, capsys):
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), skimage.data.astronaut()[..., ::-1])
    avatar_path = tmp_path / "avatar.npz"
    assert run("reconstruct", img, "-o", avatar_path, "--overlay", tmp_path / "overlay.png",
               "--ply", tmp_path / "avatar.ply", "--device", "cpu") == 0
    avatar = Avatar.load(avatar_path)
    assert avatar.num_gaussians == 180255 and avatar.shape.shape == (1, 300)
    assert cv2.imread(str(tmp_path / "overlay.png")) is not None and (tmp_path / "avatar.ply").stat().st_size > 1e6

    video = tmp_path / "out.mp4"
    # 3 frames of the built-in orbit: the camera turns by 21.6 degrees between frames 0 and 1 (with 2
    # frames it would sit at sin(0) = sin(pi) = 0 twice, only the mouth moving)
    assert run("render", avatar_path, "-o", video, "--frames", "3", "--device", "cpu") == 0
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 3 and frames[0].shape == (512, 512, 3)
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 0.5  # the head moves

    folder = tmp_path / "frames"
    assert run("render", avatar_path, "-o", folder, "--frames", "2", "--device", "cpu") == 0
    pngs = sorted(p.name for p in folder.iterdir())
    assert pngs == ["frame_00000.png", "frame_00001.png"]
    assert run("render", avatar_path, "-o", folder, "--frames", "2", "--device", "cpu") == 2  # not empty
    fast = tmp_path / "bf16"
    assert run("render", avatar_path, "-o", fast, "--frames", "1", "--device", "cpu", "--precision", "bf16") == 0
    a, b = (cv2.imread(str(d / "frame_00000.png")).astype(float) for d in (folder, fast))
    assert 0 < np.mean((a - b) ** 2) < 255.0 ** 2 * 1e-4   # bf16 differs, by less than 40 dB PSNR
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_render_overwrite_replaces_only_frames_and_keeps_other_files(assets_env, tmp_path, capsys):
    """`render -o FOLDER --overwrite` never deletes what it did not write: a folder holding anything
    but frames is refused (one line, untouched); a folder of frames gets the new ones in place."""
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), skimage.data.astronaut()[..., ::-1])
    avatar_path = tmp_path / "avatar.npz"
    assert run("reconstruct", img, "-o", avatar_path, "--device", "cpu") == 0
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    (mine / "frame_00000.png").write_bytes(b"old")
    capsys.readouterr()
    assert run("render", avatar_path, "-o", mine, "--frames", "1", "--device", "cpu", "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert "holds other files (thesis.txt)" in err and "\n" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["frame_00000.png", "thesis.txt"]
    assert (mine / "frame_00000.png").read_bytes() == b"old"

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"frame_{i:05d}.png").write_bytes(b"old")
    assert run("render", avatar_path, "-o", frames, "--frames", "2", "--device", "cpu", "--overwrite") == 0
    assert [cv2.imread(str(frames / f"frame_{i:05d}.png")) is not None for i in range(3)] == [True, True, False]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_written_files_honour_the_umask(assets_env, tmp_path):
    """Avatars, sequences and frames are readable by other users under the usual umask (a render
    farm node running as another user), not left 0600 by the atomic write."""
    import os
    from gagavatar.engine.atomic import atomic_write
    previous = os.umask(0o022)
    try:
        assert atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x")).stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x")).stat().st_mode & 0o777 == 0o600
        os.umask(0o022)
        img = tmp_path / "astronaut.png"
        cv2.imwrite(str(img), skimage.data.astronaut()[..., ::-1])
        assert run("reconstruct", img, "-o", tmp_path / "avatar.npz", "--device", "cpu") == 0
        assert (tmp_path / "avatar.npz").stat().st_mode & 0o777 == 0o644
        assert run("render", tmp_path / "avatar.npz", "-o", tmp_path / "frames", "--frames", "1", "--device", "cpu") == 0
        assert (tmp_path / "frames").stat().st_mode & 0o777 == 0o755
        assert (tmp_path / "frames" / "frame_00000.png").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)


@pytest.mark.parametrize("option, value", [("--frames", "0"), ("--frames", "-1"), ("--fps", "0"), ("--batch", "0"),
                                           ("--fps", "fast")])
def test_counts_and_rates_must_be_positive(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run("render", "a.npz", "-o", tmp_path / "out.mp4", option, value)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert err.startswith(f"error: argument {option}: expected a number greater than 0, got '{value}'")
    assert list(tmp_path.iterdir()) == []


def test_warnings_are_plain_warning_lines(capsys):
    import argparse
    import warnings

    def command(args):
        warnings.warn("1 of 270 frames have no face: they are interpolated")
        return 0
    assert cli.run_command(argparse.Namespace(func=command)) == 0
    assert capsys.readouterr().err == "warning: 1 of 270 frames have no face: they are interpolated\n"


def test_disk_errors_are_one_line(tmp_path, capsys):
    import argparse
    import errno

    from gagavatar.engine.atomic import atomic_write

    def command(args):
        def write(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "avatar.npz"))
        atomic_write(tmp_path / "avatar.npz", write)
        return 0
    assert cli.run_command(argparse.Namespace(func=command)) == 2
    err = capsys.readouterr().err
    assert err == f"error: No space left on device: {tmp_path / 'avatar.npz'}: free some space or choose another place\n"
    assert list(tmp_path.iterdir()) == []  # no temporary left beside the output


def test_videos_are_h264_streamed_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import subprocess as sp

    from gagavatar.engine import video_writer
    from gagavatar.engine.errors import GAGAvatarError
    frames = [np.full((64, 48, 3), 40 * t, np.uint8) for t in range(5)]
    path = tmp_path / "clip.mp4"
    with video_writer.VideoWriter(path, 25.0) as video:
        for f in frames:
            video.write(f)
    info = sp.run([video_writer.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    assert "Video: h264" in info and "yuv420p" in info and "25 fps" in info
    cap = cv2.VideoCapture(str(path))
    assert sum(1 for _ in iter(lambda: cap.read()[0], False)) == 5
    # ffmpeg failing at the end (a full disk): one line, no file, no temporary
    fail = tmp_path / "ffmpeg"
    fail.write_text("#!/bin/sh\ncat >/dev/null\necho 'av_interleaved_write_frame(): No space left on device' >&2\nexit 1\n")
    fail.chmod(0o755)
    monkeypatch.setattr(video_writer, "ffmpeg_exe", lambda: str(fail))
    with pytest.raises(GAGAvatarError, match=r"cannot write .*full.mp4: ffmpeg failed \(av_interleaved_write_frame\(\): "
                                             r"No space left on device\)"):
        with video_writer.VideoWriter(tmp_path / "full.mp4", 25.0) as video:
            video.write(frames[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "ffmpeg"]


def test_render_carries_the_driving_clips_sound(assets_env, tmp_path, capsys):
    """A sequence tracked from a video keeps its path and start time; the rendered mp4 has that
    video's sound from there (--no-audio: none; the clip gone: a warning, none)."""
    import subprocess as sp

    from gagavatar.engine.animation import orbit_sequence
    from gagavatar.engine.sequence import DrivingSequence, load_sequence, save_sequence
    from gagavatar.engine.video_writer import ffmpeg_exe
    clip = tmp_path / "talk.mp4"
    sp.run([ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=3",
            "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=3:r=25", "-shortest", "-c:v", "libx264",
            "-c:a", "aac", str(clip)], check=True)
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), skimage.data.astronaut()[..., ::-1])
    avatar_path = tmp_path / "avatar.npz"
    assert run("reconstruct", img, "-o", avatar_path, "--device", "cpu") == 0
    orbit = orbit_sequence(Avatar.load(avatar_path).source_transform[0], n_frames=3, fps=25.0)
    seq = DrivingSequence(expression=orbit.expression, jaw=orbit.jaw, eyes=orbit.eyes, transform=orbit.transform,
                          fps=25.0, source=str(clip), start_time=1.0)
    save_sequence(seq, tmp_path / "drive.npz")
    assert load_sequence(tmp_path / "drive.npz").start_time == 1.0

    def streams(path):
        info = sp.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
        return "Video: h264" in info, "Audio: aac" in info

    assert run("render", avatar_path, "--drive", tmp_path / "drive.npz", "-o", tmp_path / "with.mp4", "--device", "cpu") == 0
    assert streams(tmp_path / "with.mp4") == (True, True)
    assert run("render", avatar_path, "--drive", tmp_path / "drive.npz", "-o", tmp_path / "without.mp4",
               "--device", "cpu", "--no-audio") == 0
    assert streams(tmp_path / "without.mp4") == (True, False)
    clip.unlink()
    capsys.readouterr()
    assert run("render", avatar_path, "--drive", tmp_path / "drive.npz", "-o", tmp_path / "gone.mp4", "--device", "cpu") == 0
    assert streams(tmp_path / "gone.mp4") == (True, False)
    assert "warning: the driving clip" in capsys.readouterr().err


def test_tracking_a_video_shows_one_labelled_bar_per_pass(capsys):
    progress = cli.passes_progress("track", ("reading faces", "fitting FLAME"))
    for done in range(1, 541):  # 270 frames read, then 270 fitted, reported as one count of 540
        progress(done, 540)
    progress.close()
    err = capsys.readouterr().err
    assert "track: reading faces: 100%" in err and "270/270" in err and "track: fitting FLAME: 100%" in err
    assert "/540" not in err


def test_export_writes_the_avatars_flame_head_as_a_mesh(assets_env, flame_asset, tmp_path, capsys):
    import torch
    import trimesh

    from gagavatar.engine.avatar import GAUSSIAN_KEYS
    from gagavatar.engine.flame import load_flame
    from gagavatar.engine.sequence import DrivingSequence, save_sequence
    g = torch.Generator().manual_seed(0)
    shape = torch.randn(1, 300, generator=g)
    Avatar({k: torch.rand(1, 4, w, generator=g) for k, w in GAUSSIAN_KEYS.items()}, shape=shape).save(tmp_path / "a.npz")
    frames = 3
    open_jaw = DrivingSequence(expression=torch.randn(frames, 100, generator=g), jaw=torch.tensor([[0.3, 0, 0]] * frames),
                               eyes=torch.zeros(frames, 6), transform=torch.eye(3, 4).expand(frames, 3, 4))
    save_sequence(open_jaw, tmp_path / "drive.npz")

    assert run("export", tmp_path / "a.npz", "--mesh", tmp_path / "neutral.obj") == 0
    assert "5023 vertices, metres, neutral expression" in capsys.readouterr().out
    assert run("export", tmp_path / "a.npz", "--mesh", tmp_path / "talk.glb", "--drive", tmp_path / "drive.npz",
               "--frame", 2) == 0
    neutral = trimesh.load(tmp_path / "neutral.obj", process=False)
    talk = trimesh.load(tmp_path / "talk.glb", process=False, force="mesh")
    flame = load_flame(flame_asset)
    expected = flame(shape=shape)[0].numpy() / flame.scale
    assert neutral.vertices.shape == (5023, 3) and len(neutral.faces) == 9976
    assert np.allclose(neutral.vertices, expected, atol=1e-5)          # metres, the avatar's identity
    assert np.array_equal(neutral.faces, flame.faces.numpy())
    assert talk.vertices.shape == (5023, 3) and np.abs(talk.vertices - neutral.vertices).max() > 1e-3

    assert run("export", tmp_path / "a.npz", "--mesh", tmp_path / "head.fbx") == 2
    assert run("export", tmp_path / "a.npz", "--mesh", tmp_path / "x.obj", "--drive", tmp_path / "drive.npz",
               "--frame", 3) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: cannot write a mesh to head.fbx: use .obj, .glb, .ply, .stl",
                   f"error: --frame 3 is outside {tmp_path / 'drive.npz'} (frames 0 to 2)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "drive.npz", "neutral.obj", "talk.glb"]
