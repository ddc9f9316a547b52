"""The engine's Rendered viewport: the network's frame as a texture on a GPU device, coloured points otherwise.

The neural frame is re-rendered only when the scene changed (``view_update``) or the view moved;
on a CPU device (seconds per frame) the viewport shows every fourth Gaussian and the FLAME
vertices as points instead, following the rig. The preferences' *Viewport* setting overrides
the choice.
"""
from __future__ import annotations

import numpy as np

from . import gaussians, preferences, scene_render, scene_views

POINT_STRIDE = 4
"""Every n-th lifted Gaussian is drawn in the point preview."""


def neural_viewport(prefs) -> bool:
    """Whether Rendered mode runs the network (GPU device, or forced in the preferences)."""
    if prefs.viewport_mode != "AUTO":
        return prefs.viewport_mode == "NEURAL"
    from ..engine.errors import GAGAvatarError
    from . import networks
    try:
        return networks.resolve_device(prefs.device) != "cpu"
    except GAGAvatarError:
        return False


def point_cloud(mesh) -> tuple[np.ndarray, np.ndarray]:
    """``(positions [M, 3], colours [M, 4])`` of the lifted Gaussians of an avatar mesh, subsampled."""
    data = gaussians.read_mesh(mesh)
    from ..engine.avatar import N_EXPRESSION
    xyz = data["xyz"][N_EXPRESSION::POINT_STRIDE]
    colors = np.ones((len(xyz), 4), np.float32)
    colors[:, :3] = np.clip(data["colors"][N_EXPRESSION::POINT_STRIDE, :3], 0.0, 1.0)
    return xyz, colors


def _to_world(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)


class Viewport:
    """Viewport state of one render engine instance."""

    def __init__(self):
        self.dirty = True
        self.key = None
        self.texture = None
        self.points: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def tag_update(self) -> None:
        self.dirty = True

    def draw(self, engine, context, depsgraph) -> None:
        from ..engine.errors import GAGAvatarError
        prefs = preferences.get(context)
        try:
            if context.region_data.is_perspective and neural_viewport(prefs):
                self._draw_neural(engine, context, depsgraph)
            else:
                self._draw_points(context, depsgraph)
        except GAGAvatarError as err:
            engine.update_stats("", f"GAGAvatar: {err}")

    def _draw_neural(self, engine, context, depsgraph) -> None:
        import gpu
        from gpu_extras.presets import draw_texture_2d
        from ..engine.framing import intrinsics_from_projection
        region, view = context.region, context.region_data
        width, height = region.width, region.height
        key = (tuple(map(tuple, view.view_matrix)), tuple(map(tuple, view.window_matrix)), width, height)
        if self.dirty or key != self.key or self.texture is None:
            intrinsics = intrinsics_from_projection(view.window_matrix, width, height)
            layers = scene_render.render_scene(depsgraph, view.view_matrix.inverted(), intrinsics, final=False)
            pixels = np.ascontiguousarray(layers.combined[::-1], dtype=np.float32).ravel()
            buffer = gpu.types.Buffer("FLOAT", pixels.size, pixels)
            self.texture = gpu.types.GPUTexture((width, height), format="RGBA16F", data=buffer)
            self.key, self.dirty = key, False
        gpu.state.blend_set("ALPHA_PREMULT")
        engine.bind_display_space_shader(depsgraph.scene)
        draw_texture_2d(self.texture, (0, 0), width, height)
        engine.unbind_display_space_shader()
        gpu.state.blend_set("NONE")

    def _draw_points(self, context, depsgraph) -> None:
        import gpu
        from gpu_extras.batch import batch_for_shader
        positions, colors = [], []
        for root, head_world, vertices in scene_views.posed_avatars(depsgraph):
            mesh = root.gagavatar.gaussians.data
            uid = str(mesh.get(gaussians.UID, mesh.name_full))
            if uid not in self.points:
                self.points[uid] = point_cloud(mesh)
            xyz, rgba = self.points[uid]
            positions += [_to_world(head_world, xyz), _to_world(head_world, vertices)]
            colors += [rgba, np.full((len(vertices), 4), (0.8, 0.8, 0.8, 1.0), np.float32)]
        if not positions:
            return
        view = context.region_data
        shader = gpu.shader.from_builtin("POINT_FLAT_COLOR")
        batch = batch_for_shader(shader, "POINTS", {"pos": np.concatenate(positions), "color": np.concatenate(colors)})
        gpu.state.point_size_set(2.0)
        gpu.state.depth_test_set("LESS_EQUAL")
        with gpu.matrix.push_pop(), gpu.matrix.push_pop_projection():
            gpu.matrix.load_matrix(view.view_matrix)
            gpu.matrix.load_projection_matrix(view.window_matrix)
            batch.draw(shader)
        gpu.state.depth_test_set("NONE")
