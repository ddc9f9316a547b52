"""The avatar's FLAME head as a mesh file (OBJ, glTF binary, PLY, STL), through trimesh.

The mesh is FLAME with the avatar's identity (``Avatar.shape``) and, optionally, one frame's
expression, jaw and eye pose: the surface the avatar's expression Gaussians ride on, for
modelling, rigging or checking a reconstruction in any 3D tool. Units are metres (FLAME's own;
GAGAvatar's world is 5x that), ``+Y`` up, the face toward ``+Z``, the head at the origin.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from .atomic import atomic_write
from .errors import GAGAvatarError

if TYPE_CHECKING:
    import trimesh

    from .flame import FLAME

__all__ = ["MESH_SUFFIXES", "mesh_kind", "head_mesh", "export_head"]

MESH_SUFFIXES = {".obj": "obj", ".glb": "glb", ".ply": "ply", ".stl": "stl"}
"""File suffix -> trimesh file type."""


def head_mesh(flame: "FLAME", shape: torch.Tensor, expression: Optional[torch.Tensor] = None,
              jaw: Optional[torch.Tensor] = None, eyes: Optional[torch.Tensor] = None) -> "trimesh.Trimesh":
    """FLAME posed by one set of parameters as a mesh in metres.

    Args:
        flame: the FLAME model (world units = metres x ``flame.scale``).
        shape: ``[300]`` or ``[1, 300]`` identity.
        expression: ``[100]`` expression coefficients (zeros when None).
        jaw: ``[3]`` jaw rotation, axis-angle, radians (closed when None).
        eyes: ``[6]`` left and right eye rotations, axis-angle, radians (ahead when None).
    Returns:
        A ``trimesh.Trimesh`` with FLAME's 5,023 vertices and 9,976 faces.
    """
    import trimesh

    def one(t: Optional[torch.Tensor], width: int) -> torch.Tensor:
        t = torch.zeros(width) if t is None else t.detach().float().cpu().reshape(-1)
        if t.numel() != width:
            raise GAGAvatarError(f"expected {width} numbers, got {t.numel()}")
        return t[None].to(flame.v_template.device)
    pose = torch.cat([torch.zeros(1, 3, device=flame.v_template.device), one(jaw, 3)], -1)
    with torch.no_grad():
        vertices = flame(shape=one(shape.reshape(-1)[:flame.n_shape], flame.n_shape), expression=one(expression, flame.n_expression),
                         pose=pose, eyes=one(eyes, 6))[0] / flame.scale
    return trimesh.Trimesh(vertices.cpu().numpy(), flame.faces.cpu().numpy(), process=False)


def mesh_kind(path: str | os.PathLike) -> str:
    """The trimesh file type for ``path``'s suffix; a one-line :class:`GAGAvatarError` for any other."""
    path = Path(path)
    kind = MESH_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise GAGAvatarError(f"cannot write a mesh to {path.name}: use {', '.join(MESH_SUFFIXES)}")
    return kind


def export_head(path: str | os.PathLike, mesh: "trimesh.Trimesh") -> Path:
    """Write ``mesh`` to ``path`` (its suffix picks the format: :data:`MESH_SUFFIXES`), atomically."""
    data = mesh.export(file_type=mesh_kind(path))
    return atomic_write(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))
