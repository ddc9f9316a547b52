"""Vectorized PyTorch rasterizer reproducing GAGAvatar's official 32-channel 3DGS CUDA kernel.

The official forward (xg-chu/diff-gaussian-rasterization, the Inria kernel with C channels) is
reproduced step for step (conformance items 24-33):

* preprocess: near cull ``z_view <= 0.2`` only; 2D covariance with the ``1.3 * tan_fov`` clamp of
  ``x/z, y/z`` and ``+0.3`` on the diagonal; ``det == 0`` dropped; ``conic = (c, -b, a) / det``;
  ``radius = ceil(3 sqrt(lambda_max))`` with ``lambda = mid +- sqrt(max(0.1, mid^2 - det))``;
  ``ndc2Pix`` in double (the centre of pixel ``i`` is at ``i``); the truncating 16x16 tile rect
  ``[(int)((p - r) / 16), (int)((p + r + 15) / 16))`` (empty rect = dropped).
* render: a Gaussian reaches a pixel only if the pixel's tile lies in its rect; per pixel the
  Gaussians are composited front to back by view depth (ties by index): ``power > 0`` skipped,
  ``alpha = min(0.99, o exp(power))``, ``alpha < 1/255`` skipped, and compositing stops *before*
  a Gaussian with ``T (1 - alpha) < 1e-4``; ``out = sum(c alpha T) + T bg``.

Instead of the kernel's per-pixel loop the image is cut into 8x8 pixel blocks and each block gets
the depth-ordered list of the Gaussians that can reach ``alpha >= 1/255`` in it (inside the tile
rect and the ``d^T conic d <= 2 ln(255 o)`` ellipse, bounded per block row). The lists are
composited ``WINDOW`` Gaussians at a time, blocks with windows of similar length stacked into dense
``[blocks, L, 64]`` tensors: ``power`` (one float64 product of per-Gaussian quadratic coefficients
with the blocks' pixel basis, rounded to float32), ``alpha`` and the transmittance (the float32
running product along the list, taken in segments of ``SCAN``: within-segment products with one
vectorized multiply per step, then a product across segments) are computed for all pixels at once,
and the features are accumulated with one batched matrix product per stack. Each pixel's
transmittance is carried from window to window; blocks whose pixels have all stopped compositing
(``T < 1e-4``) are dropped between windows, and Gaussians whose blocks have all stopped are dropped
before their pairs are made (Gaussians are taken in depth-ordered chunks of a bounded number of
pairs, so memory stays bounded). A stopping pixel keeps ``T = T_in - sum(alpha T)`` over the
window (the same product up to float rounding). The result agrees with the kernel up to float
rounding (~1e-7 relative; ``1 - T`` within a few 1e-7) and rare threshold flips (``alpha ~ 1/255``,
``T ~ 1e-4``), like the conformance kit's port.

Without float64 (Apple MPS; ``rasterize(..., exact=False)``, chosen automatically there) the same
pipeline runs in float32 only:

* ``ndc2Pix`` is ``v (S / 2) + (S - 1) / 2`` with an error-free float32 product (Dekker) and sum
  (Knuth), rounded once: ``means2D`` is the double-evaluated value bit for bit but for rare ties.
* ``power`` is the kernel's own per-pixel float32 arithmetic, ``d = mean - pixel`` and then
  ``-0.5 (a dx^2 + c dy^2) - b dx dy``; nothing is expanded in absolute pixel coordinates, which
  would cancel. Per block the terms ``a dx^2``, ``b dx`` are formed for its 8 pixel columns and
  ``c dy^2``, ``dy`` for its 8 rows, then combined over its 64 pixels by one add, one scale and one
  ``addcmul``.
* the footprint bounds are evaluated in float32 with margins widened to the float32 rounding of
  ``power`` and of the bounds themselves (``_F32_REL``, ``_F32_ABS``); the risky-conic test is
  rewritten so that it cannot overflow.

It differs from the float64 path by float rounding and rare threshold flips (the kit's render case:
features by at most 3.6e-7, radii identical) and passes the conformance kit's statistical criteria.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

BLOCK = 16
"""Tile side of the official kernel, in pixels."""
NEAR = 0.2
"""View-space depth at or below which Gaussians are culled (world units)."""
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
SUB = 8
"""Side of the pixel blocks the compositing works on (a tile holds 2 x 2 of them)."""
SCAN = 8
"""Segment length of the running product: a product within segments (one vectorized multiply per
step over all segments), then one across segments."""
MAX_PAIRS = 1 << 25
"""(Gaussian, pixel) pairs per depth chunk; blocks that stopped compositing are skipped between chunks."""
WINDOW = 64
"""Gaussians of a block's list composited at once; blocks whose pixels all stopped are dropped between windows."""
GROUP_PAIRS = 1 << 19
"""(Gaussian, pixel) pairs per dense stack (its float32 temporaries are reused: 2 MiB each)."""
_BELOW_ALPHA_MIN = float(torch.nextafter(torch.tensor(1.0) / 255.0, torch.tensor(0.0)))
"""The float32 just below ``1.0f / 255.0f``: ``alpha > _BELOW_ALPHA_MIN`` is the kernel's ``!(alpha < 1/255)``."""
_BELOW_T_MIN = float(torch.nextafter(torch.tensor(T_MIN), torch.tensor(0.0)))
"""The float32 just below ``0.0001f``: ``T > _BELOW_T_MIN`` is the kernel's ``!(T < 0.0001f)``."""
_MARGIN_REL, _MARGIN_PX = 1e-4, 1e-3
"""Widening of the ``alpha >= 1/255`` ellipse against float32 rounding of ``power`` (relative, pixels)."""
_F32_REL, _F32_ABS = 32 * 2.0 ** -24, 8 * 2.0 ** -24
"""Further widening in float32 mode (multiples of the float32 unit roundoff ``2^-24``): of the ellipse's
limit by ``_F32_REL / (1 - rho^2)``, ``rho = b / sqrt(a c)`` (the float32 ``power`` errs by a few
roundoffs of ``a dx^2 + c dy^2``, up to ``2 / (1 - rho^2)`` times ``|power|``, and so do the row
extents), and of the bounds by ``_F32_ABS`` times the Gaussian's centre and extent (pixels)."""


def _split(x: Tensor) -> tuple[Tensor, Tensor]:
    """Veltkamp's split of float32 ``x`` into ``hi + lo`` (exactly), each of at most 12 significant bits."""
    s = x * 4097.0
    hi = s - (s - x)
    return hi, x - hi


def _ndc2pix(v: Tensor, size: int, exact: bool) -> Tensor:
    """``[N]`` float32 pixel coordinate ``((v + 1) size - 1) / 2`` (official ``ndc2Pix``) of NDC ``v [N]`` float32.

    The kernel evaluates it in double; ``exact=False`` evaluates ``v (size / 2) + (size - 1) / 2`` in
    float32 only: Dekker's error-free product ``p + e = v size / 2`` and Knuth's error-free sum
    ``s + f = p + (size - 1) / 2`` (both constants exact in float32), rounded once as ``s + (f + e)``:
    the double path's value except in rare rounding ties. Where the split overflows (``|v| > 8e34``
    or not finite) it is the plain ``p + (size - 1) / 2``.
    """
    if exact:
        return (((v.double() + 1.0) * size - 1.0) * 0.5).float()
    half, shift = size / 2, (size - 1) / 2
    h_hi, h_lo = (float(t) for t in _split(torch.tensor(half, dtype=torch.float32)))
    v_hi, v_lo = _split(v)
    p = v * half
    e = ((v_hi * h_hi - p) + v_hi * h_lo + v_lo * h_hi) + v_lo * h_lo
    s = p + shift
    t = s - p
    f = (p - (s - t)) + (shift - t)
    out = s + (f + e)
    return torch.where(torch.isfinite(out), out, s)


def preprocess(means: Tensor, covars: Tensor, viewmatrix: Tensor, projmatrix: Tensor,
               tanfovx: float, tanfovy: float, height: int, width: int,
               exact: bool | None = None) -> dict[str, Tensor]:
    """Per-Gaussian projection of one camera, as the official ``preprocessCUDA``.

    Args:
        means: ``[N, 3]`` world positions.
        covars: ``[N, 3, 3]`` world covariances (world units squared).
        viewmatrix: ``[4, 4]`` official view matrix, read row-major
            (``p_view = p @ V[:3, :3] + V[3, :3]``, x right, y down, z forward).
        projmatrix: ``[4, 4]`` official full projection (``V @ K^T``).
        tanfovx, tanfovy: tangents of the half fields of view (``1 / focal``).
        height, width: image size in pixels.
        exact: ``ndc2Pix`` in float64 as the kernel; ``False``: in float32 only (see :func:`_ndc2pix`);
            ``None``: ``True`` where :func:`has_float64`.

    Returns:
        dict of float32 tensors: ``means2D [N, 2]`` pixels (centre of pixel ``i`` at ``i``),
        ``depth [N]`` view-space z, ``conic [N, 3]`` (inverse 2D covariance ``a, b, c``),
        ``cov3D [N, 6]`` (upper triangle ``xx, xy, xz, yy, yz, zz``), ``cov2D [N, 3]``
        (``a, b, c`` in pixels^2, dilated by 0.3), ``radii [N]`` int32 (0 = dropped),
        ``rect_min, rect_max [N, 2]`` int64 tile rect, ``valid [N]`` bool.
    """
    exact = has_float64(means.device) if exact is None else exact
    p = means.float()
    V = viewmatrix.float()
    Pm = projmatrix.float()
    n = p.shape[0]
    f32 = lambda v: torch.tensor(v, dtype=torch.float32, device=p.device)  # noqa: E731
    fx, fy = f32(width / (2.0 * tanfovx)), f32(height / (2.0 * tanfovy))
    p_view = p @ V[:3, :3] + V[3, :3]
    p_hom = p @ Pm[:3, :] + Pm[3, :]
    p_proj = p_hom[:, :2] * (1.0 / (p_hom[:, 3] + f32(1e-7)))[:, None]
    valid = p_view[:, 2] > NEAR

    sig = covars.float()
    limx, limy = f32(1.3) * f32(tanfovx), f32(1.3) * f32(tanfovy)
    tz = p_view[:, 2]
    tx = torch.minimum(limx, torch.maximum(-limx, p_view[:, 0] / tz)) * tz
    ty = torch.minimum(limy, torch.maximum(-limy, p_view[:, 1] / tz)) * tz
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -(fx * tx) / (tz * tz),
                     zero, fy / tz, -(fy * ty) / (tz * tz)], -1).reshape(n, 2, 3)
    M = J @ V[:3, :3].transpose(0, 1)
    cov = M @ sig @ M.transpose(1, 2)
    a = cov[:, 0, 0] + f32(0.3)
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + f32(0.3)

    det = a * c - b * b
    valid = valid & (det != 0.0)
    det_inv = 1.0 / det
    conic = torch.stack([c * det_inv, -b * det_inv, a * det_inv], -1)
    mid = f32(0.5) * (a + c)
    disc = torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    radius = torch.ceil(f32(3.0) * torch.sqrt(torch.maximum(mid + disc, mid - disc)))
    px, py = _ndc2pix(p_proj[:, 0], width, exact), _ndc2pix(p_proj[:, 1], height, exact)

    gx, gy = (width + BLOCK - 1) // BLOCK, (height + BLOCK - 1) // BLOCK
    r = torch.nan_to_num(radius, nan=0.0, posinf=1e9)

    def rect(v: Tensor, upper: bool, grid: int) -> Tensor:
        t = torch.trunc((((v + r) + BLOCK) - 1.0) / BLOCK) if upper else torch.trunc((v - r) / BLOCK)
        return torch.clamp(torch.nan_to_num(t, nan=0.0), 0, grid).to(torch.int64)

    rect_min = torch.stack([rect(px, False, gx), rect(py, False, gy)], -1)
    rect_max = torch.stack([rect(px, True, gx), rect(py, True, gy)], -1)
    area = (rect_max - rect_min).prod(-1)
    valid = valid & torch.isfinite(radius) & (area != 0)
    sig6 = sig.reshape(n, 9)[:, [0, 1, 2, 4, 5, 8]]
    return {
        "means2D": torch.stack([px, py], -1), "depth": tz, "conic": conic, "cov3D": sig6,
        "cov2D": torch.stack([a, b, c], -1),
        "radii": torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32),
        "rect_min": rect_min, "rect_max": rect_max, "valid": valid,
    }


def depth_order(pre: dict[str, Tensor]) -> Tensor:
    """``[K]`` the visible Gaussians (:func:`preprocess`'s ``valid``) by view depth, ties by index:
    the kernel's compositing order. Visible depths are floats above ``NEAR > 0``, whose bit
    patterns sort as int32 in the same order (8x faster than sorting the floats)."""
    idx = torch.nonzero(pre["valid"]).squeeze(1)
    keys = pre["depth"].float().index_select(0, idx).view(torch.int32)
    return idx.index_select(0, torch.sort(keys, stable=True).indices)


def _risky_conic(conic: Tensor, exact: bool) -> Tensor:
    """``[N]`` bool: rounding may make ``power > 0`` (the conic is not safely positive definite).

    With ``a, c > 0`` and ``b^2 < (1 - 1e-5) a c`` the cross term ``2 b dx dy`` is at most
    ``sqrt(1 - 1e-5)`` times the diagonal terms, a margin no float32 rounding of ``power`` (a few
    ulp) can bridge, so ``power <= 0`` everywhere and its Mahalanobis ellipse bounds the footprint.
    Tested in float64, or (``exact=False``) in float32 as ``|b| < sqrt(1 - 1e-5) sqrt(a) sqrt(c)``,
    which cannot overflow (its rounding, a few 1e-7, is far inside the margin's 5e-6).
    """
    if exact:
        a, b, c = conic.double().unbind(-1)
        safe = b * b < (1.0 - 1e-5) * a * c
    else:
        a, b, c = conic.float().unbind(-1)
        safe = b.abs() < math.sqrt(1.0 - 1e-5) * a.sqrt() * c.sqrt()
    return ~((a > 0) & (c > 0) & safe & torch.isfinite(conic).all(-1))


class _Footprints:
    """Visible Gaussians of one camera, nearest first, and where they can reach ``alpha >= 1/255``.

    Attributes:
        order: ``[K]`` Gaussian indices sorted by view depth (ties by index); row ``k`` of the
            tables below and the Gaussian's "rank" ``k`` refer to Gaussian ``order[k]``.
        box: ``[K, 4]`` int64 inclusive pixel box ``x0, x1, y0, y1``: the tile rect clipped to
            the image and to the bounding box of the ellipse ``d^T conic d <= 2 ln(255 o)`` (the
            whole rect for risky conics, see :func:`_risky_conic`).
        ellipse: ``[K, 9]`` ``mean x, y, conic a, b, c``, the ellipse's limit, the row offset of its
            leftmost / rightmost points, the margin of its bounds (pixels) and 1 for risky conics;
            float64, or float32 with ``exact=False`` (margins widened, see ``_F32_REL``).
        rank: ``[K']`` the ranks still to composite, ascending (shrinks as chunks are taken and culled).
        block_box: ``[K', 4]`` int32 inclusive block box ``bx0, bx1, by0, by1`` of those.
    """

    def __init__(self, pre: dict[str, Tensor], opacity: Tensor, height: int, width: int, exact: bool):
        idx = depth_order(pre)
        g = torch.cat([pre["means2D"], pre["cov2D"], pre["conic"], opacity.float()[:, None]], 1).index_select(0, idx)
        mean, cov, conic, o = (g.double() if exact else g).split([2, 3, 3, 1], 1)
        risky = _risky_conic(conic, exact)
        rel = _MARGIN_REL
        if not exact:
            a, b, c = conic.unbind(1)
            rel = rel + _F32_REL / torch.where(risky, 1.0, 1.0 - (b / a) * (b / c))   # / (1 - rho^2)
        lim = 2.0 * torch.log(torch.clamp(o[:, 0] * 255.0, min=1.0)) * (1.0 + rel) + 1e-6
        ext = torch.sqrt(lim[:, None] * cov[:, 0::2].clamp(min=0))
        margin = torch.full_like(lim, _MARGIN_PX)
        if not exact:
            margin = margin + _F32_ABS * (mean.abs() + ext).amax(1)
        ext = ext + margin[:, None]
        rmin, rmax = (torch.cat([pre["rect_min"], pre["rect_max"]], 1).index_select(0, idx) * BLOCK).split(2, 1)
        lo = torch.maximum(rmin, torch.ceil(mean - ext).clamp(-1, max(width, height)).long())
        hi = torch.minimum(rmax, torch.floor(mean + ext).clamp(-1, max(width, height)).long() + 1)
        lo = torch.where(risky[:, None], rmin, lo)
        hi = torch.minimum(torch.where(risky[:, None], rmax, hi), torch.tensor([width, height], device=idx.device)) - 1
        self.box = torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)
        y_ext = cov[:, 1] * torch.sqrt(lim / cov[:, 0].clamp(min=1e-30))
        self.ellipse = torch.cat([mean, conic, lim[:, None], y_ext[:, None], margin[:, None],
                                  risky[:, None].to(lim.dtype)], 1)
        self.order = idx
        self.rank = torch.nonzero((self.box[:, 1] >= self.box[:, 0]) & (self.box[:, 3] >= self.box[:, 2])).squeeze(1)
        self.block_box = self.box.index_select(0, self.rank).div(SUB, rounding_mode="floor").int()

    def __len__(self) -> int:
        return self.rank.numel()

    def select(self, sel: Tensor | slice) -> None:
        """Keep the Gaussians ``sel`` (a bool mask or a slice) of ``rank``."""
        self.rank, self.block_box = self.rank[sel], self.block_box[sel]

    def blocks(self, n: int, nbx: int) -> tuple[Tensor, Tensor]:
        """(Gaussian, block) pairs of the first ``n`` Gaussians, in depth order.

        Per block row the x range is the ellipse's extent over the row's pixel rows (the span at
        the row nearest to the ellipse's leftmost / rightmost point).

        Returns:
            ``(rank [P], block [P])`` int64: Gaussian rank and block index ``by * nbx + bx``.
        """
        dev = self.rank.device
        rank = self.rank[:n]
        box = self.box.index_select(0, rank)
        by0 = box[:, 2].div(SUB, rounding_mode="floor")
        rows = box[:, 3].div(SUB, rounding_mode="floor") - by0 + 1
        r = torch.repeat_interleave(rows)                           # the Gaussian of each block row
        by = (by0 - torch.cumsum(rows, 0) + rows).index_select(0, r) + torch.arange(r.numel(), device=dev)
        rank, (x0, x1, y0, y1) = rank.index_select(0, r), box.index_select(0, r).unbind(1)
        ya = torch.maximum(by * SUB, y0).to(self.ellipse.dtype)
        yb = torch.minimum(by * SUB + SUB - 1, y1).to(self.ellipse.dtype)
        mx, my, a, b, c, lim, y_ext, margin, risky = self.ellipse.index_select(0, rank).unbind(1)

        def edge(y: Tensor, sign: float) -> Tensor:   # x of the ellipse's left (-1) / right (+1) edge on row y
            dy = my - y
            h = torch.sqrt(torch.clamp(b * b * dy * dy - a * (c * dy * dy - lim), min=0.0))
            return mx + (b * dy + sign * h) / a

        lo = torch.ceil(edge(torch.clamp(my - y_ext, ya, yb), -1.0) - margin)
        hi = torch.floor(edge(torch.clamp(my + y_ext, ya, yb), 1.0) + margin)
        exact = (risky == 0) & torch.isfinite(lo) & torch.isfinite(hi)
        x0 = torch.where(exact, torch.maximum(x0, lo.clamp(-1, 1 << 30).long()), x0)
        x1 = torch.where(exact, torch.minimum(x1, hi.clamp(-1, 1 << 30).long()), x1)
        bx0 = x0.div(SUB, rounding_mode="floor")
        cols = torch.where(x1 >= x0, x1.div(SUB, rounding_mode="floor") - bx0 + 1, 0)
        p = torch.repeat_interleave(cols)                           # the block row of each pair
        first = by * nbx + bx0 - torch.cumsum(cols, 0) + cols
        return rank.index_select(0, p), first.index_select(0, p) + torch.arange(p.numel(), device=dev)


def _count_in_boxes(mask: Tensor, x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor) -> Tensor:
    """Number of true cells of ``mask [H, W]`` in the inclusive boxes ``[x0, x1] x [y0, y1]`` ``[K]`` (summed-area table)."""
    sat = torch.nn.functional.pad(mask.to(torch.int32).cumsum(0).cumsum(1), (1, 0, 1, 0))
    w = sat.shape[1]
    at = lambda y, x: sat.view(-1).index_select(0, y * w + x)  # noqa: E731
    return at(y1 + 1, x1 + 1) - at(y0, x1 + 1) - at(y1 + 1, x0) + at(y0, x0)


def _quadratic(means2D: Tensor, conic: Tensor) -> Tensor:
    """``[N, 6]`` float64 ``power`` as a quadratic in the pixel position ``(X, Y)``.

    ``power = -0.5 (a dx^2 + c dy^2) - b dx dy`` with ``d = mean - pixel`` equals
    ``q . (1, X, Y, X^2, Y^2, X Y)``; float64 keeps the cancellation far below float32 rounding.
    """
    x, y = means2D.double().unbind(-1)
    a, b, c = conic.double().unbind(-1)
    gx, gy = a * x + b * y, b * x + c * y
    return torch.stack([-0.5 * (gx * x + gy * y), gx, gy, -0.5 * a, -0.5 * c, -b], -1)


class _Frame:
    """Compositing state of one camera, kept per ``SUB x SUB`` pixel block.

    ``t_run [nblk, SUB^2]`` is the transmittance of the pixels still compositing (0 once a pixel
    has stopped, and for the padding pixels outside the image); ``t_stop`` the transmittance a
    pixel stopped with (0 while it runs); ``acc [nblk, C + 2, SUB^2]`` ``sum(c alpha T)``, then
    ``sum(z alpha T)`` and ``sum(alpha T)``. ``basis``: ``[nblk, 6, SUB^2]`` float64 ``1, X, Y,
    X^2, Y^2, X Y`` of the blocks' pixels (see :func:`_quadratic`), or with ``exact=False``
    ``[nblk, 2, SUB]`` float32 the blocks' pixel columns ``X`` and rows ``Y``. ``risky`` /
    ``opaque``: some Gaussian of the frame has a :func:`_risky_conic` / an opacity above
    ``ALPHA_MAX`` (else ``power > 0`` / the clamp cannot occur).
    """

    def __init__(self, height: int, width: int, channels: int, device: torch.device, risky: bool, opaque: bool,
                 exact: bool):
        self.nbx, self.nby = -(-width // SUB), -(-height // SUB)
        nblk = self.nbx * self.nby
        ar = torch.arange(nblk, device=device)
        lin = torch.arange(SUB, device=device)
        ly, lx = torch.meshgrid(lin, lin, indexing="ij")
        px = ((ar % self.nbx) * SUB)[:, None] + lx.reshape(-1)        # [nblk, SUB^2] pixel x, y
        py = ((ar // self.nbx) * SUB)[:, None] + ly.reshape(-1)
        if exact:
            self.basis = torch.stack([torch.ones_like(px), px, py, px * px, py * py, px * py], 1).double()
        else:
            self.basis = torch.stack([px[:, :SUB], py[:, ::SUB]], 1).float()
        self.exact = exact
        self.t_run = ((py < height) & (px < width)).float()
        self.t_stop = torch.zeros_like(self.t_run)
        self.acc = torch.zeros(nblk, channels, SUB * SUB, device=device)
        self.risky, self.opaque = risky, opaque
        self._work: dict[str, Tensor] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A reused scratch tensor (fresh allocations of this size cost more than the arithmetic)."""
        n = math.prod(shape)
        buf = self._work.get(name)
        if buf is None or buf.numel() < n:
            buf = self._work[name] = torch.empty(max(n, GROUP_PAIRS), dtype=dtype, device=self.t_run.device)
        return buf[:n].view(shape)

    def blocks_done(self) -> Tensor:
        """``[nby, nbx]`` bool: every pixel of the block has stopped."""
        return (self.t_run == 0).all(1).reshape(self.nby, self.nbx)

    def _power(self, blk: Tensor, quad: Tensor, out: Tensor | None = None) -> Tensor:
        """``[nb, L, SUB^2]`` float32 Gaussian exponent ``power`` at every pixel of the blocks (into ``out`` if given).

        Exact: one float64 batched product of the Gaussians' :func:`_quadratic` coefficients ``quad
        [nb, L, 6]`` with the blocks' pixel basis, rounded to float32. Float32 mode: the kernel's own
        arithmetic on ``quad [nb, L, 5]`` (``mean x, y, conic a, b, c``): ``d = mean - pixel``, the
        terms ``a dx^2``, ``b dx`` per pixel column and ``c dy^2`` per pixel row, then
        ``-0.5 (a dx^2 + c dy^2) - (b dx) dy`` over the blocks' pixels.
        """
        basis = self.basis.index_select(0, blk)
        if self.exact and out is None:
            power = torch.bmm(quad, basis).float()
        elif self.exact:
            power = out.copy_(torch.bmm(quad, basis, out=self._buffer("power64", out.shape, torch.float64)))
        else:
            mx, my, a, b, c = (v[..., None] for v in quad.unbind(-1))          # [nb, L, 1]
            x, y = basis[:, None].unbind(2)                                     # [nb, 1, SUB]
            dx, dy = mx - x, my - y                                             # [nb, L, SUB]
            diag = ((a * dx * dx)[..., None, :], (c * dy * dy)[..., :, None])   # over [nb, L, SUB (y), SUB (x)]
            cross = ((b * dx)[..., None, :], dy[..., :, None])
            if out is None:
                power = (-0.5 * (diag[0] + diag[1]) - cross[0] * cross[1]).flatten(2)
            else:
                torch.add(*diag, out=out.view(*quad.shape[:2], SUB, SUB)).mul_(-0.5).addcmul_(*cross, value=-1.0)
                power = out
        if self.risky:
            skip = power > 0.0                                       # skipped: alpha becomes 0
            power = power.masked_fill(skip, -math.inf) if out is None else power.masked_fill_(skip, -math.inf)
        return power

    def composite(self, blk: Tensor, gid: Tensor, quad: Tensor, opacity: Tensor, feats: Tensor) -> None:
        """Composite, front to back, Gaussians ``gid [nb, L]`` (depth-ordered rows) over blocks ``blk [nb]``.

        Args:
            blk: ``[nb]`` distinct block indices.
            gid: ``[nb, L]`` Gaussian rows of the tables for each block, nearest first (padded with
                a transparent row), ``L`` a multiple of ``SCAN``.
            quad: ``[N + 1, 6]`` float64 :func:`_quadratic` coefficients of ``power``, or with
                ``exact=False`` ``[N + 1, 5]`` float32 ``mean x, y, conic a, b, c``.
            opacity: ``[N + 1]`` float32.
            feats: ``[N + 1, C + 2]`` features, view depth and 1.
        """
        if torch.is_grad_enabled() and any(t.requires_grad for t in (quad, opacity, feats)):
            self._composite_differentiable(blk, gid, quad, opacity, feats)
            return
        nb, L = gid.shape
        rows = gid.reshape(-1)
        shape = (nb, L, SUB * SUB)
        alpha = self._power(blk, quad.index_select(0, rows).view(nb, L, -1), self._buffer("alpha", shape))
        alpha = torch.exp_(alpha).mul_(opacity.index_select(0, rows).view(nb, L, 1))
        if self.opaque:                                              # else o exp(power) <= o <= 0.99
            alpha.clamp_(max=ALPHA_MAX)
        torch.nn.functional.threshold_(alpha, _BELOW_ALPHA_MIN, 0.0)  # alpha < 1/255: skipped, T unchanged
        t_run = self.t_run[blk]
        t = torch.sub(1.0, alpha, out=self._buffer("t", shape))
        alpha.div_(t)                                                # alpha / (1 - alpha); 1 - alpha >= 0.01
        seg = t.view(nb, L // SCAN, SCAN, SUB * SUB)
        for m in range(1, SCAN):                                     # running product within segments
            seg[:, :, m].mul_(seg[:, :, m - 1])
        carry = torch.cat([t_run[:, None], seg[:, :-1, -1]], 1).cumprod_(1)   # [nb, S, P] T before each segment
        seg.mul_(carry[:, :, None])                                  # T (1 - alpha), the running product
        newly = (t[:, -1] < T_MIN) & (t_run > 0)   # these stop before their first Gaussian with T (1 - alpha) < 1e-4
        torch.nn.functional.threshold_(t, _BELOW_T_MIN, 0.0)         # drop the stopping Gaussian and all after it
        weight = alpha.mul_(t)                                       # alpha T(1 - alpha) / (1 - alpha) = alpha T
        f = feats.index_select(0, rows).view(nb, L, -1)
        out = torch.bmm(f.transpose(1, 2), weight)                   # [nb, C + 2, P]
        self.acc.index_add_(0, blk, out)
        self.t_stop.index_add_(0, blk, torch.where(newly, t_run - out[:, -1], 0.0))   # T = T_run - sum(alpha T)
        self.t_run[blk] = t[:, -1]                                   # 0 where stopped

    def _composite_differentiable(self, blk: Tensor, gid: Tensor, quad: Tensor, opacity: Tensor,
                                  feats: Tensor) -> None:
        """:meth:`composite` with out-of-place operations, so autograd can differentiate it (training).

        Same arithmetic and thresholds (bit for bit); the state tensors are replaced rather than written to.
        """
        nb, L = gid.shape
        rows = gid.reshape(-1)
        power = self._power(blk, quad.index_select(0, rows).view(nb, L, -1))
        alpha = (torch.exp(power) * opacity.index_select(0, rows).view(nb, L, 1)).clamp(max=ALPHA_MAX)
        alpha = torch.where(alpha > _BELOW_ALPHA_MIN, alpha, torch.zeros_like(alpha))
        t_run = self.t_run[blk]
        seg = torch.cumprod((1.0 - alpha).view(nb, L // SCAN, SCAN, -1), 2)
        carry = torch.cumprod(torch.cat([t_run[:, None], seg[:, :-1, -1]], 1), 1)
        t_after = (seg * carry[:, :, None]).view(nb, L, -1)                     # [nb, L, P]
        keep = (t_after > _BELOW_T_MIN).detach()       # a prefix: stop before T (1 - alpha) < 1e-4
        weight = alpha / (1.0 - alpha) * torch.where(keep, t_after, torch.zeros_like(t_after))
        stopped = t_after[:, -1].detach() < T_MIN
        newly = stopped & (t_run.detach() > 0)
        f = feats.index_select(0, rows).view(nb, L, -1)
        out = torch.bmm(f.transpose(1, 2), weight)
        self.acc = self.acc.index_add(0, blk, out)
        self.t_stop = self.t_stop.index_add(0, blk, torch.where(newly, t_run - out[:, -1], torch.zeros_like(t_run)))
        self.t_run = self.t_run.index_copy(0, blk, torch.where(stopped, torch.zeros_like(t_run), t_after[:, -1]))


def _groups(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Split blocks sorted by decreasing (padded) list length into ``[i, j)`` runs of at most ``budget`` pairs."""
    out, i = [], 0
    while i < len(lengths):
        j = min(len(lengths), i + max(1, budget // (lengths[i] * SUB * SUB)))
        out.append((i, j))
        i = j
    return out


def _composite_lists(frame: _Frame, blocks: Tensor, starts: Tensor, lengths: Tensor, gid: Tensor,
                     quad: Tensor, opacity: Tensor, feats: Tensor) -> None:
    """Composite the blocks' depth-ordered lists ``WINDOW`` Gaussians at a time, dropping stopped blocks.

    Args:
        blocks: ``[nb]`` block indices, by decreasing list length.
        starts, lengths: ``[nb]`` the list of ``blocks[k]`` is ``gid[starts[k]:starts[k] + lengths[k]]``.
        gid: ``[P + 1]`` table rows, the last one the transparent padding row.
        quad, opacity, feats: the tables of :meth:`_Frame.composite`.
    """
    pos = torch.arange(WINDOW, device=gid.device)
    for first in range(0, int(lengths[0]) if blocks.numel() else 0, WINDOW):
        live = torch.nonzero((lengths > first) & (frame.t_run[blocks] > 0).any(1)).squeeze(1)
        if live.numel() == 0:
            break
        blk, start, length = blocks[live], starts[live] + first, lengths[live] - first
        widths = (-(-length.clamp(max=WINDOW) // SCAN) * SCAN).tolist()   # non-increasing
        for i, j in _groups(widths, GROUP_PAIRS):
            p = pos[:widths[i]]
            rows = torch.where(p < length[i:j, None], start[i:j, None] + p, gid.numel() - 1)
            frame.composite(blk[i:j], gid.index_select(0, rows.view(-1)).view(rows.shape), quad, opacity, feats)


def _composite_camera(pre: dict[str, Tensor], colors: Tensor, opacity: Tensor, height: int,
                      width: int, max_pairs: int, exact: bool) -> tuple[Tensor, Tensor]:
    """Composite one camera's preprocessed Gaussians.

    Args:
        pre: :func:`preprocess` output.
        colors: ``[N, C]`` features (used raw).
        opacity: ``[N]`` opacities.
        max_pairs: (Gaussian, pixel) pairs made per depth chunk (at least one Gaussian).
        exact: float64 where the kernel's float32 arithmetic needs it; ``False``: float32 only.

    Returns:
        ``(acc [C+1, H, W], final_T [H, W])``: ``acc[:C] = sum(c alpha T)``,
        ``acc[C] = sum(z alpha T)`` and the transmittance left, float32.
    """
    dev = colors.device
    C = colors.shape[1]
    fp = _Footprints(pre, opacity, height, width, exact)
    # per-Gaussian tables in depth order; the last row is a transparent Gaussian used as padding
    order, dummy = fp.order, fp.order.numel()
    pad = lambda t: torch.cat([t, t.new_zeros(1, *t.shape[1:])])  # noqa: E731
    mean, conic = pre["means2D"].index_select(0, order), pre["conic"].index_select(0, order)
    quad = pad(_quadratic(mean, conic) if exact else torch.cat([mean, conic], 1))
    opacity = pad(opacity.float().index_select(0, order))
    feats = torch.zeros(colors.shape[0] + 1, C + 2, device=dev)   # colours, depth and 1; row N: zeros
    feats[:-1, :C], feats[:-1, C], feats[:-1, C + 1] = colors, pre["depth"], 1.0
    feats = feats.index_select(0, torch.cat([order, order.new_full((1,), colors.shape[0])]))
    frame = _Frame(height, width, C + 2, dev, risky=bool(_risky_conic(conic, exact).any()),
                   opaque=bool((opacity > ALPHA_MAX).any()), exact=exact)
    n_done = 0
    while len(fp):
        done = frame.blocks_done()
        if (n := int(done.sum())) > n_done:   # drop Gaussians whose blocks have all stopped
            n_done = n
            bx0, bx1, by0, by1 = fp.block_box.unbind(1)
            fp.select(_count_in_boxes(~done, bx0, by0, bx1, by1) > 0)
            if not len(fp):
                break
        bx0, bx1, by0, by1 = fp.block_box.unbind(1)
        boxes = (bx1 - bx0 + 1) * (by1 - by0 + 1)
        take = max(1, int(torch.searchsorted(torch.cumsum(boxes, 0), max_pairs // (SUB * SUB), right=True)))
        gid, blk = fp.blocks(take, frame.nbx)
        fp.select(slice(take, None))
        live = ~done.reshape(-1)[blk]
        gid, blk = gid[live], blk[live]
        if blk.numel() == 0:
            continue
        # blocks by decreasing list length; pairs grouped by block (stable: depth order kept)
        length = torch.bincount(blk, minlength=frame.nbx * frame.nby)
        blocks = torch.nonzero(length).squeeze(1)
        blocks = blocks[torch.sort(length[blocks], descending=True, stable=True).indices]
        lengths = length[blocks]
        slot = torch.empty_like(length, dtype=torch.int32)   # int32 keys sort twice as fast
        slot[blocks] = torch.arange(blocks.numel(), dtype=torch.int32, device=dev)
        gid = torch.cat([gid.index_select(0, torch.sort(slot.index_select(0, blk), stable=True).indices),
                         gid.new_full((1,), dummy)])
        _composite_lists(frame, blocks, torch.cumsum(lengths, 0) - lengths, lengths, gid, quad, opacity, feats)

    def image(t: Tensor) -> Tensor:   # [nblk, K, SUB^2] -> [K, H, W]
        t = t.reshape(frame.nby, frame.nbx, -1, SUB, SUB).permute(2, 0, 3, 1, 4)
        return t.reshape(-1, frame.nby * SUB, frame.nbx * SUB)[:, :height, :width]

    return image(frame.acc[:, :-1]), image((frame.t_run + frame.t_stop)[:, None])[0]


def rasterize(means: Tensor, covars: Tensor, colors: Tensor, opacities: Tensor, viewmatrix: Tensor,
              projmatrix: Tensor, tanfovx: float, tanfovy: float, height: int, width: int,
              background: Tensor | None = None, max_pairs: int = MAX_PAIRS, exact: bool | None = None,
              composite: Callable[..., tuple[Tensor, Tensor]] | None = None,
              preprocess_camera: Callable[..., dict[str, Tensor]] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Render ``B`` cameras of ``B`` Gaussian sets exactly like the official CUDA forward.

    Args:
        means: ``[B, N, 3]`` world positions.
        covars: ``[B, N, 3, 3]`` world covariances.
        colors: ``[B, N, C]`` features, used raw.
        opacities: ``[B, N]`` or ``[B, N, 1]`` in 0..1.
        viewmatrix, projmatrix: ``[B, 4, 4]`` official matrices (see
            :func:`~..cameras.build_camera_matrices`).
        tanfovx, tanfovy: ``1 / fx``, ``1 / fy`` (normalised focal).
        height, width: image size in pixels.
        background: ``[B, C]`` or ``None`` (zeros).
        max_pairs: (Gaussian, pixel) pairs processed at once; bounds memory only.
        exact: ``True``: float64 where the kernel's arithmetic needs it (``ndc2Pix``, ``power``, the
            footprint bounds); ``False``: float32 only (see the module docstring), for devices
            without float64; ``None``: ``True`` where :func:`has_float64`.
        composite: ``(pre, colors [N, C], opacity [N], height, width) -> (acc [C+1, H, W], final_T
            [H, W])`` compositing one camera instead of the torch code (the CPU backend's kernel).
        preprocess_camera: ``(means [N, 3], covars [N, 3, 3], viewmatrix, projmatrix, tanfovx, tanfovy, height,
            width) -> pre`` projecting one camera instead of :func:`preprocess` (exact; the CPU
            backend's kernel).

    Returns:
        ``(features [B, C, H, W], alpha [B, 1, H, W] = 1 - final T, depth [B, 1, H, W],
        radii [B, N] int32)``. ``depth`` is the alpha-weighted mean view-space depth
        ``sum(z alpha T) / alpha`` (world units) where ``alpha > 0``, else 0.
    """
    B, N, C = colors.shape
    opac = opacities.reshape(B, N)
    exact = has_float64(means.device) if exact is None else exact
    feats, alphas, depths, radii = [], [], [], []
    for b in range(B):
        if preprocess_camera is None:
            pre = preprocess(means[b], covars[b], viewmatrix[b], projmatrix[b], tanfovx, tanfovy, height, width, exact)
        else:
            pre = preprocess_camera(means[b], covars[b], viewmatrix[b], projmatrix[b], tanfovx, tanfovy, height, width)
        if composite is None:
            acc, final_t = _composite_camera(pre, colors[b], opac[b], height, width, max_pairs, exact)
        else:
            acc, final_t = composite(pre, colors[b], opac[b], height, width)
        img = acc[:C]
        if background is not None:
            img = img + final_t[None] * background[b].float()[:, None, None]
        alpha = 1.0 - final_t[None]
        feats.append(img)
        alphas.append(alpha)
        depths.append(torch.where(alpha > 0, acc[C:] / alpha.clamp(min=1e-30), torch.zeros_like(alpha)))
        radii.append(pre["radii"])
    stack = lambda ts: ts[0][None] if len(ts) == 1 else torch.stack(ts)  # noqa: E731  (one camera: no copy)
    return stack(feats), stack(alphas), stack(depths), stack(radii)


def has_float64(device: torch.device) -> bool:
    """Whether ``device`` computes in float64 (Apple MPS does not)."""
    return device.type != "mps"


def tan_half_fov(focal: float) -> float:
    """``tan(atan(1 / focal))`` as the official camera computes ``tanfov`` from a normalised focal."""
    return math.tan(math.atan(1.0 / focal))
