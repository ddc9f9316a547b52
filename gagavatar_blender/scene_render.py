"""Render every visible avatar of a depsgraph through one camera: the final render and the Rendered viewport.

Shared by :mod:`.render_engine` (F12 and animation renders) and :mod:`.viewport` (the neural
Rendered view), which import it and not each other. The layers are in the file's working colour
space (:mod:`.colour`).
"""
from __future__ import annotations

from ..engine import framing, host_memory
from . import colour, networks, preferences, scene_views


def render_scene(depsgraph, camera_world, intrinsics, progress=None, cancel=None, final: bool = True,
                 coarse: bool = False):
    """Render every visible avatar through a camera; the layers, or None if cancelled.

    ``final``: a final render (F12, animation, farm), where the *Auto* precision is fp32 (exact);
    the viewport passes False, where *Auto* is bf16 on hardware that computes it natively.
    ``coarse``: make the Coarse pass too (else ``layers.coarse`` is None).

    Raises:
        GAGAvatarError: missing assets, an unavailable device, a broken avatar.
    """
    prefs = preferences.get()
    if preferences.keeps_frame_memory(prefs):
        host_memory.keep_large_buffers()   # process-wide and for good (idempotent)
    device = networks.resolve_device(prefs.device)
    views = scene_views.avatar_views(depsgraph, camera_world, device)
    if not views:
        return framing.Layers.empty(intrinsics.width, intrinsics.height, coarse)
    model_path, _ = networks.asset_paths(prefs)
    model = networks.load_model(model_path, device)
    from ..engine.splatting.fastpath import AUTO  # torch: imported when rendering, not at register
    precision = depsgraph.scene.gagavatar_render.precision.lower()
    if precision == AUTO and final:
        precision = "fp32"
    layers = framing.render_frame(model, views, intrinsics, progress, cancel, precision, coarse)
    matrix, _ = colour.file_conversion()
    if layers is not None and matrix is not None:  # linear Rec.709 -> the file's working space
        layers.combined[..., :3] = colour.to_working_space(layers.combined[..., :3], matrix)
        if layers.coarse is not None:
            layers.coarse = colour.to_working_space(layers.coarse, matrix)
    return layers
