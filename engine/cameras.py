"""Cameras in GAGAvatar's convention and conversions to OpenCV/gsplat and Blender.

The official camera is a ``transform`` ``[B, 3, 4] = [R | T]`` in PyTorch3D's row-vector
convention: ``X_cam = X_world @ R + T`` with the camera looking down ``+Z``, ``+X`` left and
``+Y`` up. World space is FLAME space scaled by 5 (1 unit = 0.2 m, the head at the origin,
``+Y`` up, the face looking at ``+Z``). The intrinsics are a *normalised* focal length
(``tan(fov/2) = 1 / focal``; 12 for GAGAvatar, i.e. 3072 px at 512 px) and, as an extension of
ours, a principal-point offset in NDC (0 = centred, as in the official code).

Other conventions used here:

* OpenCV / gsplat: column-vector world-to-camera ``viewmat [B, 4, 4]`` (``+X`` right, ``+Y``
  down, ``+Z`` forward) and pixel intrinsics ``K [B, 3, 3]`` with the centre of pixel ``i`` at
  ``i + 0.5`` (so a centred camera has ``cx = W / 2``).
* Blender: camera-to-world ``matrix_world [B, 4, 4]`` (camera looks down ``-Z``, ``+Y`` up),
  focal length ``lens`` in mm over a ``sensor`` width in mm (sensor fit horizontal), expressed in
  avatar (FLAME x5) coordinates; the Blender side composes it with the avatar's object matrix.
"""
from __future__ import annotations

import math

import torch

FOCAL = 12.0
"""GAGAvatar's normalised focal length (``tan(fov / 2) = 1 / FOCAL``)."""
IMAGE_SIZE = 512
"""Side of the square render the model was trained at, in pixels."""
PLANE_SIZE = 296
"""Side of the dual-lifting point plane."""
Z_NEAR, Z_FAR = 0.01, 100.0

# Flips between PyTorch3D camera axes and the other conventions.
_P3D_TO_CV = (-1.0, -1.0, 1.0)      # +X left/+Y up  -> +X right/+Y down, both look down +Z
_P3D_TO_BLENDER = (-1.0, 1.0, -1.0)  # +Z forward     -> -Z forward, +Y up


def _batched(transform: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if transform.shape[-2:] != (3, 4):
        raise ValueError(f"expected a [B, 3, 4] or [3, 4] camera transform, got {tuple(transform.shape)}")
    single = transform.dim() == 2
    return (transform[None] if single else transform), single


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (tuple, list)):
        return float(v[0]), float(v[1])
    return float(v), float(v)


def build_camera_matrices(transform: torch.Tensor, focal=FOCAL, center=(0.0, 0.0),
                          z_near: float = Z_NEAR, z_far: float = Z_FAR):
    """The official 3DGS camera matrices, bit-for-bit as GAGAvatar builds them.

    Args:
        transform: ``[B, 3, 4]`` ``[R | T]`` (PyTorch3D convention).
        focal: normalised focal, a float or ``(fx, fy)``.
        center: principal-point offset in NDC ``(cx, cy)`` (0 = centred, the official camera).

    Returns:
        ``(viewmatrix [B, 4, 4], full_proj [B, 4, 4], campos [B, 3])``; matrices are read
        row-major by the rasterizer: ``p_view = p @ V[:3, :3] + V[3, :3]`` (x right, y down).
        ``campos`` is ``T`` as in the official code (not the camera centre; it is unused).
    """
    tr, _ = _batched(transform)
    fx, fy = _pair(focal)
    V = tr.new_zeros(tr.shape[0], 4, 4)
    for i in range(4):
        V[:, i, i] = 1.0
    V[:, :3, :3] = tr[:, :3, :3]
    V[:, 3, :3] = tr[:, :3, 3]
    V[:, :, :2] *= -1.0
    K = torch.zeros(4, 4, device=tr.device, dtype=tr.dtype)
    K[0, 0] = 1.0 / math.tan(math.atan(1.0 / fx))
    K[1, 1] = 1.0 / math.tan(math.atan(1.0 / fy))
    K[0, 2] = float(center[0])
    K[1, 2] = float(center[1])
    K[3, 2] = 1.0
    K[2, 2] = z_far / (z_far - z_near)
    K[2, 3] = -(z_far * z_near) / (z_far - z_near)
    full = V @ K.transpose(0, 1)
    return V, full, tr[:, :3, 3]


def build_points_planes(transform: torch.Tensor, size: int = PLANE_SIZE, focal: float = FOCAL):
    """The dual-lifting plane: a ``size x size`` grid on the plane through the origin facing the camera.

    Args:
        transform: ``[3, 4]`` or ``[B, 3, 4]`` source camera.

    Returns:
        ``(plane_points [B, size*size, 3], plane_dirs [B, 3])``; point ``n = row * size + col``
        lies on the pixel ray of normalised image coordinates ``(linspace(1,-1)[col],
        linspace(1,-1)[row])`` at the camera-to-origin distance; ``plane_dirs`` is the camera's
        viewing direction in world space.
    """
    tr, _ = _batched(transform)
    lin = torch.linspace(1, -1, size, dtype=torch.float32, device=tr.device)
    x, y = torch.meshgrid(lin, lin, indexing="xy")
    rays = torch.nn.functional.pad(torch.stack([x / focal, y / focal], dim=-1), (0, 1), value=1.0).reshape(-1, 3)
    points, dirs = [], []
    for t in tr.float():
        R, T = t[:, :3], t[:, 3:]
        cam_dir = (R @ torch.tensor([[0.0], [0.0], [1.0]], device=tr.device))[:, 0]
        ray = torch.matmul(R, rays[:, :, None])[..., 0]
        origin = -torch.matmul(R, T)[..., 0]
        distance = (origin * cam_dir).sum().abs()
        points.append(origin + distance * ray)
        dirs.append(cam_dir)
    return torch.stack(points), torch.stack(dirs)


def camera_center(transform: torch.Tensor) -> torch.Tensor:
    """World-space camera centres ``[B, 3]`` (``-R T``)."""
    tr, single = _batched(transform)
    c = -(tr[:, :3, :3] @ tr[:, :3, 3:])[..., 0]
    return c[0] if single else c


def rodrigues(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle ``[..., 3]`` (radians) to rotation matrices ``[..., 3, 3]`` (column convention)."""
    angle = aa.norm(dim=-1, keepdim=True).clamp_min(1e-12)[..., None]
    k = aa / angle[..., 0]
    zero = torch.zeros_like(k[..., 0])
    Kx = torch.stack([zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0],
                      -k[..., 1], k[..., 0], zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(Kx)
    return eye + torch.sin(angle) * Kx + (1 - torch.cos(angle)) * (Kx @ Kx)


def transform_from_pose(rotation_aa: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """The tracker's camera: ``R = Rodrigues(aa) @ diag(-1, 1, -1)``, ``T = translation``.

    Args:
        rotation_aa: ``[..., 3]`` head rotation (axis-angle, radians); 0 = frontal view.
        translation: ``[..., 3]``; ``T_z`` is the camera distance (about 9-10 in GAGAvatar).
    Returns:
        ``[..., 3, 4]`` transform.
    """
    flip = torch.tensor([-1.0, 1.0, -1.0], dtype=rotation_aa.dtype, device=rotation_aa.device)
    R = rodrigues(rotation_aa) * flip
    return torch.cat([R, translation[..., :, None]], -1)


def look_at_transform(eye, at=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """A ``[3, 4]`` transform for a camera at ``eye`` looking at ``at`` (PyTorch3D's look_at)."""
    eye, at, up = (torch.as_tensor(v, dtype=torch.float32) for v in (eye, at, up))
    z = torch.nn.functional.normalize(at - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(up, z), dim=0)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], 1)           # columns = camera axes in world (row-vector R)
    T = -(eye @ R)
    return torch.cat([R, T[:, None]], 1)


def transform_to_opencv(transform: torch.Tensor, focal=FOCAL, size=(IMAGE_SIZE, IMAGE_SIZE), center=(0.0, 0.0)):
    """Official camera to OpenCV/gsplat.

    Args:
        size: ``(H, W)`` in pixels.
    Returns:
        ``(viewmat [B, 4, 4], K [B, 3, 3])``; ``K`` puts the centre of pixel ``i`` at ``i + 0.5``.
    """
    tr, single = _batched(transform)
    H, W = size
    fx, fy = _pair(focal)
    s = tr.new_tensor(_P3D_TO_CV)
    view = torch.zeros(tr.shape[0], 4, 4, dtype=tr.dtype, device=tr.device)
    view[:, :3, :3] = tr[:, :3, :3].transpose(1, 2) * s[:, None]
    view[:, :3, 3] = tr[:, :3, 3] * s
    view[:, 3, 3] = 1.0
    K = torch.zeros(tr.shape[0], 3, 3, dtype=tr.dtype, device=tr.device)
    K[:, 0, 0] = fx * W / 2.0
    K[:, 1, 1] = fy * H / 2.0
    K[:, 0, 2] = W / 2.0 * (1.0 + center[0])
    K[:, 1, 2] = H / 2.0 * (1.0 + center[1])
    K[:, 2, 2] = 1.0
    return (view[0], K[0]) if single else (view, K)


def opencv_to_transform(viewmat: torch.Tensor, K: torch.Tensor, size=(IMAGE_SIZE, IMAGE_SIZE)):
    """Inverse of :func:`transform_to_opencv`: ``(transform, (fx, fy), (cx, cy))`` (normalised)."""
    single = viewmat.dim() == 2
    vm = viewmat[None] if single else viewmat
    Kb = K[None] if K.dim() == 2 else K
    H, W = size
    s = vm.new_tensor(_P3D_TO_CV)
    R = (vm[:, :3, :3] * s[:, None]).transpose(1, 2)
    T = vm[:, :3, 3] * s
    tr = torch.cat([R, T[..., None]], -1)
    focal = (Kb[:, 0, 0] * 2.0 / W, Kb[:, 1, 1] * 2.0 / H)
    center = (Kb[:, 0, 2] * 2.0 / W - 1.0, Kb[:, 1, 2] * 2.0 / H - 1.0)
    return (tr[0] if single else tr), focal, center


def transform_to_blender(transform: torch.Tensor, focal: float = FOCAL, sensor_width: float = 36.0):
    """Official camera to a Blender camera in avatar coordinates.

    Returns:
        ``(matrix_world [B, 4, 4], lens_mm, sensor_width_mm)``; use sensor fit ``HORIZONTAL``.
        ``lens = focal * sensor / 2`` (216 mm on a 36 mm sensor for focal 12).
    """
    tr, single = _batched(transform)
    d = tr.new_tensor(_P3D_TO_BLENDER)
    M = torch.zeros(tr.shape[0], 4, 4, dtype=tr.dtype, device=tr.device)
    M[:, :3, :3] = tr[:, :3, :3] * d
    M[:, :3, 3] = camera_center(tr)
    M[:, 3, 3] = 1.0
    return (M[0] if single else M), float(focal) * sensor_width / 2.0, sensor_width


def blender_to_transform(matrix_world: torch.Tensor, lens: float, sensor_width: float = 36.0):
    """Inverse of :func:`transform_to_blender`: ``(transform [B, 3, 4], focal)``.

    ``matrix_world`` may carry scale (it is removed from the rotation columns).
    """
    single = matrix_world.dim() == 2
    M = (matrix_world[None] if single else matrix_world).float()
    d = M.new_tensor(_P3D_TO_BLENDER)
    rot = M[:, :3, :3]
    rot = rot / rot.norm(dim=1, keepdim=True)
    R = rot * d
    T = -(M[:, :3, 3][:, None, :] @ R)[:, 0]
    tr = torch.cat([R, T[..., None]], -1)
    return (tr[0] if single else tr), 2.0 * float(lens) / float(sensor_width)
