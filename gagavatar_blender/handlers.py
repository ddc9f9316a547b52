"""Application handlers: one cache entry per avatar, none left over from the previous file.

* A duplicated avatar (Shift+D, ``Mesh.copy``) copies its Gaussians mesh with the custom property
  :data:`.gaussians.UID`, the avatar cache's key: two meshes would share one cache entry. After
  every depsgraph update that added meshes, the newer of two meshes with one id (the larger
  ``session_uid``, the order Blender created them in this session) gets a fresh id.
* Opening a file drops the cached avatars (their ids belong to the previous file) and checks the
  ids of the new file. The networks stay cached: they depend on the preferences only. Files saved
  when the Coarse pass was always rendered get it back where their compositor links its socket
  (:func:`.compositor.enable_linked_coarse_passes`).

Both handlers run on the main thread (``persistent``: they survive file loads); they are removed
at unregister.
"""
import uuid

import bpy
from bpy.app.handlers import persistent

from . import cache, compositor, gaussians

_mesh_count = -1


def fresh_duplicate_ids() -> list:
    """Give a fresh :data:`.gaussians.UID` to every mesh that shares its id with an older mesh; return them."""
    first: dict[str, bpy.types.Mesh] = {}
    renamed = []
    meshes = [mesh for mesh in bpy.data.meshes if mesh.get(gaussians.UID) is not None]
    for mesh in sorted(meshes, key=lambda m: m.session_uid):
        uid = str(mesh[gaussians.UID])
        if uid in first and mesh.library is None:
            mesh[gaussians.UID] = uuid.uuid4().hex
            renamed.append(mesh)
        else:
            first[uid] = mesh
    return renamed


def drop_avatars() -> int:
    """Drop every cached avatar (not the networks); return how many were dropped."""
    return cache.drop(lambda key: key[0] == "avatar")


@persistent
def _on_load_post(*_args):
    global _mesh_count
    drop_avatars()
    fresh_duplicate_ids()
    compositor.enable_linked_coarse_passes()
    _mesh_count = len(bpy.data.meshes)


@persistent
def _on_depsgraph_update_post(*_args):
    global _mesh_count
    count = len(bpy.data.meshes)
    if count > _mesh_count:  # meshes were added (a duplicate, an append): cheap check on every update
        fresh_duplicate_ids()
    _mesh_count = count


_HANDLERS = ((bpy.app.handlers.load_post, _on_load_post),
             (bpy.app.handlers.depsgraph_update_post, _on_depsgraph_update_post))


def register():
    for handlers, handler in _HANDLERS:
        if handler not in handlers:
            handlers.append(handler)


def unregister():
    for handlers, handler in _HANDLERS:
        while handler in handlers:
            handlers.remove(handler)
