"""Background removal of the 512^2 head crop: mediapipe selfie segmentation, background to black.

The official tracker mattes its crops with StyleMatte and composites them over black
(``image * alpha``); GAGAvatar was trained on such crops. Mediapipe's selfie segmentation
(bundled with the wheel) gives a soft person mask that plays the same role here.
"""
from __future__ import annotations

import numpy as np
import torch

from .landmarks import mediapipe_solutions

__all__ = ["SelfieMatte"]


class SelfieMatte:
    """Soft person mask of a crop (the general 256x256 model); a context manager owning the mediapipe graph."""

    def __init__(self) -> None:
        self._graph = mediapipe_solutions().selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __enter__(self) -> "SelfieMatte":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the mediapipe graph."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def mask(self, crop: torch.Tensor) -> torch.Tensor:
        """Person mask ``[1, H, W]`` (0..1) of a crop ``[3, H, W]`` (0..1)."""
        rgb = (crop.detach().cpu().clamp(0, 1).permute(1, 2, 0) * 255.0 + 0.5).byte().numpy()
        result = self._graph.process(np.ascontiguousarray(rgb))
        return torch.from_numpy(np.clip(result.segmentation_mask, 0.0, 1.0).astype(np.float32))[None]

    def __call__(self, crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(crop * mask, mask)``: the crop over black and its ``[1, H, W]`` mask."""
        mask = self.mask(crop)
        return crop * mask.to(crop), mask
