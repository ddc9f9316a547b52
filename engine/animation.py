"""Procedural driving sequences: a short built-in animation for demos and previews."""
from __future__ import annotations

import math

import torch

from .cameras import transform_from_pose
from .sequence import DrivingSequence


def orbit_sequence(source_transform: torch.Tensor, n_frames: int = 48, fps: float = 24.0,
                   yaw_deg: float = 25.0, jaw_open: float = 0.25, expression_scale: float = 1.5) -> DrivingSequence:
    """A looping "look around and talk" animation around the source view.

    The head pose lives in the camera (official convention): the camera orbits ``+-yaw_deg``
    around the head at the source distance while the jaw opens and closes and the first
    expression components oscillate.

    Args:
        source_transform: ``[3, 4]`` source camera; its distance and pitch are kept.
        n_frames: number of frames; fps: frame rate stored in the sequence.
    Returns:
        :class:`~.sequence.DrivingSequence` with ``n_frames`` frames.
    """
    src = source_transform.detach().float().cpu()
    distance = src[:, 3].norm().item()
    t = torch.arange(n_frames, dtype=torch.float32) / max(n_frames, 1)
    phase = 2 * math.pi * t
    yaw = math.radians(yaw_deg) * torch.sin(phase)
    pitch = 0.08 * torch.sin(2 * phase)
    aa = torch.stack([pitch, yaw, torch.zeros_like(yaw)], -1)
    translation = torch.tensor([0.0, 0.0, distance]).expand(n_frames, 3)
    transform = transform_from_pose(aa, translation)
    expression = torch.zeros(n_frames, 100)
    expression[:, 0] = expression_scale * torch.sin(2 * phase)
    expression[:, 1] = 0.5 * expression_scale * torch.sin(3 * phase + 1.0)
    jaw = torch.zeros(n_frames, 3)
    jaw[:, 0] = jaw_open * 0.5 * (1 - torch.cos(4 * phase))
    eyes = torch.zeros(n_frames, 6)
    eyes[:, 1] = eyes[:, 4] = 0.15 * torch.sin(phase)
    return DrivingSequence(expression=expression, jaw=jaw, eyes=eyes, transform=transform, fps=fps,
                           source="gagavatar orbit_sequence")
