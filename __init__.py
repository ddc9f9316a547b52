"""GAGAvatar for Blender.

The repository root is both the Blender extension (``bl_ext.<repo>.gagavatar``) and, installed
with ``pip install -e .``, the Python package ``gagavatar``. Importing this module is cheap: it
imports neither bpy nor torch. Blender calls :func:`register` / :func:`unregister`; everything
Blender-side lives in ``gagavatar_blender``, ``operators`` and ``panels``, the PyTorch side in
``engine``.
"""

__version__ = "0.1.0"


def register():
    from . import gagavatar_blender
    gagavatar_blender.register()


def unregister():
    from . import gagavatar_blender
    gagavatar_blender.unregister()
