"""The scripting / render-farm workflow of docs/BLENDER.md, in fresh processes as a farm node runs it:

1. ``tools/blender_farm_example.py`` (installs the built zip, saves the preferences, creates an avatar
   from a photo, keys it, saves the .blend and renders the animation) with the bpy module;
2. two more processes that start like Blender does (user preferences loaded), open only the saved
   .blend and render frames 1-2 and 3-4 of it (what ``blender -b avatar.blend -s 1 -e 2 -a`` does on
   two farm nodes): the same pixels as the one process that rendered frames 1-4.

Assets come from ``$GAGAVATAR_ASSETS`` in both processes, as on a farm node.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
FARM_RENDER = """
import sys, bpy
if bpy.app.version >= (4, 3):
    bpy.ops.wm.read_userpref()  # Blender loads them at startup; the bpy module does not
else:  # the bpy 4.2 module crashes in read_userpref (even with no add-on): enable what the preferences hold
    import addon_utils
    addon_utils.enable('bl_ext.user_default.gagavatar', default_set=True)
assert any(name.endswith('.gagavatar') for name in bpy.context.preferences.addons.keys()), 'extension not enabled'
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
assert bpy.context.scene.render.engine == 'GAGAVATAR'
scene = bpy.context.scene
scene.render.filepath = sys.argv[2]
scene.frame_start, scene.frame_end = int(sys.argv[3]), int(sys.argv[4])
bpy.ops.render.render(animation=True)
"""


def _run(args, env):
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def farm(tmp_path_factory, assets_dir, astronaut):
    build = load_script("tools/build_extension.py")
    root = tmp_path_factory.mktemp("farm")
    zip_path = build.build(root / "zip")
    photo = root / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(root / "node_user"), GAGAVATAR_ASSETS=str(assets_dir))
    out = _run([str(REPO / "tools" / "blender_farm_example.py"), str(photo), str(root / "out"),
                "--install", str(zip_path), "--resolution", "64", "--frames", "4"], env)
    return {"root": root, "env": env, "stdout": out}


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_the_scripting_example_runs_in_background_mode(farm):
    out = farm["root"] / "out"
    assert "created 'astronaut'" in farm["stdout"]
    assert sorted(p.name for p in out.iterdir()) == ["avatar.blend", *(f"frame_000{f}.png" for f in range(1, 5))]
    one, two = _pixels(out / "frame_0001.png"), _pixels(out / "frame_0002.png")
    assert one.shape == (64, 64, 4)  # film transparent: RGBA
    assert one[..., 3].max() > 200  # the head is drawn (the synthetic weights cover the whole crop)
    assert np.abs(one - two).max() >= 1  # Exp001 and the jaw are keyed differently at frames 1 and 2


def test_two_fresh_nodes_render_their_frames_of_the_saved_blend_identically(farm):
    """Everything is inside the .blend; a node only needs the enabled extension and $GAGAVATAR_ASSETS.
    Two nodes splitting the frames give what one process rendering them all gave."""
    root = farm["root"]
    for node, (first, last) in enumerate(((1, 2), (3, 4))):
        _run(["-c", FARM_RENDER, str(root / "out" / "avatar.blend"), str(root / f"node{node}" / "frame_"),
              str(first), str(last)], farm["env"])
    assert sorted(p.name for p in (root / "node1").iterdir()) == ["frame_0003.png", "frame_0004.png"]
    for f in range(1, 5):
        node = root / ("node0" if f <= 2 else "node1")
        assert np.array_equal(_pixels(node / f"frame_000{f}.png"), _pixels(root / "out" / f"frame_000{f}.png"))
