"""engine/framing.py's placement of avatars' crops into a frame: the compiled kernel
(``cpu_backend.place``) against the ``grid_sample`` path it replaces on the CPU and, for several
avatars composited by depth, against a float64 reference of its definition; the reuse of the
frame's pass buffers (bottom-up, as Blender stores them)."""
import contextlib
import threading

import numpy as np
import pytest
import torch

from gagavatar.engine import framing as fr
from gagavatar.engine.splatting import cpu_backend

WINDOWS = {   # (crop window, frame size)
    "magnified, cut by the frame": (fr.CropWindow(1500.3, 20.7, 1000.2, 1200.9), (1920, 1080)),
    "shrunk, off the top left": (fr.CropWindow(-100.5, -50.2, 300.3, 280.1), (320, 240)),
    "same size, fractional offset": (fr.CropWindow(10.25, 5.5, 512.0, 512.0), (600, 530)),
    "larger than the frame": (fr.CropWindow(-2000.0, -1500.0, 5000.0, 5000.0), (640, 480)),
}


def _planes(seed: int = 0, near: float = 2.0) -> torch.Tensor:
    """``[1, 8, 512, 512]`` crop: colours, a patchy alpha (zero in places), depth x alpha (depths in
    ``near .. near + 1``), coarse colours."""
    g = torch.Generator().manual_seed(seed)
    planes = torch.rand(1, 8, 512, 512, generator=g)
    planes[:, 3] *= torch.rand(512, 512, generator=g) > 0.3
    planes[:, 4] = (near + planes[:, 4]) * planes[:, 3]
    return planes


def _layer(window, k, planes):
    return window, window.pixel_bounds(k), fr._shrink(planes, window)


@contextlib.contextmanager
def _kernel_off():
    """The kernel turned off (frames composited in torch) inside the block, as before afterwards."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GAGAVATAR_CPU_KERNEL", "0")
        cpu_backend.reset()
        try:
            yield
        finally:
            cpu_backend.reset()


@pytest.mark.parametrize("case", WINDOWS)
def test_the_kernel_places_a_crop_as_grid_sample_does(case):
    assert cpu_backend.library() is not None
    window, (width, height) = WINDOWS[case]
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, width, height)
    layer = _layer(window, k, _planes())
    got = fr.composite([layer], k)
    with _kernel_off():
        ref = fr.composite([layer], k)
    assert got.combined.shape == (height, width, 4) and got.coarse.shape == (height, width, 3)
    # grid_sample rounds its sample positions to float32 (up to 3e-5 px here); the kernel keeps them exact.
    assert np.abs(got.combined - ref.combined).max() < 1e-4
    assert np.abs(got.coarse - ref.coarse).max() < 1e-4
    assert got.combined[..., 3].max() > 0.5 and (got.combined[..., 3] == 0).any()
    # Depth = (depth x alpha) / alpha: the same where the alpha is not small (its 3e-5 differences
    # are divided by it), background where it is clearly below the threshold.
    alpha = ref.combined[..., 3]
    clear = alpha > 0.1
    assert clear.sum() > 1000 and np.allclose(got.depth[clear], ref.depth[clear], rtol=1e-3)
    assert (got.depth[alpha < 0.5 * fr._MIN_ALPHA] == fr.BACKGROUND_DEPTH).all()
    xa, ya, xb, yb = layer[1]
    outside = np.ones((height, width), bool)
    outside[ya:yb, xa:xb] = False
    assert (got.combined[outside] == 0).all() and (got.coarse[outside] == 0).all()
    assert (got.depth[outside] == fr.BACKGROUND_DEPTH).all()


def test_a_window_on_the_pixel_grid_copies_the_crop_exactly():
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, 600, 530)
    planes = _planes(1)
    got = fr.composite([_layer(fr.CropWindow(40.0, 7.0, 512.0, 512.0), k, planes)], k)
    crop = planes[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got.combined[7:519, 40:552], crop[..., :4])
    assert np.array_equal(got.coarse[7:519, 40:552], crop[..., 5:])
    assert (got.combined[:7] == 0).all() and (got.combined[:, 552:] == 0).all()


SEVERAL = (   # (crop window, nearest depth): three avatars overlapping, in front of one another in places
    (fr.CropWindow(-50.3, 20.2, 400.7, 380.1), 2.0),
    (fr.CropWindow(150.5, -30.0, 520.2, 520.2), 1.6),
    (fr.CropWindow(300.0, 200.0, 256.0, 256.0), 2.4),
)


def _reference(layers, k):
    """The definition of the frame, in float64: each layer's bilinear samples (the kernel's taps),
    at each pixel the layers sorted by depth (stable), composited "over"; the nearest one's depth.

    Returns ``(acc [H, W, 8], depth [H, W], order [L, H, W], alphas [L, H, W])``: ``order`` the
    layers nearest first at each pixel, -1 for those without a depth there."""
    samples, depths, alphas = [], [], []
    for window, (xa, ya, xb, yb), planes in layers:
        p = np.pad(planes[0].double().numpy(), ((0, 0), (1, 1), (1, 1)))   # taps at -1 and sw read 0
        col, colw = fr._taps(xa, xb, window.x0, window.w, p.shape[2] - 2)
        row, roww = fr._taps(ya, yb, window.y0, window.h, p.shape[1] - 2)
        r, c, fy, fx = row[:, None] + 1, col[None] + 1, roww[:, None, None], colw[None, :, None]
        at = lambda dr, dc: p[:, r + dr, c + dc].transpose(1, 2, 0)   # noqa: E731
        v = (1 - fy) * ((1 - fx) * at(0, 0) + fx * at(0, 1)) + fy * ((1 - fx) * at(1, 0) + fx * at(1, 1))
        full = np.zeros((k.height, k.width, 8))
        full[ya:yb, xa:xb] = v
        samples.append(full)
        alpha = full[..., 3]
        alphas.append(alpha)
        depths.append(np.where(alpha > fr._MIN_ALPHA, full[..., 4] / np.maximum(alpha, fr._MIN_ALPHA), np.inf))
    samples, depths = np.stack(samples), np.stack(depths)
    order = np.argsort(depths, axis=0, kind="stable")
    samples = np.take_along_axis(samples, order[..., None], 0)
    depths = np.take_along_axis(depths, order, 0)
    t = np.cumprod(np.concatenate([np.ones_like(samples[:1, ..., 3]), 1 - samples[:-1, ..., 3]]), 0)
    acc = (samples * t[..., None]).sum(0)
    nearest = np.where(np.isinf(depths[0]), fr.BACKGROUND_DEPTH, depths[0])
    return acc, nearest, np.where(np.isfinite(depths), order, -1), np.stack(alphas)


def test_the_kernel_composites_several_avatars_by_depth():
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, 640, 480)
    layers = [_layer(window, k, _planes(seed, near)) for seed, (window, near) in enumerate(SEVERAL, 5)]
    got = fr.composite(layers, k)
    acc, depth, order, alphas = _reference(layers, k)
    assert np.abs(got.combined - acc[..., :4]).max() < 1e-5 and np.abs(got.coarse - acc[..., 5:]).max() < 1e-5
    # The depth order varies over the frame: each avatar is the nearest in places, behind another in others.
    assert all((order[0] == i).any() and (order[1] == i).any() for i in range(len(layers)))
    assert (order[2] >= 0).any()   # all three at once somewhere
    sure = ~((alphas > 0.5 * fr._MIN_ALPHA) & (alphas < 2 * fr._MIN_ALPHA)).any(0)   # no alpha at the threshold
    assert sure.mean() > 0.99 and np.allclose(got.depth[sure], depth[sure], rtol=1e-5)
    # The grid_sample path agrees but where its float32 sample positions reorder two near-equal depths.
    with _kernel_off():
        ref = fr.composite(layers, k)
    close = np.abs(got.combined - ref.combined).max(-1) < 1e-4
    assert close.mean() > 0.999


def test_the_passes_are_top_down_views_of_bottom_up_buffers():
    """Blender's passes run bottom-up: the render engine writes ``layers.combined[::-1]`` without a copy."""
    window, (width, height) = WINDOWS["shrunk, off the top left"]
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, width, height)
    got = fr.composite([_layer(window, k, _planes())], k)
    for top_down in (got.combined, got.coarse, got.depth):
        assert top_down[::-1].flags.c_contiguous
        assert np.ascontiguousarray(top_down[::-1]).ctypes.data == top_down[::-1].ctypes.data


def test_buffers_are_reused_only_once_nothing_refers_to_them():
    window, (width, height) = WINDOWS["shrunk, off the top left"]
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, width, height)
    layer = _layer(window, k, _planes())
    first = fr.composite([layer], k)
    address = first.combined[::-1].ctypes.data
    del first
    second = fr.composite([layer], k)
    assert second.combined[::-1].ctypes.data == address   # the last frame's buffers, free again
    third = fr.composite([layer], k)   # second is alive: new buffers
    assert not np.shares_memory(second.combined, third.combined)
    kept = third.coarse[..., :2]   # a view that outlives its Layers
    expected = kept.copy()
    del second, third
    fourth = fr.composite([layer], k)
    assert not np.shares_memory(kept, fourth.coarse) and np.array_equal(kept, expected)
    address = fourth.depth[::-1].ctypes.data
    del kept, fourth
    assert fr.composite([layer], k).depth[::-1].ctypes.data == address
    bigger = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, width + 8, height)
    assert fr.composite([_layer(window, bigger, _planes())], bigger).combined.shape == (height, width + 8, 4)
    fr.release_buffers()
    assert not fr._spare


def test_two_threads_never_share_buffers():
    """The viewport and a final render may composite at the same time: each gets its own frame."""
    window, (width, height) = WINDOWS["shrunk, off the top left"]
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, width, height)
    layers = [_layer(window, k, _planes(seed)) for seed in (2, 3)]
    expected = [fr.composite([layer], k).combined.copy() for layer in layers]
    assert not np.array_equal(*expected)
    wrong = [0, 0]
    start = threading.Barrier(2)

    def render(i):
        start.wait()
        for _ in range(30):
            frame = fr.composite([layers[i]], k)
            wrong[i] += not np.array_equal(frame.combined, expected[i])
    threads = [threading.Thread(target=render, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [0, 0]


def test_without_the_kernel_the_frame_is_composited_in_torch():
    window, (width, height) = WINDOWS["same size, fractional offset"]
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, width, height)
    with _kernel_off():
        got = fr.composite([_layer(window, k, _planes())], k)
        assert cpu_backend.library() is None
    assert got.combined.flags.c_contiguous   # Layers.empty: top-down arrays of their own
    assert got.combined[..., 3].max() > 0.5 and got.depth.min() < 3.5
    assert cpu_backend.library() is not None


def test_without_the_coarse_pass_the_other_passes_are_the_same():
    """``coarse=False`` (Blender's Coarse pass off) leaves the pass out and changes nothing else, with
    one avatar or several, in the kernel and in torch."""
    k = fr.Intrinsics(1.0, 1.0, 0.0, 0.0, 640, 480)
    several = [_layer(window, k, _planes(seed, near)) for seed, (window, near) in enumerate(SEVERAL, 5)]
    for layers in (several[:1], several):
        for kernel in (True, False):
            with contextlib.nullcontext() if kernel else _kernel_off():
                full = fr.composite(layers, k)
                full = fr.Layers(full.combined.copy(), full.coarse.copy(), full.depth.copy())
                bare = fr.composite(layers, k, coarse=False)
            assert bare.coarse is None
            assert np.array_equal(bare.combined, full.combined) and np.array_equal(bare.depth, full.depth)
            assert full.coarse.max() > 0.1
