"""The model assets: where they live, what they must contain, and how to download them.

Folder: ``--assets DIR``, else ``$GAGAVATAR_ASSETS``, else the user data folder
(``$XDG_DATA_HOME/gagavatar`` or ``~/.local/share/gagavatar`` on Linux,
``~/Library/Application Support/gagavatar`` on macOS, ``%APPDATA%\\gagavatar`` on Windows).

Files (:data:`MANIFEST`): ``GAGAvatar.pt`` (the network weights) and ``FLAME_with_eye.pt`` (the
FLAME head model, which may only be used under the FLAME licence, https://flame.is.tue.mpg.de),
published by the GAGAvatar authors on Hugging Face, checked by structure (keys and shapes) and,
as downloaded, against the sha256 Hugging Face publishes for each LFS file (its ``X-Linked-Etag``
header; no digest is pinned here, none could be read offline); and the tracking models (:data:`TRACKING_MODELS`: Google's MediaPipe
face detectors, face landmarker and selfie segmenter, Apache-2.0, no licence to accept), fetched
from their official Google Cloud Storage URLs and checked against pinned sha256 digests.

Downloads use ``urllib`` only: ``<name>.part`` grows with HTTP Range requests (an interrupted or
cancelled download resumes where it stopped); the finished file is renamed into place only once
its check passes, and a file that fails the check is deleted.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from .. import __version__
from .errors import AssetError, Cancelled

ENV_VAR = "GAGAVATAR_ASSETS"
BASE_URL = "https://huggingface.co/xg-chu/GAGAvatar/resolve/main/assets"
FLAME_LICENSE_URL = "https://flame.is.tue.mpg.de"
DOWNLOAD_HINT = "run `gagavatar assets download --accept-license`"
TRACKING_HINT = "run `gagavatar assets download --tracking-only` (or Download Assets in the add-on's preferences)"
MEDIAPIPE_ASSETS_URL = "https://storage.googleapis.com/mediapipe-assets"
FACE_LANDMARKER_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
                       "face_landmarker.task")

Progress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``."""

_CHUNK = 1 << 20
_TIMEOUT_S = 60

#: group -> key -> shape of FLAME_with_eye.pt (as GAGAvatar's FLAME.py reads it).
FLAME_LAYOUT: dict[str, dict[str, tuple[int, ...]]] = {
    "flame_model": {
        "v_template": (5023, 3), "f": (9976, 3), "shapedirs": (5023, 3, 400),
        "posedirs": (5023, 3, 36), "J_regressor": (5, 5023), "kintree_table": (2, 5),
        "weights": (5023, 5),
    },
    "lmk_embeddings": {
        "static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
        "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
        "full_lmk_faces_idx_with_eye": (1, 70), "full_lmk_bary_coords_with_eye": (1, 70, 3),
    },
}


def _check_model_file(path: Path) -> str | None:
    from .checkpoints import is_synthetic, read_checkpoint
    _, meta_cfg = read_checkpoint(path)
    return "SYNTHETIC weights (gagavatar assets synthesize): not a likeness" if is_synthetic(meta_cfg) else None


def _check_flame_file(path: Path) -> None:
    remedy = f"{DOWNLOAD_HINT} to get FLAME_with_eye.pt"
    import torch

    from .checkpoints import load_torch_file
    obj = load_torch_file(path, remedy)
    if isinstance(obj, Mapping) and "model" in obj:
        raise AssetError(f"{path} is a GAGAvatar checkpoint, not the FLAME asset: put FLAME_with_eye.pt there")
    if not isinstance(obj, Mapping):
        raise AssetError(f"{path} is not the FLAME asset (it holds a {type(obj).__name__}): {remedy}")
    problems = []
    for group, layout in FLAME_LAYOUT.items():
        entries = obj.get(group)
        if not isinstance(entries, Mapping):
            problems.append(f"no '{group}'")
            continue
        for key, shape in layout.items():
            value = entries.get(key)
            if not isinstance(value, torch.Tensor):
                problems.append(f"no {group}.{key}")
            elif tuple(value.shape) != shape:
                problems.append(f"{group}.{key} {list(value.shape)} instead of {list(shape)}")
    if problems:
        more = f", ... {len(problems) - 3} more" if len(problems) > 3 else ""
        raise AssetError(f"{path} is not a valid FLAME_with_eye.pt ({', '.join(problems[:3])}{more}): {remedy}")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Asset:
    """One file of the asset folder.

    Attributes:
        name: file name, also the last part of its download URL.
        description: what it is, for reports.
        check: raises :class:`AssetError` unless the file at the given path has the right structure.
        url: official download URL (None: ``<BASE_URL>/<name>``).
        sha256: pinned hex digest the file must have (None: checked by structure only).
        needs_licence: downloaded only once the FLAME licence is accepted.
    """

    name: str
    description: str
    check: Callable[[Path], str | None]
    """Raises :class:`AssetError` for a bad file; may return a note on a good one."""
    url: str | None = None
    sha256: str | None = None
    needs_licence: bool = True

    @property
    def hint(self) -> str:
        """How the user gets this file."""
        return DOWNLOAD_HINT if self.needs_licence else TRACKING_HINT


def _digest_check(name: str, sha256: str) -> Callable[[Path], None]:
    """A check that the file has the pinned digest ``sha256``."""
    def check(path: Path) -> None:
        actual = file_sha256(path)
        if actual != sha256:
            raise AssetError(f"{path} is not the expected {name} (sha256 {actual[:16]}..., expected "
                             f"{sha256[:16]}...): {TRACKING_HINT} to replace it")
    return check


def _tracking_model(name: str, description: str, url: str, sha256: str) -> Asset:
    return Asset(name, description, _digest_check(name, sha256), url=url, sha256=sha256, needs_licence=False)


MANIFEST: tuple[Asset, ...] = (
    Asset("GAGAvatar.pt", "GAGAvatar network weights (official checkpoint)", _check_model_file),
    Asset("FLAME_with_eye.pt", "FLAME head model with eyes (FLAME licence)", _check_flame_file),
    _tracking_model("face_landmarker.task", "MediaPipe face landmarker, 478 points with irises (tracking, Apache-2.0)",
                    FACE_LANDMARKER_URL, "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"),
    _tracking_model("face_detection_full_range_sparse.tflite",
                    "MediaPipe full-range face detector (tracking, Apache-2.0)",
                    f"{MEDIAPIPE_ASSETS_URL}/face_detection_full_range_sparse.tflite",
                    "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"),
    _tracking_model("face_detection_short_range.tflite", "MediaPipe short-range face detector (tracking, Apache-2.0)",
                    f"{MEDIAPIPE_ASSETS_URL}/face_detection_short_range.tflite",
                    "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    _tracking_model("selfie_segmentation.tflite", "MediaPipe selfie segmentation, background removal "
                    "(tracking, Apache-2.0)", f"{MEDIAPIPE_ASSETS_URL}/selfie_segmentation.tflite",
                    "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
)

TRACKING_MODELS: tuple[str, ...] = tuple(a.name for a in MANIFEST if not a.needs_licence)
"""The tracking models' file names (no licence to accept)."""


def user_data_dir() -> Path:
    """The platform's per-user data folder for gagavatar (not created here)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "gagavatar"


def find_assets(explicit: str | os.PathLike | None = None) -> Path:
    """The asset folder: ``explicit`` (``--assets DIR``), else ``$GAGAVATAR_ASSETS``, else :func:`user_data_dir`.

    The folder need not exist yet (``download_assets`` creates it); an existing file there is an error.
    """
    if explicit:
        folder, origin = Path(explicit).expanduser(), "--assets"
    elif os.environ.get(ENV_VAR):
        folder, origin = Path(os.environ[ENV_VAR]).expanduser(), ENV_VAR
    else:
        folder, origin = user_data_dir(), "the user data folder"
    if folder.exists() and not folder.is_dir():
        raise AssetError(f"the asset folder {folder} (from {origin}) is a file: point {origin} at a folder")
    return folder


def asset_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Path of the asset file ``name`` (a bare file name) in :func:`find_assets`\\ (``folder``)."""
    if Path(name).name != name:
        raise ValueError(f"asset name must be a bare file name, got {name!r}")
    return find_assets(folder) / name


def check_assets(folder: str | os.PathLike) -> list[tuple[str, str, str]]:
    """``(name, status, message)`` per manifest file; status is ``ok``, ``missing``, ``partial``
    (an unfinished download is there) or ``invalid`` (the message says what is wrong)."""
    folder = Path(folder)
    report = []
    for asset in MANIFEST:
        path, part = folder / asset.name, folder / f"{asset.name}.part"
        if path.exists():
            try:
                note = asset.check(path)
            except AssetError as err:
                report.append((asset.name, "invalid", str(err)))
            else:
                note = f": {note}" if note else ""
                report.append((asset.name, "ok", f"{path} ({path.stat().st_size / 1e6:.1f} MB){note}"))
        elif part.exists():
            report.append((asset.name, "partial", f"{part.stat().st_size / 1e6:.1f} MB downloaded to {part}: "
                                                  f"{asset.hint} to resume"))
        else:
            report.append((asset.name, "missing", f"not in {folder}: {asset.hint} or copy it there"))
    return report


def asset_status(folder: str | os.PathLike, verify: bool = False) -> list[tuple[str, str, str]]:
    """``(name, description, status)`` per manifest file, for a preferences panel.

    Status as in :func:`check_assets`; with ``verify=False`` (cheap enough for every redraw) a file
    that is there counts as ``ok`` unchecked, with ``verify=True`` it gets :func:`check_assets`' full
    check (loading the checkpoints takes seconds).
    """
    folder = Path(folder)
    if verify:
        states = {name: status for name, status, _ in check_assets(folder)}
    else:
        states = {a.name: "ok" if (folder / a.name).is_file() else
                  "partial" if (folder / f"{a.name}.part").exists() else "missing" for a in MANIFEST}
    return [(a.name, a.description, states[a.name]) for a in MANIFEST]


def tracking_model_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Path of the tracking model ``name`` (one of :data:`TRACKING_MODELS`) in :func:`find_assets`\\ (``folder``).

    Raises:
        AssetError: the file is missing or is not the pinned file (one line naming the remedy).
    """
    asset = next((a for a in MANIFEST if a.name == name and not a.needs_licence), None)
    if asset is None:
        raise ValueError(f"{name!r} is not a tracking model (one of {', '.join(TRACKING_MODELS)})")
    folder = find_assets(folder)
    path = folder / name
    if not path.is_file():
        raise AssetError(f"the tracking model {name} is not in {folder}: {TRACKING_HINT}, or set {ENV_VAR} "
                         f"to a folder that has it")
    asset.check(path)
    return path


def assets_summary(folder: str | os.PathLike, report: list[tuple[str, str, str]] | None = None) -> str:
    """One line: all assets present, or which are missing/unfinished/invalid and where to put them."""
    folder = Path(folder)
    report = check_assets(folder) if report is None else report
    bad = [f"{name} ({status})" for name, status, _ in report if status != "ok"]
    if not bad:
        return f"all assets present in {folder}"
    return (f"{', '.join(bad)} in {folder}: {DOWNLOAD_HINT}, copy the files there, "
            f"or set {ENV_VAR} / --assets to the folder that has them")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes a-b/total`` (or ``bytes */total``) header."""
    m = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _published_sha256(headers) -> str | None:
    """The sha256 a server publishes for a file: Hugging Face sends an LFS file's as ``X-Linked-Etag``."""
    tag = (headers.get("X-Linked-Etag") or "").strip().removeprefix("W/").strip('"').lower()
    return tag if re.fullmatch(r"[0-9a-f]{64}", tag) else None


def _fetch(url: str, part: Path, progress: Progress | None,
           cancel: Callable[[], bool] | None) -> str | None:
    """Download ``url`` into ``part``, resuming from its current size; raise unless it is complete.

    Returns the sha256 the server publishes for the file (:func:`_published_sha256`), if any."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"gagavatar/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    retry = f"{DOWNLOAD_HINT} again to resume {part.name}"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left after `offset`: complete, or stale
            if _content_range(err.headers.get("Content-Range"))[1] == offset:
                return _published_sha256(err.headers)
            part.unlink()
            return _fetch(url, part, progress, cancel)
        raise AssetError(f"downloading {url} failed with HTTP {err.code} {err.reason}: check the URL "
                         f"(or mirror) and your connection, then try again") from err
    except (urllib.error.URLError, OSError, HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise AssetError(f"cannot download {url} ({reason}): check your connection, then try again") from err
    with response:
        published = _published_sha256(response.headers)
        start, total = _content_range(response.headers.get("Content-Range"))
        length = response.headers.get("Content-Length")
        if response.status == 206:
            if start != offset:
                part.unlink(missing_ok=True)
                raise AssetError(f"{url} answered with the wrong byte range (from {start}, asked {offset}); "
                                 f"the partial download was deleted: try again")
            mode = "ab"
        else:  # the server sent the whole file
            mode, offset = "wb", 0
        if total is None and length is not None:
            total = offset + int(length)
        done = offset
        try:
            with open(part, mode) as f:
                while True:
                    if cancel is not None and cancel():
                        raise Cancelled(f"download of {part.name[:-5]} cancelled: {retry}")
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (OSError, HTTPException) as err:
            raise AssetError(f"download of {url} interrupted after {done} bytes ({err}): {retry}") from err
    if total is not None and done != total:
        raise AssetError(f"download of {url} stopped at {done} of {total} bytes: {retry}")
    return published


def download_assets(folder: str | os.PathLike, accept_license: bool, base_url: str | None = None,
                    progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                    names: Iterable[str] | None = None) -> list[Path]:
    """Download every manifest file (or those in ``names``) not already valid in ``folder``; return their paths.

    Args:
        accept_license: the user has accepted the FLAME licence; without it nothing is downloaded
            unless every file asked for needs no licence (``names=TRACKING_MODELS``).
        base_url: where ``<base_url>/<name>`` is fetched from, for every file (a mirror or a test
            server); default: each file's official URL.
        progress: ``progress(done, total)`` in bytes of the file being downloaded (``total`` is
            None when the server does not say); restarts at each file.
        cancel: polled between chunks; when it returns True, :class:`Cancelled` is raised and the
            ``.part`` file stays, so a later call resumes it.
        names: file names to download (default: all of :data:`MANIFEST`).
    Raises:
        AssetError: licence not accepted, network/HTTP failure (the ``.part`` stays to resume), or
            a downloaded file failing its check (structure or sha256; the ``.part`` is deleted).
    """
    wanted = None if names is None else set(names)
    unknown = sorted((wanted or set()) - {a.name for a in MANIFEST})
    if unknown:
        raise ValueError(f"not asset names: {', '.join(unknown)}")
    selected = [a for a in MANIFEST if wanted is None or a.name in wanted]
    if not accept_license and any(a.needs_licence for a in selected):
        raise AssetError(f"FLAME_with_eye.pt may only be used under the FLAME licence: register and accept it at "
                         f"{FLAME_LICENSE_URL}, then {DOWNLOAD_HINT}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for asset in selected:
        path, part = folder / asset.name, folder / f"{asset.name}.part"
        paths.append(path)
        if path.exists():
            try:
                asset.check(path)
                continue
            except AssetError:
                pass  # replaced below once a valid copy is downloaded
        if base_url:
            url = f"{base_url.rstrip('/')}/{asset.name}"
        else:
            url = asset.url or f"{BASE_URL.rstrip('/')}/{asset.name}"
        published = _fetch(url, part, progress, cancel)
        problem = None
        try:
            if published and file_sha256(part) != published:
                raise AssetError(f"its sha256 is not the {published[:16]}... that {url} publishes for it "
                                 "(a corrupted transfer?): download it again")
            asset.check(part)
        except AssetError as err:  # keep only the text: the traceback would hold the file open
            problem = str(err)
        if problem is not None:
            part.unlink(missing_ok=True)
            raise AssetError(f"the downloaded {asset.name} was deleted because it is not valid: {problem}")
        os.replace(part, path)
    return paths
