"""Thin operators calling gagavatar_blender/ and engine/."""
import bpy

from . import avatar, driving, job_operator, setup

classes = setup.classes + avatar.classes + driving.classes

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()


def unregister():
    job_operator.unregister()  # cancel a running job and remove its timer before its operator goes
    _unregister_classes()
