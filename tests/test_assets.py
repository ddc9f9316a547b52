"""engine/assets.py: folder resolution, structure checks, and downloads from a loopback HTTP server."""
import io
import re
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from gagavatar.engine import assets
from gagavatar.engine.errors import AssetError, Cancelled


# ------------------------------------------------------------------ synthetic files and server
@pytest.fixture(scope="module")
def files(kit, flame_asset):
    """Bytes served as the two assets: a GAGAvatar.pt with the full official layout whose tensors
    are broadcast scalars (a few hundred KB), and the kit's synthetic FLAME_with_eye.pt."""
    spec = kit.mk.load_spec()
    sd = OrderedDict((e["key"], torch.full((1,), 0.25).expand(e["shape"])) for e in spec["entries"])
    buf = io.BytesIO()
    torch.save({"model": sd, "meta_cfg": spec["meta_cfg"]}, buf)
    return {"GAGAvatar.pt": buf.getvalue(), "FLAME_with_eye.pt": Path(flame_asset).read_bytes()}


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
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in srv.drop_once:  # send half, then hang up
            srv.drop_once.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)


@pytest.fixture
def server(files):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.drop_once, srv.ignore_range = dict(files), [], set(), False
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
    assert [(n, s) for n, s, _ in report] == [("GAGAvatar.pt", "ok"), ("FLAME_with_eye.pt", "ok")]
    assert assets.assets_summary(assets_dir, report) == f"all assets present in {assets_dir}"


def test_check_assets_problems(tmp_path, files, official_checkpoint):
    report = assets.check_assets(tmp_path)
    assert [s for _, s, _ in report] == ["missing", "missing"]
    summary = assets.assets_summary(tmp_path)
    assert "GAGAvatar.pt (missing)" in summary and "FLAME_with_eye.pt (missing)" in summary
    assert str(tmp_path) in summary and "gagavatar assets download" in summary and "\n" not in summary

    (tmp_path / "GAGAvatar.pt.part").write_bytes(files["GAGAvatar.pt"][:1000])
    (tmp_path / "FLAME_with_eye.pt").symlink_to(official_checkpoint)  # the model in FLAME's place
    (name0, status0, msg0), (name1, status1, msg1) = assets.check_assets(tmp_path)
    assert status0 == "partial" and "resume" in msg0
    assert status1 == "invalid" and "GAGAvatar checkpoint, not the FLAME asset" in msg1

    (tmp_path / "GAGAvatar.pt").write_bytes(files["FLAME_with_eye.pt"])  # FLAME in the model's place
    (_, status0, msg0), _ = assets.check_assets(tmp_path)
    assert status0 == "invalid" and "FLAME asset" in msg0


def test_flame_layout_check(tmp_path):
    asset = {"flame_model": {"v_template": torch.zeros(5023, 3), "f": torch.zeros(10, 3, dtype=torch.int64)},
             "lmk_embeddings": {}}
    torch.save(asset, tmp_path / "FLAME_with_eye.pt")
    (_, _, _), (name, status, msg) = assets.check_assets(tmp_path)
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
    assert paths == [folder / "GAGAvatar.pt", folder / "FLAME_with_eye.pt"]
    assert _names(folder) == ["FLAME_with_eye.pt", "GAGAvatar.pt"]
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert [s for _, s, _ in assets.check_assets(folder)] == ["ok", "ok"]
    sizes = [len(files["GAGAvatar.pt"]), len(files["FLAME_with_eye.pt"])]
    assert calls[-1] == (sizes[1], sizes[1]) and (sizes[0], sizes[0]) in calls
    flame_calls = [d for d, t in calls if t == sizes[1]]
    assert flame_calls == sorted(flame_calls) and len(flame_calls) > 1

    server.log.clear()
    assets.download_assets(folder, accept_license=True, base_url=server.url)
    assert server.log == []  # valid files are not fetched again


def test_resume_after_dropped_connection(tmp_path, server, files):
    folder = tmp_path / "assets"
    server.drop_once.add("FLAME_with_eye.pt")
    with pytest.raises(AssetError, match="gagavatar assets download --accept-license` again to resume"):
        assets.download_assets(folder, accept_license=True, base_url=server.url)
    part = folder / "FLAME_with_eye.pt.part"
    have = part.stat().st_size
    assert 0 < have < len(files["FLAME_with_eye.pt"])
    assert _names(folder) == ["FLAME_with_eye.pt.part", "GAGAvatar.pt"]
    assert [s for _, s, _ in assets.check_assets(folder)] == ["ok", "partial"]

    server.log.clear()
    assets.download_assets(folder, accept_license=True, base_url=server.url)
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
    assets.download_assets(folder, accept_license=True, base_url=server.url)
    assert server.log == [("FLAME_with_eye.pt", f"bytes={seen[-1]}-")]
    assert (folder / "FLAME_with_eye.pt").read_bytes() == files["FLAME_with_eye.pt"]


def test_server_without_range_support_restarts(tmp_path, server, files):
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "FLAME_with_eye.pt.part").write_bytes(files["FLAME_with_eye.pt"][:5000])
    server.ignore_range = True
    assets.download_assets(folder, accept_license=True, base_url=server.url)
    assert ("FLAME_with_eye.pt", "bytes=5000-") in server.log
    assert (folder / "FLAME_with_eye.pt").read_bytes() == files["FLAME_with_eye.pt"]


def test_complete_part_is_finished_after_416(tmp_path, server, files):
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "GAGAvatar.pt.part").write_bytes(files["GAGAvatar.pt"])
    assets.download_assets(folder, accept_license=True, base_url=server.url)
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
        assets.download_assets(folder, accept_license=True, base_url=server.url)
    assert "\n" not in str(e.value)
    assert not (folder / bad).exists() and not (folder / f"{bad}.part").exists()


def test_invalid_existing_file_is_replaced(tmp_path, server, files):
    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "GAGAvatar.pt").write_bytes(b"not a checkpoint")
    assets.download_assets(folder, accept_license=True, base_url=server.url)
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
