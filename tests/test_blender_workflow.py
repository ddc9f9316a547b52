"""The artist's workflow in a headless bpy 5.0 session, through the extension zip as Blender installs it:
create an avatar from a photo, key it, import a driving sequence, render stills and animations with
the GAGAVATAR engine into the compositor, save and reload; and the failures that must leave the
scene as it was. Assets: the synthetic GAGAvatar.pt / FLAME from the fixtures, found through
$GAGAVATAR_ASSETS.

The network renders take seconds each on a CPU: the module creates one avatar and renders six frames.
"""
import importlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
MODULE = "bl_ext.user_default.gagavatar"


def ext(name):
    """A submodule of the installed extension."""
    return importlib.import_module(f"{MODULE}.{name}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory, assets_dir):
    import bpy
    import addon_utils  # importable once bpy is
    build = load_script("tools/build_extension.py")
    zip_path = build.build(tmp_path_factory.mktemp("zip"))
    previous = os.environ.get("GAGAVATAR_ASSETS")
    os.environ["GAGAVATAR_ASSETS"] = str(assets_dir)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    yield bpy.context.preferences.addons[MODULE].preferences
    addon_utils.disable(MODULE, default_set=True)
    if previous is None:
        os.environ.pop("GAGAVATAR_ASSETS")
    else:
        os.environ["GAGAVATAR_ASSETS"] = previous


@pytest.fixture(scope="module")
def photo(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture(scope="module")
def avatar(installed, photo):
    import bpy
    assert bpy.ops.gagavatar.create_avatar(filepath=str(photo)) == {"FINISHED"}
    return bpy.data.objects["astronaut"]


def snapshot():
    import bpy
    return {kind: sorted(i.name for i in getattr(bpy.data, kind))
            for kind in ("objects", "collections", "meshes", "armatures", "cameras", "images", "actions")}


def head_space_camera(root, camera):
    """The network's [R|T] for ``camera`` as the renderer computes it (through the evaluated rig)."""
    import bpy
    from gagavatar.engine.cameras import blender_to_transform
    views = ext("gagavatar_blender.scene_views").avatar_views(bpy.context.evaluated_depsgraph_get(),
                                                               camera.matrix_world, "cpu")
    assert len(views) == 1
    return blender_to_transform(torch.tensor(views[0].camera, dtype=torch.float32), 1.0)[0], views[0]


def test_preferences_default_to_the_asset_environment_variable(installed, assets_dir):
    # read when used (not frozen at register), so a farm node's own $GAGAVATAR_ASSETS applies
    assert installed.assets_folder == "" and installed.model_path == "" and installed.flame_path == ""
    model, flame = ext("gagavatar_blender.networks").asset_paths(installed)
    assert model == assets_dir / "GAGAvatar.pt" and flame == assets_dir / "FLAME_with_eye.pt"
    assert installed.bl_rna.identifier == "GAGAVATAR_AP_preferences"


def test_create_avatar_from_a_photo(avatar):
    import bpy
    settings = avatar.gagavatar
    collection = avatar.users_collection[0]
    assert collection.name == "GAGAvatar astronaut"
    assert {o.name for o in collection.objects} == {
        "astronaut", "astronaut_rig", "astronaut_flame", "astronaut_gaussians", "astronaut_camera", "astronaut_source"}
    # The Gaussians, saved as mesh attributes, read back as the engine's arrays.
    data = ext("gagavatar_blender.gaussians").read_mesh(settings.gaussians.data)
    assert {k: v.shape for k, v in data.items()} == {
        "xyz": (180255, 3), "colors": (180255, 32), "opacities": (180255, 1), "scales": (180255, 3),
        "rotations": (180255, 4)}
    assert 0.0 <= data["opacities"].min() and data["opacities"].max() <= 1.0 and data["scales"].min() > 0
    assert settings.gaussians.modifiers[0].node_group.name == "GAGAvatar Gaussian Preview"
    # The rig: FLAME mesh with widened expression keys, under the root that turns y-up into z-up.
    blocks = settings.flame.data.shape_keys.key_blocks
    assert len(settings.flame.data.vertices) == 5023 and blocks["Exp100"].slider_min < -1
    assert np.allclose(np.array(avatar.matrix_world)[:3, :3] / 0.2, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    # The point preview follows the head root (at rest: exactly the armature's space).
    assert np.allclose(settings.gaussians.matrix_world, settings.rig.matrix_world, atol=1e-6)
    # The camera sees the head as the source camera did.
    transform, _ = head_space_camera(avatar, settings.camera)
    assert torch.allclose(transform, torch.tensor(settings.source_transform).view(3, 4), atol=1e-4)
    assert settings.camera.data.lens == pytest.approx(216.0)
    assert settings.image.packed_file is not None and settings.image.name == "astronaut.png"
    scene = bpy.context.scene
    assert (scene.render.engine, scene.camera, scene.view_settings.view_transform, scene.render.dither_intensity) == (
        "GAGAVATAR", settings.camera, "Standard", 0.0)
    assert bpy.context.view_layer.use_pass_z and (scene.render.resolution_x, scene.render.resolution_y) == (512, 512)


def test_render_through_the_source_camera_is_the_networks_output(avatar, tmp_path):
    """F12 through the avatar's camera at 512^2: the saved 8-bit pixels are the network's sRGB image
    (sRGB decoded into the linear result, encoded back by the Standard view transform)."""
    import bpy
    scene = bpy.context.scene
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.filepath = str(tmp_path / "still")
    bpy.ops.render.render(write_still=True)
    saved = np.asarray(Image.open(tmp_path / "still.png"), dtype=np.float64)

    networks = ext("gagavatar_blender.networks")
    model = networks.load_model(networks.asset_paths(installed_prefs())[0], "cpu")
    transform, view = head_space_camera(avatar, scene.camera)
    with torch.no_grad():
        frame = model.render(view.load(), torch.from_numpy(view.vertices)[None], transform[None])
    direct = frame.image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0
    # rounding only (no dithering), plus Blender's float32 colour management: OCIO's CPU sRGB
    # transform approximates pow() to a few hundredths of a level, which flips the rounding of
    # the odd pixel whose value lies that close to a half level
    error = np.abs(saved - direct)
    assert error.max() <= 0.56 and error.mean() < 0.26      # rounding alone: at most 0.5, 0.25 on average


def test_a_cpu_render_splats_with_the_kernel_built_in_the_extensions_user_folder(avatar, monkeypatch):
    """F12 on the CPU builds the compiled splatting kernel under extension_path_user(<package>, "cache")
    (the only place the add-on writes to) and splats with it."""
    import bpy
    cpu_backend, rasterize = ext("engine.splatting.cpu_backend"), ext("engine.splatting.rasterize")
    monkeypatch.delenv("GAGAVATAR_CACHE_DIR", raising=False)
    cpu_backend.reset()   # built afresh where the add-on points it (another test may have built it elsewhere)
    used = []
    monkeypatch.setattr(cpu_backend, "composite_camera", lambda *a, f=cpu_backend.composite_camera: used.append(1) or f(*a))
    bpy.ops.render.render()
    folder = Path(bpy.utils.extension_path_user(MODULE, path="cache"))
    assert used and cpu_backend.cache_dir() == folder
    assert [p.name.startswith("cpu_kernel-") for p in (folder / "kernels").iterdir()] == [True]
    assert rasterize.resolve_backend("auto", torch.zeros(1)) == "cpu"


def test_command_line_renders_keep_frame_memory(avatar, monkeypatch):
    """*Frame Memory* Auto keeps large buffers between frames in a command-line Blender (the bpy
    module is one; so are farm nodes); Give Back never asks for it."""
    import bpy
    host_memory, prefs = ext("engine.host_memory"), installed_prefs()
    asked = []
    monkeypatch.setattr(host_memory, "keep_large_buffers", lambda: asked.append(1) or True)
    assert prefs.frame_memory == "AUTO" and bpy.app.background
    bpy.ops.render.render()
    assert asked
    asked.clear()
    prefs.frame_memory = "RETURN"
    try:
        bpy.ops.render.render()
    finally:
        prefs.frame_memory = "AUTO"
    assert not asked


def installed_prefs():
    import bpy
    return bpy.context.preferences.addons[MODULE].preferences


def _wide_camera(scene, source):
    """A non-square, shifted, longer-lens camera at the source camera's place."""
    import bpy
    data = bpy.data.cameras.new("wide")
    data.lens, data.shift_x = 150.0, 0.1
    camera = bpy.data.objects.new("wide", data)
    scene.collection.objects.link(camera)
    camera.matrix_world = source.matrix_world
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = 320, 192
    return camera


def _compositor(scene, folder):
    """Render Layers -> File Output (EXR: Image, Coarse, Depth as ``pass_<name><frame>.exr``) and the
    render result (Blender 5.0+: a compositor node group and its Group Output; 4.2-4.5: ``scene.node_tree``
    and a Composite node, File Output slots named by their file). Turns the Coarse pass on, as a
    user does before linking its socket."""
    import bpy
    bpy.context.view_layer.gagavatar.use_pass_coarse = True
    if bpy.app.version >= (5, 0):
        tree = bpy.data.node_groups.new("passes", "CompositorNodeTree")
        ext("gagavatar_blender.compositor").set_node_tree(scene, tree)
    else:  # Blender 4.2-4.5
        scene.use_nodes = True
        tree = scene.node_tree
        tree.nodes.clear()
    layers = tree.nodes.new("CompositorNodeRLayers")
    out = tree.nodes.new("CompositorNodeOutputFile")
    if hasattr(out.format, "media_type"):
        out.format.media_type = "IMAGE"
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    out.format.color_mode = "RGBA"  # a new node copies the scene's output format (RGB after the still test)
    if hasattr(out, "file_output_items"):
        out.directory, out.file_name = str(folder) + os.sep, "pass_"
    else:
        out.base_path = str(folder) + os.sep
        out.file_slots.clear()
    for name in ("Image", "Coarse", "Depth"):
        if hasattr(out, "file_output_items"):
            out.file_output_items.new("FLOAT" if name == "Depth" else "RGBA", name)
            socket = out.inputs[name]
        else:
            out.file_slots.new(f"pass_{name}")
            socket = out.inputs[f"pass_{name}"]
        tree.links.new(layers.outputs[name], socket)
    if bpy.app.version >= (5, 0):
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        tree.links.new(layers.outputs["Image"], tree.nodes.new("NodeGroupOutput").inputs[0])
    else:
        tree.links.new(layers.outputs["Image"], tree.nodes.new("CompositorNodeComposite").inputs["Image"])
    return [s.name for s in layers.outputs if s.enabled]


def _exr(path):
    import bpy
    image = bpy.data.images.load(str(path))
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(image.size[1], image.size[0], -1)[::-1]
    bpy.data.images.remove(image)
    return pixels


@pytest.fixture(scope="module")
def animation(avatar, tmp_path_factory):
    """Exp001 keyed at 0 (frame 1) and 3 (frame 2), rendered with `render.render(animation=True)`
    through a wide camera into PNGs and the compositor's EXRs."""
    import bpy
    scene = bpy.context.scene
    folder = tmp_path_factory.mktemp("animation")
    camera = _wide_camera(scene, avatar.gagavatar.camera)
    sockets = _compositor(scene, folder / "passes")
    block = avatar.gagavatar.flame.data.shape_keys.key_blocks["Exp001"]
    for frame, value in ((1, 0.0), (2, 3.0)):
        block.value = value
        block.keyframe_insert("value", frame=frame)
    views = {}
    for frame in (1, 2):
        scene.frame_set(frame)
        views[frame] = head_space_camera(avatar, camera)[1]
    k = ext("gagavatar_blender.scene_views").camera_intrinsics(bpy.context.evaluated_depsgraph_get(), camera, 320, 192)
    scene.frame_start, scene.frame_end = 1, 2
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.filepath = str(folder / "frame_")
    cache = ext("gagavatar_blender.cache")
    bpy.ops.render.render(animation=True)
    models = [v for key, v in cache._CACHE.items() if key[0] == "model"]
    return {"folder": folder, "sockets": sockets, "views": views, "intrinsics": k, "models": models}


def test_animation_frames_differ_where_the_expression_differs(animation):
    folder, k = animation["folder"], animation["intrinsics"]
    assert sorted(p.name for p in folder.glob("frame_*")) == ["frame_0001.png", "frame_0002.png"]
    one, two = (np.asarray(Image.open(folder / f"frame_000{f}.png"), dtype=np.int16) for f in (1, 2))
    # Renders are deterministic (same input, same pixels: see the save/reload test), so any change
    # comes from the expression. The synthetic weights damp it: the 8-bit frames differ by a level.
    assert one.shape == (192, 320, 3) and np.abs(one - two).max() >= 1
    passes = {f: {n: _exr(folder / "passes" / f"pass_{n}000{f}.exr") for n in ("Image", "Coarse", "Depth")}
              for f in (1, 2)}
    assert np.abs(passes[1]["Image"] - passes[2]["Image"]).max() > 5e-3
    # The splatted pass changes only around the expression Gaussians that moved.
    v1, v2 = animation["views"][1], animation["views"][2]
    moved = np.abs(v1.vertices - v2.vertices).max(1) > 1e-5
    assert moved.any()
    points = np.concatenate([v1.vertices[moved], v2.vertices[moved]])
    p = (points - v1.camera[:3, 3]) @ v1.camera[:3, :3]
    u, v = k.fx * p[:, 0] / -p[:, 2] + k.cx, k.fy * -p[:, 1] / -p[:, 2] + k.cy
    margin = 3 * 0.05 * k.fx / (-p[:, 2]).min() + 3  # 3 sigma of the largest Gaussians, plus resampling
    changed = np.abs(passes[1]["Coarse"][..., :3] - passes[2]["Coarse"][..., :3]).max(-1) > 1e-4
    rows, cols = np.nonzero(changed)
    assert len(rows) > 0
    assert cols.min() + 0.5 >= u.min() - margin and cols.max() + 0.5 <= u.max() + margin
    assert rows.min() + 0.5 >= v.min() - margin and rows.max() + 0.5 <= v.max() + margin
    # Outside the head's crop window nothing is drawn, in both frames.
    window = ext("engine.framing").crop_window(v1, k)
    assert window.x0 > 0 and window.x0 + window.w < 320  # the window lies inside the frame horizontally
    outside = np.ones((192, 320), bool)
    outside[:, int(np.floor(window.x0)):int(np.ceil(window.x0 + window.w))] = False
    for f in (1, 2):
        assert passes[f]["Image"][outside].max() == 0.0
    # The model was loaded once for both frames (the cache).
    assert len(animation["models"]) == 1


def test_the_compositor_receives_every_pass(animation):
    import bpy
    assert {"Image", "Alpha", "Depth", "Coarse"} <= set(animation["sockets"])
    folder = animation["folder"]
    image = _exr(folder / "passes" / "pass_Image0001.exr")
    coarse = _exr(folder / "passes" / "pass_Coarse0001.exr")
    depth = _exr(folder / "passes" / "pass_Depth0001.exr")[..., 0]
    alpha = image[..., 3]
    png = np.asarray(Image.open(folder / "frame_0001.png"), dtype=np.float64) / 255.0
    srgb = np.where(image[..., :3] <= 0.0031308, 12.92 * image[..., :3],
                    1.055 * np.clip(image[..., :3], 0, None) ** (1 / 2.4) - 0.055)
    assert np.abs(srgb - png).max() <= 1.0 / 255 + 1e-4  # the compositor's Image is the render
    assert alpha.max() > 0.5 and alpha.min() == 0.0 and coarse[..., :3].max() > 0.0
    # Depth: scene units to the head where it is drawn, Blender's background value elsewhere.
    head = bpy.data.objects["astronaut"]
    distance = (bpy.context.scene.camera.matrix_world.translation - head.matrix_world.translation).length
    drawn = alpha > 0.5
    assert np.abs(depth[drawn] - distance).max() < 0.5 * distance
    assert (depth[alpha == 0.0] == 1e10).all()


@pytest.fixture
def driven(avatar):
    """The avatar for a driving-import test, put back unanimated afterwards: rig, camera and shape
    key animation removed, bones at rest, camera, frame rate and frame range as before (later tests
    render frame 1, which an import's keys would otherwise reach by extrapolation)."""
    import bpy
    scene = bpy.context.scene
    settings = avatar.gagavatar
    camera, camera_world = scene.camera, scene.camera.matrix_world.copy()
    timing = (scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end)
    yield avatar
    for data in (settings.rig, settings.camera, settings.flame.data.shape_keys):
        data.animation_data_clear()
    for bone in settings.rig.pose.bones:
        bone.matrix_basis.identity()
    for block in settings.flame.data.shape_keys.key_blocks[1:]:
        block.value = 0.0
    scene.camera = camera
    camera.matrix_world = camera_world
    scene.render.fps, scene.render.fps_base, scene.frame_start, scene.frame_end = timing


def _sequence(tmp_path):
    """A 6-frame, 25 fps driving sequence turning and moving the head and opening the jaw."""
    from gagavatar.engine.cameras import transform_from_pose
    from gagavatar.engine.sequence import DrivingSequence, save_sequence
    g = torch.Generator().manual_seed(0)
    T = 6
    turn = torch.stack([torch.tensor([0.05 * t, -0.1 * t, 0.02 * t]) for t in range(T)])
    transform = transform_from_pose(turn, torch.tensor([0.1, -0.05, 9.5]).expand(T, 3))
    seq = DrivingSequence(expression=torch.randn(T, 100, generator=g), jaw=torch.rand(T, 3, generator=g) * 0.2,
                          eyes=torch.randn(T, 6, generator=g) * 0.1, transform=transform, fps=25.0)
    save_sequence(seq, tmp_path / "drive.npz")
    return seq, tmp_path / "drive.npz"


@pytest.mark.parametrize("head_motion", ["HEAD", "CAMERA"])
@pytest.mark.usefixtures("driven")
def test_import_driving_keys_the_rig_at_the_scene_frame_rate(avatar, tmp_path, head_motion):
    """25 fps driving on a 50 fps scene from frame 101: every other frame is a driving frame, the
    ones between are interpolated; the camera sees the head as the driving camera did."""
    import bpy
    from mathutils import Quaternion
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 50, 1.0
    scene.camera = avatar.gagavatar.camera
    camera_before = avatar.gagavatar.camera.matrix_world.copy()
    seq, path = _sequence(tmp_path)
    start = 101 if head_motion == "HEAD" else 201
    assert bpy.ops.gagavatar.import_driving(filepath=str(path), start_frame=start, head_motion=head_motion,
                                            set_frame_range=False) == {"FINISHED"}
    blocks = avatar.gagavatar.flame.data.shape_keys.key_blocks
    jaw = avatar.gagavatar.rig.pose.bones["jaw"]
    rig = ext("gagavatar_blender.rig")
    for t in range(seq.num_frames):
        scene.frame_set(start + 2 * t)
        values = np.array([blocks[name].value for name in rig.EXPRESSION_KEYS])
        assert np.abs(values - seq.expression[t].numpy()).max() < 1e-5
        want = Quaternion(rig.axis_angle_to_quaternion(seq.jaw[t].numpy()))
        assert abs(abs(want.dot(jaw.rotation_quaternion)) - 1.0) < 1e-6
        transform, _ = head_space_camera(avatar, scene.camera)
        assert torch.allclose(transform, seq.transform[t], atol=1e-4)
    scene.frame_set(start + 1)  # halfway between driving frames 0 and 1
    values = np.array([blocks[name].value for name in rig.EXPRESSION_KEYS])
    assert np.abs(values - seq.expression[:2].mean(0).numpy()).max() < 1e-5
    if head_motion == "HEAD":
        assert scene.camera.animation_data is None  # the camera stays
    else:
        scene.frame_set(start)
        assert not np.allclose(scene.camera.matrix_world, camera_before, atol=1e-3)
        assert np.allclose(avatar.gagavatar.rig.pose.bones["root"].matrix_basis, np.eye(4), atol=1e-6)


def test_failures_leave_the_scene_as_it_was(avatar, installed, photo, tmp_path):
    import bpy
    Cancelled = ext("engine.errors").Cancelled   # the installed extension's own engine
    before = snapshot()
    # Missing assets: refused before any work, with where to put them.
    folder, installed.assets_folder = installed.assets_folder, str(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="GAGAvatar.pt not found"):
            bpy.ops.gagavatar.create_avatar(filepath=str(photo))
    finally:
        installed.assets_folder = folder
    # A photo without a face.
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    with pytest.raises(RuntimeError, match="no face found in blank.png"):
        bpy.ops.gagavatar.create_avatar(filepath=str(blank))
    # A cancelled job: its worker thread stops at the next stage and nothing is built.
    job = ext("operators.avatar").create_avatar_job(bpy.context, str(photo))
    job.start()
    job.cancel()
    assert job.wait(120)
    assert isinstance(job.error, Cancelled) and ext("gagavatar_blender.jobs").active() is None
    reports = []
    built = []
    result = ext("operators.job_operator").finish(job, lambda kind, text: reports.append((kind, text)),
                                                  lambda result: built.append(result))
    assert result == {"CANCELLED"} and not built and reports == [({"WARNING"}, "Create avatar: cancelled")]
    assert snapshot() == before


def _official_pkl(path, T=5):
    """The official tracker's smoothed.pkl: {frame name: record}, natural order, zero global pose."""
    import pickle
    from gagavatar.engine.cameras import transform_from_pose
    g = torch.Generator().manual_seed(1)
    turn = torch.stack([torch.tensor([0.0, 0.08 * t, 0.0]) for t in range(T)])
    transform = transform_from_pose(turn, torch.tensor([0.0, 0.0, 9.5]).expand(T, 3)).numpy()
    records = {f"frame_{t}.jpg": {"expcode": torch.randn(100, generator=g).numpy(),
                                  "posecode": np.concatenate([np.zeros(3), 0.1 * t * np.ones(3)]).astype(np.float32),
                                  "eyecode": np.zeros(6, np.float32), "transform_matrix": transform[t]}
               for t in range(T)}
    with open(path, "wb") as f:
        pickle.dump(records, f)
    return records


def _keys(avatar, name="Exp001"):
    """(frames, values) of an expression key's F-curve (layered actions in 5.0: through the channelbag)."""
    key = avatar.gagavatar.flame.data.shape_keys
    fcurve = ext("gagavatar_blender.fcurves").ensure_fcurve(key, f'key_blocks["{name}"].value')
    co = np.empty(2 * len(fcurve.keyframe_points))
    fcurve.keyframe_points.foreach_get("co", co)
    return co[0::2], co[1::2]


@pytest.mark.usefixtures("driven")
def test_import_driving_from_the_official_trackers_pkl(avatar, tmp_path):
    """smoothed.pkl at the official 25 fps onto a 25 fps scene from frame 301: one key per record."""
    import bpy
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    records = _official_pkl(tmp_path / "smoothed.pkl")
    assert bpy.ops.gagavatar.import_driving(filepath=str(tmp_path / "smoothed.pkl"), start_frame=301,
                                            head_motion="NONE") == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (301, 305)  # Set Frame Range (default)
    frames, values = _keys(avatar)
    inside = (frames >= 301) & (frames <= 305)
    assert frames[inside].tolist() == [301, 302, 303, 304, 305]
    assert np.allclose(values[inside], [records[f"frame_{t}.jpg"]["expcode"][0] for t in range(5)], atol=1e-6)
    scene.frame_set(304)
    jaw = avatar.gagavatar.rig.pose.bones["jaw"].rotation_quaternion
    want = ext("gagavatar_blender.rig").axis_angle_to_quaternion(records["frame_3.jpg"]["posecode"][3:])
    assert abs(abs(np.dot(want, list(jaw))) - 1.0) < 1e-6


@pytest.mark.usefixtures("driven")
def test_import_driving_from_a_video_tracks_it_on_the_fly(avatar, tmp_path, astronaut):
    """A 12.5 fps clip (4 frames) onto a 25 fps scene: tracked with the engine's tracker, then keyed
    every frame (7 keys: every other one interpolated)."""
    import bpy
    import cv2
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 25, 1.0
    face = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 12.5, (256, 256))
    for t in range(4):
        writer.write(cv2.cvtColor(np.roll(face, 3 * t, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    assert bpy.ops.gagavatar.import_driving(filepath=str(tmp_path / "clip.mp4"), start_frame=401,
                                            head_motion="HEAD") == {"FINISHED"}
    assert (scene.frame_start, scene.frame_end) == (401, 407)
    frames, _ = _keys(avatar, "Exp002")
    assert frames[(frames >= 401) & (frames <= 407)].tolist() == list(range(401, 408))
    root = avatar.gagavatar.rig.pose.bones["root"]
    assert root.id_data.animation_data.action is not None  # the head root follows the tracked head
    scene.frame_set(401)


def test_bad_driving_files_are_refused_with_one_line_and_change_nothing(avatar, tmp_path):
    import bpy
    keyed = _keys(avatar)
    before = snapshot()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    for name, message in (("missing.npz", "not found"), ("notes.txt", "cannot drive from notes.txt"),
                          ("broken.npz", "not a readable .npz"), ("broken.mp4", "")):
        with pytest.raises(RuntimeError) as err:
            bpy.ops.gagavatar.import_driving(filepath=str(tmp_path / name))
        text = str(err.value).strip()
        assert message in text and "\n" not in text and "Traceback" not in text, text
    assert snapshot() == before
    assert all(np.array_equal(a, b) for a, b in zip(_keys(avatar), keyed))


def test_rendering_needs_a_camera_and_warns_about_agx(avatar, tmp_path, capfd):
    import bpy
    scene = bpy.context.scene
    camera, scene.camera = scene.camera, None
    try:
        with pytest.raises(RuntimeError, match="camera"):
            bpy.ops.render.render()
    finally:
        scene.camera = camera
    warn = ext("gagavatar_blender.render_engine").colour_warning
    assert warn(scene) == ""  # create_avatar set up Standard
    scene.view_settings.view_transform = "AgX"
    try:
        assert "AgX" in warn(scene) and "Standard" in warn(scene)
        capfd.readouterr()
        scene.render.resolution_percentage = 25  # only the warning matters here
        bpy.ops.render.render()
        assert "washed out" in "".join(capfd.readouterr())
        # an animation warns once, on its first frame, not on every frame
        frames, path = (scene.frame_start, scene.frame_end), scene.render.filepath
        scene.frame_start, scene.frame_end, scene.render.filepath = 1, 2, str(tmp_path / "agx_")
        try:
            bpy.ops.render.render(animation=True)
        finally:
            (scene.frame_start, scene.frame_end), scene.render.filepath = frames, path
        assert "".join(capfd.readouterr()).count("washed out") == 1
        assert len(list(tmp_path.glob("agx_*"))) == 2
    finally:
        scene.view_settings.view_transform = "Standard"
        scene.render.resolution_percentage = 100


def test_rendered_viewport_picks_points_on_the_cpu(avatar, installed):
    """view_draw's choice (no GPU drawing headless): the network on a GPU device or when forced,
    every fourth lifted Gaussian as a coloured point on the CPU."""
    viewport = ext("gagavatar_blender.viewport")
    device, mode = installed.device, installed.viewport_mode
    try:
        installed.device, installed.viewport_mode = "CPU", "AUTO"
        assert not viewport.neural_viewport(installed)
        installed.viewport_mode = "NEURAL"
        assert viewport.neural_viewport(installed)
        installed.device, installed.viewport_mode = "AUTO", "POINTS"
        assert not viewport.neural_viewport(installed)
    finally:
        installed.device, installed.viewport_mode = device, mode
    xyz, rgba = viewport.point_cloud(avatar.gagavatar.gaussians.data)
    lifted = 180255 - 5023
    assert xyz.shape == (-(-lifted // 4), 3) and rgba.shape == (len(xyz), 4)
    assert 0.0 <= rgba.min() and rgba.max() <= 1.0


def _source_view_camera(avatar):
    """A new camera seeing the head, at the current frame, as the source photo's camera did."""
    import bpy
    from mathutils import Matrix
    from gagavatar.engine.cameras import FOCAL, transform_to_blender
    settings = avatar.gagavatar
    _, head_world, _ = next(ext("gagavatar_blender.scene_views").posed_avatars(bpy.context.evaluated_depsgraph_get()))
    head_matrix, lens, sensor = transform_to_blender(torch.tensor(settings.source_transform).view(3, 4), FOCAL)
    loc, rot, _ = Matrix((head_world @ head_matrix.double().numpy()).tolist()).decompose()
    data = bpy.data.cameras.new("source_view")
    data.lens, data.sensor_width, data.sensor_fit, data.clip_start = lens, sensor, "HORIZONTAL", 0.01
    camera = bpy.data.objects.new("source_view", data)
    bpy.context.scene.collection.objects.link(camera)
    camera.matrix_world = Matrix.LocRotScale(loc, rot, None)
    return camera


def test_add_pass_outputs_writes_every_pass_through_the_compositor(avatar, tmp_path):
    """gagavatar.add_pass_outputs on a scene without a compositor: Blender 5.0's compositor node
    group is made (Render Layers -> Group Output, no Composite node; 4.2-4.5: ``use_nodes`` and the
    Composite node) and each frame writes the Image (RGBA), Coarse and Depth EXRs; the render
    result is still the render."""
    import bpy
    scene = bpy.context.scene
    compositor = ext("gagavatar_blender.compositor")
    node_group = bpy.app.version >= (5, 0)
    if node_group:   # 5.3+: the active effect's node group (compositing_node_group is deprecated there)
        previous = compositor.node_tree(scene, create=False)
        compositor.set_node_tree(scene, None)
        assert compositor.node_tree(scene, create=False) is None
    else:
        previous = scene.use_nodes
        scene.use_nodes = False
    scene.render.engine = "BLENDER_EEVEE_NEXT" if bpy.app.version < (5, 0) else "BLENDER_EEVEE"
    assert not bpy.ops.gagavatar.add_pass_outputs.poll()
    scene.render.engine = "GAGAVATAR"
    try:
        folder = str(tmp_path / "exr") + os.sep
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert bpy.ops.gagavatar.add_pass_outputs(directory=folder) == {"FINISHED"}
        assert not [w for w in caught if "compositing_node_group" in str(w.message)]   # deprecated in 5.3
        if node_group:
            tree = compositor.node_tree(scene, create=False)
            assert tree is not None and not [n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite"]
            output = next(n for n in tree.nodes if n.bl_idname == "NodeGroupOutput")
        else:
            tree = scene.node_tree
            assert scene.use_nodes and tree is not None
            output = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite")
        assert output.inputs[0].links[0].from_socket.name == "Image"
        out = tree.nodes["GAGAvatar Passes"]
        assert {link.from_socket.name for link in tree.links if link.to_node == out} == {"Image", "Coarse", "Depth"}
        outputs = len([n for n in tree.nodes if n.bl_idname == "CompositorNodeOutputFile"])
        assert bpy.ops.gagavatar.add_pass_outputs(directory=folder) == {"FINISHED"}  # replaces, not duplicates
        assert len([n for n in tree.nodes if n.bl_idname == "CompositorNodeOutputFile"]) == outputs
        assert len([n for n in tree.nodes if n.name == "GAGAvatar Passes"]) == 1
        scene.frame_set(1)
        scene.camera = _source_view_camera(avatar)  # earlier tests keyed the head and the cameras
        scene.render.resolution_percentage = 25
        scene.render.image_settings.file_format, scene.render.image_settings.color_mode = "PNG", "RGB"
        scene.render.filepath = str(tmp_path / "still_")
        frame_range, (scene.frame_start, scene.frame_end) = (scene.frame_start, scene.frame_end), (1, 1)
        bpy.ops.render.render(animation=True)
        scene.frame_start, scene.frame_end = frame_range
        image = _exr(tmp_path / "exr" / "gagavatar_Image0001.exr")
        depth = _exr(tmp_path / "exr" / "gagavatar_Depth0001.exr")[..., 0]
        coarse = _exr(tmp_path / "exr" / "gagavatar_Coarse0001.exr")
        assert image.shape[-1] == 4 and image[..., 3].max() > 0.5 and coarse[..., :3].max() > 0.0
        assert depth.min() < 1e9  # the head's depth where it is drawn
        png = np.asarray(Image.open(tmp_path / "still_0001.png"), dtype=np.float64) / 255.0
        linear = image[..., :3]
        srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.clip(linear, 0, None) ** (1 / 2.4) - 0.055)
        assert np.abs(srgb - png).max() <= 1.0 / 255 + 1e-4  # the group output is the render
    finally:
        if node_group:
            compositor.set_node_tree(scene, previous)
        else:
            scene.use_nodes = previous
        scene.render.resolution_percentage = 100
        scene.camera = avatar.gagavatar.camera


def test_missing_dependencies_disable_the_operators_with_the_reason(installed, monkeypatch):
    import bpy
    deps = ext("gagavatar_blender.deps")
    requirements = ext("gagavatar_blender.requirements")
    monkeypatch.setattr(deps, "_problems", None)  # restored (all found) afterwards
    monkeypatch.setattr(deps, "wanted", lambda: ("gaganosuch==1.0",))
    monkeypatch.setattr(requirements, "for_python", lambda version=None: ("gaganosuch==1.0",))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip answers offline, at once
    assert deps.missing() == ["gaganosuch"]
    assert not bpy.ops.gagavatar.create_avatar.poll()
    with pytest.raises(RuntimeError, match=r"Missing Python packages \(gaganosuch\)"):
        bpy.ops.gagavatar.create_avatar(filepath="x.png")
    # Install Dependencies runs pip with Blender's Python; a package without a wheel is one honest line.
    assert bpy.ops.gagavatar.install_dependencies.poll()
    with pytest.raises(RuntimeError, match=r"gaganosuch==1.0 has no wheel for Python 3\.\d+ on ") as err:
        bpy.ops.gagavatar.install_dependencies()
    assert "\n" not in str(err.value).strip()
    assert deps.missing() == ["gaganosuch"]
    site = Path(bpy.utils.extension_path_user(MODULE, path="site-packages"))
    assert site.is_dir() and Path(bpy.utils.user_resource("EXTENSIONS")) in site.parents


def test_download_assets_writes_into_the_extensions_user_folder(installed, assets_dir, monkeypatch):
    """With no asset folder set (no preference, no $GAGAVATAR_ASSETS) Download Assets writes under
    extension_path_user(<package>, "assets") and the add-on then finds its assets there."""
    import dataclasses
    import functools
    import http.server
    import shutil
    import threading
    import bpy
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(assets_dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assets = ext("engine.assets")
    monkeypatch.setattr(assets, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    # the tracking models' official URLs, served from the same local folder
    monkeypatch.setattr(assets, "MANIFEST", tuple(dataclasses.replace(a, url=None) for a in assets.MANIFEST))
    monkeypatch.delenv("GAGAVATAR_ASSETS")
    networks = ext("gagavatar_blender.networks")
    folder = networks.asset_folder(installed)
    try:
        assert folder == Path(bpy.utils.extension_path_user(MODULE, path="assets"))
        assert Path(bpy.utils.user_resource("EXTENSIONS")) in folder.parents
        assert bpy.ops.gagavatar.download_assets(accept_license=True) == {"FINISHED"}
        assert networks.asset_paths(installed) == (folder / "GAGAvatar.pt", folder / "FLAME_with_eye.pt")
        assert (folder / "FLAME_with_eye.pt").read_bytes() == (assets_dir / "FLAME_with_eye.pt").read_bytes()
        assert all(state == "ok" for _, _, state in assets.asset_status(folder))  # tracking models too
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def test_two_avatars_are_composited_by_depth(avatar, photo):
    """A second avatar from the same photo, a little further from the camera and to the side:
    the scene renders both, the nearer one over the farther one pixel by pixel (premultiplied
    "over"), with the nearer depth; each is what it renders alone."""
    import bpy
    from mathutils import Matrix
    scene = bpy.context.scene
    scene.frame_set(1)
    assert bpy.ops.gagavatar.create_avatar(filepath=str(photo), setup_scene=False) == {"FINISHED"}
    second = bpy.context.active_object
    assert second != avatar and second.gagavatar.is_avatar and scene.camera != second.gagavatar.camera
    camera = _source_view_camera(avatar)
    camera.data.lens /= 2  # the near head's crop spans the middle half of the frame
    scene.camera = camera
    depsgraph = bpy.context.evaluated_depsgraph_get()
    _, head_world, _ = next(r for r in ext("gagavatar_blender.scene_views").posed_avatars(depsgraph) if r[0] == avatar)
    forward, right = -np.array(camera.matrix_world)[:3, 2], np.array(camera.matrix_world)[:3, 0]
    # the source crop is about distance / 6 wide: move the second head a quarter of the distance back and
    # a quarter of the crop's width aside, so that the two overlap and the far one shows beside
    distance = np.linalg.norm(np.array(camera.matrix_world)[:3, 3] - np.array(head_world)[:3, 3])
    offset = distance * (0.25 * forward + right / 24)
    second.matrix_world = Matrix.Translation(offset.tolist()) @ Matrix(head_world.tolist())
    render_scene = ext("gagavatar_blender.scene_render").render_scene
    camera_intrinsics = ext("gagavatar_blender.scene_views").camera_intrinsics

    def render(*hidden):
        for root in (avatar, second):
            for obj in [root, *root.children_recursive]:
                obj.hide_viewport = root in hidden
        depsgraph = bpy.context.evaluated_depsgraph_get()
        return render_scene(depsgraph, camera.matrix_world, camera_intrinsics(depsgraph, camera, 128, 128), coarse=True)
    try:
        both, near, far = render(), render(second), render(avatar)
    finally:
        for obj in [avatar, *avatar.children_recursive, second, *second.children_recursive]:
            obj.hide_viewport = False
        scene.camera = avatar.gagavatar.camera
        bpy.data.objects.remove(camera)
    covered = (near.combined[..., 3] > 0.5) & (far.combined[..., 3] > 0.5)
    assert covered.any() and ((far.combined[..., 3] > 0.5) & (near.combined[..., 3] == 0)).any()
    assert (near.depth[covered] < far.depth[covered]).all()
    assert np.allclose(both.depth[covered], near.depth[covered], rtol=1e-5)
    over = near.combined + (1.0 - near.combined[..., 3:]) * far.combined
    assert np.abs(both.combined - over).max() < 1e-4
    assert np.allclose(both.coarse, near.coarse + (1.0 - near.combined[..., 3:]) * far.coarse, atol=1e-4)
    for obj in [second, *second.children_recursive]:  # back to one avatar for the tests below
        bpy.data.objects.remove(obj)


def _render_still(path):
    """The render result itself as saved (compositing off: the animation test's compositor tree
    only writes pass files, its output is black); never a blank image."""
    import bpy
    scene = bpy.context.scene
    scene.frame_set(1)
    scene.render.filepath = str(path)
    scene.render.use_compositing = False
    bpy.ops.render.render(write_still=True)
    pixels = np.asarray(Image.open(f"{path}.png"))
    assert pixels.std() > 10, "the render came out blank"
    return pixels


def test_save_reload_render_gives_identical_pixels(avatar, tmp_path):
    """Everything the render needs is inside the .blend (Gaussians, rig, keys, camera)."""
    import bpy
    before = _render_still(tmp_path / "before")
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "avatar.blend"))
    assert bpy.ops.gagavatar.free_memory() == {"FINISHED"}  # the Gaussians are read again, from the file
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "avatar.blend"))
    assert bpy.data.objects["astronaut"].gagavatar.gaussians.data.attributes.get("gs_color_31") is not None
    assert np.array_equal(_render_still(tmp_path / "reloaded"), before)


def test_the_coarse_pass_is_optional_and_files_that_link_it_keep_it(avatar, tmp_path, monkeypatch):
    """Off by default (each pass costs Blender four copies of it per frame): no Coarse socket on the
    Render Layers node, no Coarse pass rendered; on, both. A file whose compositor links the socket
    with the pass off (as files saved before it was optional open) gets the pass back when opened."""
    import bpy
    scene, view_layer = bpy.context.scene, bpy.context.view_layer
    render_engine = ext("gagavatar_blender.render_engine")
    _compositor(scene, tmp_path / "passes")
    layers_node = next(n for n in ext("gagavatar_blender.compositor").node_tree(scene).nodes
                       if n.bl_idname == "CompositorNodeRLayers")
    written = []
    write = render_engine._write_pass
    monkeypatch.setattr(render_engine, "_write_pass", lambda p, image: (written.append(p.name), write(p, image)))
    scene.render.resolution_percentage = 25
    try:
        for on in (False, True):
            view_layer.gagavatar.use_pass_coarse = on
            coarse = layers_node.outputs.get("Coarse")
            assert (coarse is not None and coarse.enabled) == on
            written.clear()
            bpy.ops.render.render()
            assert sorted(written) == sorted(["Combined", "Depth"] + (["Coarse"] if on else []))
        assert any(link.from_socket.name == "Coarse" for link in layers_node.outputs["Coarse"].links)
        view_layer.gagavatar.use_pass_coarse = False
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "linked.blend"))
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "linked.blend"))
        scene, view_layer = bpy.context.scene, bpy.context.view_layer
        assert view_layer.gagavatar.use_pass_coarse
        layers_node = next(n for n in ext("gagavatar_blender.compositor").node_tree(scene).nodes
                           if n.bl_idname == "CompositorNodeRLayers")
        assert layers_node.outputs["Coarse"].enabled and layers_node.outputs["Coarse"].links
        for link in list(layers_node.outputs["Coarse"].links):   # no link on this one: opening leaves it off
            layers_node.id_data.links.remove(link)
        view_layer.gagavatar.use_pass_coarse = False
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "unlinked.blend"))
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "unlinked.blend"))
        assert not bpy.context.view_layer.gagavatar.use_pass_coarse
    finally:
        bpy.context.scene.render.resolution_percentage = 100


def test_bf16_precision_is_a_scene_setting_close_to_fp32(avatar, tmp_path):
    """The fast precision renders within 40 dB of fp32 and travels with the .blend (farm nodes agree);
    the default, Auto, keeps final renders exact."""
    import bpy
    scene = bpy.context.scene
    assert scene.gagavatar_render.precision == "AUTO"
    # through the source camera, so the head fills the frame (earlier tests may leave a wide camera)
    scene.camera = bpy.data.objects["astronaut"].gagavatar.camera   # (the fixture object may be stale)
    scene.render.resolution_x = scene.render.resolution_y = 512
    scene.render.resolution_percentage = 100
    auto = _render_still(tmp_path / "auto")
    scene.gagavatar_render.precision = "FP32"
    full = _render_still(tmp_path / "fp32").astype(float)
    assert np.array_equal(auto, full)
    scene.gagavatar_render.precision = "BF16"
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "bf16.blend"))
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "bf16.blend"))
        assert bpy.context.scene.gagavatar_render.precision == "BF16"
        fast = _render_still(tmp_path / "bf16").astype(float)
    finally:
        bpy.context.scene.gagavatar_render.precision = "AUTO"
    mse = np.mean((full - fast) ** 2)
    assert 0 < mse < 255.0 ** 2 * 1e-4


def test_job_start_errors_are_reported_in_one_line(avatar, photo, monkeypatch):
    """An error while starting the job (not in its work) becomes the operator's error report, not a traceback."""
    import bpy
    jobs = ext("gagavatar_blender.jobs")
    before = snapshot()

    def broken(self):
        raise RuntimeError("the worker did not start")
    monkeypatch.setattr(jobs.Job, "run_inline", broken)
    with pytest.raises(RuntimeError) as err:
        bpy.ops.gagavatar.create_avatar(filepath=str(photo))
    text = str(err.value).strip()
    assert "Create Avatar from Image failed: RuntimeError: the worker did not start" in text, text
    assert "Traceback" not in text and "\n" not in text
    assert snapshot() == before and jobs.active() is None


def test_a_rec2020_working_space_gets_converted_pixels(avatar):
    """Blender 5.x files may work in linear Rec.2020: the network's linear Rec.709 is converted into it."""
    import bpy
    if not hasattr(bpy.data, "colorspace"):
        pytest.skip("Blender 4.x has no per-file working space (always linear Rec.709)")
    colour = ext("gagavatar_blender.colour")
    render_scene = ext("gagavatar_blender.scene_render").render_scene
    camera_intrinsics = ext("gagavatar_blender.scene_views").camera_intrinsics
    camera = bpy.data.objects["astronaut"].gagavatar.camera

    def render():
        depsgraph = bpy.context.evaluated_depsgraph_get()
        return render_scene(depsgraph, camera.matrix_world, camera_intrinsics(depsgraph, camera, 96, 96), coarse=True)
    rec709 = render()
    try:
        assert bpy.ops.wm.set_working_color_space(working_space="Linear Rec.2020", convert_colors=False) == {"FINISHED"}
        assert colour.working_space() == ("Linear Rec.2020", "lin_rec2020_scene")
        rec2020 = render()
    finally:
        bpy.ops.wm.set_working_color_space(working_space="Linear Rec.709", convert_colors=False)
    assert colour.working_space()[1] == "lin_rec709_scene"
    rgb = rec709.combined[..., :3]
    assert rgb.max() > 0.1 and np.abs(rec2020.combined[..., :3] - rgb).max() > 0.01
    assert np.allclose(rec2020.combined[..., :3], rgb @ colour.REC709_TO_REC2020.T, atol=1e-5)
    assert np.allclose(rec2020.coarse, rec709.coarse @ colour.REC709_TO_REC2020.T, atol=1e-5)
    assert np.array_equal(rec2020.combined[..., 3], rec709.combined[..., 3])
    assert np.array_equal(rec2020.depth, rec709.depth)


def test_a_duplicated_avatar_gets_its_own_cache_id(avatar):
    """Shift+D copies the Gaussians mesh with its cache id: the copy gets a fresh one (its own cache entry)."""
    import bpy
    UID = ext("gagavatar_blender.gaussians").UID
    original = bpy.data.objects["astronaut"].gagavatar.gaussians
    uid = original.data[UID]
    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    original.select_set(True)
    bpy.context.view_layer.objects.active = original
    assert bpy.ops.object.duplicate() == {"FINISHED"}
    copy = bpy.context.active_object
    try:
        assert copy != original and copy.data != original.data
        bpy.context.view_layer.update()  # the depsgraph_update_post handler
        assert original.data[UID] == uid and copy.data[UID] not in ("", uid)
    finally:
        mesh = copy.data
        bpy.data.objects.remove(copy)
        bpy.data.meshes.remove(mesh)


def test_opening_a_file_drops_cached_avatars_and_separates_shared_ids(avatar, tmp_path):
    """A load_post handler drops the previous file's cached avatars (the networks stay) and gives
    meshes saved with one shared id (older versions) their own ids."""
    import bpy
    cache = ext("gagavatar_blender.cache")
    UID = ext("gagavatar_blender.gaussians").UID
    mesh = bpy.data.objects["astronaut"].gagavatar.gaussians.data
    twin = mesh.copy()
    twin.use_fake_user = True
    twin[UID] = mesh[UID]
    twin_name = twin.name
    stale = ("avatar", "from-the-previous-file", "cpu")
    cache.get(stale, lambda: "stale")
    networks = [key for key in cache._CACHE if key[0] != "avatar"]
    assert networks
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "twins.blend"))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "twins.blend"))
    assert stale not in cache._CACHE and all(key in cache._CACHE for key in networks)
    mesh, twin = bpy.data.objects["astronaut"].gagavatar.gaussians.data, bpy.data.meshes[twin_name]
    assert mesh[UID] != twin[UID]
    bpy.data.meshes.remove(twin)


def test_free_memory_drops_the_cached_network(installed):
    """... and the frame buffers kept for the next render (a final render on the CPU made them)."""
    import bpy
    cache, framing = ext("gagavatar_blender.cache"), ext("engine.framing")
    assert cache.size() > 0 and framing._spare
    assert bpy.ops.gagavatar.free_memory() == {"FINISHED"}
    assert cache.size() == 0 and not framing._spare


def test_disabling_the_extension_stops_its_job_and_removes_its_handlers_and_panels(installed):
    """Unregister cancels the running job and removes its timer, the app handlers and the engine from
    Blender's panels (runs last: the extension is disabled afterwards)."""
    import time
    from types import SimpleNamespace
    import addon_utils
    import bpy
    jobs, job_operator = ext("gagavatar_blender.jobs"), ext("operators.job_operator")
    handlers = ext("gagavatar_blender.handlers")

    def wait(progress, cancel):
        while not cancel():
            time.sleep(0.01)
    job = jobs.Job("Wait", wait)
    job.start()
    calls = []
    wm = SimpleNamespace(event_timer_remove=calls.append, progress_end=lambda: calls.append("progress_end"),
                         gagavatar_job=SimpleNamespace(running=True))
    job_operator._modal.append((job, wm, "timer"))  # what a running modal job operator registers

    def ours():
        return [panel.__name__ for panel in bpy.types.Panel.__subclasses__()
                if "BLENDER_RENDER" in getattr(panel, "COMPAT_ENGINES", ()) and "GAGAVATAR" in panel.COMPAT_ENGINES]
    assert {"RENDER_PT_format", "RENDER_PT_color_management", "DATA_PT_shape_keys", "DATA_PT_lens"} <= set(ours())
    assert handlers._on_load_post in bpy.app.handlers.load_post
    addon_utils.disable(MODULE, default_set=True)
    assert job.wait(10) and job.cancelled and jobs.active() is None
    assert calls == ["timer", "progress_end"] and not wm.gagavatar_job.running and not job_operator._modal
    assert handlers._on_load_post not in bpy.app.handlers.load_post
    assert handlers._on_depsgraph_update_post not in bpy.app.handlers.depsgraph_update_post
    assert ours() == []
