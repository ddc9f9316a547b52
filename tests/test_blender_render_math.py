"""The render engine's geometry and colour without the network: Blender cameras to pixel intrinsics,
head-centred crop windows, depth compositing of several avatars, and the sRGB round trip through
Blender's "Standard" view transform."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gagavatar.engine.cameras import blender_to_transform, transform_to_opencv
from gagavatar.engine.splatting.rasterize import RenderResult
from gagavatar.engine import framing as fr


@pytest.fixture()
def scene():
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _odd_camera(scene):
    """A camera with everything that changes the projection: vertical fit, shift, pixel aspect, non-square frame."""
    import bpy
    from mathutils import Euler, Vector
    data = bpy.data.cameras.new("odd")
    data.lens, data.sensor_height, data.sensor_fit = 40.0, 20.0, "VERTICAL"
    data.shift_x, data.shift_y = 0.12, -0.07
    cam = bpy.data.objects.new("odd", data)
    scene.collection.objects.link(cam)
    cam.location = Vector((0.4, -3.0, 0.3))
    cam.rotation_euler = Euler((1.45, 0.05, 0.1))
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 640, 360, 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = 1.2, 1.0
    bpy.context.view_layer.update()
    return cam


def _project(k: fr.Intrinsics, cam_world: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = (points - cam_world[:3, 3]) @ cam_world[:3, :3]  # Blender camera axes
    x, y, z = p[:, 0], -p[:, 1], -p[:, 2]
    return np.stack([k.fx * x / z + k.cx, k.fy * y / z + k.cy], 1)


def test_intrinsics_match_blenders_own_projection(scene):
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from gagavatar.gagavatar_blender.scene_views import camera_intrinsics
    cam = _odd_camera(scene)
    k = camera_intrinsics(bpy.context.evaluated_depsgraph_get(), cam, 640, 360)
    points = np.random.default_rng(0).normal(size=(20, 3)) * 0.3
    ours = _project(k, np.array(cam.matrix_world), points)
    from mathutils import Vector
    theirs = np.array([[v.x * 640, (1 - v.y) * 360] for v in
                       (world_to_camera_view(scene, cam, Vector(p)) for p in points)])
    assert np.abs(ours - theirs).max() < 1e-3


def test_orthographic_cameras_are_refused_with_a_message(scene):
    import bpy
    from gagavatar.engine.errors import GAGAvatarError
    from gagavatar.gagavatar_blender.scene_views import camera_intrinsics
    cam = _odd_camera(scene)
    cam.data.type = "ORTHO"
    with pytest.raises(GAGAvatarError, match="perspective"):
        camera_intrinsics(bpy.context.evaluated_depsgraph_get(), cam, 640, 360)


def _view(camera: np.ndarray, anchor=(0.0, 0.0, 0.0), radius=0.8, units=0.2, load=None):
    return fr.AvatarView(load=load or (lambda: None), vertices=np.zeros((5023, 3), np.float32),
                         camera=camera, units=units, anchor=np.asarray(anchor, float), radius=radius)


def _camera_at(eye, yaw=0.0):
    """Camera-to-head matrix (Blender camera axes) at ``eye`` looking down -Z, turned by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    M = np.eye(4)
    M[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    M[:3, 3] = eye
    return M


def test_crop_window_renders_exactly_what_the_frame_camera_sees():
    """A head-space point lands on the same frame pixel whether projected by the frame camera or by
    the network's 512^2 crop camera (focal/center from the window) and then placed into the frame."""
    k = fr.Intrinsics(fx=900.0, fy=1100.0, cx=350.0, cy=170.0, width=640, height=360)
    camera = _camera_at((0.7, 0.4, 9.0), yaw=0.08)
    view = _view(camera, anchor=(0.1, 0.05, 0.0))
    window = fr.crop_window(view, k)
    focal, center = window.network_camera(k)
    transform, _ = blender_to_transform(torch.tensor(camera, dtype=torch.float32), 1.0)
    viewmat, K = transform_to_opencv(transform.double(), focal=focal, size=(512, 512), center=center)
    points = np.random.default_rng(1).normal(size=(30, 3)) * 0.5
    cam_pts = (viewmat[:3, :3].numpy() @ points.T).T + viewmat[:3, 3].numpy()
    crop_px = (K.numpy() @ cam_pts.T).T
    crop_px = crop_px[:, :2] / crop_px[:, 2:]
    placed = np.stack([window.x0 + crop_px[:, 0] * window.w / 512, window.y0 + crop_px[:, 1] * window.h / 512], 1)
    assert np.abs(placed - _project(k, camera, points)).max() < 1e-4  # float32 transform
    # The window is centred on the anchor and spans 2 * radius at the anchor's depth.
    centre = _project(k, camera, view.anchor[None])[0]
    assert np.allclose([window.x0 + window.w / 2, window.y0 + window.h / 2], centre)
    depth = -(np.linalg.inv(camera) @ np.append(view.anchor, 1.0))[2]
    assert np.isclose(window.w, 2 * k.fx * view.radius / depth)
    assert fr.crop_window(_view(_camera_at((0, 0, -5.0), yaw=0.0)), k) is None  # anchor behind the camera


class _FlatModel:
    """Stands in for GAGAvatar: each avatar renders a flat colour at opacity 0.5 (premultiplied on
    black, as the network's images are) at a fixed depth."""

    def __init__(self):
        self.calls = []
        self.networks = 0

    def splat(self, avatar, vertices, transform, focal=None, center=(0.0, 0.0)):
        self.calls.append((focal, center))
        colour, depth = avatar.colour, avatar.depth
        image = 0.5 * torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 512, 512)
        return RenderResult(features=torch.cat([image, torch.zeros(1, 29, 512, 512)], 1),
                            alpha=torch.full((1, 1, 512, 512), 0.5), depth=torch.full((1, 1, 512, 512), depth),
                            radii=torch.zeros(1, 0, dtype=torch.int32))

    def neural_renderer(self, coarse, precision="fp32"):
        self.networks += 1
        return coarse[:, :3]


def _flat(colour, depth):
    return lambda: SimpleNamespace(device=torch.device("cpu"), colour=colour, depth=depth)


def test_several_avatars_are_composited_by_depth_in_any_order():
    k = fr.Intrinsics(fx=600.0, fy=600.0, cx=160.0, cy=120.0, width=320, height=240)
    near = _view(_camera_at((0.0, 0.0, 9.0)), load=_flat((1.0, 0.0, 0.0), 9.0), units=0.5)
    far = _view(_camera_at((-0.5, 0.0, 9.0)), load=_flat((0.0, 1.0, 0.0), 18.0), units=0.5)
    a = fr.render_frame(_FlatModel(), [near, far], k)
    b = fr.render_frame(_FlatModel(), [far, near], k)
    for got in (a, b):
        half = fr.srgb_to_linear(np.float32(0.5))
        both = got.combined[120, 160]  # inside both windows: red over green
        assert np.allclose(both, [half, 0.5 * half, 0.0, 0.75], atol=1e-5)
        assert np.isclose(got.depth[120, 160], 9.0 * 0.5)      # front avatar's depth, scene units
        assert np.allclose(got.coarse[120, 160], both[:3], atol=1e-5)
    assert np.allclose(a.combined, b.combined) and np.array_equal(a.depth, b.depth)
    only_far = a.combined[120, 220]  # the far avatar's window reaches further right (camera moved left)
    assert np.allclose(only_far, [0.0, half, 0.0, 0.5], atol=1e-5)
    assert a.combined[0, 0, 3] == 0.0 and a.depth[0, 0] == fr.BACKGROUND_DEPTH


def test_cancel_between_avatars_returns_nothing():
    k = fr.Intrinsics(fx=600.0, fy=600.0, cx=160.0, cy=120.0, width=320, height=240)
    model = _FlatModel()
    views = [_view(_camera_at((0.0, 0.0, 9.0)), load=_flat((1.0, 0.0, 0.0), 9.0))] * 2
    assert fr.render_frame(model, views, k, cancel=lambda: model.networks >= 1) is None
    assert len(model.calls) == 1 and model.networks == 1


def test_cancel_after_splatting_skips_the_network():
    """Esc during a one-avatar frame stops before the neural renderer, the frame's other half."""
    k = fr.Intrinsics(fx=600.0, fy=600.0, cx=160.0, cy=120.0, width=320, height=240)
    model = _FlatModel()
    views = [_view(_camera_at((0.0, 0.0, 9.0)), load=_flat((1.0, 0.0, 0.0), 9.0))]
    assert fr.render_frame(model, views, k, cancel=lambda: len(model.calls) >= 1) is None
    assert len(model.calls) == 1 and model.networks == 0
    assert fr.render_frame(model, views, k) is not None and model.networks == 1


def test_srgb_decoding_round_trips_through_the_standard_view_transform(scene, tmp_path):
    """The engine writes srgb_to_linear(network sRGB); Blender's Standard view transform encodes
    it back when displaying or saving 8-bit files: every level survives."""
    import bpy
    levels = np.arange(256, dtype=np.float32) / 255.0
    image = bpy.data.images.new("ramp", 256, 1, float_buffer=True)
    rgba = np.ones((256, 4), np.float32)
    rgba[:, :3] = fr.srgb_to_linear(levels)[:, None]
    image.pixels.foreach_set(rgba.ravel())
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_depth = "8"
    image.save_render(str(tmp_path / "ramp.png"), scene=scene)
    back = bpy.data.images.load(str(tmp_path / "ramp.png"))
    got = np.array(back.pixels[:]).reshape(-1, 4)[:, 0]
    assert np.abs(got * 255 - levels * 255).max() <= 0.5


def test_linear_rec709_is_converted_to_the_files_working_space():
    """Rec.2020 and ACEScg get their 3x3 matrices (white stays white), Rec.709 none; an unknown
    working space is left alone with a warning naming it. Blender 4.x: always linear Rec.709."""
    import bpy
    from gagavatar.gagavatar_blender import colour
    settings = getattr(bpy.data, "colorspace", None)
    want = ("Linear Rec.709", "lin_rec709_scene") if settings is None else (settings.working_space,
                                                                            settings.working_space_interop_id)
    assert colour.working_space() == want
    assert colour.conversion("Linear Rec.709", "lin_rec709_scene") == (None, "")
    for args, want in ((("Linear Rec.2020", "lin_rec2020_scene"), colour.REC709_TO_REC2020),
                       (("ACEScg", "lin_ap1_scene"), colour.REC709_TO_ACESCG),
                       (("ACEScg", ""), colour.REC709_TO_ACESCG)):
        matrix, warning = colour.conversion(*args)
        assert matrix is want and warning == ""
        assert np.allclose(matrix.sum(1), 1.0, atol=1e-6)  # D65 white -> the space's white (adapted for AP1)
    rgb = np.array([[[0.2, 0.5, 0.9, 0.7]]], np.float32)
    out = colour.to_working_space(rgb[..., :3], colour.REC709_TO_REC2020)
    assert out.dtype == np.float32 and np.allclose(out[0, 0], colour.REC709_TO_REC2020 @ rgb[0, 0, :3], atol=1e-6)
    matrix, warning = colour.conversion("Linear DCI-P3 D65", "lin_p3d65_scene")
    assert matrix is None and "'Linear DCI-P3 D65'" in warning and "lin_p3d65_scene" in warning and "\n" not in warning


def test_cache_loads_outside_its_lock():
    """A slow load (a network, in the worker or render thread) blocks neither other keys (the
    viewport's draw) nor size(); two threads asking for one key load it once."""
    import threading
    from gagavatar.gagavatar_blender import cache
    started, release, calls = threading.Event(), threading.Event(), []

    def slow():
        calls.append(1)
        started.set()
        assert release.wait(10)
        return "network"
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(("test", "slow", "cpu"), slow)))
               for _ in range(2)]
    try:
        for t in threads:
            t.start()
        assert started.wait(10)
        done = threading.Event()

        def other():
            cache.get(("test", "fast", "cpu"), lambda: "avatar")
            cache.size()
            done.set()
        threading.Thread(target=other).start()
        assert done.wait(2), "a load held the cache's lock"
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert results == ["network", "network"] and len(calls) == 1
    assert cache.drop(lambda key: key[0] == "test") == 2
