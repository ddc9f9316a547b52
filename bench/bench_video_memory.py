"""Peak memory of writing a rendered video: streamed to ffmpeg (engine/video_writer.py) against
keeping every frame and stacking them (what `gagavatar render` did before), 60 and 600 frames.

Each case runs in a fresh process (peak RSS, ``ru_maxrss``) on 512^2 frames made procedurally, so
only the writing is measured, not the network. Usage: ``python bench/bench_video_memory.py``.
Prints one line per case and the ratios 600/60 frames (flat = 1.0).
"""
import platform
import subprocess
import sys

CASE = r"""
import resource, sys, tempfile
import numpy as np
from gagavatar.engine.video_writer import VideoWriter
mode, n = sys.argv[1], int(sys.argv[2])
base = np.linspace(0, 255, 512 * 512 * 3, dtype=np.float32).reshape(512, 512, 3)
frame = lambda t: ((base + 7 * t) % 256).astype(np.uint8)
with tempfile.TemporaryDirectory() as d:
    if mode == "stream":
        with VideoWriter(f"{d}/out.mp4", 30) as video:
            for t in range(n):
                video.write(frame(t))
    else:
        frames = [frame(t) for t in range(n)]
        stacked = np.stack(frames)
        with VideoWriter(f"{d}/out.mp4", 30) as video:
            for f in stacked:
                video.write(f)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_mb(mode: str, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", CASE, mode, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    results = {}
    for mode in ("stream", "keep-all"):
        for n in (60, 600):
            results[mode, n] = peak_mb(mode, n)
            print(f"{mode:9s} {n:4d} frames: peak RSS {results[mode, n]:7.0f} MB")
    for mode in ("stream", "keep-all"):
        print(f"{mode:9s} 600/60 frames: x{results[mode, 600] / results[mode, 60]:.2f}")


if __name__ == "__main__":
    main()
