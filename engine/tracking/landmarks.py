"""Face detection and the 478-point face mesh (mediapipe Tasks API) and the 478 -> 70 mapping.

The models are files of the asset folder (:data:`~..assets.TRACKING_MODELS`, found through
:func:`~..assets.tracking_model_path`): the full-range and short-range face detectors and the face
landmarker bundle (478 points with irises), all Google's MediaPipe models.

Coordinates are pixels of the image given, OpenCV convention: ``x`` right, ``y`` down, the centre
of pixel ``i`` at ``i + 0.5`` (mediapipe's normalised coordinates times the image size).

The 70 points are GAGAvatar's: the 68 iBUG points (0-16 jaw contour from the subject's right ear
to the left one, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 lips) then the two eye centres
(68: the subject's right eye, on the image left; 69: the left eye), which mediapipe gives as the
iris centres 468 and 473. Where an iBUG point falls between two mesh
vertices, the mapping averages both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np

from ..assets import tracking_model_path
from ..errors import GAGAvatarError
from .crop import crop_image
from .quiet import native_stderr_silenced

__all__ = ["MESH_TO_70", "mesh_to_70", "FaceBox", "FaceLandmarker"]

MESH_TO_70: tuple[tuple[int, ...], ...] = (
    # 0-16 jaw contour, subject's right (image left) to left
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # 17-21 right brow, 22-26 left brow (outer to inner, inner to outer)
    (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,), (293,), (300,),
    # 27-30 nose bridge, 31-35 nostrils
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # 36-41 right eye (outer corner, upper, inner corner, lower), 42-47 left eye
    (33,), (160,), (158,), (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,),
    # 48-59 outer lips from the right corner, 60-67 inner lips
    (61,), (40,), (37,), (0,), (267,), (270,), (291,), (321, 405), (314,), (17,), (84,), (91, 181),
    (78,), (81,), (13,), (311,), (308,), (402,), (14,), (178,),
    # 68-69 eye centres (iris centres)
    (468,), (473,),
)
"""Mediapipe face-mesh vertices averaged into each of the 70 points."""

N_MESH = 478
_MESH_ROI = 384          # side of the square face region the mesh model is run on, px
_ROI_SCALE = 2.0         # face region side / longer side of the face box
_DETECT_MAX_SIDE = 1280  # larger images are shrunk for detection only
_TILE = 1024             # tile side for finding small faces in large images

_MAP = np.zeros((70, N_MESH), np.float32)
for _row, _cols in enumerate(MESH_TO_70):
    _MAP[_row, list(_cols)] = 1.0 / len(_cols)


def mesh_to_70(mesh: np.ndarray) -> np.ndarray:
    """The 70 GAGAvatar landmarks ``[..., 70, 2]`` from face-mesh points ``[..., 478, 2]`` (same units)."""
    if mesh.shape[-2:] != (N_MESH, 2):
        raise ValueError(f"expected [..., {N_MESH}, 2] face-mesh points, got {mesh.shape}")
    return np.einsum("lm,...mc->...lc", _MAP, mesh.astype(np.float32))


@dataclass(frozen=True)
class FaceBox:
    """A detected face: box ``(x0, y0, x1, y1)`` in pixels and the detector's score (0..1)."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def mediapipe_tasks() -> tuple[Any, Any, Any]:
    """``(mediapipe, mediapipe.tasks.python.vision, BaseOptions)``: the Tasks API (mediapipe 1.x on Python 3.11 and 3.13)."""
    try:
        with native_stderr_silenced():
            import mediapipe
            from mediapipe.tasks.python import vision
            from mediapipe.tasks.python.core.base_options import BaseOptions
    except ImportError as err:  # pragma: no cover - depends on the install
        raise GAGAvatarError("tracking needs mediapipe: install the add-on's dependencies "
                             "(`pip install mediapipe`)") from err
    return mediapipe, vision, BaseOptions


def as_mp_image(rgb: np.ndarray) -> Any:
    """A mediapipe image of an ``HxWx3`` uint8 RGB array."""
    mediapipe, _, _ = mediapipe_tasks()
    return mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


Detector = Callable[[np.ndarray], list[tuple[tuple[float, float, float, float], float]]]
"""``rgb -> [((x0, y0, x1, y1) as fractions of the width and height, score), ...]``."""

PathLike = Union[str, os.PathLike]


def _tasks_detector(model: str, min_confidence: float, assets: Optional[PathLike]) -> tuple[Detector, Any]:
    """A Tasks ``FaceDetector`` on ``model`` (a file of the asset folder): ``(detect, closeable)``."""
    _, vision, BaseOptions = mediapipe_tasks()
    path = tracking_model_path(model, assets)
    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                         running_mode=vision.RunningMode.IMAGE, min_detection_confidence=min_confidence)
    with native_stderr_silenced():
        detector = vision.FaceDetector.create_from_options(options)

    def detect(rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        H, W = rgb.shape[:2]
        with native_stderr_silenced():
            result = detector.detect(as_mp_image(rgb))
        return [((b.origin_x / W, b.origin_y / H, (b.origin_x + b.width) / W, (b.origin_y + b.height) / H),
                 float(d.categories[0].score)) for d in result.detections for b in (d.bounding_box,)]
    return detect, detector


class FaceLandmarker:
    """Mediapipe face detection (full- and short-range models) and the 478-point mesh with irises.

    Use as a context manager (or call :meth:`close`) to free the mediapipe graphs.

    Args:
        min_confidence: detection score threshold (0..1).
        assets: the asset folder holding the tracking models (default: :func:`~..assets.find_assets`).

    Raises:
        AssetError: a tracking model is missing (the message says to run ``gagavatar assets download``).
    """

    def __init__(self, min_confidence: float = 0.5, assets: Optional[PathLike] = None) -> None:
        _, vision, BaseOptions = mediapipe_tasks()
        mesh_options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(tracking_model_path("face_landmarker.task", assets))),
            running_mode=vision.RunningMode.IMAGE, num_faces=3, min_face_detection_confidence=min_confidence)
        self._graphs: list[Any] = []
        try:
            full, graph = _tasks_detector("face_detection_full_range_sparse.tflite", min_confidence, assets)
            self._graphs.append(graph)
            short, graph = _tasks_detector("face_detection_short_range.tflite", min_confidence, assets)
            self._graphs.append(graph)
            with native_stderr_silenced():
                self._mesh = vision.FaceLandmarker.create_from_options(mesh_options)
        except BaseException:
            self.close()
            raise
        self._graphs.append(self._mesh)
        self._detectors: list[Detector] = [full, short]

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the mediapipe graphs."""
        with native_stderr_silenced():
            for graph in self._graphs:
                graph.close()
        self._graphs, self._detectors, self._mesh = [], [], None

    def _detect_in(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in one view (shrunk to ``_DETECT_MAX_SIDE`` at most): full-range model, else short-range."""
        H, W = rgb.shape[:2]
        s = min(1.0, _DETECT_MAX_SIDE / max(H, W))
        view = cv2.resize(rgb, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA) \
            if s < 1.0 else np.ascontiguousarray(rgb)
        for detector in self._detectors:
            found = detector(view)
            if found:
                return [FaceBox((x0 * W, y0 * H, x1 * W, y1 * H), score) for (x0, y0, x1, y1), score in found]
        return []

    def _confirmed(self, rgb: np.ndarray, faces: list[FaceBox]) -> list[FaceBox]:
        """The boxes on which the mesh model finds a face centred inside the box."""
        kept = []
        for f in faces:
            mesh = self.mesh(rgb, f.box)
            if mesh is not None:
                cx, cy = mesh.mean(0)
                if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]:
                    kept.append(f)
        return kept

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in ``rgb`` (``HxWx3`` uint8), largest first.

        The whole image first; if that finds no face in a large image (where a small face shrinks
        below the detector's reach), overlapping ``_TILE``-pixel tiles, merged by overlap. Only
        boxes the mesh model confirms (:meth:`_confirmed`) count: near the score threshold the
        detectors take a shrunk body or background for a face now and then.
        """
        faces = self._confirmed(rgb, self._detect_in(rgb))
        H, W = rgb.shape[:2]
        if not faces and max(H, W) > _DETECT_MAX_SIDE:
            stride = _TILE * 3 // 4
            tiled: list[FaceBox] = []
            for y in range(0, max(H - _TILE, 0) + stride, stride):
                for x in range(0, max(W - _TILE, 0) + stride, stride):
                    tiled += [FaceBox((b[0] + x, b[1] + y, b[2] + x, b[3] + y), f.score)
                              for f in self._detect_in(rgb[y:y + _TILE, x:x + _TILE]) for b in (f.box,)]
            kept: list[FaceBox] = []
            for f in sorted(tiled, key=lambda f: -f.score):
                if all(_iou(f.box, k.box) < 0.3 for k in kept):
                    kept.append(f)
            faces = self._confirmed(rgb, kept)
        return sorted(faces, key=lambda f: -f.area)

    def mesh(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> Optional[np.ndarray]:
        """The 478 mesh points ``[478, 2]`` (pixels of ``rgb``) of the face in ``box``, or None.

        The mesh model runs on a square region around the box (``_ROI_SCALE`` x its longer side,
        black outside the image) resampled to ``_MESH_ROI`` pixels, so that huge and tiny
        images and small faces all reach it at a good size; of the faces found there, the one
        nearest the region's centre is kept.
        """
        x0, y0, x1, y1 = box
        side = _ROI_SCALE * max(x1 - x0, y1 - y0, 1.0)
        roi_box = ((x0 + x1 - side) / 2.0, (y0 + y1 - side) / 2.0, side)
        roi = (crop_image(rgb, roi_box, _MESH_ROI).permute(1, 2, 0) * 255.0 + 0.5).byte().numpy()
        with native_stderr_silenced():
            result = self._mesh.detect(as_mp_image(roi))
        meshes = [np.array([(p.x, p.y) for p in face], np.float64) * _MESH_ROI
                  for face in result.face_landmarks if len(face) == N_MESH]
        if not meshes:
            return None
        best = min(meshes, key=lambda m: float(np.linalg.norm(m.mean(0) - _MESH_ROI / 2.0)))
        return (best * (roi_box[2] / _MESH_ROI) + np.array(roi_box[:2], np.float64)).astype(np.float32)
