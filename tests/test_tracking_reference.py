"""The tracker against recorded outputs (tests/data/tracking_reference.npz, see tests/data/README.md).

Scenes: the astronaut photo; a "group photo" of the astronaut's head at three sizes (the largest,
in the middle, must win); the astronaut (face ~100 px) in a 3000^2 image, found by tiles. The
reference is the legacy ``mediapipe.solutions`` tracker; the Tasks-API one measured (mediapipe
0.10.21 and 1.2.3): 70 landmarks within 0.7-1.0 px median, 3.4 px max; boxes within 4.5% of their
side; person mask within 0.022 mean, IoU 0.96 at 0.5. Tolerances: 1.5 px median, 4.5 px max, 6%,
0.035 and 0.94.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from gagavatar.engine.tracking.crop import crop_box, crop_image, head_box
from gagavatar.engine.tracking.landmarks import FaceBox, FaceLandmarker, mesh_to_70
from gagavatar.engine.tracking.matting import SelfieMatte

REFERENCE = Path(__file__).parent / "data" / "tracking_reference.npz"


def scenes() -> dict[str, np.ndarray]:
    """The reference scenes, ``HxWx3`` uint8 RGB, built deterministically from skimage's astronaut."""
    astronaut = skimage.data.astronaut()
    head = astronaut[20:320, 76:376]
    group = np.full((520, 1120, 3), 50, np.uint8)
    for side, (y, x) in ((240, (200, 20)), (440, (40, 300)), (320, (100, 780))):
        group[y:y + side, x:x + side] = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA if side < 300
                                                   else cv2.INTER_CUBIC)
    far = np.full((3000, 3000, 3), 60, np.uint8)
    far[2100:2612, 700:1212] = astronaut
    return {"astronaut": astronaut, "group": group, "far": far}


def track_scene(finder: FaceLandmarker, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [N, 4], mesh [478, 2], landmarks [70, 2])``: all faces, largest first, and the largest one's points."""
    faces = finder.detect(rgb)
    mesh = finder.mesh(rgb, faces[0].box)
    return np.array([f.box for f in faces], np.float32), mesh, mesh_to_70(mesh)


def matte_of_astronaut(finder: FaceLandmarker, matte: SelfieMatte) -> np.ndarray:
    """The person mask of the astronaut's 512^2 head crop, area-resampled to ``[128, 128]`` (0..1)."""
    rgb = skimage.data.astronaut()
    mesh = finder.mesh(rgb, finder.detect(rgb)[0].box)
    mask = matte.mask(crop_image(rgb, crop_box(head_box(mesh)), 512))[0].numpy()
    return cv2.resize(mask, (128, 128), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def finder(tracking_models):
    with FaceLandmarker(assets=tracking_models) as f:
        yield f


@pytest.mark.parametrize("name", ["astronaut", "group", "far"])
def test_faces_and_landmarks_match_the_reference(finder, reference, name):
    rgb = scenes()[name]
    boxes, mesh, lmk70 = track_scene(finder, rgb)
    ref_boxes = reference[f"{name}_boxes"]
    assert boxes.shape == ref_boxes.shape                      # the same faces, largest first
    side = ref_boxes[:, 2:] - ref_boxes[:, :2]
    assert (np.abs(boxes - ref_boxes) <= 0.06 * np.concatenate([side, side], 1)).all()
    err = np.linalg.norm(lmk70 - reference[f"{name}_lmk70"], axis=1)
    assert np.median(err) < 1.5 and err.max() < 4.5            # pixels, faces of 100-150 px
    assert np.median(np.linalg.norm(mesh - reference[f"{name}_mesh"], axis=1)) < 1.5


def test_matte_matches_the_reference(finder, reference, tracking_models):
    with SelfieMatte(assets=tracking_models) as matte:
        mask = matte_of_astronaut(finder, matte)
    ref = reference["matte"]
    assert mask.shape == ref.shape and 0 <= mask.min() and mask.max() <= 1
    assert np.abs(mask - ref).mean() < 0.035
    inter, union = ((mask > 0.5) & (ref > 0.5)).sum(), ((mask > 0.5) | (ref > 0.5)).sum()
    assert inter / union > 0.94


def test_only_boxes_the_mesh_model_confirms_are_faces(finder):
    rgb = scenes()["astronaut"]
    face = finder.detect(rgb)[0]
    body = FaceBox((260.0, 330.0, 400.0, 470.0), 0.6)   # the space suit below the face
    wall = FaceBox((20.0, 20.0, 120.0, 120.0), 0.6)
    assert finder._confirmed(rgb, [body, face, wall]) == [face]
