"""build-dataset: videos -> plain training dataset with our tracker (mediapipe on a real photo)."""
import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from gagavatar.engine.errors import GAGAvatarError
from gagavatar.engine.flame import load_flame
from gagavatar.engine.sequence import load_sequence
from gagavatar.engine.training.build import build_dataset, sample_frames
from gagavatar.engine.training.datasets import PairDataset, evaluation_pairs, open_dataset


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """Six frames of the (public-domain) astronaut photo drifting by a few pixels."""
    path = tmp_path_factory.mktemp("video") / "astronaut.mp4"
    img = skdata.astronaut()
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (512, 512))
    for t in range(6):
        w.write(np.ascontiguousarray(cv2.warpAffine(img, np.float32([[1, 0, 3 * t], [0, 1, 2 * t]]), (512, 512))[..., ::-1]))
    w.release()
    return path


def test_sample_frames_spreads_over_the_usable_frames():
    usable = np.array([False, True, True, True, False, True, True, True, True, True])
    assert sample_frames(usable, 3).tolist() == [1, 6, 9]
    assert sample_frames(usable, 20).tolist() == [1, 2, 3, 5, 6, 7, 8, 9]


def test_build_dataset_from_videos(video, flame_asset, tmp_path):
    flame = load_flame(flame_asset)
    seen = []
    root = build_dataset([video, video], tmp_path / "ds", frames_per_video=4, val_videos=1, flame=flame,
                         progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert json.loads((root / "dataset.json").read_text()) == {"train": ["astronaut"], "val": ["astronaut_2"],
                                                                "test": []}
    seq = load_sequence(root / "astronaut" / "sequence.npz")
    frames = sorted((root / "astronaut" / "frames").iterdir())
    assert seq.num_frames == 4 and len(frames) == 4 and seq.shape is not None
    img = cv2.imread(str(frames[0]))
    assert img.shape == (512, 512, 3)
    assert (img[:8, :8] == 0).all()                                      # matted to black
    assert 0 <= float(seq.bbox.min()) and float(seq.bbox.max()) <= 1
    ds = open_dataset(root)
    assert ds.splits["train"] == [f"astronaut/{t}" for t in range(4)]
    assert evaluation_pairs(ds, "val")[0][0] == "astronaut_2/0"
    sample = PairDataset(ds, flame, 512)[("astronaut/0", "astronaut/3")]
    assert sample["target_image"].shape == (3, 512, 512) and torch.isfinite(sample["target_vertices"]).all()
    with pytest.raises(GAGAvatarError, match="leave some for training"):
        build_dataset([video], tmp_path / "x", test_videos=1, flame=flame)
