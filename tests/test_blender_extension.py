"""The extension as Blender sees it: manifest validated and zip built by Blender's own tool, then the
zip installed and enabled in a headless bpy session, its operators run, and disabled again."""
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _build_tool():
    return load_script("tools/build_extension.py")


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory):
    return _build_tool().build(tmp_path_factory.mktemp("ext"))


def test_manifest_passes_blenders_validator():
    assert "Success" in _build_tool().validate(REPO)


def test_validator_rejects_a_broken_manifest(tmp_path):
    text = (REPO / "blender_manifest.toml").read_text().replace('id = "gagavatar"', 'id = "gag avatar"')
    (tmp_path / "blender_manifest.toml").write_text(text)
    (tmp_path / "__init__.py").write_text("")
    with pytest.raises(RuntimeError, match="id"):
        _build_tool().validate(tmp_path)


def test_zip_holds_the_extension_without_dev_files(built_zip):
    names = zipfile.ZipFile(built_zip).namelist()
    for needed in ("blender_manifest.toml", "__init__.py", "gagavatar_blender/__init__.py",
                   "operators/__init__.py", "panels/__init__.py", "engine/model.py"):
        assert needed in names
    assert not [n for n in names if n.startswith(("tests/", "tools/", ".venv/", "docs/", "bench/"))
                or "__pycache__" in n]


def test_install_enable_run_disable(built_zip):
    import bpy
    import addon_utils

    result = bpy.ops.extensions.package_install_files(filepath=str(built_zip), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}
    module = "bl_ext.user_default.gagavatar"
    try:
        assert module in bpy.context.preferences.addons
        assert module in sys.modules and "torch" not in {
            m.split(".")[0] for m in sys.modules if m.startswith(module)}
        prefs = bpy.context.preferences.addons[module].preferences
        assert prefs.device == "AUTO" and prefs.bl_rna.identifier == "GAGAVATAR_AP_preferences"
        # The engine is not imported at register (torch stays lazy).
        assert f"{module}.engine.model" not in sys.modules
        assert hasattr(bpy.ops.gagavatar, "free_memory")
        cache = sys.modules[f"{module}.gagavatar_blender.cache"]
        cache.get(("model", "x.pt", "cpu"), object)
        assert cache.size() == 1
        assert bpy.ops.gagavatar.free_memory() == {"FINISHED"}
        assert cache.size() == 0
        # The download is refused, with the reason, unless the FLAME licence is accepted.
        with pytest.raises(RuntimeError, match="FLAME licence"):
            bpy.ops.gagavatar.download_assets(accept_license=False)
        site = Path(bpy.utils.extension_path_user(module, path="site-packages", create=True))
        assert site.is_dir() and str(site).startswith(bpy.utils.user_resource("EXTENSIONS"))
    finally:
        addon_utils.disable(module, default_set=True)
    assert module not in bpy.context.preferences.addons
    assert not hasattr(bpy.types, "GAGAVATAR_PT_main")
