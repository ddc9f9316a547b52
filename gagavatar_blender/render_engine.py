"""The ``GAGAVATAR`` render engine: every avatar of the scene, from the active camera, into the compositor.

Passes (Render Layers node sockets): ``Image``/``Alpha`` (Combined: the network's image decoded
from sRGB to linear Rec.709, then converted to the file's working space (:mod:`.colour`),
premultiplied, alpha = the splatting's accumulated opacity),
``Depth`` (when the view layer's Z pass is on; scene units, 1e10 where empty) and ``Coarse``
(when the view layer's ``gagavatar.use_pass_coarse`` is on: the splatted RGB before the neural
renderer, sRGB-decoded; off by default, as each pass costs Blender four sweeps of its memory per
frame). The network is loaded once per (checkpoint, device) and kept for later frames and
renders (``gagavatar.free_memory`` drops it).

In the viewport's Rendered mode the avatars are rendered by the network when the device is a GPU
(or the preferences ask for it) and drawn as coloured points otherwise (:mod:`.viewport`);
Material Preview uses EEVEE, which shows the Gaussians' point preview.
"""
from __future__ import annotations

import numpy as np

import bpy

from . import colour, scene_render, scene_views

COARSE_PASS = "Coarse"


def render_size(scene) -> tuple[int, int]:
    """The output resolution in pixels (resolution x percentage)."""
    scale = scene.render.resolution_percentage / 100.0
    return max(1, int(scene.render.resolution_x * scale)), max(1, int(scene.render.resolution_y * scale))


def colour_warning(scene) -> str:
    """A one-line warning when the scene's colour management would change the network's colours, else "".

    The network outputs display-ready sRGB, which the engine decodes to scene-linear; only the
    "Standard" view transform (no look, exposure 0, gamma 1) encodes it back unchanged. AgX
    (Blender's default) or Filmic compress it and make it look washed out.
    """
    view = scene.view_settings
    if scene.display_settings.display_device != "sRGB":
        return ""  # another display: its own transform is the user's choice
    changed = []
    if view.view_transform != "Standard":
        changed.append(f"view transform '{view.view_transform}'")
    if view.look not in ("None", ""):
        changed.append(f"look '{view.look}'")
    if abs(view.exposure) > 1e-6 or abs(view.gamma - 1.0) > 1e-6 or view.use_curve_mapping:
        changed.append("exposure, gamma or curves")
    if not changed:
        return ""
    return (f"GAGAvatar: {', '.join(changed)} will alter the network's sRGB colours (AgX looks washed out): "
            "use Color Management > View Transform 'Standard', look 'None'")


def _write_pass(render_pass, image: np.ndarray) -> None:
    """Write ``image [H, W, channels]`` (rows top-down) into a render pass, whose rows run bottom-up.

    ``foreach_set`` copies one float32 buffer (assigning ``rect`` converts element by element:
    seconds for a 1080p frame). The engine's layers are top-down views of bottom-up buffers
    (:class:`~..engine.framing.Layers`), so ``image[::-1]`` is that buffer, passed without a copy.
    """
    render_pass.rect.foreach_set(np.ascontiguousarray(image[::-1], dtype=np.float32).ravel())


class GAGAVATAR_RE_engine(bpy.types.RenderEngine):
    """Neural rendering of GAGAvatar heads."""

    bl_idname = "GAGAVATAR"
    bl_label = "GAGAvatar"
    bl_use_postprocess = True
    bl_use_eevee_viewport = True
    bl_use_preview = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.viewport = None

    def update_render_passes(self, scene=None, renderlayer=None):
        # Built-in names only for built-in passes, and only when enabled: Blender drops the passes
        # registered after a custom pass that reuses a built-in socket name.
        self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
        if renderlayer.use_pass_z:
            self.register_pass(scene, renderlayer, "Depth", 1, "Z", "VALUE")
        if renderlayer.gagavatar.use_pass_coarse:
            self.register_pass(scene, renderlayer, COARSE_PASS, 3, "RGB", "COLOR")

    def render(self, depsgraph):
        from ..engine.errors import GAGAvatarError
        scene, layer = depsgraph.scene, depsgraph.view_layer
        width, height = render_size(scene)
        coarse = layer.gagavatar.use_pass_coarse
        if coarse:
            self.add_pass(COARSE_PASS, 3, "RGB", layer=layer.name)
        camera = scene.camera
        if camera is None:
            message = "GAGAvatar: the scene has no active camera: add one (or set Scene > Camera)"
            self.report({"ERROR"}, message)
            self.error_set(message)
            return
        if not self.is_animation or scene.frame_current == scene.frame_start:  # once per animation
            for warning in (colour_warning(scene), colour.file_conversion()[1]):
                if warning:
                    self.report({"WARNING"}, warning)
        self.update_stats("", "GAGAvatar: preparing")

        def progress(done, total):
            self.update_progress(done / max(total, 1))
            self.update_stats("", f"GAGAvatar: frame {scene.frame_current}, avatar {min(done + 1, total)}/{total}")
        try:
            intrinsics = scene_views.camera_intrinsics(depsgraph, camera, width, height)
            layers = scene_render.render_scene(depsgraph, camera.matrix_world, intrinsics, progress, self.test_break,
                                               coarse=coarse)
        except GAGAvatarError as err:
            self.report({"ERROR"}, str(err))
            self.error_set(str(err))
            return
        if layers is None:  # cancelled
            return
        result = self.begin_result(0, 0, width, height, layer=layer.name)
        passes = result.layers[0].passes
        _write_pass(passes["Combined"], layers.combined)
        if "Depth" in passes:
            _write_pass(passes["Depth"], layers.depth)
        if coarse:
            _write_pass(passes[COARSE_PASS], layers.coarse)
        self.end_result(result)
        self.update_progress(1.0)

    def view_update(self, context, depsgraph):
        from .viewport import Viewport
        if self.viewport is None:
            self.viewport = Viewport()
        self.viewport.tag_update()

    def view_draw(self, context, depsgraph):
        from .viewport import Viewport
        if self.viewport is None:
            self.viewport = Viewport()
        self.viewport.draw(self, context, depsgraph)


classes = (GAGAVATAR_RE_engine,)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)
_added_to: list = []
"""The panels :func:`register` made compatible with this engine (:func:`unregister` takes it back)."""


def _panels():
    """Blender's panels for every engine (``BLENDER_RENDER`` in ``COMPAT_ENGINES``), as in Blender's
    render engine template, so the properties editor shows the output, colour, camera and mesh settings."""
    return [panel for panel in bpy.types.Panel.__subclasses__()
            if "BLENDER_RENDER" in getattr(panel, "COMPAT_ENGINES", ())]


def register():
    _register_classes()
    for panel in _panels():
        if GAGAVATAR_RE_engine.bl_idname not in panel.COMPAT_ENGINES:
            panel.COMPAT_ENGINES.add(GAGAVATAR_RE_engine.bl_idname)
            _added_to.append(panel)


def unregister():
    while _added_to:
        _added_to.pop().COMPAT_ENGINES.discard(GAGAVATAR_RE_engine.bl_idname)
    _unregister_classes()
