"""Python dependencies of the engine inside Blender: their status, and the private site-packages.

Blender's Python usually lacks torch & co. They are either pip-installed into the extension's user
folder (``extension_path_user(<package>, path="site-packages")``, put on ``sys.path`` at register)
by *Install Dependencies*, or taken from an existing environment of the same Python version whose
site-packages the user names in the preferences (see docs/BLENDER.md).

The status (:func:`problems`) is computed on first use, from the installed versions
(``importlib.metadata``, see ``requirements.py``), and again only after the paths change (an
install, the preference) or :func:`refresh`: panels and polls read the cached result.

Threads: everything touching bpy or ``sys.path`` runs on the main thread; :func:`install_work`
returns a bpy-free function for the job's worker thread, which only runs pip.
"""
from __future__ import annotations

import importlib
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import bpy

from . import requirements

_added: list[str] = []
_problems: list[requirements.Problem] | None = None


def root_package() -> str:
    """The extension's package name (``bl_ext.<repo>.gagavatar`` in Blender, ``gagavatar`` outside)."""
    return __package__.rpartition(".")[0]


def site_packages(create: bool = False) -> Path:
    """The private site-packages folder (main thread: asks bpy)."""
    return Path(bpy.utils.extension_path_user(root_package(), path="site-packages", create=create))


def wanted() -> tuple[str, ...]:
    """Every requirement checked for this Python: the installable set and Blender's bundled ones."""
    return (*requirements.for_python(), *requirements.BUNDLED)


def add_site_packages(extra: str = "") -> None:
    """Put the private site-packages (when it exists) and ``extra`` (an existing environment's
    site-packages, from the preferences) on ``sys.path``; the status is checked again on its next
    use. Called at register, when the preference changes and after an install (main thread)."""
    global _problems
    for path in (str(site_packages(create=False)), bpy.path.abspath(extra) if extra else ""):
        if path and Path(path).is_dir() and path not in sys.path:
            sys.path.append(path)
            _added.append(path)
    importlib.invalidate_caches()
    _problems = None


def remove_site_packages() -> None:
    """Undo :func:`add_site_packages` (unregister)."""
    global _problems
    while _added:
        path = _added.pop()
        if path in sys.path:
            sys.path.remove(path)
    _problems = None


def refresh() -> list[requirements.Problem]:
    """Check the installed versions again and cache the result."""
    global _problems
    _problems = requirements.check(wanted())
    return _problems


def problems() -> list[requirements.Problem]:
    """The unmet requirements (cached; checked on first use)."""
    return refresh() if _problems is None else _problems


def missing() -> list[str]:
    """One short text per unmet requirement (``"mediapipe"``, ``"torch 2.1.0 (needs >=2.4)"``)."""
    return [str(p) for p in problems()]


def blender_distributions() -> set[str]:
    """The distributions of Blender's own Python (what the installer must never shadow)."""
    return set(requirements.installed(p for p in sys.path if p not in _added))


def install_work(target: Path, python: str, wanted_requirements: tuple[str, ...], bundled: set[str]):
    """A bpy-free job work function: pip-install what ``wanted_requirements`` lacks into ``target``.

    Two pip runs with ``python`` (Blender's own interpreter): a dry run that resolves against what
    is installed (Blender's packages and ``target``) and reports what is missing, then
    ``pip install --target --no-deps`` of exactly that plan, with wheels only. A plan that would
    replace one of ``bundled`` (Blender's own packages, numpy first of all) is refused.

    Raises (in the job): GAGAvatarError with pip's last line when pip fails (naming the platform
    when a package has no wheel for it); Cancelled (pip is stopped) on cancel.
    """
    def work(progress, cancel):
        from ..engine.errors import Cancelled, GAGAvatarError
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PIP_TARGET", "PIP_PREFIX")}
        env.update(PYTHONPATH=str(target), PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        pip = [python, "-s", "-m", "pip", "install", "--no-input", "--only-binary=:all:", "--progress-bar", "off"]
        with tempfile.TemporaryDirectory(prefix="gagavatar-pip-") as tmp:
            report = Path(tmp) / "plan.json"
            progress(0.0, "resolving " + " ".join(wanted_requirements))
            _run_pip([*pip, "--dry-run", "--quiet", "--report", str(report), *wanted_requirements],
                     env, cancel, lambda line: progress(0.05, line))
            try:
                plan = requirements.install_plan(report.read_text(encoding="utf-8"), bundled)
            except RuntimeError as err:
                raise GAGAvatarError(str(err)) from None
        if not plan:
            return target, []
        target.mkdir(parents=True, exist_ok=True)
        seen = [0]

        def step(line: str) -> None:
            if line.startswith(("Collecting", "Processing")):
                seen[0] += 1
            progress(0.1 + 0.85 * min(seen[0], len(plan)) / len(plan), line)
        _run_pip([*pip, "--target", str(target), "--no-deps", "--upgrade", *plan], env, cancel, step)
        if cancel():
            raise Cancelled("Install dependencies: cancelled")
        return target, plan
    return work


def _run_pip(cmd: list[str], env: dict, cancel, on_line) -> None:
    """Run pip, passing each output line to ``on_line``; stop it on ``cancel()``; one-line error on failure."""
    from ..engine.errors import Cancelled, GAGAvatarError
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                errors="replace")
    except OSError as err:
        raise GAGAvatarError(f"cannot run pip with {cmd[0]}: {err}") from None
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    last = ""
    while True:
        if cancel():
            proc.terminate()
            proc.wait()
            raise Cancelled("Install dependencies: cancelled")
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            break
        if line.strip():
            last = line.strip()
            on_line(last[:120])
    proc.wait()
    if proc.returncode != 0:
        if "No matching distribution" in last or "from versions: none" in last:
            wheel = last.rpartition(" for ")[2] or last
            raise GAGAvatarError(
                f"{wheel} has no wheel for Python {sys.version_info[0]}.{sys.version_info[1]} on "
                f"{platform.system()} {platform.machine()}: use an existing environment that has it (preferences)")
        raise GAGAvatarError(f"pip install failed: {last or f'exit code {proc.returncode}'}")


def _pump(stream, lines: queue.Queue) -> None:
    """Copy a pipe's lines into ``lines``, then None at its end (a reader thread)."""
    for line in stream:
        lines.put(line)
    lines.put(None)
