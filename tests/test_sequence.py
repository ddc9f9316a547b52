"""Driving-sequence files: our .npz, the official tracker's pkl and tracked.pt, unsafe pickles."""
import os
import pickle

import numpy as np
import pytest
import torch

from gagavatar.engine.errors import GAGAvatarError, UnsafeFileError
from gagavatar.engine.sequence import DrivingSequence, load_sequence, save_sequence


def _seq(T=4, **kw):
    g = torch.Generator().manual_seed(0)
    return DrivingSequence(expression=torch.randn(T, 100, generator=g), jaw=torch.randn(T, 3, generator=g),
                           eyes=torch.randn(T, 6, generator=g), transform=torch.randn(T, 3, 4, generator=g), **kw)


def test_npz_round_trip(tmp_path):
    seq = _seq(fps=29.97, shape=torch.randn(300), bbox=torch.rand(4, 4), landmarks=torch.rand(4, 70, 2),
               missing=torch.tensor([False, True, False, False]), source="clip.mp4")
    save_sequence(seq, tmp_path / "s.npz")
    back = load_sequence(tmp_path / "s.npz")
    assert len(back) == back.num_frames == 4 and back.fps == pytest.approx(29.97) and back.source == "clip.mp4"
    for k in ("expression", "jaw", "eyes", "transform", "shape", "bbox", "landmarks", "missing"):
        assert torch.equal(getattr(back, k), getattr(seq, k)), k
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_official_records_round_trip(tmp_path, suffix):
    seq = _seq(T=12, shape=torch.randn(300), bbox=torch.rand(12, 4))
    save_sequence(seq, tmp_path / f"optim{suffix}")
    back = load_sequence(tmp_path / f"optim{suffix}")
    for k in ("expression", "jaw", "eyes", "transform", "shape", "bbox"):
        assert torch.equal(getattr(back, k), getattr(seq, k)), k  # natural order: f_2 before f_10


def test_official_pkl_global_pose_and_natural_order(tmp_path):
    recs = {f"img_{i}.jpg": {"expcode": np.full(100, i, np.float32), "posecode": np.arange(6, dtype=np.float32),
                             "eyecode": np.zeros(6, np.float32), "transform_matrix": np.eye(3, 4, dtype=np.float32)}
            for i in (10, 2, 1)}
    with open(tmp_path / "smoothed.pkl", "wb") as f:
        pickle.dump(recs, f)
    with pytest.warns(UserWarning, match="global poses"):
        seq = load_sequence(tmp_path / "smoothed.pkl")
    assert seq.expression[:, 0].tolist() == [1, 2, 10] and seq.jaw[0].tolist() == [3, 4, 5]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    with open(tmp_path / "optim.pkl", "wb") as f:
        pickle.dump({"f0": _Evil(marker)}, f)
    with pytest.raises(UnsafeFileError):
        load_sequence(tmp_path / "optim.pkl")
    assert not os.path.exists(marker)


def test_official_tracked_pt_with_numpy_records(tmp_path):
    """inference.py's cache: torch.save of {image name: record with numpy arrays and the crop}."""
    recs = {name: {"shapecode": np.full(300, 0.5, np.float32), "expcode": np.full(100, i, np.float32),
                   "posecode": np.zeros(6, np.float32), "eyecode": np.ones(6, np.float32),
                   "transform_matrix": np.eye(3, 4, dtype=np.float32), "bbox": np.array([0.1, 0.2, 0.8, 0.9], np.float32),
                   "image": np.zeros((3, 8, 8)), "vis_image": np.zeros((3, 8, 8))}
            for i, name in ((1, "b.jpg"), (0, "a.jpg"))}
    torch.save(recs, tmp_path / "tracked.pt")
    seq = load_sequence(tmp_path / "tracked.pt")
    assert seq.expression[:, 0].tolist() == [0, 1] and torch.equal(seq.shape, torch.full((300,), 0.5))
    assert torch.equal(seq.eyes, torch.ones(2, 6)) and torch.allclose(seq.bbox[0], torch.tensor([0.1, 0.2, 0.8, 0.9]))


def test_malicious_tracked_pt_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    torch.save({"a.jpg": {"expcode": _Evil(marker)}}, tmp_path / "tracked.pt")
    with pytest.raises(UnsafeFileError):
        load_sequence(tmp_path / "tracked.pt")
    assert not os.path.exists(marker)


def test_validation_and_bad_suffix(tmp_path):
    with pytest.raises(GAGAvatarError, match="jaw"):
        DrivingSequence(expression=torch.zeros(2, 100), jaw=torch.zeros(3, 3), eyes=torch.zeros(2, 6),
                        transform=torch.zeros(2, 3, 4))
    with pytest.raises(GAGAvatarError, match="use .npz"):
        save_sequence(_seq(), tmp_path / "s.txt")
    with pytest.raises(GAGAvatarError, match="not found"):
        load_sequence(tmp_path / "none.npz")


def _arrays(T=4):
    return dict(expression=np.zeros((T, 100), np.float32), jaw=np.zeros((T, 3), np.float32),
                eyes=np.zeros((T, 6), np.float32), transform=np.tile(np.eye(3, 4, dtype=np.float32), (T, 1, 1)))


@pytest.mark.parametrize("name, index", [("expression", (2, 7)), ("jaw", (3, 0)), ("transform", (1, 2, 3))])
def test_nan_in_a_driving_sequence_is_refused_naming_the_frame(name, index):
    arrays = _arrays()
    arrays[name][index] = np.nan
    with pytest.raises(GAGAvatarError, match=rf"^driving sequence: {name} holds NaN or infinite values "
                                             rf"\(first at frame {index[0]}\)"):
        DrivingSequence(**arrays, fps=25.0)


def test_a_sequence_without_frames_is_one_line():
    with pytest.raises(GAGAvatarError, match="^driving sequence: it has no frames"):
        DrivingSequence(**_arrays(0), fps=25.0)


def test_one_frame_without_the_frame_axis():
    ref = _seq(T=1, bbox=torch.rand(1, 4), landmarks=torch.rand(1, 70, 2), missing=torch.tensor([True]))
    keys = ("expression", "jaw", "eyes", "transform", "bbox", "landmarks", "missing")
    seq = DrivingSequence(**{k: getattr(ref, k)[0] for k in keys})
    assert len(seq) == 1
    for k in keys:
        assert torch.equal(getattr(seq, k), getattr(ref, k)), k


@pytest.mark.parametrize("change, message", [
    (dict(jaw=np.zeros((3, 4))), "jaw must be [T, 3] or [3], got [3, 4]"),
    (dict(landmarks=np.zeros((3, 70))), "landmarks must be [T, 70, 2] or [70, 2], got [3, 70]"),
    (dict(shape=np.zeros((1, 300))), "shape must be [300], got [1, 300]"),
    (dict(jaw=np.zeros((2, 3)), missing=np.zeros(4, bool)),
     "frame counts differ (expression 3, jaw 2, eyes 3, transform 3, missing 4): re-track the source or fix the file"),
    (dict(expression=np.zeros(100)), "frame counts differ (expression 1, jaw 3, eyes 3, transform 3): "
                                     "re-track the source or fix the file"),
])
def test_bad_shapes_and_frame_counts_are_one_line(change, message):
    with pytest.raises(GAGAvatarError) as err:
        DrivingSequence(**{**_arrays(3), **change}, fps=25.0)
    assert str(err.value) == f"driving sequence: {message}" and isinstance(err.value, ValueError)
