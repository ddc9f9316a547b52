"""Thin operators calling gagavatar_blender/ and engine/."""
import bpy

from . import avatar, driving, setup

classes = setup.classes + avatar.classes + driving.classes


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
