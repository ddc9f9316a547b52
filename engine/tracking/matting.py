"""Background removal of the 512^2 head crop: mediapipe selfie segmentation, background to black.

The official tracker mattes its crops with StyleMatte and composites them over black
(``image * alpha``); GAGAvatar was trained on such crops. Mediapipe's selfie segmentation model
(``selfie_segmentation.tflite`` of the asset folder, run by the Tasks ``ImageSegmenter``) gives a
soft person mask that plays the same role here.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..assets import tracking_model_path
from .landmarks import PathLike, as_mp_image, mediapipe_tasks
from .quiet import native_stderr_silenced

__all__ = ["SelfieMatte"]


class SelfieMatte:
    """Soft person mask of a crop (the general 256x256 model); a context manager owning the mediapipe graph.

    Args:
        assets: the asset folder holding ``selfie_segmentation.tflite`` (default: :func:`~..assets.find_assets`).

    Raises:
        AssetError: the model is missing (the message says to run ``gagavatar assets download``).
    """

    def __init__(self, assets: Optional[PathLike] = None) -> None:
        _, vision, BaseOptions = mediapipe_tasks()
        model = tracking_model_path("selfie_segmentation.tflite", assets)
        options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(model)),
                                               running_mode=vision.RunningMode.IMAGE,
                                               output_confidence_masks=True, output_category_mask=False)
        with native_stderr_silenced():
            self._graph = vision.ImageSegmenter.create_from_options(options)

    def __enter__(self) -> "SelfieMatte":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the mediapipe graph."""
        if self._graph is not None:
            with native_stderr_silenced():
                self._graph.close()
            self._graph = None

    def mask(self, crop: torch.Tensor) -> torch.Tensor:
        """Person mask ``[1, H, W]`` (0..1) of a crop ``[3, H, W]`` (0..1)."""
        rgb = (crop.detach().cpu().clamp(0, 1).permute(1, 2, 0) * 255.0 + 0.5).byte().numpy()
        with native_stderr_silenced():
            result = self._graph.segment(as_mp_image(rgb))
        mask = np.array(result.confidence_masks[0].numpy_view(), np.float32).reshape(rgb.shape[:2])
        return torch.from_numpy(np.clip(mask, 0.0, 1.0))[None]

    def __call__(self, crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(crop * mask, mask)``: the crop over black and its ``[1, H, W]`` mask."""
        mask = self.mask(crop)
        return crop * mask.to(crop), mask
