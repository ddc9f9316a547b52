"""Keep the engine's large CPU buffers in the process between frames (glibc).

One 512^2 frame allocates and frees dozens of 16-64 MB tensors (the StyleUNet's activations).
glibc serves blocks that large with a fresh ``mmap`` and unmaps them on ``free``, so every frame
touches new pages: one page fault per 4 KiB, about a tenth of the StyleUNet's time on a 2-core
Xeon (a bilinear upsample to 64 x 512^2 spent two thirds of its time faulting).
:func:`keep_large_buffers` makes glibc take such blocks from its heap and keep the freed ones
there, so that later frames reuse them once the heap has settled on a layout (a few frames;
``bench/bench_style_unet.py`` measures the effect, ``tests/test_host_memory.py`` counts the faults).

It is process-wide (every ``malloc`` of the process), so it belongs where the engine owns the
process: the ``gagavatar`` command lines and the benchmarks call it; the Blender add-on only where
its *Frame Memory* preference says so (by default in a command-line Blender, whose process the
render job owns; not in the interactive app, whose memory is not ours to manage). The cost is
memory: freed buffers stay with the process (up to about the peak of one frame) instead of going
back to the system. ``GAGAVATAR_KEEP_BUFFERS=0`` turns it off; elsewhere than glibc (macOS,
Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
"""mallopt parameter: free memory at the top of the heap above which glibc returns it."""
M_MMAP_THRESHOLD = -3
"""mallopt parameter: block size from which glibc serves allocations with mmap."""
KEEP_BYTES = 1 << 30
"""Both thresholds (bytes): blocks up to 1 GiB come from the heap, up to 1 GiB of free heap is kept."""
MMAP_FALLBACK_BYTES = 32 << 20
"""glibc's own maximum for the mmap threshold (older releases refuse more)."""


_kept = False
"""Whether :func:`keep_large_buffers` took effect in this process (it cannot be undone)."""


def keep_large_buffers() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed ones. Returns whether it took effect.

    Idempotent: once it took effect, later calls return True at once (the Blender add-on asks before
    every frame; finding the C library takes a millisecond or two). False (and nothing changed)
    when disabled by ``GAGAVATAR_KEEP_BUFFERS=0``, off Linux, or where the C library has no
    ``mallopt`` (musl).
    """
    global _kept
    if _kept:
        return True
    if os.environ.get("GAGAVATAR_KEEP_BUFFERS", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1 or mallopt(M_MMAP_THRESHOLD, MMAP_FALLBACK_BYTES) == 1
    _kept = bool(mmap_ok and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1)
    return _kept
