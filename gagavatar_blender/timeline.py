"""Driving sequences on the timeline: FLAME parameters and cameras as keyframes of the rig.

A sequence (engine format, the official tracker's pkl, or a tracked video) is resampled to the
scene's frame rate (linear for coefficients and translations, normalised-linear for quaternions)
and written as linear keys from a start frame: ``Exp001..Exp100`` on the FLAME mesh's shape keys,
the ``jaw``/``eye_L``/``eye_R`` bone quaternions, and the head motion.

Head motion. The official driving ``transform`` is the camera relative to the (unposed) head of
each frame. Modes:

* ``HEAD`` (default): the scene camera stays where it is; the head root bone is keyed with
  ``H_t = C @ inverse(M_t)`` (``C``: the camera relative to the avatar's armature at import, ``M_t``:
  the frame's camera relative to the head), so that the camera sees the head exactly as the
  driving camera did; the avatar turns and moves in the scene like the driver's head.
* ``CAMERA``: the head root is keyed at rest and the scene camera at ``armature @ M_t``.
* ``NONE``: expressions, jaw and eyes only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mathutils import Matrix, Quaternion

from . import fcurves, rig

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
SEQUENCE_SUFFIXES = (".npz", ".pkl", ".pt")


@dataclass
class Resampled:
    """A sequence at the scene's frame rate: ``F`` frames from offset 0."""

    expression: np.ndarray  # [F, 100]
    jaw: np.ndarray         # [F, 4] quaternions w, x, y, z
    eye_l: np.ndarray       # [F, 4]
    eye_r: np.ndarray       # [F, 4]
    cameras: np.ndarray     # [F, 4, 4] camera-to-head, Blender camera axes, head units

    def __len__(self) -> int:
        return len(self.expression)


def _aa_to_quaternion(aa: np.ndarray) -> np.ndarray:
    return np.array([rig.axis_angle_to_quaternion(v) for v in np.asarray(aa, dtype=np.float64)])


def continuous(quaternions: np.ndarray) -> np.ndarray:
    """Flip signs so consecutive quaternions lie in the same hemisphere (no long-way interpolation)."""
    q = np.array(quaternions, dtype=np.float64)
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0.0:
            q[i] = -q[i]
    return q


def _interp(values: np.ndarray, i0, i1, w) -> np.ndarray:
    shape = (-1,) + (1,) * (values.ndim - 1)
    return values[i0] * (1.0 - w).reshape(shape) + values[i1] * w.reshape(shape)


def _nlerp(q: np.ndarray, i0, i1, w) -> np.ndarray:
    out = _interp(continuous(q), i0, i1, w)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def resample(seq, scene_fps: float) -> Resampled:
    """``seq`` (a ``DrivingSequence``) at ``scene_fps``: frame ``f`` is the sequence at time ``f / scene_fps``."""
    from ..engine.cameras import transform_to_blender
    T = seq.num_frames
    n = int(np.floor((T - 1) * scene_fps / seq.fps + 1e-6)) + 1
    tau = np.arange(n) * seq.fps / scene_fps
    i0 = np.minimum(np.floor(tau).astype(int), T - 1)
    i1 = np.minimum(i0 + 1, T - 1)
    w = tau - i0
    eyes = seq.eyes.double().numpy()
    cameras, _, _ = transform_to_blender(seq.transform.double())
    cameras = cameras.numpy()
    rotations = np.array([list(Matrix(c[:3, :3].tolist()).to_quaternion()) for c in cameras])
    out_cameras = np.zeros((n, 4, 4))
    out_cameras[:, :3, 3] = _interp(cameras[:, :3, 3], i0, i1, w)
    out_cameras[:, 3, 3] = 1.0
    for f, q in enumerate(_nlerp(rotations, i0, i1, w)):
        out_cameras[f, :3, :3] = np.array(Quaternion(q).to_matrix())
    return Resampled(
        expression=_interp(seq.expression.double().numpy(), i0, i1, w),
        jaw=_nlerp(_aa_to_quaternion(seq.jaw.double().numpy()), i0, i1, w),
        eye_l=_nlerp(_aa_to_quaternion(eyes[:, :3]), i0, i1, w),
        eye_r=_nlerp(_aa_to_quaternion(eyes[:, 3:]), i0, i1, w),
        cameras=out_cameras)


def _unit(matrix: np.ndarray) -> np.ndarray:
    """A copy with unit rotation columns (scale removed)."""
    m = np.array(matrix, dtype=np.float64)
    m[:3, :3] /= np.linalg.norm(m[:3, :3], axis=0, keepdims=True)
    return m


def head_root_keys(arm_obj, camera_in_arm: np.ndarray, cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(quaternions [F, 4], locations [F, 3])`` of the head root so that a camera fixed at
    ``camera_in_arm`` sees the head as each frame's camera ``cameras [F, 4, 4]`` does."""
    j0 = np.array(arm_obj.data.bones[rig.HEAD_ROOT].head_local, dtype=np.float64)
    quats, locs = [], []
    for M in cameras:
        H = camera_in_arm @ np.linalg.inv(M)
        R = H[:3, :3]
        quats.append(list(Matrix(R.tolist()).to_quaternion()))
        locs.append(H[:3, 3] - j0 + R @ j0)
    return continuous(np.array(quats)), np.array(locs)


def _key_camera(camera, worlds: list, frames: np.ndarray) -> None:
    parent = np.eye(4)
    if camera.parent is not None:
        parent = np.array(camera.parent.matrix_world) @ np.array(camera.matrix_parent_inverse)
    locs, rots = [], []
    mode = camera.rotation_mode
    previous = None
    for world in worlds:
        basis = Matrix((np.linalg.inv(parent) @ world).tolist())
        loc, rot, _ = basis.decompose()
        locs.append(list(loc))
        if mode == "QUATERNION":
            rots.append(list(rot))
        else:
            order = mode if mode != "AXIS_ANGLE" else "XYZ"
            # compatible with the previous frame's angles: no 360-degree jumps between keys
            euler = rot.to_euler(order) if previous is None else rot.to_euler(order, previous)
            previous = euler
            rots.append(list(euler))
    if mode == "AXIS_ANGLE":
        camera.rotation_mode = mode = "XYZ"
    fcurves.key_array(camera, "location", frames, np.array(locs), "Object Transforms")
    if mode == "QUATERNION":
        fcurves.key_array(camera, "rotation_quaternion", frames, continuous(np.array(rots)), "Object Transforms")
    else:
        fcurves.key_array(camera, "rotation_euler", frames, np.array(rots), "Object Transforms")


def write_driving(root, seq, scene, start_frame: int, head_motion: str = "HEAD", camera=None) -> int:
    """Key ``seq`` onto the avatar ``root`` from ``start_frame``; return the number of frames keyed.

    ``camera``: the camera of the ``HEAD``/``CAMERA`` modes (default: the scene camera).
    """
    from ..engine.errors import GAGAvatarError
    settings = root.gagavatar
    arm_obj, mesh_obj = settings.rig, settings.flame
    camera = camera or scene.camera
    if head_motion != "NONE" and camera is None:
        raise GAGAvatarError("the scene has no camera: add one (or import with Head Motion 'None')")
    data = resample(seq, scene.render.fps / scene.render.fps_base)
    frames = start_frame + np.arange(len(data), dtype=np.float64)
    key = mesh_obj.data.shape_keys
    for k, name in enumerate(rig.EXPRESSION_KEYS):
        fcurves.write_keys(fcurves.ensure_fcurve(key, f'key_blocks["{name}"].value', 0, "Expression"),
                           frames, data.expression[:, k])
    for bone, quats in (("jaw", data.jaw), ("eye_L", data.eye_l), ("eye_R", data.eye_r)):
        fcurves.key_array(arm_obj, f'pose.bones["{bone}"].rotation_quaternion', frames, quats, bone)
    arm_world = np.array(arm_obj.matrix_world, dtype=np.float64)
    path = f'pose.bones["{rig.HEAD_ROOT}"]'
    if head_motion == "HEAD":
        camera_in_arm = _unit(np.linalg.inv(arm_world) @ np.array(camera.matrix_world, dtype=np.float64))
        quats, locs = head_root_keys(arm_obj, camera_in_arm, data.cameras)
    elif head_motion == "CAMERA":
        _key_camera(camera, [_unit(arm_world @ M) for M in data.cameras], frames)
        quats, locs = np.tile([1.0, 0.0, 0.0, 0.0], (len(data), 1)), np.zeros((len(data), 3))
    if head_motion != "NONE":
        fcurves.key_array(arm_obj, f"{path}.rotation_quaternion", frames, quats, rig.HEAD_ROOT)
        fcurves.key_array(arm_obj, f"{path}.location", frames, locs, rig.HEAD_ROOT)
    return len(data)
