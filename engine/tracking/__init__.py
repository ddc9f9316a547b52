"""Tracking: photos and videos to FLAME parameters and cameras (offline, mediapipe).

``fit_flame`` (landmarks -> FLAME + camera), ``track_image`` (photo -> :class:`TrackedImage`, a
matted 512^2 source crop with its fit) and ``track_video`` (video -> driving sequence).
"""
from .fit import FlameFit, fit_flame
from .image import TrackedImage, track_image
from .video import track_video

__all__ = ["FlameFit", "fit_flame", "TrackedImage", "track_image", "track_video"]
