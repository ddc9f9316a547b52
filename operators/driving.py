"""``gagavatar.import_driving``: a driving sequence or a video onto the active avatar's timeline."""
import os

import bpy

from ..gagavatar_blender import jobs, networks, preferences, properties, timeline
from .job_operator import JobOperator


def driving_job(context, filepath: str) -> jobs.Job:
    """Load (or, for a video, track) the driving sequence as a job.

    Raises:
        GAGAvatarError: no such file, an unknown format, missing FLAME (videos).
    """
    from ..engine.errors import GAGAvatarError
    path = bpy.path.abspath(filepath)
    if not path or not os.path.isfile(path):
        raise GAGAvatarError(f"driving file not found: '{filepath}'")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in timeline.SEQUENCE_SUFFIXES:
        def load(progress, cancel):
            from ..engine.sequence import load_sequence
            return load_sequence(path)
        return jobs.Job("Import driving", load)
    if suffix not in timeline.VIDEO_SUFFIXES:
        raise GAGAvatarError(f"cannot drive from {os.path.basename(path)}: use a sequence "
                             f"({', '.join(timeline.SEQUENCE_SUFFIXES)}) or a video ({', '.join(timeline.VIDEO_SUFFIXES)})")
    prefs = preferences.get(context)
    _, flame_path = networks.asset_paths(prefs)
    tracking = networks.tracking_folder(prefs)

    def track(progress, cancel):
        from ..engine.tracking import track_video
        flame = networks.load_flame(flame_path)
        return track_video(path, flame=flame, progress=lambda done, total: progress(done / max(total, 1), "Tracking the video"),
                           cancel=cancel, assets=tracking)
    return jobs.Job("Track video", track)


class GAGAVATAR_OT_import_driving(JobOperator, bpy.types.Operator):
    """Key a driving sequence (.npz, official optim.pkl/smoothed.pkl, tracked.pt) or a tracked video onto the active avatar"""
    bl_idname = "gagavatar.import_driving"
    bl_label = "Import Driving"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(name="File", subtype="FILE_PATH")
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_movie: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: bpy.props.StringProperty(
        default=";".join(f"*{s}" for s in timeline.SEQUENCE_SUFFIXES + timeline.VIDEO_SUFFIXES),
        options={"HIDDEN", "SKIP_SAVE"})
    start_frame: bpy.props.IntProperty(name="Start Frame", default=1, description="Scene frame of the first driving frame")
    head_motion: bpy.props.EnumProperty(
        name="Head Motion", default="HEAD",
        items=(("HEAD", "Key Head Root", "The camera stays; the head root moves as the driver's head"),
               ("CAMERA", "Key Camera", "The head stays; the scene camera moves as the driving camera"),
               ("NONE", "None", "Expressions, jaw and eyes only")))
    set_frame_range: bpy.props.BoolProperty(name="Set Frame Range", default=True,
                                            description="Make the scene's frame range the imported frames")

    @classmethod
    def poll(cls, context):
        if not cls.poll_dependencies():
            return False
        if properties.avatar_root(context.active_object) is None:
            cls.poll_message_set("Select an avatar (its root, rig, mesh or camera)")
            return False
        return cls.poll_job()

    def invoke(self, context, event):
        self.start_frame = context.scene.frame_start
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def make_job(self, context):
        self._root_name = properties.avatar_root(context.active_object).name
        return driving_job(context, self.filepath)

    def apply(self, context, seq):
        from ..engine.errors import GAGAvatarError
        root = bpy.data.objects.get(self._root_name)
        if root is None:
            self.report({"ERROR"}, f"the avatar '{self._root_name}' was deleted during the import")
            return {"CANCELLED"}
        scene = context.scene
        try:
            n = timeline.write_driving(root, seq, scene, self.start_frame, self.head_motion)
        except GAGAvatarError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        if self.set_frame_range:
            scene.frame_start, scene.frame_end = self.start_frame, self.start_frame + n - 1
        scene.frame_set(scene.frame_current)
        fps = scene.render.fps / scene.render.fps_base
        self.report({"INFO"}, f"Keyed {n} frames on '{root.name}' ({seq.num_frames} at {seq.fps:g} fps -> {fps:g} fps)")
        return {"FINISHED"}


classes = (GAGAVATAR_OT_import_driving,)
