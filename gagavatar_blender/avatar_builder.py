"""Photo -> avatar: the tracking/reconstruction job (no bpy) and the Blender data made from its result.

One collection per avatar holds:

* the root empty ``<name>`` (``Object.gagavatar`` says it is an avatar): rotation X +90 deg and
  scale 0.2, i.e. FLAME's +Y-up x5 units to Blender's +Z-up metres; everything below is in
  head units (FLAME x5);
* the FLAME rig (``<name>_rig`` armature, ``<name>_flame`` mesh, see :mod:`.rig`), set to the
  tracked expression, jaw and eyes (not keyed);
* ``<name>_gaussians``: the Gaussians (see :mod:`.gaussians`), bone-parented to the head root
  so the point preview follows the head pose;
* ``<name>_camera``: the source photo's camera (lens 216 mm on a 36 mm sensor = focal 12);
  the matted 512^2 crop is its background image;
* ``<name>_source``: an image empty showing the source photo (packed into the .blend), hidden.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..engine.framing import crop_anchor
from . import gaussians, rig
from .jobs import check

ROOT_SCALE = 0.2
"""Blender units (metres) per head unit: FLAME x5 units are 0.2 m."""
SOURCE_RESOLUTION = 512


@dataclass
class Reconstruction:
    """What the job hands to the main thread (numpy arrays, plus the FLAME model for the rig)."""

    gaussians: dict
    shape: np.ndarray
    expression: np.ndarray
    jaw: np.ndarray
    eyes: np.ndarray
    transform: np.ndarray
    crop: np.ndarray
    residual_px: float
    flame: object


def reconstruct_work(image_path: str, model_path: Path, flame_path: Path, device: str, tracking: Path):
    """The job's work function: track the photo's face (models in the folder ``tracking``), then
    reconstruct the avatar."""
    def work(progress, cancel) -> Reconstruction:
        import torch
        from ..engine.tracking import track_image
        from . import networks
        label = "Create avatar"
        progress(0.02, "Loading FLAME")
        flame = networks.load_flame(flame_path)
        check(cancel, label)
        progress(0.05, "Tracking the face")
        tracked = track_image(image_path, flame=flame, assets=tracking)
        check(cancel, label)
        progress(0.35, "Loading GAGAvatar")
        model = networks.load_model(model_path, device)
        check(cancel, label)
        progress(0.55, "Reconstructing the Gaussians")
        with torch.no_grad():
            vertices = flame(shape=tracked.shape[None], expression=tracked.expression[None],
                             pose=tracked.pose[None], eyes=tracked.eyes[None])
            avatar = model.reconstruct(tracked.crop[None].to(device), tracked.transform[None].to(device))
        check(cancel, label)
        arrays = {k: v[0].detach().float().cpu().numpy() for k, v in avatar.gaussians.items()}
        arrays["xyz"][: vertices.shape[1]] = vertices[0].numpy()
        progress(0.95, "Building the rig")
        return Reconstruction(
            gaussians=arrays, shape=tracked.shape.numpy(), expression=tracked.expression.numpy(),
            jaw=tracked.jaw.numpy(), eyes=tracked.eyes.numpy(), transform=tracked.transform.numpy(),
            crop=tracked.crop.permute(1, 2, 0).numpy(), residual_px=float(tracked.residual_px), flame=flame)
    return work


def _source_camera(name: str, transform: np.ndarray, root_matrix: Matrix, crop_image) -> bpy.types.Object:
    import torch
    from ..engine.cameras import FOCAL, transform_to_blender
    head_matrix, lens, sensor = transform_to_blender(torch.from_numpy(transform).float(), FOCAL)
    loc, rot, _ = (root_matrix @ Matrix(head_matrix.double().numpy().tolist())).decompose()
    data = bpy.data.cameras.new(f"{name}_camera")
    data.lens, data.sensor_width, data.sensor_fit = lens, sensor, "HORIZONTAL"
    distance = float(np.linalg.norm(head_matrix[:3, 3].numpy())) * ROOT_SCALE
    data.clip_start = 0.01
    data.clip_end = max(100.0, 3.0 * distance)
    background = data.background_images.new()
    background.image = crop_image
    background.alpha = 0.5
    obj = bpy.data.objects.new(f"{name}_camera", data)
    obj.matrix_world = Matrix.LocRotScale(loc, rot, None)
    return obj


def _crop_image(name: str, crop: np.ndarray) -> bpy.types.Image:
    """The matted 512^2 crop as a packed image (what the network saw)."""
    image = bpy.data.images.new(f"{name}_crop", crop.shape[1], crop.shape[0], alpha=False)
    rgba = np.ones((crop.shape[0], crop.shape[1], 4), np.float32)
    rgba[..., :3] = crop[::-1]  # Blender's rows are bottom-up
    image.pixels.foreach_set(rgba.ravel())
    image.pack()
    return image


def _source_image(image_path: str) -> bpy.types.Image | None:
    try:
        image = bpy.data.images.load(image_path, check_existing=False)
    except RuntimeError:
        return None  # a format only the tracker's reader understands: nothing to pack
    image.pack()
    return image


def build_avatar(context, recon: Reconstruction, image_path: str, name: str = "", setup_scene: bool = True):
    """Make the avatar's collection and objects from a finished :class:`Reconstruction`; return its root."""
    import torch
    name = name or Path(image_path).stem or "avatar"
    if context.object is not None and context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    scene = context.scene
    collection = bpy.data.collections.new(f"GAGAvatar {name}")
    scene.collection.children.link(collection)

    root = bpy.data.objects.new(name, None)
    root.empty_display_type = "SPHERE"
    root.empty_display_size = 1.5
    root.matrix_world = Matrix.LocRotScale(None, Matrix.Rotation(math.pi / 2, 3, "X").to_quaternion(),
                                           (ROOT_SCALE,) * 3)
    collection.objects.link(root)
    name = root.name  # Blender may have added a suffix

    mesh_obj, arm_obj = rig.build_rig(recon.flame, torch.from_numpy(recon.shape), name, collection)
    arm_obj.parent = root
    rig.set_pose(mesh_obj, arm_obj, recon.expression.tolist(), (0.0, 0.0, 0.0), recon.jaw.tolist(),
                 recon.eyes.tolist())

    splats = bpy.data.objects.new(f"{name}_gaussians", gaussians.write_mesh(f"{name}_gaussians", recon.gaussians))
    collection.objects.link(splats)
    splats.parent = arm_obj
    splats.parent_type = "BONE"
    splats.parent_bone = rig.HEAD_ROOT
    # A bone parent's frame sits at the bone's tail: cancel the rest offset so the Gaussians stay in head space.
    splats.matrix_parent_inverse = Matrix.Translation(arm_obj.data.bones[rig.HEAD_ROOT].tail_local).inverted()
    gaussians.add_preview(splats)

    crop = _crop_image(name, recon.crop)
    camera = _source_camera(name, recon.transform, root.matrix_world, crop)
    collection.objects.link(camera)

    image = _source_image(image_path)
    if image is not None:
        holder = bpy.data.objects.new(f"{name}_source", None)
        holder.empty_display_type = "IMAGE"
        holder.data = image
        holder.hide_render = True
        collection.objects.link(holder)
        holder.hide_set(True)

    settings = root.gagavatar
    settings.is_avatar = True
    settings.rig, settings.flame, settings.gaussians, settings.camera = arm_obj, mesh_obj, splats, camera
    settings.image = image
    settings.source_transform = recon.transform.ravel().tolist()
    anchor, radius = crop_anchor(recon.transform)
    settings.anchor, settings.radius = anchor.tolist(), radius
    settings.residual_px = recon.residual_px

    if setup_scene:
        setup_scene_for_avatar(scene, context.view_layer, camera)
    for obj in context.view_layer.objects.selected:
        obj.select_set(False)
    context.view_layer.objects.active = root
    root.select_set(True)
    return root


def setup_scene_for_avatar(scene, view_layer, camera) -> None:
    """Render with GAGAvatar through the source camera at 512^2, with colours that round-trip.

    The network outputs display-ready sRGB; the render result is scene-linear. With the
    "Standard" view transform (no look, exposure 0, gamma 1) and no dithering the displayed and
    saved 8-bit pixels are the network's; AgX, Blender's default, would wash them out.
    """
    scene.render.engine = "GAGAVATAR"
    scene.camera = camera
    scene.render.resolution_x = scene.render.resolution_y = SOURCE_RESOLUTION
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.film_transparent = True
    settings = scene.view_settings
    settings.view_transform = "Standard"
    settings.look = "None"
    settings.exposure, settings.gamma = 0.0, 1.0
    scene.render.dither_intensity = 0.0  # 8-bit files hold the network's levels exactly
    view_layer.use_pass_z = True
