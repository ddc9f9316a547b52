"""Rendered frames to a video file: streamed (constant memory), H.264, with the driving clip's sound, atomic.

Frames go to ffmpeg as they are rendered (the binary that the ``imageio-ffmpeg`` wheel ships), so
a long render holds one frame in memory, not all of them. The codec is H.264 in yuv420p (VP9 for
``.webm``), which browsers and editors play. The file is written beside the target under a
temporary name and renamed into place only when ffmpeg has finished without error; a failure, a
full disk or Ctrl-C leaves no partial file.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from .atomic import umask
from .errors import GAGAvatarError

CODECS = {".webm": ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "30"]}
"""Video encoder options by file suffix; any other suffix gets :data:`H264`."""
H264 = ["-c:v", "libx264", "-crf", "18", "-preset", "medium"]


def ffmpeg_exe() -> str:
    """The ffmpeg binary of the imageio-ffmpeg wheel (one-line error when it is not installed)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise GAGAvatarError("writing a video needs imageio-ffmpeg (`pip install imageio-ffmpeg`): "
                             "or render PNG frames into a folder") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


class VideoWriter:
    """Write ``[H, W, 3]`` uint8 RGB frames to ``path`` at ``fps`` frames per second.

    ``audio = (video, start_seconds)`` muxes that video's first audio track (if it has one) from
    ``start_seconds`` on, AAC, cut to the frames' length: the voice of a tracked clip.

    Use as a context manager: leaving it normally finishes the file and renames it into place;
    leaving it on an exception stops ffmpeg and removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, fps: float,
                 audio: tuple[str | os.PathLike, float] | None = None) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.audio = audio
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")
        self._proc: subprocess.Popen | None = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _start(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sound = ["-an"]
        if self.audio is not None:
            source, start = self.audio
            sound = ["-ss", f"{max(float(start), 0.0):.6f}", "-i", str(source), "-map", "0:v", "-map", "1:a:0?",
                     "-c:a", "aac", "-shortest"]
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", f"{self.fps:g}", "-i", "-", *sound,
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", *CODECS.get(self.path.suffix.lower(), H264),
               "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(self._tmp)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        self._size = (width, height)

    def write(self, frame: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 RGB frame (all frames of one file have one size)."""
        height, width = frame.shape[:2]
        if self._proc is None:
            self._start(width, height)
        elif (width, height) != self._size:
            raise GAGAvatarError(f"video frames must keep one size: {self._size[0]}x{self._size[1]}, "
                                 f"then {width}x{height}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            raise GAGAvatarError(f"cannot write {self.path}: ffmpeg stopped ({self._finish()})") from None
        self.frames += 1

    def _finish(self) -> str:
        """Close ffmpeg's input, wait for it; its last error line ('' when it succeeded)."""
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        err = self._proc.stderr.read().decode("utf-8", "replace").strip()
        code = self._proc.wait()
        return "" if code == 0 else (err.splitlines()[-1] if err else f"exit code {code}")

    def close(self) -> Path:
        """Finish the file and rename it into place; return its path."""
        if self._proc is None:
            raise GAGAvatarError(f"no frames to write to {self.path}")
        failure = self._finish()
        if failure or not self._tmp.is_file() or self._tmp.stat().st_size == 0:
            self._tmp.unlink(missing_ok=True)
            raise GAGAvatarError(f"cannot write {self.path}: ffmpeg failed ({failure or 'empty output'}): "
                                 "check the free space, or render PNG frames into a folder")
        os.chmod(self._tmp, 0o666 & ~umask())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove the temporary file (on errors and Ctrl-C)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._tmp.unlink(missing_ok=True)
