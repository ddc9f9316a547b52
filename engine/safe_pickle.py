"""Restricted unpickling of untrusted data files (FLAME ``.pkl``, ``.npy`` / ``.npz`` with pickles).

A pickle can name any importable function and have it called while loading, so ``pickle.load``
on a downloaded file runs whatever the file asks for. :func:`safe_load` resolves only a fixed set
of globals, none of which can reach the file system, the network or the interpreter:

* numpy array reconstruction: ``numpy.dtype``, ``_reconstruct`` (plain ``ndarray`` only),
  ``scalar`` and ``_frombuffer``, under both the numpy 1 (``numpy.core.*``) and the numpy 2
  (``numpy._core.*``) module names. ``numpy.ndarray`` itself resolves to an inert marker that only
  ``_reconstruct`` accepts: called directly, ``ndarray(shape, object, buffer)`` would turn raw
  bytes of the file into object pointers;
* plain containers: ``set``, ``frozenset``, ``bytes``, ``bytearray``, ``complex``, ``slice``,
  ``collections.OrderedDict``, Latin-1 ``_codecs.encode`` (how Python 3 pickles ``bytes`` at
  protocol 2) and ``copyreg._reconstructor`` restricted to the inert records below;
* scipy sparse matrices (``csc``/``csr``/``coo``, ``*_matrix`` and ``*_array``, old and new module
  names): never imported; read as inert records and turned into dense numpy arrays;
* chumpy (``chumpy.ch``, ``chumpy.ch_ops``, ``chumpy.reordering``): never imported; read as inert
  records and evaluated with numpy. A ``Ch`` pickles its value as ``state['x']``; the expression
  nodes found in SMPL-family files (``Select``, ``Reshape``, ``transpose``, ``add``, ``subtract``,
  ``multiply``, ``dot``, ``MatVecMult``) are evaluated from their operands the way chumpy's
  ``compute_r`` does. Any other node stays a :class:`PickledObject`.

Every other global raises :class:`~.errors.UnsafeFileError` the moment the unpickler meets it,
before anything from the file has been called. Files are read with ``encoding='latin1'`` so that
Python 2 pickles (the FLAME 2017/2020 models) load; numpy accepts the Latin-1 strings as raw data.
"""
from __future__ import annotations

import _codecs
import functools
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np

from .errors import AssetError, GAGAvatarError, UnsafeFileError
from .safe_load import file_head

__all__ = ["PickledObject", "safe_load", "load_npy", "load_npz"]

FileOrPath = Union[str, os.PathLike, BinaryIO]

_NPY_MAGIC = b"\x93NUMPY"
_MAX_DENSE = 1 << 28  # largest dense array (elements) a sparse matrix may expand to
_CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                   KeyError, OverflowError, MemoryError, RuntimeError, RecursionError, UnicodeDecodeError,
                   zipfile.BadZipFile)


class PickledObject:
    """An inert record of an object from a chumpy or scipy class (no code of that class runs).

    Attributes:
        origin: ``(module, name)`` of the class the file named.
        state: what the file stored for the object (usually its ``__dict__``), or None.
    """

    origin: tuple[str, str] = ("", "")

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<PickledObject {'.'.join(self.origin)}>"


# --- numpy --------------------------------------------------------------------------------------

_np_reconstruct = np.empty(0).__reduce__()[0]
_np_scalar = np.float64(0).__reduce__()[0]
_np_frombuffer = np.arange(2).__reduce_ex__(5)[0]


def _printable(text: str) -> str:
    """``text`` from a file made safe for a one-line message (no control characters, short)."""
    return "".join(c if c.isprintable() else "?" for c in text[:80])


def _name(obj: Any) -> str:
    """A short one-line name for an object from a file (never its repr)."""
    return _printable(obj.__name__ if isinstance(obj, type) else type(obj).__name__)


class _NDArrayMarker:
    """What ``numpy.ndarray`` resolves to in a pickle: an argument for :func:`_reconstruct`, nothing else."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` for plain ``ndarray`` only (no subclass hooks)."""
    if subtype is not _NDArrayMarker:
        raise UnsafeFileError(f"the file asks numpy to rebuild an array as a {_name(subtype)}, which is refused "
                              "(nothing in it was run): use a file from a trusted source")
    return _np_reconstruct(np.ndarray, shape, dtype)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle ``bytes`` (Latin-1 text to bytes only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeFileError("the file asks for a codec other than latin1, which is refused (nothing in it "
                              "was run): use a file from a trusted source")
    return _codecs.encode(text, "latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> PickledObject:
    """``copyreg._reconstructor`` (protocol 0/1 objects), restricted to the inert records."""
    if not (isinstance(cls, type) and issubclass(cls, PickledObject)) or base is not object or state is not None:
        raise UnsafeFileError(f"the file asks to rebuild a {_name(cls)} object, which is refused (nothing in "
                              "it was run): use a file from a trusted source")
    return cls.__new__(cls)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
}
for _builtins in ("builtins", "__builtin__"):
    for _obj in (set, frozenset, bytes, bytearray, complex, slice, object):
        _ALLOWED[(_builtins, _obj.__name__)] = _obj
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _np_scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _np_frombuffer
_ALLOWED[("numpy", "ndarray")] = _NDArrayMarker
_ALLOWED[("numpy", "dtype")] = np.dtype

_CHUMPY_MODULES = frozenset({"chumpy.ch", "chumpy.ch_ops", "chumpy.reordering"})
_SPARSE_MODULES = frozenset({"scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
                             "scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse._arrays"})
_SPARSE_NAMES = frozenset({"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"})


# --- conversion of the inert records to numpy ----------------------------------------------------

def _sparse_to_dense(state: Mapping[str, Any], kind: str) -> np.ndarray:
    """Dense ``ndarray`` of a pickled scipy sparse matrix (``kind`` = ``csc``, ``csr`` or ``coo``)."""
    shape = tuple(int(n) for n in state.get("_shape", state.get("shape")))
    if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > _MAX_DENSE:
        raise ValueError(f"bad sparse matrix shape {shape}")
    data = np.asarray(state["data"]).reshape(-1)
    if kind == "coo":
        row, col = state["coords"] if "coords" in state else (state["row"], state["col"])
        rows, cols = np.asarray(row, np.int64).reshape(-1), np.asarray(col, np.int64).reshape(-1)
    else:
        indices = np.asarray(state["indices"], np.int64).reshape(-1)
        indptr = np.asarray(state["indptr"], np.int64).reshape(-1)
        n_major = shape[1] if kind == "csc" else shape[0]
        counts = np.diff(indptr)
        if len(indptr) != n_major + 1 or indptr[0] != 0 or indptr[-1] != len(indices) or (counts < 0).any():
            raise ValueError("bad sparse matrix index pointers")
        major = np.repeat(np.arange(n_major), counts)
        rows, cols = (indices, major) if kind == "csc" else (major, indices)
    if not (len(rows) == len(cols) == len(data)):
        raise ValueError("sparse matrix arrays of different lengths")
    if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0] or cols.max() >= shape[1]):
        raise ValueError("sparse matrix index out of range")
    dense = np.zeros(shape, dtype=data.dtype)
    np.add.at(dense, (rows, cols), data)  # duplicates add up, as in scipy
    return dense


def _mat_vec_mult(s: Mapping[str, Any]) -> np.ndarray:
    vec = np.asarray(s["vec"])
    result = np.asarray(s["mtx"]).dot(vec.reshape(-1, 1)).reshape(-1)
    return result.reshape(-1, vec.shape[1]) if vec.ndim > 1 and vec.shape[1] > 1 else result


def _select(s: Mapping[str, Any]) -> np.ndarray:
    result = np.asarray(s["a"]).reshape(-1)[np.asarray(s["idxs"])]
    return result.reshape(s["preferred_shape"]) if "preferred_shape" in s else result


#: chumpy node -> its value from the (already converted) state, as chumpy's ``compute_r``.
_CHUMPY_EVAL: dict[tuple[str, str], Callable[[Mapping[str, Any]], Any]] = {
    ("chumpy.ch", "Ch"): lambda s: np.asarray(s["x"]),
    ("chumpy.ch", "MatVecMult"): _mat_vec_mult,
    ("chumpy.reordering", "Select"): _select,
    ("chumpy.reordering", "Reshape"): lambda s: np.asarray(s["a"]).reshape(s["newshape"]),
    ("chumpy.reordering", "transpose"): lambda s: np.transpose(np.asarray(s["a"]), s.get("axes")).copy(),
    ("chumpy.ch_ops", "add"): lambda s: np.asarray(s["a"]) + np.asarray(s["b"]),
    ("chumpy.ch_ops", "subtract"): lambda s: np.asarray(s["a"]) - np.asarray(s["b"]),
    ("chumpy.ch_ops", "multiply"): lambda s: np.asarray(s["a"]) * np.asarray(s["b"]),
    ("chumpy.ch_ops", "dot"): lambda s: np.asarray(s["a"]).dot(np.asarray(s["b"])),
}


def _evaluate(record: PickledObject, state: Any) -> Any:
    """The numpy value of a record, or the record itself if it has none we can compute."""
    module, name = record.origin
    convert: Optional[Callable[[Mapping[str, Any]], Any]]
    if module in _SPARSE_MODULES:
        convert = functools.partial(_sparse_to_dense, kind=name[:3])
    else:
        convert = _CHUMPY_EVAL.get(record.origin)
    if convert is None or not isinstance(state, Mapping):
        return record
    try:
        value = convert(state)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, MemoryError):
        return record
    return value if isinstance(value, np.ndarray) and value.dtype != object else record


def _plain(obj: Any, memo: dict[int, tuple[Any, Any]]) -> Any:
    """Replace records by numpy arrays throughout ``obj`` (dicts, lists, object arrays in place).

    ``memo`` maps ``id(original) -> (original, value)``; keeping the original alive means its id
    cannot be reused by a new object during the walk.
    """
    key = id(obj)
    if key in memo:
        return memo[key][1]
    if isinstance(obj, PickledObject):
        memo[key] = (obj, obj)  # a record reachable from its own state stays a record
        value = _evaluate(obj, _plain(getattr(obj, "state", None), memo))
    elif isinstance(obj, dict):
        memo[key] = (obj, obj)
        for k in list(obj):
            obj[k] = _plain(obj[k], memo)
        value = obj
    elif isinstance(obj, list):
        memo[key] = (obj, obj)
        obj[:] = [_plain(v, memo) for v in obj]
        value = obj
    elif isinstance(obj, tuple):
        value = tuple(_plain(v, memo) for v in obj)
    elif isinstance(obj, np.ndarray) and obj.dtype == object:
        memo[key] = (obj, obj)
        flat = obj.reshape(-1)
        for i in range(flat.size):
            flat[i] = _plain(flat[i], memo)
        value = obj
    else:
        return obj
    memo[key] = (obj, value)
    return value


# --- the unpickler -------------------------------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns the allowed globals."""

    def __init__(self, file: BinaryIO, source: str, extra: Optional[Mapping[tuple[str, str], Any]]):
        super().__init__(file, encoding="latin1")
        self._source = source
        self._extra = dict(extra or {})
        self._records: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self._extra:
            return self._extra[key]
        if key in _ALLOWED:
            return _ALLOWED[key]
        chumpy = module in _CHUMPY_MODULES and name.isidentifier()
        if chumpy or (module in _SPARSE_MODULES and name in _SPARSE_NAMES):
            if key not in self._records:
                self._records[key] = type(name, (PickledObject,), {"origin": key, "__module__": __name__})
            return self._records[key]
        raise UnsafeFileError(f"{self._source} asks to run {_printable(f'{module}.{name}')} when loaded, which is "
                              "refused (nothing in it was run): use a file from a trusted source")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self._source} refers to external objects (persistent ids), which is refused "
                              "(nothing in it was run): use a plain data file from a trusted source")


def _open(file_or_path: FileOrPath) -> tuple[BinaryIO, str, bool]:
    """(binary file, name for messages, whether we opened it)."""
    if isinstance(file_or_path, (str, os.PathLike)):
        path = Path(file_or_path)
        file_head(path, "give the path of the file itself", 1)
        try:
            return open(path, "rb"), str(path), True
        except OSError as err:
            raise AssetError(f"cannot read {path} ({err.strerror}): check its permissions") from err
    return file_or_path, str(getattr(file_or_path, "name", "the file")), False


def _corrupt(source: str, err: BaseException) -> AssetError:
    reason = (str(err).splitlines() or [""])[0][:120] or type(err).__name__
    return AssetError(f"{source} is truncated, corrupt or not a pickle ({reason}): get a fresh copy of the file")


def _unpickle(file: BinaryIO, source: str, extra: Optional[Mapping[tuple[str, str], Any]]) -> Any:
    try:
        return _plain(_RestrictedUnpickler(file, source, extra).load(), {})
    except GAGAvatarError:
        raise
    except _CORRUPT_ERRORS as err:
        raise _corrupt(source, err) from err


def safe_load(file_or_path: FileOrPath, extra: Optional[Mapping[tuple[str, str], Any]] = None) -> Any:
    """Unpickle an untrusted file, allowing only plain data (see the module docstring).

    Args:
        file_or_path: a path, or a binary file object positioned at the pickle.
        extra: more allowed globals, ``{(module, name): object to return}``; whatever is listed
            here can be called by the file, so list only side-effect-free constructors.

    Returns:
        The unpickled object, with chumpy values and scipy sparse matrices replaced by numpy
        arrays (chumpy nodes that cannot be evaluated stay :class:`PickledObject` records).

    Raises:
        UnsafeFileError: the file names any other global (nothing from it has been called).
        AssetError: the file is missing, unreadable, truncated or not a pickle.
    """
    file, source, owned = _open(file_or_path)
    try:
        return _unpickle(file, source, extra)
    finally:
        if owned:
            file.close()


def _read_npy(file: BinaryIO, source: str) -> np.ndarray:
    start = file.tell()
    try:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
    except _CORRUPT_ERRORS as err:
        raise _corrupt(source, err) from err
    if not dtype.hasobject:
        file.seek(start)
        try:
            return np.lib.format.read_array(file, allow_pickle=False)
        except _CORRUPT_ERRORS as err:
            raise _corrupt(source, err) from err
    array = _unpickle(file, source, None)  # numpy pickles object arrays whole after the header
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise AssetError(f"{source} is corrupt (its data does not match its header): get a fresh copy of the file")
    return array


def load_npy(file_or_path: FileOrPath) -> np.ndarray:
    """Read a ``.npy`` file; object arrays (pickled by numpy) go through :func:`safe_load`'s rules.

    ``np.load(path, allow_pickle=True, encoding='latin1')`` without the risk: e.g. FLAME's
    ``landmark_embedding.npy`` is a 0-d object array holding a dict (``load_npy(p)[()]``).

    Raises:
        UnsafeFileError: an object array names a global that is not allowed.
        AssetError: the file is missing, unreadable, truncated or not a ``.npy`` file.
    """
    file, source, owned = _open(file_or_path)
    try:
        if file.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise AssetError(f"{source} is not a .npy file: pass a file written by numpy.save")
        file.seek(-len(_NPY_MAGIC), io.SEEK_CUR)
        return _read_npy(file, source)
    finally:
        if owned:
            file.close()


def load_npz(file_or_path: FileOrPath) -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` archive (member name without ``.npy`` -> array), eagerly.

    Object arrays inside are read with :func:`load_npy`'s rules.

    Raises:
        UnsafeFileError: an object array names a global that is not allowed.
        AssetError: the file is missing, unreadable, truncated or not a ``.npz`` archive.
    """
    file, source, owned = _open(file_or_path)
    try:
        with zipfile.ZipFile(file) as archive:
            arrays = {}
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise AssetError(f"{source} holds {member}, which is not a numpy array: pass a file "
                                     "written by numpy.savez")
                with archive.open(member) as f:
                    arrays[member[:-len(".npy")]] = _read_npy(io.BytesIO(f.read()), f"{source}:{member}")
            return arrays
    except GAGAvatarError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise _corrupt(source, err) from err
    finally:
        if owned:
            file.close()
