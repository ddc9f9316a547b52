"""The ``gagavatar`` command line (also ``python -m gagavatar``).

Commands::

    gagavatar assets check|download [--assets DIR] [--accept-license | --tracking-only]
    gagavatar assets synthesize DIR [--seed N]
    gagavatar info CHECKPOINT
    gagavatar track IMAGE|VIDEO -o OUT.npz [--overlay PREVIEW.png]
    gagavatar reconstruct IMAGE -o avatar.npz [--ply avatar.ply] [--overlay PREVIEW.png]
    gagavatar render AVATAR [--drive SEQUENCE] -o out.mp4|DIR [--frames N] [--fps F] [--camera CAMERA.json]
    gagavatar export AVATAR --mesh head.obj|.glb|.ply|.stl [--drive SEQUENCE --frame N]

Assets come from ``--assets DIR``, else ``$GAGAVATAR_ASSETS``, else the user data folder.
User errors print one line (``error: ...``) and exit with status 2; nothing partial is written.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path


from .. import __version__
from .atomic import atomic_write, umask
from .console import Parser, passes_progress, progress_bar, run_command
from .errors import GAGAvatarError
from .video_writer import VideoWriter

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}


def _device(name: str):
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GAGAvatarError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    return torch.device(name)


def _load_model_and_flame(args):
    from .assets import asset_path
    from .checkpoints import load_model
    from .flame import load_flame
    device = _device(args.device)
    folder = getattr(args, "assets", None)
    model = load_model(asset_path("GAGAvatar.pt", folder), device=device)
    flame = load_flame(asset_path("FLAME_with_eye.pt", folder), device=device)
    return model, flame, device


def _sound(seq, args):
    """``(video, start seconds)`` whose audio the render carries: the driving sequence's source clip,
    unless ``--no-audio``, the sequence was not tracked from a video, or that video is gone (a warning)."""
    source = Path(seq.source) if seq.source else None
    if args.no_audio or not args.drive or source is None or source.suffix.lower() not in VIDEO_SUFFIXES:
        return None
    if not source.is_file():
        warnings.warn(f"the driving clip {source} is not there any more: rendering without its sound")
        return None
    return source, seq.start_time


@contextlib.contextmanager
def _naming(path):
    """Give an OSError raised without a file name (a full disk while writing: EFBIG, ENOSPC) ``path``."""
    try:
        yield
    except OSError as e:
        if not e.filename:
            e.filename = str(path)
        raise


def _write_image(path: Path, rgb) -> None:
    """Write an ``H x W x 3`` uint8 RGB array atomically (format from the suffix)."""
    import cv2
    try:
        ok, data = cv2.imencode(path.suffix, rgb[..., ::-1])
    except cv2.error:
        ok = False
    if not ok:
        raise GAGAvatarError(f"cannot write image {path}: use a .png or .jpg name")
    atomic_write(path, lambda f: f.write(data.tobytes()))


FRAME_PATTERN = "frame_*.png"
"""The files ``render -o FOLDER`` writes (``frame_00000.png``, ...); ``--overwrite`` replaces only these."""


def _frames_folder(out: Path, overwrite: bool) -> None:
    """Check ``render -o FOLDER``: a new or empty folder, or with ``overwrite`` one holding only frames.

    Raises:
        GAGAvatarError: the folder holds other files (never replaced), or frames without ``overwrite``.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise GAGAvatarError(f"{out} is a file, not a folder: name a folder for the PNG frames or an .mp4 file")
    others = sorted(p.name for p in out.iterdir() if not p.match(FRAME_PATTERN))
    if others:
        raise GAGAvatarError(f"output folder {out} holds other files ({', '.join(others[:3])}"
                             f"{', ...' if len(others) > 3 else ''}): choose a new or empty folder")
    if any(out.iterdir()) and not overwrite:
        raise GAGAvatarError(f"output folder {out} already holds frames: choose another or pass --overwrite")


# ---------------------------------------------------------------- commands
def cmd_assets(args) -> int:
    from .assets import TRACKING_MODELS, check_assets, download_assets, find_assets
    if args.action == "synthesize":
        return _synthesize(args)
    if args.folder and args.assets and Path(args.folder) != Path(args.assets):
        raise GAGAvatarError(f"two asset folders given ({args.folder} and --assets {args.assets}): give one")
    folder = find_assets(args.folder or args.assets)
    if args.action == "check":
        rows = check_assets(folder)
        width = max(len(name) for name, _, _ in rows)
        for name, status, message in rows:
            print(f"{name:{width}s} {status:8s} {message}")
        return 0 if all(status == "ok" for _, status, _ in rows) else 1
    if args.tracking_only:  # Google's MediaPipe models: no licence to accept
        progress = progress_bar("download", unit="B")
        try:
            download_assets(folder, accept_license=False, progress=progress, names=TRACKING_MODELS)
        finally:
            progress.close()
        print(f"tracking models ready in {folder}")
        return 0
    accept = args.accept_license
    if not accept and sys.stdin.isatty():
        print("GAGAvatar needs FLAME. You must register and accept the FLAME licence at https://flame.is.tue.mpg.de")
        accept = input("Have you registered and accepted the FLAME licence terms? [y/N] ").strip().lower() in ("y", "yes")
    if not accept:
        download_assets(folder, accept_license=False)   # raises the licence error, downloads nothing
    progress = progress_bar("download", unit="B")
    try:
        download_assets(folder, accept_license=accept, progress=progress)
    finally:
        progress.close()
    print(f"assets ready in {folder}")
    return 0


def _synthesize(args) -> int:
    """``assets synthesize DIR``: the project's synthetic official-format weights (never over real files)."""
    from .assets import TRACKING_MODELS
    from .synthetic import NOTICE, synthesize
    if not args.folder:
        raise GAGAvatarError("assets synthesize needs a folder: gagavatar assets synthesize DIR [--seed N]")
    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise GAGAvatarError(f"{folder} is a file: give a folder to write GAGAvatar.pt and FLAME_with_eye.pt into")
    taken = [name for name in ("GAGAvatar.pt", "FLAME_with_eye.pt") if (folder / name).exists()]
    if taken:
        raise GAGAvatarError(f"{folder / taken[0]} exists and synthesize never replaces asset files: "
                        "give another folder")
    synthesize(folder, args.seed)
    print(f"wrote GAGAvatar.pt and FLAME_with_eye.pt (seed {args.seed}) to {folder}")
    warnings.warn(f"{NOTICE}; the real files: gagavatar assets download")
    if not all((folder / name).exists() for name in TRACKING_MODELS):
        print(f"for tracking, also run: gagavatar assets download --tracking-only --assets {folder}")
    return 0


def cmd_info(args) -> int:
    from .checkpoints import checkpoint_info
    info = checkpoint_info(args.checkpoint)
    for k, v in info.items():
        print(f"{k}: {v}")
    return 0


def cmd_track(args) -> int:
    from .assets import asset_path
    from .flame import load_flame
    from .sequence import DrivingSequence, check_save_path, save_sequence
    from .tracking import track_image, track_video
    check_save_path(args.output)
    flame = load_flame(asset_path("FLAME_with_eye.pt", args.assets))
    src = Path(args.input)
    if src.suffix.lower() in VIDEO_SUFFIXES:
        progress = passes_progress("track", ("reading faces", "fitting FLAME"))
        try:
            seq = track_video(src, flame, progress=progress, assets=args.assets)
        finally:
            progress.close()
        with _naming(args.output):
            save_sequence(seq, args.output)
        print(f"tracked {seq.num_frames} frames at {seq.fps:g} fps -> {args.output}")
        return 0
    tracked = track_image(src, flame=flame, assets=args.assets)
    seq = DrivingSequence(expression=tracked.expression[None], jaw=tracked.jaw[None], eyes=tracked.eyes[None],
                          transform=tracked.transform[None], fps=25.0, shape=tracked.shape,
                          landmarks=tracked.landmarks[None], source=str(src))
    with _naming(args.output):
        save_sequence(seq, args.output)
    if args.overlay:
        with _naming(args.overlay):
            _write_image(Path(args.overlay), tracked.overlay)
    print(f"tracked {src.name}: landmark residual {float(tracked.residual_px):.2f} px -> {args.output}")
    return 0


def cmd_reconstruct(args) -> int:
    import torch

    from .checkpoints import is_synthetic
    from .tracking import track_image
    if Path(args.image).suffix.lower() in VIDEO_SUFFIXES:
        raise GAGAvatarError(f"{Path(args.image).name} is a video: reconstruct needs one photo of the face "
                             "(a still frame); videos drive avatars through `gagavatar track`")
    model, flame, device = _load_model_and_flame(args)
    tracked = track_image(Path(args.image), flame=flame, assets=getattr(args, "assets", None))
    if is_synthetic(model.meta_cfg):
        warnings.warn("GAGAvatar.pt holds synthetic weights (gagavatar assets synthesize): the avatar "
                      "will not be a likeness; the real weights: gagavatar assets download")
    shape = tracked.shape[None].to(device)
    with torch.no_grad():
        vertices = flame(shape=shape, expression=tracked.expression[None].to(device),
                         pose=torch.cat([torch.zeros(1, 3, device=device), tracked.jaw[None].to(device)], -1),
                         eyes=tracked.eyes[None].to(device))
    avatar = model.reconstruct(tracked.crop[None].to(device), tracked.transform[None].to(device),
                               shape=shape, vertices=vertices)
    with _naming(args.output):
        avatar.save(args.output)
    if args.ply:
        with _naming(args.ply):
            avatar.export_ply(args.ply)
    if args.overlay:
        with _naming(args.overlay):
            _write_image(Path(args.overlay), tracked.overlay)
    print(f"avatar of {Path(args.image).name} ({avatar.num_gaussians} Gaussians, landmark residual "
          f"{float(tracked.residual_px):.2f} px) -> {args.output}")
    return 0


def cmd_render(args) -> int:
    import torch

    from .animation import orbit_sequence
    from .avatar import Avatar
    from .framing import read_camera
    from .sequence import load_sequence
    out = Path(args.output)
    as_video = out.suffix.lower() in VIDEO_SUFFIXES
    if not as_video:
        if out.suffix and not out.is_dir():
            raise GAGAvatarError(f"cannot render to {out.name}: name a video ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                                 "or a folder for PNG frames")
        _frames_folder(out, args.overwrite)
    seq = load_sequence(args.drive) if args.drive else None  # a bad file fails before the model loads
    camera = read_camera(args.camera) if args.camera else None
    if camera is not None and as_video and (camera.width % 2 or camera.height % 2):
        raise GAGAvatarError(f"H.264 video needs an even width and height, the camera's frame is "
                             f"{camera.width}x{camera.height}: change it by a pixel or render PNG frames")
    model, flame, device = _load_model_and_flame(args)
    avatar = Avatar.load(args.avatar, device=device)
    if seq is None:
        if avatar.source_transform is None:
            raise GAGAvatarError(f"{args.avatar} has no source camera: pass --drive SEQUENCE")
        seq = orbit_sequence(avatar.source_transform[0], n_frames=args.frames or 48, fps=args.fps or 24.0)
    n = min(seq.num_frames, args.frames) if args.frames else seq.num_frames
    fps = args.fps or seq.fps
    shape = avatar.shape if avatar.shape is not None else torch.zeros(1, 300, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = None if as_video else Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    progress = progress_bar("render", n)
    try:
        # frames are streamed: to ffmpeg (constant memory) or to PNGs in the staging folder
        with _naming(out), VideoWriter(out, fps, _sound(seq, args)) if as_video else contextlib.nullcontext() as video:
            for start in range(0, n, args.batch):
                stop = min(n, start + args.batch)
                sl = slice(start, stop)
                with torch.no_grad():
                    verts = flame(shape=shape.expand(stop - start, -1),
                                  expression=seq.expression[sl].to(device),
                                  pose=torch.cat([torch.zeros(stop - start, 3, device=device), seq.jaw[sl].to(device)], -1),
                                  eyes=seq.eyes[sl].to(device))
                    if camera is None:
                        frame = model.render(avatar, verts, seq.transform[sl].to(device), precision=args.precision)
                        rgb = (frame.image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                    else:
                        rgb = [_camera_frame(model, avatar, v, camera, args.precision) for v in verts]
                for i, img in enumerate(rgb):
                    if video is not None:
                        video.write(img)
                    else:
                        _write_image(staging / f"frame_{start + i:05d}.png", img)
                progress(stop)
        if staging is not None and out.exists():  # only frames are there (checked above): replace those written now
            for frame in sorted(staging.iterdir()):
                os.replace(frame, out / frame.name)
        elif staging is not None:
            os.chmod(staging, 0o777 & ~umask())
            os.replace(staging, out)
    finally:
        progress.close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"rendered {n} frames at {fps:g} fps -> {out}")
    return 0


def _camera_frame(model, avatar, vertices, camera, precision: str):
    """One ``[H, W, 3]`` uint8 sRGB frame of ``avatar`` (over black) through an OpenCV camera."""
    import numpy as np

    from .framing import linear_to_srgb, render_opencv
    layers = render_opencv(model, avatar, vertices.cpu().numpy(), camera.K, camera.R, camera.t, camera.width,
                           camera.height, precision)
    return (linear_to_srgb(layers.combined[..., :3]) * 255 + 0.5).astype(np.uint8)


def cmd_export(args) -> int:
    from .assets import asset_path
    from .avatar import Avatar
    from .flame import load_flame
    from .mesh_export import export_head, head_mesh, mesh_kind
    from .sequence import load_sequence
    out = Path(args.mesh)
    mesh_kind(out)  # a wrong suffix fails before anything is loaded
    seq = load_sequence(args.drive) if args.drive else None
    if seq is not None and not 0 <= args.frame < seq.num_frames:
        raise GAGAvatarError(f"--frame {args.frame} is outside {args.drive} (frames 0 to {seq.num_frames - 1})")
    avatar = Avatar.load(args.avatar)
    if avatar.shape is None:
        raise GAGAvatarError(f"{args.avatar} holds no FLAME identity: reconstruct it again with this version")
    flame = load_flame(asset_path("FLAME_with_eye.pt", args.assets))
    pose = {} if seq is None else {"expression": seq.expression[args.frame], "jaw": seq.jaw[args.frame],
                                   "eyes": seq.eyes[args.frame]}
    mesh = head_mesh(flame, avatar.shape[0], **pose)
    with _naming(out):
        export_head(out, mesh)
    what = "neutral expression" if seq is None else f"the expression of frame {args.frame} of {Path(args.drive).name}"
    print(f"FLAME head of {Path(args.avatar).name} ({len(mesh.vertices)} vertices, metres, {what}) -> {out}")
    return 0


# ---------------------------------------------------------------- parser
def _positive(kind):
    """An argparse type: a number of ``kind`` greater than zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number greater than 0, got '{text}'")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="gagavatar", description="GAGAvatar: one-photo animatable Gaussian head avatars")
    p.add_argument("--version", action="version", version=f"gagavatar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, device=True):
        sp.add_argument("--assets", metavar="DIR", help="asset folder (default: $GAGAVATAR_ASSETS or the user data folder)")
        if device:
            sp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))

    a = sub.add_parser("assets", help="check or download GAGAvatar.pt, FLAME_with_eye.pt and the tracking models")
    a.add_argument("action", choices=("check", "download", "synthesize"),
                   help="synthesize writes deterministic synthetic weights in the official formats "
                        "(for tests and trying things out: not a likeness)")
    a.add_argument("folder", nargs="?", help="the asset folder (as --assets; synthesize: the folder to write into)")
    a.add_argument("--seed", type=int, default=0, help="synthesize: the seed (default 0)")
    a.add_argument("--accept-license", action="store_true", help="you have accepted the FLAME licence (https://flame.is.tue.mpg.de)")
    a.add_argument("--tracking-only", action="store_true",
                   help="download only the tracking models (MediaPipe, Apache-2.0: no licence to accept)")
    common(a, device=False)
    a.set_defaults(func=cmd_assets)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("track", help="fit FLAME and the camera to a photo or a video")
    t.add_argument("input")
    t.add_argument("-o", "--output", required=True, help="driving sequence (.npz, or the official .pkl)")
    t.add_argument("--overlay", help="write a landmark/mesh preview image (photos)")
    common(t, device=False)
    t.set_defaults(func=cmd_track)

    r = sub.add_parser("reconstruct", help="reconstruct an avatar from one portrait photo")
    r.add_argument("image")
    r.add_argument("-o", "--output", required=True, help="avatar .npz")
    r.add_argument("--ply", help="also export a 3DGS .ply")
    r.add_argument("--overlay", help="write the tracking preview image")
    common(r)
    r.set_defaults(func=cmd_reconstruct)

    d = sub.add_parser("render", help="drive an avatar and render frames")
    d.add_argument("avatar")
    d.add_argument("--drive", help="driving sequence (.npz, official optim.pkl/smoothed.pkl); default: a built-in animation")
    d.add_argument("-o", "--output", required=True, help="out.mp4 or a folder for PNG frames")
    d.add_argument("--frames", type=_positive(int), help="render at most N frames")
    d.add_argument("--fps", type=_positive(float), help="frame rate (default: the sequence's)")
    d.add_argument("--batch", type=_positive(int), default=1, help="frames per forward pass")
    d.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="neural renderer precision: fp32 (exact, the default), bf16 (>= 45 dB from fp32; faster "
                        "on GPUs since Ampere and on CPUs with AMX), auto (bf16 where faster)")
    d.add_argument("--overwrite", action="store_true", help="replace the frames of an earlier render in the folder")
    d.add_argument("--no-audio", action="store_true",
                   help="leave out the sound of the video the driving sequence was tracked from")
    d.add_argument("--camera", metavar="CAMERA.json",
                   help="render through this OpenCV camera (any intrinsics and resolution) instead of the "
                        "sequence's: a JSON file {\"K\": 3x3, \"R\": 3x3, \"t\": [3], \"width\": W, \"height\": H}, "
                        "posed in the avatar's head space (x_cam = R x + t; units of 0.2 m, +Y up, face toward +Z)")
    common(d)
    d.set_defaults(func=cmd_render)

    x = sub.add_parser("export", help="export the avatar's FLAME head as a mesh (.obj, .glb, .ply, .stl)")
    x.add_argument("avatar")
    x.add_argument("--mesh", required=True, metavar="OUT", help="the mesh file; its suffix picks the format")
    x.add_argument("--drive", metavar="SEQUENCE", help="take the expression, jaw and eyes from this driving sequence")
    x.add_argument("--frame", type=int, default=0, help="the frame of --drive (default 0)")
    common(x, device=False)
    x.set_defaults(func=cmd_export)

    from .training.cli import add_subcommands
    add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))
