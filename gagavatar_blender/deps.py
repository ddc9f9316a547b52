"""Python dependencies of the engine: status without importing them, and the private site-packages.

Blender's Python usually lacks torch & co. They are either pip-installed into the extension's user
folder (``extension_path_user(<package>, path="site-packages")``, added to ``sys.path`` at register)
or taken from an existing virtual environment whose site-packages the user adds to Blender's
Python path (see docs/BLENDER.md).
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import bpy

# import name -> pip requirement
REQUIRED = {
    "torch": "torch>=2.4",
    "numpy": "numpy>=1.26,<2",
    "smplx": "smplx==0.1.28",
    "cv2": "opencv-contrib-python==4.11.0.86",
    "mediapipe": "mediapipe==0.10.21",
    "PIL": "pillow",
}


def root_package() -> str:
    """The extension's package name (``bl_ext.<repo>.gagavatar`` in Blender, ``gagavatar`` outside)."""
    return __package__.rpartition(".")[0]


def site_packages(create: bool = False) -> Path:
    return Path(bpy.utils.extension_path_user(root_package(), path="site-packages", create=create))


_added: list[str] = []


def add_site_packages(extra: str = "") -> None:
    """Put the private site-packages (when it exists) and ``extra`` (an existing environment's
    site-packages, from the preferences) on ``sys.path``; called at register and when the
    preference changes."""
    for path in (str(site_packages(create=False)), bpy.path.abspath(extra) if extra else ""):
        if path and Path(path).is_dir() and path not in sys.path:
            sys.path.append(path)
            _added.append(path)
    importlib.invalidate_caches()


def remove_site_packages() -> None:
    """Undo :func:`add_site_packages` (unregister)."""
    while _added:
        path = _added.pop()
        if path in sys.path:
            sys.path.remove(path)


def missing() -> list[str]:
    """Import names of the dependencies that cannot be found (nothing is imported)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def install_work(names: list[str]):
    """A job work function pip-installing the requirements of ``names`` into the private site-packages.

    Raises (in the job): GAGAvatarError with pip's last line when pip fails; Cancelled (pip is stopped).
    """
    def work(progress, cancel):
        target = site_packages(create=True)
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--target", str(target), *[REQUIRED[n] for n in names]]
        progress(0.0, f"pip install {' '.join(REQUIRED[n] for n in names)}")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last = "pip failed"
        for line in proc.stdout:
            if cancel():
                proc.terminate()
                break
            if line.strip():
                last = line.strip()
                progress(0.5, last[:120])
        proc.wait()
        from ..engine.errors import GAGAvatarError
        if not cancel() and proc.returncode != 0:
            raise GAGAvatarError(f"pip install failed: {last}")
        add_site_packages()
        return target
    return work
