"""Setup operators: Python dependencies, asset download, cached networks, job cancellation."""
import sys

import bpy

from ..gagavatar_blender import cache, deps, jobs, networks, preferences, requirements
from .job_operator import JobOperator


class GAGAVATAR_OT_free_memory(bpy.types.Operator):
    """Drop the cached GAGAvatar and FLAME networks and avatars (they reload on the next render)"""
    bl_idname = "gagavatar.free_memory"
    bl_label = "Free GAGAvatar Memory"

    def execute(self, context):
        n = cache.free()
        self.report({"INFO"}, f"Freed {n} cached network(s) and avatar(s)")
        return {"FINISHED"}


class GAGAVATAR_OT_add_pass_outputs(bpy.types.Operator):
    """Write every GAGAvatar pass (Image with alpha, Coarse, Depth) to OpenEXR files with each rendered frame"""
    bl_idname = "gagavatar.add_pass_outputs"
    bl_label = "Add Pass Outputs"
    bl_options = {"REGISTER", "UNDO"}

    directory: bpy.props.StringProperty(name="Folder", subtype="DIR_PATH", default="//passes/",
                                        description="Where the EXR files go (// is the .blend's folder)")

    @classmethod
    def poll(cls, context):
        if context.scene.render.engine != "GAGAVATAR":
            cls.poll_message_set("Set the render engine to GAGAvatar first (its passes feed the outputs)")
            return False
        return True

    def execute(self, context):
        from ..gagavatar_blender import compositor
        compositor.add_pass_outputs(context.scene, context.view_layer, self.directory)
        self.report({"INFO"}, f"Each rendered frame writes Image, Coarse and Depth EXRs to {self.directory}")
        return {"FINISHED"}


class GAGAVATAR_OT_cancel_job(bpy.types.Operator):
    """Cancel the running GAGAvatar job"""
    bl_idname = "gagavatar.cancel_job"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        if jobs.active() is None:
            cls.poll_message_set("No GAGAvatar job is running")
            return False
        return True

    def execute(self, context):
        jobs.active().cancel()
        return {"FINISHED"}


class GAGAVATAR_OT_install_dependencies(JobOperator, bpy.types.Operator):
    """pip-install the missing Python packages into the extension's user folder (needs network access)"""
    bl_idname = "gagavatar.install_dependencies"
    bl_label = "Install Dependencies"

    @classmethod
    def poll(cls, context):
        if not deps.missing():
            cls.poll_message_set("All dependencies are already installed")
            return False
        return cls.poll_job()

    def make_job(self, context):
        work = deps.install_work(deps.site_packages(create=True), sys.executable,
                                 requirements.for_python(), deps.blender_distributions())
        return jobs.Job("Install dependencies", work)

    def apply(self, context, result):
        target, plan = result
        deps.add_site_packages(preferences.get(context).python_path)
        still = deps.missing()
        if still:
            self.report({"ERROR"}, f"pip finished but {', '.join(still)} still missing from {target}: "
                                   "restart Blender, or use an existing environment (preferences)")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Installed {len(plan)} package(s) into {target}" if plan
                    else "All dependencies were already installed")
        return {"FINISHED"}


class GAGAVATAR_OT_check_dependencies(bpy.types.Operator):
    """Check the installed Python packages again (after changing an environment outside Blender)"""
    bl_idname = "gagavatar.check_dependencies"
    bl_label = "Check Dependencies"

    def execute(self, context):
        still = [str(p) for p in deps.refresh()]
        if still:
            self.report({"WARNING"}, "Missing Python packages: " + ", ".join(still))
        else:
            self.report({"INFO"}, "All Python dependencies found")
        return {"FINISHED"}


class GAGAVATAR_OT_download_assets(JobOperator, bpy.types.Operator):
    """Download GAGAvatar.pt and FLAME_with_eye.pt into the asset folder (the FLAME licence must be accepted)"""
    bl_idname = "gagavatar.download_assets"
    bl_label = "Download Assets"

    accept_license: bpy.props.BoolProperty(
        name="I accept the FLAME licence", options={"SKIP_SAVE"},
        description="FLAME_with_eye.pt may only be used under the FLAME licence (https://flame.is.tue.mpg.de)")

    @classmethod
    def poll(cls, context):
        return cls.poll_dependencies() and cls.poll_job()

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=420)

    def draw(self, context):
        col = self.layout.column()
        col.label(text="FLAME may only be used under the FLAME licence:")
        col.label(text="register and read it at https://flame.is.tue.mpg.de")
        col.prop(self, "accept_license")

    def make_job(self, context):
        from ..engine.assets import download_assets
        from ..engine.errors import AssetError
        if not self.accept_license:
            raise AssetError("the download needs the FLAME licence accepted: register at https://flame.is.tue.mpg.de "
                             "and tick 'I accept the FLAME licence'")
        folder = networks.asset_folder(preferences.get(context))

        def work(progress, cancel):
            def bytes_done(done, total):
                progress(done / total if total else 0.0, f"{done / 1e6:.0f} MB" + (f" of {total / 1e6:.0f} MB" if total else ""))
            return folder, download_assets(folder, accept_license=True, progress=bytes_done, cancel=cancel)
        return jobs.Job("Download assets", work)

    def apply(self, context, result):
        folder, paths = result
        self.report({"INFO"}, f"{len(paths)} asset file(s) ready in {folder}")
        return {"FINISHED"}


classes = (GAGAVATAR_OT_free_memory, GAGAVATAR_OT_add_pass_outputs, GAGAVATAR_OT_cancel_job,
           GAGAVATAR_OT_install_dependencies, GAGAVATAR_OT_check_dependencies,
           GAGAVATAR_OT_download_assets)
