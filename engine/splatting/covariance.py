"""3D covariances of Gaussians, built the official way."""
from __future__ import annotations

import torch


def covariance_from_scale_rotation(scales: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``Sigma = R S S^T R^T`` from scales ``[..., 3]`` and quaternions ``[..., 4]`` (``w, x, y, z``).

    Like the official 3DGS kernel, ``R`` is built from the raw quaternion components WITHOUT
    normalising them (GAGAvatar's expression Gaussians have quaternions of norm ~0.03, which
    makes ``R`` close to the identity rather than a rotation). Returns ``[..., 3, 3]`` in world
    units squared.
    """
    r, x, y, z = rotations.unbind(-1)
    R = torch.stack([
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - r * z), 2.0 * (x * z + r * y),
        2.0 * (x * y + r * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - r * x),
        2.0 * (x * z - r * y), 2.0 * (y * z + r * x), 1.0 - 2.0 * (x * x + y * y),
    ], -1).reshape(*rotations.shape[:-1], 3, 3)
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)
