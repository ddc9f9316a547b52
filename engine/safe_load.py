"""Reading files a user hands us, which may be missing, broken or hostile: one place for each check.

* :func:`file_head` checks that a path is a readable, non-empty file and returns its first bytes
  (the loaders pick the format from them, not from the extension).
* :func:`load_torch` is ``torch.load`` for untrusted data: on the CPU, ``weights_only=True`` (so
  only tensors and plain containers are rebuilt and no pickled code ever runs), with every
  failure turned into a one-line :class:`~.errors.AssetError`, and a file that asks for anything
  else into :class:`~.errors.UnsafeFileError`.

Every message names the file and ends with the caller's ``remedy`` (what the user should do).
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from .errors import AssetError, UnsafeFileError

__all__ = ["file_head", "load_torch", "ZIP_MAGIC"]

ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a zip archive (``torch.save``'s format, ``.npz``)."""


def file_head(path: str | os.PathLike, remedy: str, size: int = 8) -> bytes:
    """The first ``size`` bytes of the file at ``path`` (never empty).

    Raises:
        AssetError: the path is missing, a folder, unreadable (permissions) or an empty file.
    """
    path = Path(path)
    if not path.exists():
        raise AssetError(f"{path} not found: {remedy}")
    if path.is_dir():
        raise AssetError(f"{path} is a folder, not a file: {remedy}")
    try:
        with open(path, "rb") as f:
            head = f.read(size)
    except OSError as err:
        raise AssetError(f"cannot read {path} ({err.strerror}): check its permissions") from err
    if not head:
        raise AssetError(f"{path} is empty: {remedy}")
    return head


def load_torch(source: str | os.PathLike | bytes, remedy: str, what: str = "PyTorch file", *,
               mmap: bool = False) -> Any:
    """``torch.load(source, map_location='cpu', weights_only=True)`` with one-line errors.

    Args:
        source: a path, or the bytes of a file (an entry of an archive).
        remedy: what to do, ending every message.
        what: the kind of file, for messages (``"training state"``).
        mmap: memory-map a zip archive instead of reading it (large checkpoints).
    Raises:
        UnsafeFileError: the file asks to unpickle something other than tensors and plain data;
            nothing of it was run.
        AssetError: any other failure (truncated, corrupt, not a torch file).
    """
    import torch

    name = "the data" if isinstance(source, bytes) else str(source)
    f = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return torch.load(f, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(f"{name} contains pickled code, not just weights and data; it was refused and "
                              f"nothing in it was run: use a file from a trusted source ({remedy})") from err
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError) as err:
        reason = (str(err).splitlines() or [""])[0][:120] or type(err).__name__
        raise AssetError(f"{name} is not a readable {what}, truncated or corrupt ({reason}): {remedy}") from err
