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
rect and the ``d^T conic d <= 2 ln(255 o)`` ellipse, bounded per block row). Blocks with lists of
similar length are stacked into dense ``[blocks, L, 64]`` tensors: ``power``, ``alpha`` and the
transmittance (a float32 ``cumprod`` along the list, the kernel's running product) are computed for
all pixels at once, and the features are accumulated with one batched matrix product per stack.
Gaussians are taken in depth-ordered chunks (a bounded number of pairs) with each pixel's
transmittance carried from chunk to chunk, so memory stays bounded, and Gaussians whose blocks have
all stopped compositing (``T < 1e-4``) are dropped before their pairs are made. The result agrees
with the kernel up to float rounding (~1e-7 relative) and rare threshold flips (``alpha ~ 1/255``,
``T ~ 1e-4``), like the conformance kit's port.
"""
from __future__ import annotations

import math

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
MAX_PAIRS = 1 << 24
"""(Gaussian, pixel) pairs per depth chunk; blocks that stopped compositing are skipped between chunks."""
GROUP_PAIRS = 1 << 18
"""(Gaussian, pixel) pairs per dense stack: its float32 temporaries stay in the CPU cache."""
_BELOW_ALPHA_MIN = float(torch.nextafter(torch.tensor(1.0) / 255.0, torch.tensor(0.0)))
"""The float32 just below ``1.0f / 255.0f``: ``alpha > _BELOW_ALPHA_MIN`` is the kernel's ``!(alpha < 1/255)``."""
_BELOW_T_MIN = float(torch.nextafter(torch.tensor(T_MIN), torch.tensor(0.0)))
"""The float32 just below ``0.0001f``: ``T > _BELOW_T_MIN`` is the kernel's ``!(T < 0.0001f)``."""
_MARGIN_REL, _MARGIN_PX = 1e-4, 1e-3
"""Widening of the ``alpha >= 1/255`` ellipse against float32 rounding of ``power`` (relative, pixels)."""


def preprocess(means: Tensor, covars: Tensor, viewmatrix: Tensor, projmatrix: Tensor,
               tanfovx: float, tanfovy: float, height: int, width: int) -> dict[str, Tensor]:
    """Per-Gaussian projection of one camera, as the official ``preprocessCUDA``.

    Args:
        means: ``[N, 3]`` world positions.
        covars: ``[N, 3, 3]`` world covariances (world units squared).
        viewmatrix: ``[4, 4]`` official view matrix, read row-major
            (``p_view = p @ V[:3, :3] + V[3, :3]``, x right, y down, z forward).
        projmatrix: ``[4, 4]`` official full projection (``V @ K^T``).
        tanfovx, tanfovy: tangents of the half fields of view (``1 / focal``).
        height, width: image size in pixels.

    Returns:
        dict of float32 tensors: ``means2D [N, 2]`` pixels (centre of pixel ``i`` at ``i``),
        ``depth [N]`` view-space z, ``conic [N, 3]`` (inverse 2D covariance ``a, b, c``),
        ``cov3D [N, 6]`` (upper triangle ``xx, xy, xz, yy, yz, zz``), ``cov2D [N, 3]``
        (``a, b, c`` in pixels^2, dilated by 0.3), ``radii [N]`` int32 (0 = dropped),
        ``rect_min, rect_max [N, 2]`` int64 tile rect, ``valid [N]`` bool.
    """
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
    px = (((p_proj[:, 0].double() + 1.0) * width - 1.0) * 0.5).float()
    py = (((p_proj[:, 1].double() + 1.0) * height - 1.0) * 0.5).float()

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


def _risky_conic(conic: Tensor) -> Tensor:
    """``[N]`` bool: rounding may make ``power > 0`` (the conic is not safely positive definite).

    With ``a, c > 0`` and ``b^2 < (1 - 1e-5) a c`` the cross term ``2 b dx dy`` is at most
    ``sqrt(1 - 1e-5)`` times the diagonal terms, a margin no float32 rounding of ``power`` (a few
    ulp) can bridge, so ``power <= 0`` everywhere and its Mahalanobis ellipse bounds the footprint.
    """
    a, b, c = conic.double().unbind(-1)
    return ~((a > 0) & (c > 0) & (b * b < (1.0 - 1e-5) * a * c) & torch.isfinite(conic).all(-1))


class _Footprints:
    """Visible Gaussians of one camera, nearest first, and where they can reach ``alpha >= 1/255``.

    Attributes:
        order: ``[K]`` Gaussian indices sorted by view depth (ties by index); row ``k`` of the
            attributes below and the Gaussian's "rank" ``k`` refer to Gaussian ``order[k]``.
        rank: ``[K']`` the ranks still to composite (shrinks as chunks are taken and culled).
        box: ``[K', 4]`` int64 inclusive pixel box ``x0, x1, y0, y1``: the tile rect clipped to
            the image and to the bounding box of the ellipse ``d^T conic d <= 2 ln(255 o)`` (the
            whole rect for risky conics, see :func:`_risky_conic`).
        ellipse: ``[K', 8]`` float64 ``mean x, y, conic a, b, c``, the ellipse's limit, the row
            offset of its leftmost / rightmost points, and 1 for risky conics.
    """

    def __init__(self, pre: dict[str, Tensor], opacity: Tensor, height: int, width: int):
        idx = torch.nonzero(pre["valid"]).squeeze(1)
        idx = idx[torch.sort(pre["depth"][idx], stable=True).indices]
        mean = pre["means2D"][idx].double()
        cov = pre["cov2D"][idx].double()
        risky = _risky_conic(pre["conic"][idx])
        lim = 2.0 * torch.log(torch.clamp(opacity[idx].double() * 255.0, min=1.0)) * (1.0 + _MARGIN_REL) + 1e-6
        ext = torch.sqrt(lim[:, None] * cov[:, [0, 2]].clamp(min=0)) + _MARGIN_PX
        rmin, rmax = pre["rect_min"][idx] * BLOCK, pre["rect_max"][idx] * BLOCK
        lo = torch.maximum(rmin, torch.ceil(mean - ext).clamp(-1, max(width, height)).long())
        hi = torch.minimum(rmax, torch.floor(mean + ext).clamp(-1, max(width, height)).long() + 1)
        lo = torch.where(risky[:, None], rmin, lo)
        hi = torch.minimum(torch.where(risky[:, None], rmax, hi), torch.tensor([width, height], device=idx.device)) - 1
        box = torch.stack([lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]], 1)
        y_ext = cov[:, 1] * torch.sqrt(lim / cov[:, 0].clamp(min=1e-30))
        ellipse = torch.cat([mean, pre["conic"][idx].double(), lim[:, None], y_ext[:, None], risky[:, None].double()], 1)
        keep = torch.nonzero((box[:, 1] >= box[:, 0]) & (box[:, 3] >= box[:, 2])).squeeze(1)
        self.order, self.rank, self.box, self.ellipse = idx, keep, box[keep], ellipse[keep]

    def __len__(self) -> int:
        return self.rank.numel()

    def select(self, sel: Tensor | slice) -> None:
        """Keep the Gaussians ``sel`` (a bool mask or a slice)."""
        self.rank, self.box, self.ellipse = self.rank[sel], self.box[sel], self.ellipse[sel]

    def block_boxes(self) -> Tensor:
        """``[K', 4]`` inclusive block box ``bx0, bx1, by0, by1``."""
        return self.box // SUB

    def blocks(self, n: int, nbx: int) -> tuple[Tensor, Tensor]:
        """(Gaussian, block) pairs of the first ``n`` Gaussians, in depth order.

        Per block row the x range is the ellipse's extent over the row's pixel rows (the span at
        the row nearest to the ellipse's leftmost / rightmost point).

        Returns:
            ``(rank [P], block [P])`` int64: Gaussian rank and block index ``by * nbx + bx``.
        """
        dev = self.rank.device
        x0, x1, y0, y1 = self.box[:n].unbind(1)
        by0 = y0 // SUB
        rows = y1 // SUB - by0 + 1
        r = torch.repeat_interleave(torch.arange(n, device=dev), rows)
        by = by0[r] + torch.arange(r.numel(), device=dev) - (torch.cumsum(rows, 0) - rows)[r]
        ya = torch.maximum(by * SUB, y0[r]).double()
        yb = torch.minimum(by * SUB + SUB - 1, y1[r]).double()
        mx, my, a, b, c, lim, y_ext, risky = self.ellipse[:n][r].unbind(1)

        def edge(y: Tensor, sign: float) -> Tensor:   # x of the ellipse's left (-1) / right (+1) edge on row y
            dy = my - y
            h = torch.sqrt(torch.clamp(b * b * dy * dy - a * (c * dy * dy - lim), min=0.0))
            return mx + (b * dy + sign * h) / a

        lo = torch.ceil(edge(torch.clamp(my - y_ext, ya, yb), -1.0) - _MARGIN_PX)
        hi = torch.floor(edge(torch.clamp(my + y_ext, ya, yb), 1.0) + _MARGIN_PX)
        x0, x1 = x0[r], x1[r]
        exact = (risky == 0) & torch.isfinite(lo) & torch.isfinite(hi)
        x0 = torch.where(exact, torch.maximum(x0, lo.clamp(-1, 1 << 30).long()), x0)
        x1 = torch.where(exact, torch.minimum(x1, hi.clamp(-1, 1 << 30).long()), x1)
        bx0 = x0 // SUB
        cols = torch.where(x1 >= x0, x1 // SUB - bx0 + 1, 0)
        p = torch.repeat_interleave(torch.arange(r.numel(), device=dev), cols)
        bx = bx0[p] + torch.arange(p.numel(), device=dev) - (torch.cumsum(cols, 0) - cols)[p]
        return self.rank[r[p]], by[p] * nbx + bx


def _count_in_boxes(mask: Tensor, x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor) -> Tensor:
    """Number of true cells of ``mask [H, W]`` in the inclusive boxes ``[x0, x1] x [y0, y1]`` ``[K]`` (summed-area table)."""
    sat = torch.nn.functional.pad(mask.to(torch.int32).cumsum(0).cumsum(1), (1, 0, 1, 0))
    return sat[y1 + 1, x1 + 1] - sat[y0, x1 + 1] - sat[y1 + 1, x0] + sat[y0, x0]


class _Frame:
    """Compositing state of one camera, kept per ``SUB x SUB`` pixel block.

    ``t_run [nblk, SUB^2]`` is the transmittance of the pixels still compositing (0 once a pixel
    has stopped, and for the padding pixels outside the image); ``t_stop`` the transmittance a
    pixel stopped with (0 while it runs); ``acc [nblk, C + 1, SUB^2]`` ``sum(c alpha T)`` and, in
    the last channel, ``sum(z alpha T)``.
    """

    def __init__(self, height: int, width: int, channels: int, device: torch.device):
        self.nbx, self.nby = -(-width // SUB), -(-height // SUB)
        nblk = self.nbx * self.nby
        ar = torch.arange(nblk, device=device)
        lin = torch.arange(SUB, device=device)
        self.origin = torch.stack([ar % self.nbx, ar // self.nbx], 1).double() * SUB   # [nblk, 2] first pixel x, y
        ly, lx = torch.meshgrid(lin, lin, indexing="ij")
        lx, ly = lx.reshape(-1).double(), ly.reshape(-1).double()
        self.basis = torch.stack([torch.ones_like(lx), lx, ly, lx * lx, ly * ly, lx * ly])   # [6, SUB^2]
        inside = ((self.origin[:, None, 1] + ly) < height) & ((self.origin[:, None, 0] + lx) < width)
        self.t_run = inside.float()
        self.t_stop = torch.zeros_like(self.t_run)
        self.acc = torch.zeros(nblk, channels, SUB * SUB, device=device)
        self._work: dict[str, Tensor] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype=torch.float32) -> Tensor:
        """A reused scratch tensor (fresh allocations of this size cost more than the arithmetic)."""
        n = math.prod(shape)
        buf = self._work.get(name)
        if buf is None or buf.numel() < n:
            buf = self._work[name] = torch.empty(max(n, GROUP_PAIRS), dtype=dtype, device=self.t_run.device)
        return buf[:n].view(shape)

    def blocks_done(self) -> Tensor:
        """``[nby, nbx]`` bool: every pixel of the block has stopped."""
        return (self.t_run == 0).all(1).reshape(self.nby, self.nbx)

    def composite(self, blk: Tensor, gid: Tensor, params: Tensor, feats: Tensor) -> None:
        """Composite, front to back, Gaussians ``gid [nb, L]`` (depth-ordered rows) over blocks ``blk [nb]``.

        Args:
            blk: ``[nb]`` distinct block indices.
            gid: ``[nb, L]`` Gaussian rows of ``params`` / ``feats`` for each block, nearest first
                (padded with a transparent row).
            params: ``[N + 1, 7]`` per Gaussian ``x, y`` (px), conic ``a, b, c``, opacity and
                1 where :func:`_risky_conic`.
            feats: ``[N + 1, C + 1]`` features and view depth.
        """
        if torch.is_grad_enabled() and (params.requires_grad or feats.requires_grad):
            self._composite_differentiable(blk, gid, params, feats)
            return
        nb, L = gid.shape
        prm = params.index_select(0, gid.reshape(-1)).view(nb, L, -1)
        # power = -0.5 (a dx^2 + c dy^2) - b dx dy, d = mean - pixel, is a quadratic in the pixel's
        # offset (lx, ly) in its block: one float64 matrix product with the basis, then rounded
        u = prm[..., 0] - self.origin[blk, 0:1]
        v = prm[..., 1] - self.origin[blk, 1:2]
        a, b, c = prm[..., 2], prm[..., 3], prm[..., 4]
        c_x = a * u + b * v
        c_y = c * v + b * u
        coef = torch.stack([(u * c_x + v * c_y).mul_(-0.5), c_x, c_y, a * -0.5, c * -0.5, -b], -1)
        power = self._buffer("power", (nb, L, SUB * SUB))
        power.copy_(torch.matmul(coef, self.basis))
        if bool(prm[..., 6].any()):
            power.masked_fill_(power > 0.0, -math.inf)               # skipped: alpha becomes 0
        opacity = prm[..., 5:6].float()
        alpha = torch.exp(power, out=self._buffer("alpha", power.shape)).mul_(opacity)
        if bool((opacity > ALPHA_MAX).any()):                        # else o exp(power) <= o <= 0.99
            alpha.clamp_(max=ALPHA_MAX)
        torch.nn.functional.threshold_(alpha, _BELOW_ALPHA_MIN, 0.0)  # alpha < 1/255: skipped, T unchanged
        t_run = self.t_run[blk]
        t_after = torch.sub(1.0, alpha, out=power)
        alpha.div_(t_after)                                          # alpha / (1 - alpha); 1 - alpha >= 0.01
        t_after[:, 0].mul_(t_run)
        t_after.cumprod_(1)                                          # T (1 - alpha): the float32 running product
        t_new = t_after[:, -1].clone()
        stopped = t_new < T_MIN
        b, p = torch.nonzero(stopped & (t_run > 0), as_tuple=True)
        if b.numel():   # these pixels stop before their first Gaussian with T (1 - alpha) < 1e-4
            t_col = t_after[b, :, p]                                 # [k, L], non-increasing
            n_kept = (t_col >= T_MIN).sum(1, keepdim=True)           # a prefix is composited
            t_last = t_col.gather(1, (n_kept - 1).clamp(min=0)).squeeze(1)
            self.t_stop[blk[b], p] = torch.where(n_kept[:, 0] > 0, t_last, t_run[b, p])
            torch.nn.functional.threshold_(t_after, _BELOW_T_MIN, 0.0)   # drop the stopping Gaussian and all after it
        weight = alpha.mul_(t_after)                                 # alpha T(1 - alpha) / (1 - alpha) = alpha T
        f = feats.index_select(0, gid.reshape(-1)).view(nb, L, -1)
        self.acc.index_add_(0, blk, torch.bmm(f.transpose(1, 2), weight))
        self.t_run[blk] = torch.where(stopped, 0.0, t_new)


    def _power(self, blk: Tensor, prm: Tensor) -> Tensor:
        """``[nb, L, SUB^2]`` float32 Gaussian exponent at every pixel of the blocks (out of place)."""
        u = prm[..., 0] - self.origin[blk, 0:1]
        v = prm[..., 1] - self.origin[blk, 1:2]
        a, b, c = prm[..., 2], prm[..., 3], prm[..., 4]
        c_x = a * u + b * v
        c_y = c * v + b * u
        coef = torch.stack([(u * c_x + v * c_y) * -0.5, c_x, c_y, a * -0.5, c * -0.5, -b], -1)
        power = torch.matmul(coef, self.basis).float()
        return power.masked_fill(power > 0.0, -math.inf) if bool(prm[..., 6].any()) else power

    def _composite_differentiable(self, blk: Tensor, gid: Tensor, params: Tensor, feats: Tensor) -> None:
        """:meth:`composite` with out-of-place operations, so autograd can differentiate it (training).

        Same arithmetic and thresholds; the state tensors are replaced rather than written to.
        """
        nb, L = gid.shape
        prm = params.index_select(0, gid.reshape(-1)).view(nb, L, -1)
        power = self._power(blk, prm)
        alpha = (torch.exp(power) * prm[..., 5:6].float()).clamp(max=ALPHA_MAX)
        alpha = torch.where(alpha > _BELOW_ALPHA_MIN, alpha, torch.zeros_like(alpha))
        t_run = self.t_run[blk]
        t_all = torch.cumprod(torch.cat([t_run[:, None], 1.0 - alpha], 1), 1)      # [nb, L + 1, P]
        t_before, t_after = t_all[:, :-1], t_all[:, 1:]
        keep = (t_after > _BELOW_T_MIN).detach()       # a prefix: stop before T (1 - alpha) < 1e-4
        weight = alpha * t_before * keep
        t_end = torch.where(keep, t_after, torch.full_like(t_after, math.inf)).amin(1)
        t_end = torch.where(keep.any(1), t_end, t_run)  # T after the last composited Gaussian
        stopped = t_after[:, -1].detach() < T_MIN
        newly = stopped & (t_run.detach() > 0)
        f = feats.index_select(0, gid.reshape(-1)).view(nb, L, -1)
        self.acc = self.acc.index_add(0, blk, torch.bmm(f.transpose(1, 2), weight))
        self.t_stop = self.t_stop.index_copy(0, blk, torch.where(newly, t_end, self.t_stop[blk]))
        self.t_run = self.t_run.index_copy(0, blk, torch.where(stopped, torch.zeros_like(t_end), t_end))


def _groups(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Split blocks sorted by decreasing list length into ``[i, j)`` runs of at most ``budget`` padded pairs."""
    out, i = [], 0
    while i < len(lengths):
        j = min(len(lengths), i + max(1, budget // (lengths[i] * SUB * SUB)))
        out.append((i, j))
        i = j
    return out


def _composite_camera(pre: dict[str, Tensor], colors: Tensor, opacity: Tensor, height: int,
                      width: int, max_pairs: int) -> tuple[Tensor, Tensor]:
    """Composite one camera's preprocessed Gaussians.

    Args:
        pre: :func:`preprocess` output.
        colors: ``[N, C]`` features (used raw).
        opacity: ``[N]`` opacities.
        max_pairs: (Gaussian, pixel) pairs evaluated per depth chunk (at least one Gaussian).

    Returns:
        ``(acc [C+1, H, W], final_T [H, W])``: ``acc[:C] = sum(c alpha T)``,
        ``acc[C] = sum(z alpha T)`` and the transmittance left, float32.
    """
    dev = colors.device
    C = colors.shape[1]
    frame = _Frame(height, width, C + 1, dev)
    fp = _Footprints(pre, opacity, height, width)
    # per-Gaussian tables in depth order; the last row is a transparent Gaussian used as padding
    order, dummy = fp.order, fp.order.numel()
    params = torch.zeros(dummy + 1, 7, dtype=torch.float64, device=dev)
    params[:dummy] = torch.cat([pre["means2D"], pre["conic"], opacity.float()[:, None],
                                _risky_conic(pre["conic"]).float()[:, None]], 1).index_select(0, order).double()
    feats = torch.zeros(dummy + 1, C + 1, device=dev)
    feats[:dummy, :C] = colors.index_select(0, order)
    feats[:dummy, C] = pre["depth"].index_select(0, order)
    n_done = 0
    while len(fp):
        done = frame.blocks_done()
        if int(done.sum()) > n_done:   # drop Gaussians whose blocks have all stopped
            n_done = int(done.sum())
            bx0, bx1, by0, by1 = fp.block_boxes().unbind(1)
            fp.select(_count_in_boxes(~done, bx0, by0, bx1, by1) > 0)
            if not len(fp):
                break
        bx0, bx1, by0, by1 = fp.block_boxes().unbind(1)
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
        slot = torch.empty_like(length)
        slot[blocks] = torch.arange(blocks.numel(), device=dev)
        key, order = torch.sort(slot[blk], stable=True)
        gid = gid[order]
        starts = torch.cumsum(lengths, 0) - lengths
        rank = torch.arange(key.numel(), device=dev) - starts[key]
        bounds = starts.tolist() + [key.numel()]
        for i, j in _groups(lengths.tolist(), GROUP_PAIRS):
            a, b = bounds[i], bounds[j]
            dense = torch.full((j - i, int(lengths[i])), dummy, dtype=torch.int64, device=dev)
            dense[key[a:b] - i, rank[a:b]] = gid[a:b]
            frame.composite(blocks[i:j], dense, params, feats)

    def image(t: Tensor) -> Tensor:   # [nblk, K, SUB^2] -> [K, H, W]
        t = t.reshape(frame.nby, frame.nbx, -1, SUB, SUB).permute(2, 0, 3, 1, 4)
        return t.reshape(-1, frame.nby * SUB, frame.nbx * SUB)[:, :height, :width]

    return image(frame.acc), image((frame.t_run + frame.t_stop)[:, None])[0]


def rasterize(means: Tensor, covars: Tensor, colors: Tensor, opacities: Tensor, viewmatrix: Tensor,
              projmatrix: Tensor, tanfovx: float, tanfovy: float, height: int, width: int,
              background: Tensor | None = None, max_pairs: int = MAX_PAIRS
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Render ``B`` cameras of ``B`` Gaussian sets exactly like the official CUDA forward.

    Args:
        means: ``[B, N, 3]`` world positions.
        covars: ``[B, N, 3, 3]`` world covariances.
        colors: ``[B, N, C]`` features, used raw.
        opacities: ``[B, N]`` or ``[B, N, 1]`` in 0..1.
        viewmatrix, projmatrix: ``[B, 4, 4]`` official matrices (see
            :func:`~.cameras.build_camera_matrices`).
        tanfovx, tanfovy: ``1 / fx``, ``1 / fy`` (normalised focal).
        height, width: image size in pixels.
        background: ``[B, C]`` or ``None`` (zeros).
        max_pairs: (Gaussian, pixel) pairs processed at once; bounds memory only.

    Returns:
        ``(features [B, C, H, W], alpha [B, 1, H, W] = 1 - final T, depth [B, 1, H, W],
        radii [B, N] int32)``. ``depth`` is the alpha-weighted mean view-space depth
        ``sum(z alpha T) / alpha`` (world units) where ``alpha > 0``, else 0.
    """
    B, N, C = colors.shape
    opac = opacities.reshape(B, N)
    feats, alphas, depths, radii = [], [], [], []
    for b in range(B):
        pre = preprocess(means[b], covars[b], viewmatrix[b], projmatrix[b], tanfovx, tanfovy, height, width)
        acc, final_t = _composite_camera(pre, colors[b], opac[b], height, width, max_pairs)
        img = acc[:C]
        if background is not None:
            img = img + final_t[None] * background[b].float()[:, None, None]
        alpha = 1.0 - final_t[None]
        feats.append(img)
        alphas.append(alpha)
        depths.append(torch.where(alpha > 0, acc[C:] / alpha.clamp(min=1e-30), torch.zeros_like(alpha)))
        radii.append(pre["radii"])
    return torch.stack(feats), torch.stack(alphas), torch.stack(depths), torch.stack(radii)


def tan_half_fov(focal: float) -> float:
    """``tan(atan(1 / focal))`` as the official camera computes ``tanfov`` from a normalised focal."""
    return math.tan(math.atan(1.0 / focal))
