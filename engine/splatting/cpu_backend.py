"""The CPU backend: the official forward's tile binning and per-pixel compositing compiled from C
(``cpu_kernel.c``), built on first use with the system's C compiler and called through ctypes.

The preprocessing is :func:`.torch_backend.preprocess` (float64 ``ndc2Pix`` as the kernel); the
compositing is the official kernel's per-pixel loop in its own float32 arithmetic, without FMA
contraction: ``d = mean - pixel``, ``power = -0.5 (a dx dx + c dy dy) - b dx dy``, the same
thresholds and early stop, ``sum(f alpha T)`` in list (depth) order and the transmittance the
kernel keeps. It evaluates 4-16 pixels of a tile row per vector instruction, with ``exp`` as a
polynomial within about 1 ulp of ``expf``; the polynomial's multiply-adds and the sums'
``f * (alpha T) + sum`` are FMA where the CPU has it (builds with FMA, any vector width, give the
same bits; a build without differs in the last bit here and there). Against the torch backend
(whose ``power`` is the float64 value rounded once) it differs by float rounding: mean abs 1e-7
on a 180k-Gaussian avatar, with rare threshold flips (``alpha ~ 1/255``, ``T ~ 1e-4``) of up to a
few 1e-3 at a pixel, as between the official kernel and the torch port; it passes the conformance
kit's statistical criteria. It has no backward: :func:`.rasterize.render_gaussians` picks it
(``auto``) for CPU tensors when no gradient is needed.

The kernels run on torch's own OpenMP threads (:func:`openmp`, ``torch.get_num_threads()`` of
them): torch's threads spin a while after each of its parallel regions, and would share the cores
with threads of our own (the splatting took 7-12% longer on threads of this module, measured). Where
torch has no OpenMP, and in forked children, they run on threads of this module (ctypes releases
the GIL during each call).

The same library holds ``gag_composite_rows``, which :func:`place` calls for :mod:`..framing`:
avatars' crops resampled into a frame's render passes and composited by depth, rows bottom-up as
Blender stores them; and ``gag_wino_conv``, :mod:`..networks.cpu_layers`' Winograd convolutions.

Building needs a C99 compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on ``PATH`` (no Python
or torch headers). The library is cached per source, compiler, platform and CPU under
:func:`cache_dir` (``$GAGAVATAR_CACHE_DIR``, else the user's cache folder; the Blender add-on
points it at its extension user folder) and written atomically, so concurrent processes (a
render farm's) share one build. Where it cannot be built, or with ``GAGAVATAR_CPU_KERNEL=0``, the
torch backend renders instead, and a warning says why, once per process.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import torch_backend

SOURCE = Path(__file__).with_name("cpu_kernel.c")
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-Wno-psabi")
"""No fast-math and no contraction: the float arithmetic is the source's, operation by operation
(the source itself asks for FMA in two places: the Winograd products, ``WINO_CONTRACT``, and the
multiply-adds of the splatting's ``exp``, ``fmadd``)."""
NATIVE_FLAGS = ("-march=native",)
"""Tried first: the vectors of the CPU the kernel runs on (2-3x faster than baseline x86-64 SSE2).
The build is cached per CPU (model and feature flags), so a cache folder shared between machines
keeps one build per kind of CPU."""
BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failure: str | None = None
_cache_dir: Path | None = None
_pool: tuple[ThreadPoolExecutor, int, int] | None = None
"""The worker pool, its size and the process that made it."""
_openmp: tuple[int, int, int] | None | bool = False
""":func:`openmp`'s result; False until looked up."""

_p = ctypes.c_void_p
_i32, _i64, _f32 = ctypes.c_int32, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "gag_preprocess": (None, [_i32, _i32, _p, _p, _p, _p, ctypes.c_double, ctypes.c_double, _i32, _i32, *[_p] * 7]),
    "gag_bin_count": (_i64, [_i32, _i32, _p, _p, _p, _p, _p, _p, _i32, _i32, _p, _p, _p]),
    "gag_bin_fill": (None, [_i32, _i32, _p, _p, _i32, _p, _p]),
    "gag_render_tiles": (_i32, [_i32, _i32, _i32, _i32, _p, _p, _p, _p, _p, _p, _p, _p, _p, _i32, _p, _p]),
    "gag_preprocess_team": (None, [*[_p] * 3, _i32, _i32, *[_p] * 4, ctypes.c_double, ctypes.c_double, _i32, _i32,
                                   *[_p] * 7]),
    "gag_bin_count_team": (_i64, [*[_p] * 3, *[_i32] * 4, *[_p] * 6, _i32, _i32, _p, _p, _p]),
    "gag_bin_fill_team": (None, [*[_p] * 3, *[_i32] * 4, _p, _p, _i32, _p, _p]),
    "gag_render_tiles_team": (_i32, [*[_p] * 3, *[_i32] * 5, *[_p] * 9, _i32, _p, _p]),
    "gag_composite_rows": (_i32, [_i32, _p, _p, _p, _p, _p, _p, _p, *[_i32] * 4, _f32, _f32, _p, _p, _p]),
    "gag_wino_conv": (_i32, [*[_i32] * 5, *[_p] * 6, _f32, _f32, _i32, _i32, _p]),
    "gag_wino_conv_team": (_i32, [_p, _p, _p, *[_i32] * 6, *[_p] * 6, _f32, _f32, _i32, _i32, _p]),
}


def set_cache_dir(path: str | os.PathLike | None) -> None:
    """Build the kernel under ``path`` (``None``: the default of :func:`cache_dir`)."""
    global _cache_dir
    _cache_dir = None if path is None else Path(path)


def cache_dir() -> Path:
    """Folder of the built kernels: :func:`set_cache_dir`'s, ``$GAGAVATAR_CACHE_DIR``, else
    ``%LOCALAPPDATA%/gagavatar`` (Windows), ``~/Library/Caches/gagavatar`` (macOS) or
    ``$XDG_CACHE_HOME/gagavatar`` (``~/.cache/gagavatar``)."""
    if _cache_dir is not None:
        return _cache_dir
    if env := os.environ.get("GAGAVATAR_CACHE_DIR"):
        return Path(env)
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "gagavatar"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gagavatar"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gagavatar"


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` (split as a shell would, e.g. ``ccache gcc``), else the first of
    ``cc``, ``gcc``, ``clang`` on ``PATH``."""
    if cc := os.environ.get("CC"):
        return shlex.split(cc)
    return next(([path] for name in ("cc", "gcc", "clang") if (path := shutil.which(name))), None)


def _cpu_identity() -> str:
    """The CPU's model and feature flags (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))}))
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL:
    """Compile (or find the cached build of) the kernel and load it; raises ``RuntimeError`` saying why not."""
    cc = _compiler()
    if not cc:
        raise RuntimeError("no C compiler found (set CC, or install cc, gcc or clang)")
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"the C compiler {' '.join(cc)} does not run: {exc}") from None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, *FLAGS, *NATIVE_FLAGS, sys.platform,
                                    platform.machine(), _cpu_identity()]).encode()).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    target = folder / f"cpu_kernel-{key}{'.dll' if sys.platform == 'win32' else '.so'}"
    if not target.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=target.suffix)
            os.close(fd)
        except OSError as exc:
            raise RuntimeError(f"cannot write to {folder}: {exc.strerror or exc}") from None
        try:
            for extra in (NATIVE_FLAGS, ()):   # without -march=native where the compiler refuses it
                run = subprocess.run([*cc, *FLAGS, *extra, "-o", tmp, str(SOURCE), "-lm"], capture_output=True,
                                     text=True, timeout=BUILD_TIMEOUT_S)
                if run.returncode == 0:
                    break
            if run.returncode != 0:
                lines = run.stderr.strip().splitlines() or ["(no output)"]
                raise RuntimeError(f"{Path(cc[-1]).name} failed: " + next((s for s in lines if "error" in s), lines[-1]).strip())
            os.replace(tmp, target)   # atomic: a concurrent build of the same key writes the same file
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"building with {' '.join(cc)} failed: {exc}") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    return load(target)


def load(path: Path) -> ctypes.CDLL:
    """Load a build of ``cpu_kernel.c`` and declare its functions; raises ``RuntimeError`` if it cannot."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise RuntimeError(f"{path} has no function {name} (not a build of this version's kernel)") from None
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it on the first call; ``None`` where it is off or cannot be
    built (the reason is warned once per process, and is :func:`unavailable_reason`)."""
    global _lib, _failure
    if _lib is not None or _failure is not None:
        return _lib
    with _lock:
        if _lib is None and _failure is None:
            if os.environ.get("GAGAVATAR_CPU_KERNEL", "1") == "0":
                _failure = "GAGAVATAR_CPU_KERNEL=0"
                return None
            try:
                _lib = _build()
            except RuntimeError as exc:
                _failure = str(exc)
                warnings.warn(f"the compiled CPU kernel is unavailable ({_failure}); splatting uses the torch "
                              "rasterizer instead (about 3x slower), and the neural renderer oneDNN's convolutions alone "
                              "(about 20% slower). Set GAGAVATAR_CPU_KERNEL=0 to silence this.",
                              RuntimeWarning, stacklevel=3)
    return _lib


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (after it was called), else ``None``."""
    return _failure


def reset() -> None:
    """Forget the loaded kernel and any failure (the next :func:`library` call tries again)."""
    global _lib, _failure
    with _lock:
        _lib, _failure = None, None


def openmp() -> tuple[int, int, int] | None:
    """Addresses of ``GOMP_parallel``, ``omp_get_thread_num`` and ``omp_get_num_threads`` in the
    OpenMP runtime torch runs its CPU threads with, for kernels that run on torch's own threads
    (the ``gag_*_team`` functions); ``None`` where torch has no OpenMP or its runtime is not found,
    and in a process forked from one that had imported this module (a data loader's worker): the
    parent's team has no threads there, and a parallel region would wait for them for ever.

    The runtime is the one loaded from torch's folder (Linux: among the process's mapped files;
    elsewhere: ``torch/lib``), else any loaded ``libgomp`` / ``libomp`` / ``libiomp5``; LLVM's and
    Intel's runtimes export the GNU entry points too. Looked up once per process."""
    global _openmp
    if _openmp is False:
        _openmp = _find_openmp()
    return _openmp


def _no_team_after_fork() -> None:
    global _openmp
    _openmp = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_no_team_after_fork)


def _find_openmp() -> tuple[int, int, int] | None:
    if not torch._C.has_openmp:
        return None
    torch_dir = Path(torch.__file__).resolve().parent
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:
        loaded = {str(p) for p in (torch_dir / "lib").glob("*omp*")}
    runtimes = sorted((p for p in loaded if re.match(r"lib(g|i|)omp[^/]*\.(so|dylib|dll)", Path(p).name)),
                      key=lambda p: not Path(p).resolve().is_relative_to(torch_dir))
    for path in runtimes:
        try:
            lib = ctypes.CDLL(path)   # already loaded: the same runtime and its threads
            return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                         for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"))
        except (OSError, AttributeError):
            continue
    return None


def _threads() -> tuple[ThreadPoolExecutor, int]:
    """The worker threads (``torch.get_num_threads()`` of them) and their number; a new pool in a
    forked child (a data loader's worker, say), where the parent's threads do not exist."""
    global _pool
    n = max(1, torch.get_num_threads())
    if _pool is None or _pool[1:] != (n, os.getpid()):
        if _pool is not None and _pool[2] == os.getpid():
            _pool[0].shutdown(wait=False)
        _pool = (ThreadPoolExecutor(max_workers=n, thread_name_prefix="gagavatar-splat"), n, os.getpid())
    return _pool[:2]


def _address(arg):
    """A kernel argument as ctypes passes it: a tensor's or array's data address, else the value."""
    if isinstance(arg, Tensor):
        return arg.data_ptr()
    if isinstance(arg, np.ndarray):
        return arg.ctypes.data
    return arg


def _parallel(fn, calls: list[tuple], keep: tuple = ()) -> list:
    """``fn(*call)`` for each call on the worker threads, tensors and arrays passed as addresses;
    the results in order.

    Each queued call holds its own arguments, buffers included, and ``keep`` (buffers the calls
    reach through an array of addresses) until it has returned. When the caller stops waiting
    (Ctrl-C raises ``KeyboardInterrupt`` in the wait) and unwinds, calls already running go on
    reading and writing those buffers for a few milliseconds: they must not be freed under them.
    Calls not yet started are cancelled."""
    pool, _ = _threads()
    return list(pool.map(functools.partial(_call, fn, keep), calls))


def _call(fn, keep: tuple, call: tuple):
    """One call of :func:`_parallel` (``keep`` is held by the partial that calls it)."""
    return fn(*map(_address, call))


def preprocess_camera(lib: ctypes.CDLL, means: Tensor, covars: Tensor, viewmatrix: Tensor, projmatrix: Tensor,
                      tanfovx: float, tanfovy: float, height: int, width: int) -> dict[str, Tensor]:
    """:func:`.torch_backend.preprocess` (exact) with the compiled kernel (``gag_preprocess``; CPU
    tensors, the Gaussians split between the worker threads): the same dict, whose values are
    preprocess's bit for bit where torch's float32 matmuls round as ``gag_preprocess`` does (the
    Xeons this was checked on) and differ by float rounding elsewhere, less
    ``cov3D``, with ``rect [N, 4]`` int32 (``rect_min``, ``rect_max`` are views of it) and
    ``valid`` a view of uint8 flags."""
    means, covars = means.float().contiguous(), covars.float().contiguous()
    V, P = viewmatrix.float().contiguous(), projmatrix.float().contiguous()
    n = means.shape[0]
    out = {"means2D": torch.empty(n, 2), "depth": torch.empty(n), "conic": torch.empty(n, 3), "cov2D": torch.empty(n, 3),
           "radii": torch.empty(n, dtype=torch.int32), "rect": torch.empty(n, 4, dtype=torch.int32),
           "valid": torch.empty(n, dtype=torch.uint8)}
    workers = max(1, torch.get_num_threads())
    if team := openmp():
        lib.gag_preprocess_team(*team, workers, n, *map(_address, (means, covars, V, P)), float(tanfovx),
                                float(tanfovy), width, height, *map(_address, out.values()))
    else:
        bounds = [n * w // workers for w in range(workers + 1)]
        _parallel(lib.gag_preprocess, [(bounds[w], bounds[w + 1], means, covars, V, P, float(tanfovx), float(tanfovy),
                                        width, height, *out.values())
                                       for w in range(workers) if bounds[w] < bounds[w + 1]])
    out["valid"] = out["valid"].view(torch.bool)
    out["rect_min"], out["rect_max"] = out["rect"][:, :2], out["rect"][:, 2:]
    return out


def composite_camera(lib: ctypes.CDLL, pre: dict[str, Tensor], colors: Tensor, opacity: Tensor,
                     height: int, width: int) -> tuple[Tensor, Tensor]:
    """Composite one camera's preprocessed Gaussians with the compiled kernel (CPU tensors).

    Args:
        lib: :func:`library`.
        pre: :func:`preprocess_camera`'s or :func:`.torch_backend.preprocess`'s output.
        colors: ``[N, C]`` features (used raw).
        opacity: ``[N]`` opacities.

    Returns:
        ``(acc [C+1, H, W], final_T [H, W])`` float32: ``acc[:C] = sum(c alpha T)``,
        ``acc[C] = sum(z alpha T)``, and the transmittance left.
    """
    idx = torch_backend.depth_order(pre)   # the kernels read the Gaussians through it
    xy, conic, cov, depth = (pre[key].float().contiguous() for key in ("means2D", "conic", "cov2D", "depth"))
    rect = (pre["rect"] if "rect" in pre else torch.cat([pre["rect_min"], pre["rect_max"]], 1)).to(torch.int32).contiguous()
    opac, colors = opacity.float().contiguous(), colors.float().contiguous()
    n, k = idx.numel(), colors.shape[1] + 1
    tiles = -(-width // torch_backend.BLOCK) * -(-height // torch_backend.BLOCK)
    workers = max(1, torch.get_num_threads())   # Gaussians binned in depth-ordered ranges
    box = torch.empty(xy.shape[0], 4, dtype=torch.int32)   # written for the Gaussians in idx, as lim
    lim = torch.empty(xy.shape[0], dtype=torch.float64)
    counts = torch.zeros(workers, tiles, dtype=torch.int64)
    team = openmp()
    bounds = [n * w // workers for w in range(workers + 1)]   # as the team's ranges
    if team:
        total = lib.gag_bin_count_team(*team, workers, workers, n, tiles,
                                       *map(_address, (idx, xy, conic, cov, opac, rect)), width, height,
                                       box.data_ptr(), lim.data_ptr(), counts.data_ptr())
    else:
        total = sum(_parallel(lib.gag_bin_count, [(bounds[w], bounds[w + 1], idx, xy, conic, cov, opac, rect, width,
                                                   height, box, lim, counts[w]) for w in range(workers)]))
    starts = torch.zeros(tiles + 1, dtype=torch.int64)
    torch.cumsum(counts.sum(0), 0, out=starts[1:])
    cursor = (starts[:-1] + counts.cumsum(0) - counts).contiguous()   # [workers, tiles]: each range's place
    lists = torch.empty(total, dtype=torch.int32)
    if team:
        lib.gag_bin_fill_team(*team, workers, workers, n, tiles, idx.data_ptr(), box.data_ptr(), width,
                              cursor.data_ptr(), lists.data_ptr())
    else:
        _parallel(lib.gag_bin_fill, [(bounds[w], bounds[w + 1], idx, box, width, cursor[w], lists)
                                     for w in range(workers)])
    out = torch.empty(k, height, width)
    final_t = torch.empty(height, width)
    step = max(1, tiles // (8 * workers))   # small ranges, taken in turn: tiles differ in cost
    tile_args = (width, height, xy, conic, opac, box, lim, starts, lists, colors, depth, k - 1, out, final_t)
    if team:
        failed = lib.gag_render_tiles_team(*team, workers, tiles, step, *map(_address, tile_args))
    else:
        failed = any(_parallel(lib.gag_render_tiles, [(t0, min(t0 + step, tiles), *tile_args)
                                                      for t0 in range(0, tiles, step)]))
    if failed:
        raise MemoryError("out of memory splatting: no room for the tiles' weights")
    return out, final_t


def place(lib: ctypes.CDLL, layers: list[tuple], min_alpha: float, background_depth: float,
          out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Avatars' crops resampled into a frame's render passes and composited by depth, with the
    compiled kernel (the frame's rows split between the worker threads); see
    ``gag_composite_rows`` in ``cpu_kernel.c``.

    Args:
        lib: :func:`library`.
        layers: per avatar ``(planes, col, colw, row, roww, box)``: ``planes [8, sh, sw]`` float32
            CPU crop (linear premultiplied RGB, alpha, depth x alpha, coarse RGB); per box column the
            left source column (-1 .. sw - 1) and the right tap's weight ``col, colw``, the same per
            box row ``row, roww``; ``box = (xa, ya, xb, yb)``, the frame pixels the crop covers.
        min_alpha: alpha up to which a pixel of a layer has no depth (it sorts last).
        background_depth: the depth pass where no layer has a depth.
        out: ``(combined [H, W, 4], coarse [H, W, 3], depth [H, W])`` C-contiguous float32 arrays
            the passes are written into (every pixel), rows bottom-up; ``coarse`` may be None (not
            written).
    """
    planes, cols, colws, rows, rowws, boxes = zip(*layers)
    planes = [p.float().permute(1, 2, 0).contiguous() for p in planes]   # [sh, sw, 8]: a pixel's planes together
    addresses = np.array([p.data_ptr() for p in planes], np.int64)
    shape = np.array([p.shape[:2] for p in planes], np.int32)
    box = np.array(boxes, np.int32)
    col, row = np.concatenate(cols).astype(np.int32), np.concatenate(rows).astype(np.int32)
    colw, roww = np.concatenate(colws).astype(np.float32), np.concatenate(rowws).astype(np.float32)
    combined, coarse, depth = out
    height, width = depth.shape
    # What the kernel indexes by, checked (it writes the frame through them).
    assert ((0 <= box[:, :2]) & (box[:, :2] < box[:, 2:]) & (box[:, 2:] <= (width, height))).all()
    assert len(col) == (box[:, 2] - box[:, 0]).sum() and len(row) == (box[:, 3] - box[:, 1]).sum()
    assert all(-1 <= c.min() and c.max() < w and -1 <= r.min() and r.max() < h
               for c, r, (h, w) in zip(cols, rows, shape))
    assert combined.shape == (height, width, 4) and (coarse is None or coarse.shape == (height, width, 3)) \
        and all(a.dtype == np.float32 and a.flags.c_contiguous for a in out if a is not None)
    workers = _threads()[1]
    split = [height * w // workers for w in range(workers + 1)]
    if any(_parallel(lib.gag_composite_rows, [(len(planes), addresses, shape, box, col, colw, row, roww, width, height,
                                               split[w], split[w + 1], min_alpha, background_depth, combined, coarse,
                                               depth) for w in range(workers)], keep=tuple(planes))):
        raise MemoryError("out of memory compositing avatars into the frame")


def refusal(*tensors: Tensor) -> str | None:
    """Why the CPU backend cannot render ``tensors`` (one line naming what to use instead), or
    ``None`` when it can: CPU tensors, no gradient needed, and the kernel built (built here on the
    first call)."""
    if any(t.device.type != "cpu" for t in tensors):
        return "backend 'cpu' renders CPU tensors only: use 'torch' or 'gsplat' on other devices"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "backend 'cpu' has no backward: use backend 'torch' where gradients are needed"
    if library() is None:
        return f"the CPU splatting kernel is unavailable ({unavailable_reason()}): use backend 'torch'"
    return None


def rasterize(means: Tensor, covars: Tensor, colors: Tensor, opacities: Tensor, viewmatrix: Tensor,
              projmatrix: Tensor, tanfovx: float, tanfovy: float, height: int, width: int,
              background: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`.torch_backend.rasterize` (same arguments and results) with the compiled compositing.

    Raises:
        RuntimeError: :func:`refusal`'s reason (an input not on the CPU or needing a gradient, or
            the kernel unavailable).
    """
    if reason := refusal(means, covars, colors, opacities):
        raise RuntimeError(reason)
    lib = library()
    return torch_backend.rasterize(means, covars, colors, opacities, viewmatrix, projmatrix, tanfovx, tanfovy,
                                   height, width, background, exact=True,
                                   composite=lambda pre, c, o, h, w: composite_camera(lib, pre, c, o, h, w),
                                   preprocess_camera=lambda *camera: preprocess_camera(lib, *camera))
