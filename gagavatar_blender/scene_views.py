"""What the renderer needs from a depsgraph: every visible avatar in head space, seen by a camera.

Head space is the avatar's armature space with the head root's pose removed (FLAME x5 units,
+Y up): the evaluated FLAME mesh is un-posed exactly (:func:`.rig.unposed`) and the camera is
expressed relative to the head, ``inverse(armature.matrix_world @ head_matrix) @ camera``, so the
head pose, the avatar's placement and the camera all end up in the network's camera.
"""
from __future__ import annotations

import numpy as np

from . import networks, rig
from ..engine.framing import AvatarView, Intrinsics, intrinsics_from_projection


def _matrix(m) -> np.ndarray:
    return np.array(m, dtype=np.float64)


def camera_intrinsics(depsgraph, camera, width: int, height: int) -> Intrinsics:
    """Pixel intrinsics of a Blender camera object for a ``width x height`` frame.

    Raises:
        GAGAvatarError: the camera is not a perspective camera.
    """
    from ..engine.errors import GAGAvatarError
    render = depsgraph.scene.render
    projection = camera.calc_matrix_camera(depsgraph, x=width, y=height, scale_x=render.pixel_aspect_x,
                                           scale_y=render.pixel_aspect_y)
    try:
        return intrinsics_from_projection(projection, width, height)
    except ValueError:
        raise GAGAvatarError(f"camera '{camera.name}' is not a perspective camera: GAGAvatar renders through "
                             "perspective cameras only") from None


def posed_avatars(depsgraph):
    """``(root, head_world [4, 4], vertices [5023, 3] in head space)`` per avatar root visible in ``depsgraph``.

    Raises:
        GAGAvatarError: an avatar lost its rig or Gaussians (deleted objects).
    """
    from ..engine.errors import GAGAvatarError
    for obj in depsgraph.objects:
        root = obj.original
        if root.type != "EMPTY" or not root.gagavatar.is_avatar:
            continue
        settings = root.gagavatar
        if settings.rig is None or settings.flame is None or settings.gaussians is None:
            raise GAGAvatarError(f"avatar '{root.name}' lost its rig, FLAME mesh or Gaussians: "
                                 "undo the deletion or re-create the avatar")
        arm = settings.rig.evaluated_get(depsgraph)
        mesh = settings.flame.evaluated_get(depsgraph)
        arm_world = _matrix(arm.matrix_world)
        to_arm = np.linalg.inv(arm_world) @ _matrix(mesh.matrix_world)
        local = rig.evaluated_vertices(settings.flame, depsgraph).astype(np.float64)
        vertices = rig.unposed(arm, local @ to_arm[:3, :3].T + to_arm[:3, 3])
        yield root, arm_world @ rig.head_matrix(arm), vertices


def avatar_views(depsgraph, camera_world, device: str) -> list[AvatarView]:
    """An :class:`AvatarView` per avatar root visible in ``depsgraph``, seen from ``camera_world`` ([4, 4])."""
    camera_world = _matrix(camera_world)
    views = []
    for root, head_world, vertices in posed_avatars(depsgraph):
        settings = root.gagavatar
        units = float(np.cbrt(abs(np.linalg.det(head_world[:3, :3]))))
        camera = np.linalg.inv(head_world) @ camera_world
        camera[:3, :3] /= np.linalg.norm(camera[:3, :3], axis=0, keepdims=True)
        splats = settings.gaussians.data
        views.append(AvatarView(
            load=lambda mesh=splats: networks.load_avatar(mesh, device),
            vertices=vertices.astype(np.float32), camera=camera, units=units,
            anchor=np.array(settings.anchor, dtype=np.float64), radius=float(settings.radius)))
    return views
