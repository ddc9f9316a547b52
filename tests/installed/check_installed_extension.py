"""The user's install path on a bare bpy (run by tools/blender_leg.sh, once per Blender version).

Installs the built zip (``$GAGAVATAR_ZIP``) into a bpy that has nothing but Blender's own packages,
sees the operators disabled with the missing packages named, runs *Install Dependencies* (the
add-on's own pip installer, into the extension's private site-packages), and checks the result:
every requirement met by version, nothing that Blender bundles (numpy above all) shadowed, the
engine importable. Writes the private site-packages' path to ``$GAGAVATAR_SITE_OUT`` so that the
Blender test modules can then run against the installed dependencies.

Not collected by the main suite (its name does not start with ``test_``): run it explicitly.
"""
import importlib
import os
import sys
from pathlib import Path

import pytest

MODULE = "bl_ext.user_default.gagavatar"


def ext(name):
    return importlib.import_module(f"{MODULE}.{name}")


@pytest.fixture(scope="module")
def installed():
    import bpy
    import addon_utils  # importable once bpy is
    zip_path = os.environ["GAGAVATAR_ZIP"]
    assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    yield bpy.context.preferences.addons[MODULE].preferences
    addon_utils.disable(MODULE, default_set=True)


def _blender_paths():
    deps = ext("gagavatar_blender.deps")
    return [p for p in sys.path if p not in deps._added]


def test_a_bare_blender_lacks_the_dependencies_and_says_which(installed):
    import bpy
    deps = ext("gagavatar_blender.deps")
    absent = deps.missing()
    assert "torch" in absent and "mediapipe" in absent
    assert not bpy.ops.gagavatar.create_avatar.poll()
    with pytest.raises(RuntimeError, match=r"Missing Python packages \(.*torch"):
        bpy.ops.gagavatar.create_avatar(filepath="x.png")
    assert bpy.ops.gagavatar.install_dependencies.poll()


def test_install_dependencies_puts_them_in_the_private_site_packages(installed):
    import bpy
    deps = ext("gagavatar_blender.deps")
    requirements = ext("gagavatar_blender.requirements")
    blender_own = requirements.installed(_blender_paths())
    assert bpy.ops.gagavatar.install_dependencies() == {"FINISHED"}
    site = deps.site_packages()
    assert str(site) in sys.path and Path(bpy.utils.user_resource("EXTENSIONS")) in site.parents
    # Every requirement met by its installed version, checked once more after the install.
    assert deps.missing() == [] and requirements.check(deps.wanted()) == []
    assert not bpy.ops.gagavatar.install_dependencies.poll()
    # Nothing Blender bundles went into the private folder: Blender's numpy stays the one in use.
    private = requirements.installed([str(site)])
    assert "numpy" not in private and not (site / "numpy").exists()
    assert not set(private) & set(blender_own), "the installer shadowed Blender's own packages"
    import numpy
    assert site.resolve() not in Path(numpy.__file__).resolve().parents
    # The engine imports from there (torch, cv2, mediapipe's Tasks API, smplx).
    import cv2
    import torch
    from mediapipe.tasks.python import vision
    assert torch.zeros(2).sum().item() == 0.0 and cv2.__version__.startswith("4.11") and vision.FaceLandmarker
    assert ext("engine.flame").__name__.endswith("engine.flame")
    out = os.environ.get("GAGAVATAR_SITE_OUT")
    if out:
        Path(out).write_text(str(site))
