"""Bulk keyframes: F-curves written with ``keyframe_points.add`` + ``foreach_set``.

Blender 4.4 introduced layered actions (slots and channelbags; ``Action.fcurves`` is gone in 5.0):
there ``Action.fcurve_ensure_for_datablock`` makes the F-curve in the datablock's slot (its
``group_name`` argument came in 5.0: in 4.4/4.5 the F-curve is put in its group afterwards).
Blender 4.2/4.3 use ``Action.fcurves`` directly.
"""
import bpy
import numpy as np

LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
_ACTION_FUNCTIONS = bpy.types.Action.bl_rna.functions
_ENSURE_TAKES_GROUP = ("fcurve_ensure_for_datablock" in _ACTION_FUNCTIONS  # Blender >= 5.0
                       and "group_name" in _ACTION_FUNCTIONS["fcurve_ensure_for_datablock"].parameters)


def ensure_fcurve(id_data, data_path: str, index: int = 0, group: str = "") -> bpy.types.FCurve:
    """The F-curve animating ``id_data.<data_path>[index]``, created (with its action) if needed."""
    anim = id_data.animation_data or id_data.animation_data_create()
    if anim.action is None:
        anim.action = bpy.data.actions.new(f"{id_data.name}Action")
    action = anim.action
    if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender >= 4.4
        if _ENSURE_TAKES_GROUP:  # Blender >= 5.0
            return action.fcurve_ensure_for_datablock(id_data, data_path, index=index, group_name=group)
        return _grouped(anim, action.fcurve_ensure_for_datablock(id_data, data_path, index=index), group)
    fcurve = action.fcurves.find(data_path, index=index)
    if fcurve is None:
        fcurve = action.fcurves.new(data_path, index=index, action_group=group)
    return fcurve


def _grouped(anim, fcurve, group: str):
    """Blender 4.4/4.5: put a layered action's F-curve in the group ``group`` of its channelbag."""
    if group and (fcurve.group is None or fcurve.group.name != group):
        from bpy_extras.anim_utils import action_get_channelbag_for_slot
        channelbag = action_get_channelbag_for_slot(anim.action, anim.action_slot)
        fcurve.group = channelbag.groups.get(group) or channelbag.groups.new(group)
    return fcurve


def write_keys(fcurve: bpy.types.FCurve, frames: np.ndarray, values: np.ndarray) -> None:
    """Replace the keys of ``fcurve`` between ``frames[0]`` and ``frames[-1]`` by linear keys ``(frames, values)``."""
    points = fcurve.keyframe_points
    first, last = float(frames[0]), float(frames[-1])
    if len(points):
        co = np.empty(2 * len(points), np.float64)
        points.foreach_get("co", co)
        inside = np.flatnonzero((co[0::2] >= first - 0.5) & (co[0::2] <= last + 0.5))
        for i in inside[::-1]:
            points.remove(points[int(i)], fast=True)
    kept = len(points)
    points.add(len(frames))
    co = np.empty(2 * len(points), np.float64)
    points.foreach_get("co", co)
    co[2 * kept::2] = frames
    co[2 * kept + 1::2] = values
    points.foreach_set("co", co)
    interpolation = np.empty(len(points), np.int32)
    points.foreach_get("interpolation", interpolation)
    interpolation[kept:] = LINEAR
    points.foreach_set("interpolation", interpolation)
    fcurve.update()


def key_array(id_data, data_path: str, frames: np.ndarray, values: np.ndarray, group: str = "") -> None:
    """Key every component of an array property: ``values [F, C]`` at ``frames [F]``."""
    values = np.asarray(values, dtype=np.float64).reshape(len(frames), -1)
    for c in range(values.shape[1]):
        write_keys(ensure_fcurve(id_data, data_path, c, group), frames, values[:, c])
