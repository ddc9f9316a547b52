"""Add-on preferences: asset paths, device, viewport mode, frame memory, Python dependencies and the asset download."""
import bpy

from . import deps


def _update_python_path(self, context):
    deps.add_site_packages(self.python_path)


class GAGAVATAR_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = deps.root_package()

    assets_folder: bpy.props.StringProperty(
        name="Asset Folder", subtype="DIR_PATH",
        description="Folder with GAGAvatar.pt and FLAME_with_eye.pt, where Download Assets puts them "
                    "(empty: $GAGAVATAR_ASSETS, else the extension's user folder)")
    model_path: bpy.props.StringProperty(
        name="GAGAvatar.pt", subtype="FILE_PATH",
        description="GAGAvatar checkpoint; empty: GAGAvatar.pt in the asset folder")
    flame_path: bpy.props.StringProperty(
        name="FLAME", subtype="FILE_PATH",
        description="FLAME model (FLAME_with_eye.pt, FLAME 2020 .pkl/.npz); empty: FLAME_with_eye.pt in the asset folder")
    device: bpy.props.EnumProperty(
        name="Device", default="AUTO",
        items=(("AUTO", "Auto", "CUDA, else MPS, else CPU"), ("CUDA", "CUDA", "NVIDIA GPU"),
               ("MPS", "MPS", "Apple GPU"), ("CPU", "CPU", "Processor (seconds per frame)")))
    viewport_mode: bpy.props.EnumProperty(
        name="Rendered Viewport", default="AUTO",
        items=(("AUTO", "Auto", "The network on a GPU device, points on the CPU"),
               ("NEURAL", "Network", "Always run the network (slow on the CPU)"),
               ("POINTS", "Points", "Always draw the Gaussians as points")))
    frame_memory: bpy.props.EnumProperty(
        name="Frame Memory", default="AUTO",
        items=(("AUTO", "Auto", "Keep in a command-line Blender (blender -b: render farms, scripts), "
                                "give back in the interactive app"),
               ("KEEP", "Keep", "A frame's large CPU buffers stay with Blender for the next frame (Linux): "
                                "CPU frames about 10% faster; up to 1 GiB of freed memory stays with Blender "
                                "until it quits, and choosing Give Back later takes effect after a restart"),
               ("RETURN", "Give Back", "Large buffers go back to the system after each frame (the C library's "
                                       "default)")))
    python_path: bpy.props.StringProperty(
        name="Existing Environment", subtype="DIR_PATH", update=_update_python_path,
        description="site-packages folder of a virtual environment of Blender's Python version that has "
                    "the engine's requirements (e.g. venv/lib/python3.13/site-packages for Blender 5.1 to 5.3); "
                    "added to Blender's module path")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "assets_folder")
        col.prop(self, "model_path")
        col.prop(self, "flame_path")
        col.prop(self, "device")
        col.prop(self, "viewport_mode")
        col.prop(self, "frame_memory")
        box = layout.box()
        box.label(text="Assets (FLAME may only be used under its licence, https://flame.is.tue.mpg.de)")
        self._draw_assets(box)
        box.operator("gagavatar.download_assets", icon="IMPORT")
        box = layout.box()
        absent = deps.missing()
        if absent:
            box.label(text="Missing Python packages: " + ", ".join(absent), icon="ERROR")
            box.label(text=f"Install Dependencies puts them in {deps.site_packages()}")
            box.operator("gagavatar.install_dependencies", icon="CONSOLE")
            box.label(text="Or point to an existing environment's site-packages:")
        else:
            box.label(text="All Python dependencies found", icon="CHECKMARK")
        box.prop(self, "python_path")
        box.operator("gagavatar.check_dependencies", icon="FILE_REFRESH")
        layout.operator("gagavatar.free_memory", icon="TRASH")

    def _draw_assets(self, layout) -> None:
        """One row per asset file (network weights, FLAME, tracking models) with its state."""
        from ..engine.assets import asset_status
        from ..engine.errors import AssetError
        from .networks import asset_folder
        try:
            folder = asset_folder(self)
        except AssetError as err:
            layout.label(text=str(err), icon="ERROR")
            return
        layout.label(text=f"Folder: {folder}")
        icons = {"ok": "CHECKMARK", "partial": "SORTTIME", "missing": "ERROR"}
        for name, description, state in asset_status(folder):
            row = layout.row()
            row.label(text=name, icon=icons.get(state, "ERROR"))
            row.label(text=f"{state}: {description}")


def get(context=None) -> GAGAVATAR_AP_preferences:
    context = context or bpy.context
    return context.preferences.addons[deps.root_package()].preferences


def keeps_frame_memory(prefs) -> bool:
    """Whether renders keep their large buffers between frames (:func:`...engine.host_memory.keep_large_buffers`):
    *Keep*, or *Auto* in a command-line Blender (``bpy.app.background``: ``blender -b``, render farm
    nodes, the ``bpy`` module), whose process the render job owns."""
    return prefs.frame_memory == "KEEP" or (prefs.frame_memory == "AUTO" and bpy.app.background)


classes = (GAGAVATAR_AP_preferences,)
_register_classes, unregister = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    addon = bpy.context.preferences.addons.get(deps.root_package())
    if addon is not None and addon.preferences is not None:  # not yet there on a first enable
        deps.add_site_packages(addon.preferences.python_path)

