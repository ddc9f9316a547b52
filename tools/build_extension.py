"""Validate the manifest and build the extension zip with Blender's own builder.

Usage: ``python tools/build_extension.py [OUTPUT_DIR]`` (default ``<repo>/out``), run with a Python
that has the ``bpy`` module (the project's ``.venv``). Prints the zip's path. The builder
(``bl_pkg/cli/blender_ext.py``) ships inside the bpy module and applies the manifest's
``[build] paths_exclude_pattern``.
"""
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def blender_ext_script() -> Path:
    """The path of Blender's extension command line tool inside the installed bpy module."""
    import importlib.util
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the bpy module is not installed: run this with the project's .venv")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise SystemExit(f"blender_ext.py not found under {root}")
    return found[-1]


def run_blender_ext(*args: str) -> str:
    """Run ``blender_ext.py`` with ``args``; raise with its output when it fails."""
    proc = subprocess.run([sys.executable, str(blender_ext_script()), *args],
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "FATAL_ERROR" in out or "Error" in out:
        raise RuntimeError(f"blender_ext.py {args[0]} failed:\n{out}")
    return out


def validate(source_dir: Path = REPO) -> str:
    return run_blender_ext("validate", str(source_dir))


def build(output_dir: Path, source_dir: Path = REPO) -> Path:
    """Validate, then build ``<id>-<version>.zip`` into ``output_dir``; return its path."""
    manifest = tomllib.loads((source_dir / "blender_manifest.toml").read_text(encoding="utf-8"))
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    validate(source_dir)
    run_blender_ext("build", "--source-dir", str(source_dir), "--output-filepath", str(zip_path))
    if not zip_path.is_file():
        raise RuntimeError(f"the builder did not write {zip_path}")
    return zip_path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else REPO / "out"
    print(build(out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
