"""Silence native log lines (TFLite / absl / glog ``INFO`` and ``W`` lines) that mediapipe writes to stderr.

Mediapipe's C++ side writes straight to file descriptor 2, past Python's ``sys.stderr``, so
:func:`native_stderr_silenced` points descriptor 2 at the null device while it runs. Python's
own ``sys.stderr`` (warnings, tracebacks, prints) keeps writing to the real stderr, and
exceptions raised inside the block propagate unchanged. The redirection is process-wide: native
writes of other threads during the block are dropped too (the blocks are single model calls).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

__all__ = ["native_stderr_silenced"]


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to the null device while the block runs."""
    try:
        sys.stderr.flush()
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor (IDEs, pytest)
        python_on_fd2 = False
    saved = os.dup(2)
    python_stream = saved_stream = None
    try:
        if python_on_fd2:  # keep Python's writes on the real stderr, through a copy of its descriptor
            saved_stream = sys.stderr
            python_stream = os.fdopen(os.dup(saved), "w", buffering=1, encoding=saved_stream.encoding,
                                      errors="backslashreplace")
            sys.stderr = python_stream
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if python_stream is not None:
            python_stream.flush()
            sys.stderr = saved_stream
            python_stream.close()
