"""GAGAvatar scripted in Blender without a UI: photo -> avatar -> driven animation -> frames + .blend.

Every GAGAvatar operator runs to completion synchronously in background mode, so a plain script can
chain them. Run it with Blender::

    blender -b --python tools/blender_farm_example.py -- PHOTO OUT_DIR [--driving FILE] [--install ZIP]

or with the ``bpy`` module (``pip install bpy``, Python 3.11)::

    python tools/blender_farm_example.py PHOTO OUT_DIR [--driving FILE] [--install ZIP]

Assets come from ``$GAGAVATAR_ASSETS`` (or the add-on's preferences). It writes ``OUT_DIR/avatar.blend``
(the avatar lives inside it: Gaussians, rig, keys, camera) and renders its frames to
``OUT_DIR/frame_####.png``. The saved .blend renders the same on any node that has the extension
and the assets: ``blender -b OUT_DIR/avatar.blend -a`` (or a Flamenco/Deadline job on it).

``--install ZIP`` installs and enables the extension zip first (``tools/build_extension.py`` makes
it) and saves the preferences, as a farm node's setup would; without it the extension must already
be enabled.
"""
import argparse
import sys
from pathlib import Path

import bpy

MODULE_SUFFIX = ".gagavatar"


def parse_args(argv=None):
    if argv is None:  # blender ... --python this.py -- args; python this.py args
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", help="portrait photo with one clearly visible face")
    parser.add_argument("out", help="output folder (avatar.blend, frame_####.png)")
    parser.add_argument("--driving", help="driving sequence (.npz, official .pkl/.pt) or a video to track")
    parser.add_argument("--install", help="extension zip to install and enable first")
    parser.add_argument("--resolution", type=int, default=512, help="square frame size in pixels")
    parser.add_argument("--frames", type=int, default=2,
                        help="without --driving: animate Exp001 from 0 to 2 over this many frames")
    return parser.parse_args(argv)


def enable_extension(zip_path=None) -> str:
    """Install (optional) and enable the extension; return its module name (bl_ext.<repo>.gagavatar)."""
    if zip_path:
        result = bpy.ops.extensions.package_install_files(filepath=str(Path(zip_path).resolve()),
                                                          repo="user_default", enable_on_install=True)
        if result != {"FINISHED"}:
            raise SystemExit(f"could not install {zip_path}")
        # Save the preferences so that later runs on this machine (e.g. `blender -b file.blend -a`)
        # start with the extension enabled: without it Blender falls back to EEVEE for the scene.
        bpy.ops.wm.save_userpref()
    for name in bpy.context.preferences.addons.keys():
        if name.startswith("bl_ext.") and name.endswith(MODULE_SUFFIX):
            return name
    import addon_utils
    for module in addon_utils.modules():
        if module.__name__.startswith("bl_ext.") and module.__name__.endswith(MODULE_SUFFIX):
            addon_utils.enable(module.__name__, default_set=True)
            return module.__name__
    raise SystemExit("the GAGAvatar extension is not installed: pass --install gagavatar-<version>.zip")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    enable_extension(args.install)

    # Start from an empty scene (the preferences and the enabled extension stay).
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene

    # 1. Photo -> avatar: a collection with the Gaussians, the FLAME rig, the source camera and photo;
    #    the scene is set to render with GAGAvatar through that camera (Standard view transform, Z pass).
    bpy.ops.gagavatar.create_avatar(filepath=str(Path(args.photo).resolve()))
    avatar = bpy.context.active_object  # the avatar's root empty
    settings = avatar.gagavatar
    print(f"created '{avatar.name}': rig '{settings.rig.name}', camera '{settings.camera.name}'")

    # 2. Animation: a driving file keyed onto the rig at the scene's frame rate, or keys set by hand.
    if args.driving:
        bpy.ops.gagavatar.import_driving(filepath=str(Path(args.driving).resolve()), start_frame=1)
    else:
        blocks = settings.flame.data.shape_keys.key_blocks
        jaw = settings.rig.pose.bones["jaw"]
        for i in range(args.frames):
            t = i / max(args.frames - 1, 1)
            blocks["Exp001"].value = 2.0 * t
            blocks["Exp001"].keyframe_insert("value", frame=1 + i)
            jaw.rotation_quaternion = (1.0, 0.15 * t, 0.0, 0.0)  # open the mouth a little (~17 deg)
            jaw.keyframe_insert("rotation_quaternion", frame=1 + i)
        scene.frame_start, scene.frame_end = 1, args.frames

    # 3. Output settings, saved with the file so a farm renders the same.
    scene.render.resolution_x = scene.render.resolution_y = args.resolution
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(out / "frame_")
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "avatar.blend"))

    # 4. Render the animation here (a farm would run `blender -b avatar.blend -a` instead).
    bpy.ops.render.render(animation=True)
    print(f"rendered frames {scene.frame_start}-{scene.frame_end} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
