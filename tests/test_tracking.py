"""Tracking on real pixels: image loading, crop geometry, mediapipe landmarks, track_image, track_video."""
import warnings

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from gagavatar.engine.errors import Cancelled, GAGAvatarError, NoFaceError
from gagavatar.engine.flame import load_flame
from gagavatar.engine.tracking import track_image, track_video
from gagavatar.engine.tracking.crop import crop_box, crop_image, head_box, load_rgb, to_crop
from gagavatar.engine.tracking.image import find_face
from gagavatar.engine.tracking.landmarks import MESH_TO_70, FaceLandmarker, mesh_to_70
from gagavatar.engine.tracking.video import ema, rotation_from_6d, rotation_to_6d, smooth_sequence


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def finder():
    with FaceLandmarker() as f:
        yield f


@pytest.fixture(scope="module")
def flame(flame_asset):
    return load_flame(flame_asset)


def crop_landmarks(rgb, finder):
    mesh, n = find_face(rgb, finder)
    box = crop_box(head_box(mesh))
    return to_crop(mesh_to_70(mesh), box), box, n


def test_mesh_to_70_mapping():
    assert len(MESH_TO_70) == 70 and MESH_TO_70[68] == (468,) and MESH_TO_70[69] == (473,)
    mesh = np.zeros((478, 2), np.float32)
    mesh[132], mesh[58] = (2.0, 4.0), (4.0, 8.0)
    assert np.allclose(mesh_to_70(mesh)[3], (3.0, 6.0))      # iBUG 3 averages two mesh vertices
    assert mesh_to_70(np.zeros((5, 478, 2))).shape == (5, 70, 2)


def test_load_rgb_formats(tmp_path, astronaut):
    # EXIF orientation 6 ("rotate 90 clockwise to display"): stored pixels are turned counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(astronaut))).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = load_rgb(tmp_path / "rot.jpg")
    assert upright.shape == astronaut.shape and np.abs(upright.astype(int) - astronaut).mean() < 4
    gray = (astronaut.mean(2)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    g = load_rgb(tmp_path / "gray.png")
    assert g.shape == (512, 512, 3) and (g[..., 0] == g[..., 2]).all()
    rgba = np.dstack([astronaut, np.full((512, 512), 255, np.uint8)])
    rgba[:100, :100, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    a = load_rgb(tmp_path / "rgba.png")
    assert (a[:100, :100] == 0).all() and (a[200:] == astronaut[200:]).all()  # transparent -> black
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    assert np.abs(load_rgb(tmp_path / "gray16.png")[..., 0].astype(int) - gray).max() <= 1
    assert np.abs(load_rgb(astronaut.astype(np.uint16) * 257).astype(int) - astronaut).max() <= 1
    assert np.abs(load_rgb(astronaut / 255.0).astype(int) - astronaut).max() <= 1
    assert np.array_equal(load_rgb(torch.from_numpy(astronaut).permute(2, 0, 1)), astronaut)
    assert np.array_equal(load_rgb(Image.fromarray(astronaut)), astronaut)
    with pytest.raises(GAGAvatarError, match="0..1"):
        load_rgb(astronaut.astype(np.float32))
    with pytest.raises(GAGAvatarError, match="at least"):
        load_rgb(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(GAGAvatarError, match="not found"):
        load_rgb(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(GAGAvatarError, match="cannot read"):
        load_rgb(tmp_path / "bad.jpg")


def test_crop_geometry():
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[100, 50] = 255                             # pixel centre (50.5, 100.5)
    for box, size in (((-30.0, 20.25, 200.0), 512), ((40.3, 90.7, 20.0), 64), ((-100.0, -50.0, 1100.0), 128)):
        crop = crop_image(rgb, box, size)   # upscaled / downscaled, partly outside the image (zero padded)
        weight = crop[0].double()
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        centroid = np.array([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
        assert np.abs(centroid - to_crop(np.array([50.5, 100.5]), box, size)).max() < 0.05 * size / 64
    assert crop_image(rgb, (-30.0, 20.0, 200.0), 512)[:, :, :70].max() == 0  # the 30 px left of the image
    assert np.allclose(crop_box(np.array([10.0, 20.0, 110.0, 120.0])), (-22.5, -12.5, 165.0))  # 1.65 x, centred


def test_landmarks_on_real_photo_variants(astronaut, finder):
    ref, box, n = crop_landmarks(astronaut, finder)
    assert n == 1
    # semantic order: image-left eye first, eyes above the nose tip, above the mouth, above the chin
    assert ref[68, 0] < ref[69, 0] and ref[36, 0] < ref[45, 0]
    assert ref[68, 1] < ref[30, 1] < ref[51, 1] < ref[57, 1] < ref[8, 1]
    assert np.abs(ref.mean(0) - 256).max() < 60    # the face is centred in the crop
    # the same face large on a huge canvas, small on a huge canvas (found by tiles), tiny, in grayscale:
    # it lands at the same crop coordinates
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[1200:2736, 1800:3336] = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    far = np.zeros((3000, 4000, 3), np.uint8)
    far[2000:2512, 2900:3412] = astronaut
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    gray = np.repeat(astronaut.mean(2, keepdims=True), 3, 2).astype(np.uint8)
    for variant, tol in ((big, 6.0), (far, 3.0), (small, 6.0), (gray, 6.0)):
        lmk, _, _ = crop_landmarks(variant, finder)
        assert np.median(np.linalg.norm(lmk - ref, axis=1)) < tol
    # two faces: the larger one is used, with a warning
    two = np.zeros((600, 1100, 3), np.uint8)
    two[44:556, 20:532] = astronaut
    two[100:484, 650:1034] = cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)
    with pytest.warns(UserWarning, match="2 faces"):
        lmk, _, n = crop_landmarks(two, finder)
    assert n == 2 and np.median(np.linalg.norm(lmk - ref, axis=1)) < 6.0
    with pytest.raises(NoFaceError, match="no face"):
        find_face(np.full((256, 256, 3), 90, np.uint8), finder)


def test_track_image_astronaut(astronaut, flame):
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # one face: no warning
        t = track_image(astronaut, flame)
    assert t.faces_found == 1 and t.crop.shape == (3, 512, 512) and t.mask.shape == (1, 512, 512)
    assert 0 <= float(t.crop.min()) and float(t.crop.max()) <= 1
    cx, cy = t.landmarks[17:].mean(0).long().tolist()
    assert float(t.mask[0, cy - 10:cy + 10, cx - 10:cx + 10].min()) > 0.9      # the face is kept
    assert float(t.crop[:, :40, :40].max()) < 0.05 and float(t.crop[:, :40, -40:].max()) < 0.05  # wall -> black
    assert (t.bbox[:2] < t.bbox[2:]).all() and (0 <= t.bbox).all() and (t.bbox <= 1).all()
    assert t.shape.shape == (300,) and t.expression.shape == (100,) and t.jaw.shape == (3,) and t.eyes.shape == (6,)
    R = t.transform[:, :3]
    assert torch.allclose(R.T @ R, torch.eye(3), atol=1e-5) and abs(float(torch.linalg.det(R)) - 1) < 1e-5
    assert torch.isfinite(t.transform).all() and np.isfinite(t.residual_px)
    # the synthetic FLAME's landmarks are random mesh points: the fit can only beat a single point
    spread = float((t.landmarks - t.landmarks.mean(0)).norm(dim=1).mean())
    assert t.residual_px < spread
    assert t.overlay.shape == (512, 512, 3) and t.overlay.dtype == np.uint8
    assert np.abs(t.overlay.astype(int) - (t.crop.permute(1, 2, 0).numpy() * 255).astype(int)).max() > 50


def _write_clip(path, astronaut, n=14, blank=(5, 6), fps=12.5, seed=0):
    """The astronaut shaken by random shifts/rotations, with blank frames; returns the shifts (px at 256)."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (256, 256))
    for t in range(n):
        M = cv2.getRotationMatrix2D((256, 256), rng.uniform(-3, 3), 1.0)
        M[:, 2] += rng.uniform(-8, 8, 2)
        frame = cv2.resize(cv2.warpAffine(astronaut, M, (512, 512)), (256, 256), interpolation=cv2.INTER_AREA)
        if t in blank:
            frame[:] = 0
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_track_video(tmp_path, astronaut, flame):
    _write_clip(tmp_path / "clip.mp4", astronaut)
    calls = []
    with pytest.warns(UserWarning, match="2 of 14 frames"):
        raw = track_video(tmp_path / "clip.mp4", flame, progress=lambda d, n: calls.append((d, n)), smooth=False)
    assert len(raw) == 14 and raw.fps == pytest.approx(12.5) and raw.source.endswith("clip.mp4")
    assert raw.missing.nonzero().flatten().tolist() == [5, 6]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == calls[-1][1]
    # missing frames are interpolated between their neighbours
    for k in ("expression", "jaw", "eyes"):
        v = getattr(raw, k)
        assert torch.allclose(v[5], v[4] + (v[7] - v[4]) / 3, atol=1e-5)
    assert raw.shape.shape == (300,) and torch.isfinite(raw.transform).all()
    R = raw.transform[:, :, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(14, 3, 3), atol=1e-4)
    # smoothing: less jitter than the raw track, and at least as little as the official one-pass filter
    smooth = smooth_sequence(raw)

    def jitter(tr):
        return float(np.abs(np.diff(tr.numpy(), 2, axis=0)).mean())
    official_t = torch.from_numpy(ema(raw.transform[:, :, 3].double().numpy(), 0.6, zero_phase=False))
    assert jitter(smooth.transform[:, :, 3]) < 0.6 * jitter(raw.transform[:, :, 3])
    assert jitter(smooth.transform[:, :, 3]) <= jitter(official_t)
    assert jitter(smooth.eyes) < jitter(raw.eyes) and torch.equal(smooth.expression, raw.expression)
    Rs = smooth.transform[:, :, :3]
    assert torch.allclose(Rs.transpose(1, 2) @ Rs, torch.eye(3).expand(14, 3, 3), atol=1e-5)


def test_track_video_cancel_and_errors(tmp_path, astronaut, flame):
    _write_clip(tmp_path / "clip.mp4", astronaut, n=6, blank=())
    seen = []
    with pytest.raises(Cancelled):
        track_video(tmp_path / "clip.mp4", flame, progress=lambda d, n: seen.append(d), cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2
    _write_clip(tmp_path / "blank.mp4", astronaut, n=3, blank=(0, 1, 2))
    with pytest.raises(NoFaceError):
        track_video(tmp_path / "blank.mp4", flame)
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    with pytest.raises(GAGAvatarError):
        track_video(tmp_path / "bad.mp4", flame)


def test_ema_and_rotation_6d():
    ramp = np.linspace(0, 10, 50)[:, None]
    one_pass, zero_phase = ema(ramp, 0.6, zero_phase=False), ema(ramp, 0.6)
    assert np.abs(zero_phase - ramp)[20:-20].max() < 1e-6 < np.abs(one_pass - ramp)[20:-20].min()  # no lag
    R = cv2.Rodrigues(np.array([0.3, -0.2, 0.5]))[0]
    assert np.allclose(rotation_from_6d(rotation_to_6d(R)), R)


def test_a_folder_given_as_the_image_is_named_as_such(tmp_path):
    from gagavatar.engine.errors import GAGAvatarError
    from gagavatar.engine.tracking.crop import load_rgb
    with pytest.raises(GAGAvatarError, match="is a folder, not an image"):
        load_rgb(tmp_path)


def test_a_small_head_warns_that_the_avatar_will_be_soft(astronaut, flame):
    small = cv2.resize(astronaut, (160, 160), interpolation=cv2.INTER_AREA)
    with pytest.warns(UserWarning, match=r"the head in the image spans only \d+ px .* will look soft"):
        t = track_image(small, flame, iterations=20)
    assert t.crop_box[2] < 160
