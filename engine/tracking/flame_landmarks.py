"""FLAME's 70 landmarks from only the vertices under them (:class:`LandmarkModel`): what the fit evaluates.

Exact (the same linear blend skinning as :class:`~..flame.FLAME`, checked by the tests) and much
cheaper than posing the whole 5023-vertex mesh every optimisation step: 210 triangle corners,
the identity optionally folded in, the static landmarks' blend shapes shared by the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from smplx.lbs import batch_rodrigues
from torch import Tensor

from ..errors import AssetError
from ..flame import FLAME, N_CONTOUR, contour_rows

__all__ = ["Corners", "LandmarkModel"]

_FLAME_PARENTS = [-1, 0, 1, 1, 1]  # root, neck, jaw, left eye, right eye


@dataclass
class Corners:
    """The vertices under the landmarks of ``B`` meshes: ``N = 70 * 3`` triangle corners, the 17
    contour landmarks' ``Nc = 51`` (which depend on the yaw) first, then the ``Ns = 159`` others.

    Attributes:
        bary: ``[B, 70, 3]`` barycentric weights of the corners.
        template: ``[B, N, 3]`` rest positions (plus a folded-in fixed identity, if any).
        contour_dirs: ``[B, Nc * 3, K]`` blend shapes of the free coefficients (shape + expression,
            or expression only when the identity is folded in) at the contour corners.
        static_dirs: ``[Ns * 3, K]`` the same at the other corners (shared by the batch).
        posedirs: ``[B, 36, N * 3]`` pose correctives.
        weights: ``[B, N, 5]`` skinning weights.
        joints: ``[B, 5, 3]`` rest joints of the folded-in part; ``joint_dirs [5 * 3, K]`` the rest.
    """

    bary: Tensor
    template: Tensor
    contour_dirs: Tensor
    static_dirs: Tensor
    posedirs: Tensor
    weights: Tensor
    joints: Tensor
    joint_dirs: Tensor


class LandmarkModel:
    """FLAME's 70 landmarks computed from the vertices under them only (exact; same LBS as ``flame``).

    The joints are linear in the blend-shape coefficients (``J = J_regressor @ v_shaped``), so
    they are precomputed as ``J_template + J_dirs @ betas``; the landmarks' triangle corners are
    then shaped, posed and skinned as :func:`smplx.lbs.lbs` would, and combined barycentrically.
    With the global and neck rotations zero (the tracker's parameterisation) FLAME's chain
    ``root -> neck -> {jaw, left eye, right eye}`` reduces linear blend skinning to
    ``v + sum_j w_j (R_j - I) (v - J_j)`` over the jaw and eyes, computed in that closed form.

    Args:
        flame: a loaded :class:`~..flame.FLAME` with its landmark embedding (and dynamic contour).
    """

    def __init__(self, flame: FLAME) -> None:
        if not flame.has_landmarks:
            flame.landmarks(flame.v_template[None])  # raises the loader's AssetError with its remedy
        self.flame = flame
        self.n_shape, self.n_expression = flame.n_shape, flame.n_expression
        V = flame.v_template.shape[0]
        self._posedirs = flame.posedirs.reshape(-1, V, 3).permute(1, 2, 0)     # [V, 3, 36]
        self._j_template = flame.J_regressor @ flame.v_template                 # [5, 3]
        self._j_dirs = torch.einsum("jv,vck->jck", flame.J_regressor, flame.shapedirs)  # [5, 3, K]
        self._static_ids = flame.faces_tensor[flame.full_lmk_faces_idx[N_CONTOUR:]].reshape(-1)
        if flame.parents.tolist() != _FLAME_PARENTS:
            raise AssetError(f"this model's kinematic tree {flame.parents.tolist()} is not FLAME's: "
                             "load FLAME_with_eye.pt or FLAME 2020")
        self.has_contour = flame.dynamic_lmk_faces_idx is not None

    def corners(self, yaw: Optional[Tensor], batch: int, shape: Optional[Tensor] = None) -> Corners:
        """The corner tables of ``batch`` meshes.

        Args:
            yaw: ``[B]`` head yaw (radians) choosing the dynamic contour rows, or None for the
                static contour.
            shape: a fixed identity ``[B or 1, n_shape]`` to fold in; then only the expression
                coefficients are free (:meth:`__call__` takes ``betas = expression``).
        """
        f = self.flame
        faces = f.full_lmk_faces_idx[:N_CONTOUR].unsqueeze(0).expand(batch, -1)
        bary = f.full_lmk_bary_coords.unsqueeze(0).expand(batch, -1, -1)
        if yaw is not None and self.has_contour:
            rows = contour_rows(yaw.detach().reshape(batch).to(bary))
            faces = f.dynamic_lmk_faces_idx[rows]
            bary = torch.cat([f.dynamic_lmk_bary_coords[rows], bary[:, N_CONTOUR:]], 1)
        contour_ids = f.faces_tensor[faces].reshape(batch, -1)
        ids = torch.cat([contour_ids, self._static_ids.expand(batch, -1)], 1)
        n_contour = contour_ids.shape[1]
        template = f.v_template[ids]
        contour_dirs, static_dirs = f.shapedirs[contour_ids], f.shapedirs[self._static_ids]
        joints, joint_dirs = self._j_template.expand(batch, -1, -1), self._j_dirs
        if shape is not None:
            shape = shape.detach().to(template).reshape(-1, self.n_shape).expand(batch, -1)
            ns = self.n_shape
            template = template + torch.cat([torch.einsum("bnck,bk->bnc", contour_dirs[..., :ns], shape),
                                             torch.einsum("nck,bk->bnc", static_dirs[..., :ns], shape)], 1)
            joints = joints + torch.einsum("jck,bk->bjc", joint_dirs[..., :ns], shape)
            contour_dirs, static_dirs, joint_dirs = contour_dirs[..., ns:], static_dirs[..., ns:], joint_dirs[..., ns:]
        n = ids.shape[1]
        return Corners(bary=bary, template=template,
                       contour_dirs=contour_dirs.reshape(batch, n_contour * 3, -1).contiguous(),
                       static_dirs=static_dirs.reshape((n - n_contour) * 3, -1).contiguous(),
                       posedirs=self._posedirs[ids].permute(0, 3, 1, 2).reshape(batch, -1, n * 3).contiguous(),
                       weights=f.lbs_weights[ids], joints=joints,
                       joint_dirs=joint_dirs.reshape(-1, joint_dirs.shape[-1]))

    def __call__(self, c: Corners, betas: Tensor, jaw: Tensor, eyes: Tensor) -> Tensor:
        """Landmarks ``[B, 70, 3]`` in world units (x ``flame.scale``), FLAME global pose zero.

        Args:
            c: from :meth:`corners`.
            betas: ``[B, K]`` free coefficients: ``cat(shape, expression)``, or ``expression``
                when the corners have a folded-in identity.
            jaw: ``[B, 3]``; eyes: ``[B, 6]`` (axis-angle, radians).
        """
        B, N = c.template.shape[:2]
        offsets = torch.cat([torch.bmm(c.contour_dirs, betas[:, :, None])[..., 0], betas @ c.static_dirs.T], 1)
        v = c.template + offsets.reshape(B, N, 3)
        joints = c.joints[:, 2:] + (betas @ c.joint_dirs[6:].T).reshape(B, 3, 3)   # jaw, left eye, right eye
        rot = batch_rodrigues(torch.cat([jaw, eyes], 1).reshape(-1, 3)).reshape(B, 3, 3, 3)
        rot_minus_i = rot - torch.eye(3, dtype=rot.dtype, device=rot.device)
        feature = torch.cat([rot_minus_i.new_zeros(B, 9), rot_minus_i.reshape(B, 27)], 1)  # neck: R - I = 0
        v = v + torch.bmm(feature[:, None], c.posedirs).reshape(B, N, 3)
        moved = torch.einsum("bjxy,bnjy->bnjx", rot_minus_i, v[:, :, None, :] - joints[:, None])
        v = v + (c.weights[..., 2:, None] * moved).sum(2)
        return (c.bary[..., None] * v.reshape(B, -1, 3, 3)).sum(2) * self.flame.scale
