"""Blender properties: what an avatar's root object knows, the scene's render settings and the view
layers' passes (saved in the .blend), and the job status (not saved)."""
import bpy


class GAGAVATAR_PG_avatar(bpy.types.PropertyGroup):
    """``Object.gagavatar``: set on an avatar's root empty (the other objects are reached from it)."""

    is_avatar: bpy.props.BoolProperty(name="Is Avatar", description="This empty is the root of a GAGAvatar")
    rig: bpy.props.PointerProperty(name="Rig", type=bpy.types.Object,
                                   description="FLAME armature: bones root (head pose), jaw, eye_L, eye_R")
    flame: bpy.props.PointerProperty(name="FLAME Mesh", type=bpy.types.Object,
                                     description="FLAME mesh with the Exp001-Exp100 shape keys")
    gaussians: bpy.props.PointerProperty(name="Gaussians", type=bpy.types.Object,
                                         description="The avatar's Gaussians (vertex-only mesh with attributes)")
    camera: bpy.props.PointerProperty(name="Source Camera", type=bpy.types.Object,
                                      description="Camera of the source photo")
    image: bpy.props.PointerProperty(name="Source Image", type=bpy.types.Image)
    source_transform: bpy.props.FloatVectorProperty(
        name="Source Transform", size=12,
        description="Tracked camera of the source photo in head space (the engine's Avatar.source_transform): "
                    "official PyTorch3D [R|T], 3x4 row-major, FLAME x5 units. Written once and not read by the "
                    "add-on (the Source Camera object starts from it and may be moved); for scripts, "
                    "engine.cameras.transform_to_blender turns it into a camera matrix in head space")
    anchor: bpy.props.FloatVectorProperty(
        name="Crop Anchor", size=3, subtype="XYZ",
        description="Head-space point the network's 512x512 crop is centred on")
    radius: bpy.props.FloatProperty(
        name="Crop Radius", min=1e-4, default=0.8,
        description="Half side of the network's crop at the anchor's depth (head units)")
    residual_px: bpy.props.FloatProperty(name="Tracking Residual", description="Mean landmark error, crop pixels")


class GAGAVATAR_PG_render(bpy.types.PropertyGroup):
    """``Scene.gagavatar_render``: render settings saved with the scene (every farm node renders alike)."""

    precision: bpy.props.EnumProperty(
        name="Precision", default="AUTO",
        items=(("AUTO", "Auto", "Final renders in fp32 (exact); the viewport in bf16 where the hardware computes it "
                                "natively (GPUs since Ampere, CPUs with AMX), else fp32"),
               ("FP32", "Full (fp32)", "The official computation, also in the viewport"),
               ("BF16", "Fast (bf16)", "Neural renderer convolutions in bfloat16 (modulation in fp32), final renders "
                                       "too: about 2x faster on recent GPUs and AMX CPUs, within ~50 dB of fp32")),
        description="Precision of the neural renderer")


def _passes_changed(settings, context):
    """Ask the render engine for the view layer's passes again (the Render Layers nodes' sockets follow)."""
    for view_layer in settings.id_data.view_layers:
        if view_layer.gagavatar.as_pointer() == settings.as_pointer():
            view_layer.update_render_passes()


class GAGAVATAR_PG_view_layer(bpy.types.PropertyGroup):
    """``ViewLayer.gagavatar``: the GAGAvatar passes a view layer renders (saved in the .blend)."""

    use_pass_coarse: bpy.props.BoolProperty(
        name="Coarse Pass", default=False, update=_passes_changed,
        description="Render the Coarse pass too: the splatted colours before the neural renderer (costs about "
                    "3% of a 1080p frame on a CPU; Add Pass Outputs turns it on)")


class GAGAVATAR_PG_job(bpy.types.PropertyGroup):
    """``WindowManager.gagavatar_job``: the running background job, shown in the sidebar."""

    running: bpy.props.BoolProperty()
    label: bpy.props.StringProperty()
    progress: bpy.props.FloatProperty(subtype="PERCENTAGE", min=0.0, max=100.0, precision=0)


classes = (GAGAVATAR_PG_avatar, GAGAVATAR_PG_render, GAGAVATAR_PG_view_layer, GAGAVATAR_PG_job)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.Object.gagavatar = bpy.props.PointerProperty(type=GAGAVATAR_PG_avatar)
    bpy.types.Scene.gagavatar_render = bpy.props.PointerProperty(type=GAGAVATAR_PG_render)
    bpy.types.ViewLayer.gagavatar = bpy.props.PointerProperty(type=GAGAVATAR_PG_view_layer)
    bpy.types.WindowManager.gagavatar_job = bpy.props.PointerProperty(type=GAGAVATAR_PG_job)


def unregister():
    del bpy.types.WindowManager.gagavatar_job
    del bpy.types.ViewLayer.gagavatar
    del bpy.types.Scene.gagavatar_render
    del bpy.types.Object.gagavatar
    _unregister_classes()


def avatar_root(obj):
    """The avatar root an object belongs to (itself, an ancestor, or the avatar whose camera it is), or None."""
    probe = obj
    while probe is not None:
        if probe.gagavatar.is_avatar:
            return probe
        probe = probe.parent
    if obj is not None and obj.type == "CAMERA":
        for candidate in bpy.data.objects:
            if candidate.gagavatar.is_avatar and candidate.gagavatar.camera == obj:
                return candidate
    return None
