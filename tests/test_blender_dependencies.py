"""The add-on's dependency check and installer, offline: requirement sets per Python, version checks
through importlib.metadata, pip's plan, and the install into a private folder from local wheels
(pip with --no-index; no network). The full user path (zip -> Install Dependencies -> engine) runs
per Blender version in tests/installed/ (tools/blender_leg.sh)."""
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gagavatar.engine.errors import Cancelled, GAGAvatarError
from gagavatar.gagavatar_blender import deps, requirements


@pytest.mark.parametrize("version, spec, ok", [
    ("2.13.0+cpu", ">=2.4", True), ("2.3.1", ">=2.4", False), ("1.26.4", ">=1.26,<2", True),
    ("2.5.5", ">=1.26,<2", False), ("0.10.21", "==0.10.21", True), ("0.10.2", "==0.10.21", False),
    ("4.11.0.86", "==4.11.0.86", True), ("4.11.0", "==4.11.0.86", False), ("1.2.3", "~=1.2", True),
    ("2.0", "~=1.2", False), ("1.2.3", "==1.2.*", True), ("1.3", "!=1.3", False), ("11.0.0rc1", ">=11", True),
    ("3.0", "", True),
])
def test_versions_are_compared_by_release_numbers(version, spec, ok):
    assert requirements.satisfies(version, spec) is ok


def test_each_blender_python_has_its_requirement_set():
    assert "torch>=2.4" in requirements.for_python((3, 11))       # Blender 4.2 LTS - 5.0
    assert "torch>=2.6" in requirements.for_python((3, 13))       # Blender 5.1 - 5.3: first 3.13 wheels
    assert all("mediapipe==1.2.3" in reqs for reqs in requirements.REQUIREMENTS.values())  # one tracking API
    assert requirements.for_python((3, 12)) == requirements.for_python((3, 11))
    assert requirements.for_python((3, 14)) == requirements.for_python((3, 13))
    for reqs in requirements.REQUIREMENTS.values():
        names = [requirements.canonical(requirements.split(r)[0]) for r in reqs]
        assert "numpy" not in names and "opencv-python" not in names  # Blender's numpy; contrib only
    assert requirements.BUNDLED == ("numpy>=1.26",)


def _dist_info(site: Path, name: str, version: str) -> None:
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_check_reads_installed_versions_not_just_importability(tmp_path):
    _dist_info(tmp_path, "Torch", "2.1.0")
    _dist_info(tmp_path, "opencv_contrib_python", "4.11.0.86")
    problems = requirements.check(["torch>=2.4", "opencv-contrib-python==4.11.0.86", "smplx==0.1.28"],
                                  path=[str(tmp_path)])
    assert [str(p) for p in problems] == ["torch 2.1.0 (needs >=2.4)", "smplx"]
    # the first distribution on the path wins, as for imports
    first = tmp_path / "first"
    _dist_info(first, "torch", "2.13.0")
    assert requirements.check(["torch>=2.4"], path=[str(first), str(tmp_path)]) == []


def test_the_plan_never_replaces_what_blender_bundles():
    """numpy: refused; setuptools (torch's C++ extension builder wants a newer one): left out."""
    report = {"install": [{"metadata": {"name": "torch", "version": "2.13.0"}},
                          {"metadata": {"name": "setuptools", "version": "84.2.1"}},
                          {"metadata": {"name": "smplx", "version": "0.1.28"}}]}
    assert requirements.install_plan(json.dumps(report), {"numpy", "requests"}) == ["torch==2.13.0", "smplx==0.1.28"]
    report["install"].append({"metadata": {"name": "numpy", "version": "1.26.4"}})
    with pytest.raises(RuntimeError, match=r"numpy==1.26.4, which would replace Blender's own copy"):
        requirements.install_plan(report, {"NumPy"})


def test_the_status_is_cached_until_refreshed(monkeypatch):
    calls = []
    monkeypatch.setattr(deps, "_problems", None)
    monkeypatch.setattr(requirements, "check", lambda reqs: calls.append(reqs) or [])
    for _ in range(5):
        assert deps.missing() == []
    assert len(calls) == 1
    deps.refresh()
    assert len(calls) == 2


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal pure-Python wheel ``name`` (module ``name`` with ``VERSION``)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for n, text in files.items():
            whl.writestr(n, text)


@pytest.fixture
def offline_pip(tmp_path, monkeypatch):
    """pip reads only a local wheel folder: ``gagatiny`` (needs numpy, which this Python has) and
    ``gagaold`` (needs numpy<1, which only a local numpy 0.1 wheel offers)."""
    wheels = tmp_path / "wheels"
    _wheel(wheels, "gagatiny", "1.0", ("numpy>=1.0",))
    _wheel(wheels, "gagaold", "1.0", ("numpy<1",))
    _wheel(wheels, "numpy", "0.1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return tmp_path / "site-packages"


def _run(work):
    steps = []
    return work(lambda fraction, text: steps.append((fraction, text)), lambda: False), steps


def test_install_puts_only_the_missing_packages_into_the_private_folder(offline_pip):
    bundled = set(requirements.installed())
    assert "numpy" in bundled
    (target, plan), steps = _run(deps.install_work(offline_pip, sys.executable, ("gagatiny==1.0",), bundled))
    assert target == offline_pip and plan == ["gagatiny==1.0"]
    assert (target / "gagatiny" / "__init__.py").is_file()
    assert set(requirements.installed([str(target)])) == {"gagatiny"}  # numpy stays the Python's own
    assert steps[-1][0] == pytest.approx(0.95) and all(0 <= f <= 1 for f, _ in steps)
    # A second run finds everything there (pip resolves against the private folder too): no plan.
    (_, plan), _ = _run(deps.install_work(offline_pip, sys.executable, ("gagatiny==1.0",), bundled))
    assert plan == []


def test_install_refuses_to_shadow_a_bundled_package(offline_pip):
    with pytest.raises(GAGAvatarError, match=r"numpy==0.1, which would replace Blender's own copy"):
        _run(deps.install_work(offline_pip, sys.executable, ("gagaold==1.0",), {"numpy"}))
    assert not offline_pip.exists()


def test_a_package_without_a_wheel_for_this_platform_is_one_honest_line(offline_pip):
    with pytest.raises(GAGAvatarError) as err:
        _run(deps.install_work(offline_pip, sys.executable, ("gaganowheel==3.0",), set()))
    message = str(err.value)
    assert message.startswith("gaganowheel==3.0 has no wheel for Python ") and "\n" not in message
    assert "existing environment" in message


def test_pip_failures_end_in_pips_last_line():
    script = "import sys; print('Collecting x'); print('ERROR: could not write the folder'); sys.exit(1)"
    with pytest.raises(GAGAvatarError, match=r"^pip install failed: ERROR: could not write the folder$"):
        deps._run_pip([sys.executable, "-c", script], dict(os.environ), lambda: False, lambda line: None)


def test_cancel_stops_pip_even_while_it_prints_nothing():
    script = "import time; print('Downloading torch', flush=True); time.sleep(60)"
    seen, start = [], time.monotonic()
    with pytest.raises(Cancelled):
        deps._run_pip([sys.executable, "-c", script], dict(os.environ), lambda: bool(seen), seen.append)
    assert seen == ["Downloading torch"] and time.monotonic() - start < 20


class _Layout:
    """Records what a draw() lays out (labels with their icons; rows and boxes are the same layout)."""

    def __init__(self):
        self.labels = []

    def label(self, text="", icon="NONE"):
        self.labels.append((text, icon))

    def row(self, **kwargs):
        return self

    box = column = row

    def prop(self, *args, **kwargs):
        pass

    operator = prop


def test_the_preferences_list_every_asset_with_its_state(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from gagavatar.engine.assets import MANIFEST
    from gagavatar.gagavatar_blender import preferences
    (tmp_path / "GAGAvatar.pt").write_bytes(b"x")
    (tmp_path / "face_landmarker.task.part").write_bytes(b"x")
    monkeypatch.setattr(deps, "_problems", [])
    prefs = SimpleNamespace(assets_folder=str(tmp_path), model_path="", flame_path="", python_path="")
    layout = _Layout()
    preferences.GAGAVATAR_AP_preferences.draw(SimpleNamespace(layout=layout, _draw_assets=lambda box: (
        preferences.GAGAVATAR_AP_preferences._draw_assets(prefs, box))), None)
    rows = {text: icon for text, icon in layout.labels}
    assert f"Folder: {tmp_path}" in rows
    assert len(MANIFEST) == 6
    for asset in MANIFEST:
        assert asset.name in rows
    assert rows["GAGAvatar.pt"] == "CHECKMARK" and rows["face_landmarker.task"] == "SORTTIME"
    assert rows["selfie_segmentation.tflite"] == rows["FLAME_with_eye.pt"] == "ERROR"
    assert ("All Python dependencies found", "CHECKMARK") in layout.labels
