"""Atomic file writes: a temporary file beside the target, renamed into place.

A reader never sees half a file, and a failed or interrupted write leaves the old file (or none)
and no temporary behind. The file gets the permissions a plain ``open()`` would give, i.e. the
umask's (``tempfile`` would leave it ``0600``, unreadable to a render-farm node running as
another user).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, flush it to disk, give it the
    umask's permissions (``0o666 & ~umask``) and rename it into place; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``f`` as ``numpy.savez`` does (uncompressed, one ``NAME.npy`` member each,
    no pickles), closing the archive even when a write fails: ``savez`` leaves it open then, and
    Python later prints a traceback from its ``__del__`` after the error was reported."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
