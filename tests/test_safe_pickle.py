"""engine/safe_pickle.py: plain data loads (numpy 1/2, Python 2 pickles, scipy sparse, chumpy
without chumpy), everything else is refused before it runs."""
import io
import os
import pickle
import sys
from collections import OrderedDict

import numpy as np
import pytest
import scipy.sparse

from gagavatar.engine.errors import AssetError, UnsafeFileError
from gagavatar.engine.safe_pickle import PickledObject, load_npy, load_npz, safe_load
from tests.conftest import fake_chumpy, py2_dumps


def _roundtrip(obj, protocol):
    return safe_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_plain_data_and_numpy_roundtrip(protocol):
    arrays = [np.arange(12, dtype=np.float64).reshape(3, 4), np.ones((2, 3), np.float32).T,
              np.array([1, 2], np.uint32), np.array(["ab", "c"]), np.zeros((0, 3)), np.float32(2.5), np.int64(-3)]
    obj = {"arrays": arrays, "od": OrderedDict(a=1, b=[2.0, None]), "set": {1, 2}, "frozen": frozenset("ab"),
           "bytes": b"\x00\xff", "bytearray": bytearray(b"xy"), "complex": 1 + 2j, "tuple": (1, "x"),
           "objarr": np.array([{"k": np.arange(3)}, None], dtype=object), "slice": slice(1, 5, 2)}
    out = _roundtrip(obj, protocol)
    for a, b in zip(arrays, out["arrays"]):
        assert type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)
    assert isinstance(out["od"], OrderedDict) and out["od"] == obj["od"]
    for key in ("set", "frozen", "bytes", "bytearray", "complex", "tuple", "slice"):
        assert out[key] == obj[key] and type(out[key]) is type(obj[key])
    np.testing.assert_array_equal(out["objarr"][0]["k"], np.arange(3))


@pytest.mark.parametrize("module", [b"numpy.core.multiarray\n", b"numpy._core.multiarray\n"])
def test_numpy1_and_numpy2_module_names(module):
    """Files pickled under numpy 1 (numpy.core) and numpy 2 (numpy._core) load under either numpy."""
    def as_written_by(obj):
        data = pickle.dumps(obj, protocol=2)
        here = b"numpy._core.multiarray\n" if b"numpy._core.multiarray\n" in data else b"numpy.core.multiarray\n"
        assert here in data
        return data.replace(here, module)
    array = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(safe_load(io.BytesIO(as_written_by(array))), array)
    assert safe_load(io.BytesIO(as_written_by(np.float32(1.5)))) == np.float32(1.5)


def test_python2_str_pickles_load_as_latin1_bytes():
    a = np.linspace(-1, 1, 300).reshape(100, 3)  # raw data holds bytes >= 0x80
    data = py2_dumps({"a": a, "u": np.array([4294967295, 7], np.uint32)})
    assert pickle.BINSTRING in data and b"copy_reg" not in data
    out = safe_load(io.BytesIO(data))
    np.testing.assert_array_equal(out["a"], a)
    assert out["u"].dtype == np.uint32 and out["u"][0] == 4294967295


@pytest.mark.parametrize("fmt", ["csc", "csr", "coo"])
@pytest.mark.parametrize("kind", ["matrix", "array"])
def test_scipy_sparse_becomes_dense(fmt, kind):
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((5, 40)) * (rng.random((5, 40)) < 0.2)
    sparse = getattr(scipy.sparse, f"{fmt}_{kind}")(dense)
    out = _roundtrip({"J": sparse}, 2)["J"]
    assert type(out) is np.ndarray and out.dtype == dense.dtype
    np.testing.assert_array_equal(out, dense)


def test_scipy_sparse_duplicates_add_up():
    m = scipy.sparse.coo_matrix((np.array([1.0, 2.0, 4.0]), (np.array([0, 0, 1]), np.array([2, 2, 0]))), shape=(2, 3))
    np.testing.assert_array_equal(_roundtrip(m, 2), m.toarray())


@pytest.mark.parametrize("protocol", [0, 2])
def test_scipy_sparse_python2_module_name(protocol):
    dense = np.eye(4)[:3] * 0.5
    data = pickle.dumps(scipy.sparse.csc_matrix(dense), protocol=protocol)
    assert b"scipy.sparse._csc\n" in data
    data = data.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    if protocol == 0:
        assert b"copy_reg\n_reconstructor" in data
    np.testing.assert_array_equal(safe_load(io.BytesIO(data)), dense)


def test_corrupt_sparse_matrix_stays_inert_record():
    m = scipy.sparse.csr_matrix(np.eye(3))
    m.indices = m.indices + 10  # out of range
    out = _roundtrip({"J": m}, 2)["J"]
    assert isinstance(out, PickledObject) and out.origin[1] == "csr_matrix"


@pytest.mark.parametrize("writer", ["py2", "py3"])
def test_chumpy_values_without_chumpy(writer):
    base = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    with fake_chumpy() as ch:
        x = ch.Ch(x=base)
        model = {"shapedirs": x,
                 "sel": ch.Select(a=x, idxs=np.array([5, 1, 0, 7]), preferred_shape=(2, 2)),
                 "J": ch.transpose(a=ch.Ch(x=base[0]), axes=None),
                 "v": ch.add(a=x, b=ch.Ch(x=np.ones(4))),
                 "odd": ch.sin(x=x), "kintree": np.array([[4294967295, 0]], np.uint32)}
        data = py2_dumps(model) if writer == "py2" else pickle.dumps(model, protocol=0)
    assert b"chumpy.ch\nCh" in data and "chumpy" not in sys.modules
    out = safe_load(io.BytesIO(data))
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    np.testing.assert_array_equal(out["shapedirs"], base)
    np.testing.assert_array_equal(out["sel"], base.ravel()[[5, 1, 0, 7]].reshape(2, 2))
    np.testing.assert_array_equal(out["J"], base[0].T)
    np.testing.assert_array_equal(out["v"], base + 1)
    assert isinstance(out["odd"], PickledObject) and out["odd"].origin == ("chumpy.ch_ops", "sin")
    np.testing.assert_array_equal(out["odd"].state["x"], base)  # its operand was still converted


def test_extra_globals():
    data = b"cmy.module\nmake\n(I3\ntR."
    with pytest.raises(UnsafeFileError):
        safe_load(io.BytesIO(data))
    assert safe_load(io.BytesIO(data), extra={("my.module", "make"): lambda n: [0] * n}) == [0, 0, 0]


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _payloads(marker):
    """Pickles that would create ``marker`` if anything in them ran."""
    touch = f"open({str(marker)!r}, 'w').write('x')"
    return {
        "os.system": pickle.dumps({"a": np.zeros(2), "b": _Evil(os.system, f"touch {marker}")}, protocol=2),
        "eval": pickle.dumps([1, _Evil(eval, touch)], protocol=4),
        "exec_py2": b"c__builtin__\neval\n(S\"" + touch.encode() + b"\"\ntR.",
        "getattr": b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.",
        "numpy_fromfile": b"cnumpy.core.multiarray\nfromfile\n(S'/etc/passwd'\ntR.",
        "chumpy_other_module": b"cchumpy.utils\nrow\n)R.",
        "sparse_other_name": b"cscipy.sparse._csc\nload_npz\n)R.",
        "reconstruct_dtype": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\ndtype\n(I0\ntS'b'\ntR.",
        "reconstructor_set": b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nobject\nNtR.",
        "codec_hex": b"c_codecs\nencode\n(S'00'\nS'hex'\ntR.",
        "persistent_id": b"P1\n.",
        "newline_in_name": b"\x80\x04\x8c\x04os\nx\x8c\x06system\x93.",
    }


@pytest.mark.parametrize("name", sorted(_payloads("x")))
def test_malicious_payload_refused_and_not_run(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_payloads(marker)[name])
    with pytest.raises(UnsafeFileError) as err:
        safe_load(path)
    msg = str(err.value)
    assert "\n" not in msg and "refused" in msg and "trusted source" in msg
    assert not marker.exists()


def test_ndarray_is_not_callable_from_a_pickle():
    # ndarray((2,), object, buffer) would turn raw file bytes into object pointers
    data = b"cnumpy\nndarray\n((I2\ntcnumpy\ndtype\n(S'O8'\nI0\nI1\ntRS'AAAAAAAAAAAAAAAA'\ntR."
    with pytest.raises(AssetError):
        safe_load(io.BytesIO(data))


def test_corrupt_missing_and_not_a_pickle(tmp_path):
    good = pickle.dumps({"a": np.arange(1000.0)}, protocol=2)
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pkl").write_bytes(b"hello world, not a pickle")
    for name in ("cut.pkl", "text.pkl"):
        with pytest.raises(AssetError) as err:
            safe_load(tmp_path / name)
        assert not isinstance(err.value, UnsafeFileError) and "corrupt" in str(err.value)
    with pytest.raises(AssetError, match="not found"):
        safe_load(tmp_path / "missing.pkl")


def test_npy_and_npz(tmp_path):
    emb = {"full_lmk_faces_idx_with_eye": np.arange(70)[None], "bary": np.full((1, 70, 3), 1 / 3)}
    np.save(tmp_path / "emb.npy", np.array(emb, dtype=object), allow_pickle=True)
    out = load_npy(tmp_path / "emb.npy")[()]
    np.testing.assert_array_equal(out["full_lmk_faces_idx_with_eye"], emb["full_lmk_faces_idx_with_eye"])
    np.save(tmp_path / "plain.npy", np.arange(5.0))
    with open(tmp_path / "plain.npy", "rb") as f:
        np.testing.assert_array_equal(load_npy(f), np.arange(5.0))
    np.savez(tmp_path / "mixed.npz", a=np.eye(3), b=np.array([emb], dtype=object))
    out = load_npz(tmp_path / "mixed.npz")
    np.testing.assert_array_equal(out["a"], np.eye(3))
    np.testing.assert_array_equal(out["b"][0]["bary"], emb["bary"])
    with pytest.raises(AssetError, match="not a .npy"):
        load_npy(tmp_path / "mixed.npz")


def test_malicious_npy_and_npz_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.array([_Evil(os.system, f"touch {marker}")], dtype=object)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", ok=np.zeros(3), bad=evil)
    with pytest.raises(UnsafeFileError):
        load_npy(tmp_path / "evil.npy")
    with pytest.raises(UnsafeFileError):
        load_npz(tmp_path / "evil.npz")
    assert not marker.exists()
