"""Thin panels: the GAGAvatar tab of the 3D viewport sidebar and the engine's render settings."""
import bpy

from ..gagavatar_blender import deps, preferences, properties, render_engine, rig


class GAGAVATAR_PT_main(bpy.types.Panel):
    """Dependencies, the running job, avatar creation and driving"""
    bl_label = "GAGAvatar"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GAGAvatar"

    def draw(self, context):
        layout = self.layout
        absent = deps.missing()
        if absent:
            layout.label(text="Missing: " + ", ".join(absent), icon="ERROR")
            layout.operator("gagavatar.install_dependencies", icon="CONSOLE")
        job = context.window_manager.gagavatar_job
        if job.running:
            box = layout.box()
            box.label(text=job.label, icon="SORTTIME")
            row = box.row(align=True)
            row.enabled = False
            row.prop(job, "progress", text="")
            box.operator("gagavatar.cancel_job", icon="CANCEL")
        layout.operator("gagavatar.create_avatar", icon="USER")
        root = properties.avatar_root(context.active_object)
        if root is None:
            layout.label(text="Select an avatar to drive it")
            return
        settings = root.gagavatar
        box = layout.box()
        box.label(text=root.name, icon="OUTLINER_OB_EMPTY")
        box.prop(settings, "rig")
        box.prop(settings, "flame")
        box.prop(settings, "camera")
        box.label(text=f"Landmark error: {settings.residual_px:.1f} px")
        box.operator("gagavatar.import_driving", icon="ANIM")


class GAGAVATAR_PT_expressions(bpy.types.Panel):
    """The active avatar's expression coefficients (key them like any property)"""
    bl_label = "Expressions"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GAGAvatar"
    bl_parent_id = "GAGAVATAR_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        root = properties.avatar_root(context.active_object)
        return root is not None and root.gagavatar.flame is not None and root.gagavatar.flame.data.shape_keys

    def draw(self, context):
        blocks = properties.avatar_root(context.active_object).gagavatar.flame.data.shape_keys.key_blocks
        flow = self.layout.grid_flow(columns=2, align=True)
        for name in rig.EXPRESSION_KEYS:
            flow.prop(blocks[name], "value", text=name, slider=True)


class GAGAVATAR_PT_render(bpy.types.Panel):
    """Device, viewport and colour management of the GAGAvatar render engine"""
    bl_label = "GAGAvatar"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {"GAGAVATAR"}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES

    def draw(self, context):
        layout = self.layout
        prefs = preferences.get(context)
        layout.prop(prefs, "device")
        layout.prop(context.scene.gagavatar_render, "precision")
        layout.prop(prefs, "viewport_mode")
        layout.prop(prefs, "frame_memory")
        layout.prop(context.view_layer, "use_pass_z", text="Depth Pass")
        layout.prop(context.view_layer.gagavatar, "use_pass_coarse")
        if render_engine.colour_warning(context.scene):
            view = context.scene.view_settings
            col = layout.column()
            col.label(text="The network outputs display-ready sRGB:", icon="ERROR")
            col.label(text="use the Standard view transform, no look (AgX washes it out)")
            col.prop(view, "view_transform")
            col.prop(view, "look")
        layout.operator("gagavatar.add_pass_outputs", icon="NODE_COMPOSITING")
        layout.operator("gagavatar.free_memory", icon="TRASH")


classes = (GAGAVATAR_PT_main, GAGAVATAR_PT_expressions, GAGAVATAR_PT_render)

register, unregister = bpy.utils.register_classes_factory(classes)
