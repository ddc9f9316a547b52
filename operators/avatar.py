"""``gagavatar.create_avatar``: a photo to an avatar collection (tracking + reconstruction as a job)."""
import os

import bpy

from ..gagavatar_blender import avatar_builder, jobs, networks, preferences
from .job_operator import JobOperator


def create_avatar_job(context, filepath: str) -> jobs.Job:
    """The job the operator runs: checks the inputs now (missing file or assets raise at once).

    Raises:
        GAGAvatarError: no such image, missing assets, unavailable device.
    """
    from ..engine.errors import GAGAvatarError
    path = bpy.path.abspath(filepath)
    if not path or not os.path.isfile(path):
        raise GAGAvatarError(f"image not found: '{filepath}': choose a photo with one clearly visible face")
    prefs = preferences.get(context)
    model_path, flame_path = networks.asset_paths(prefs)
    device = networks.resolve_device(prefs.device)
    return jobs.Job("Create avatar", avatar_builder.reconstruct_work(path, model_path, flame_path, device,
                                                                     networks.tracking_folder(prefs)))


class GAGAVATAR_OT_create_avatar(JobOperator, bpy.types.Operator):
    """Track the face in a photo and reconstruct an animatable Gaussian avatar with a FLAME rig and camera"""
    bl_idname = "gagavatar.create_avatar"
    bl_label = "Create Avatar from Image"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(name="Image", subtype="FILE_PATH")
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    setup_scene: bpy.props.BoolProperty(
        name="Set Up Scene", default=True,
        description="Render with GAGAvatar through the new camera at 512x512, Standard view transform, Z pass on")

    @classmethod
    def poll(cls, context):
        return cls.poll_dependencies() and cls.poll_job()

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def make_job(self, context):
        return create_avatar_job(context, self.filepath)

    def apply(self, context, result):
        root = avatar_builder.build_avatar(context, result, bpy.path.abspath(self.filepath),
                                           setup_scene=self.setup_scene)
        self.report({"INFO"}, f"Created avatar '{root.name}' (landmark error {result.residual_px:.1f} px)")
        return {"FINISHED"}


classes = (GAGAVATAR_OT_create_avatar,)
