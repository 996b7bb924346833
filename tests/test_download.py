"""Verified downloads (with Range resume) and safe extraction, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srnas.config import DataConfig, Div2kConfig
from srnas.data.download import EXTRACT_MARKER, download_file, fetch_archive, safe_extract
from srnas.data.prepare import load_manifest, prepare_data
from srnas.errors import DataError

# ------------------------------------------------------------------------------------------------- server


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-[M]``; can drop the first response midway."""

    protocol_version = "HTTP/1.0"  # one request per connection: a dropped body is a closed socket
    timeout = 10  # bounded: a stuck client cannot hold a handler thread

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server: _Server = self.server  # type: ignore[assignment]
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "not found")
            return
        start, end, status = 0, len(data) - 1, 200
        if range_header and server.honour_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
            assert match, range_header
            start = int(match.group(1))
            end = min(int(match.group(2)), end) if match.group(2) else end
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if server.drops_left > 0:
            server.drops_left -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.drops_left = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------------ archives


def _png_bytes(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes], special: list[zipfile.ZipInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info, data in special or []:
            zf.writestr(info, data)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MEMBERS = {"pack/a.png": _png_bytes(12, 10, 1), "pack/sub/b.png": _png_bytes(9, 9, 2), "pack/readme.txt": b"hello"}


def _no_leftovers(folder: Path) -> bool:
    return not any(p.name.startswith(".") and p.name.endswith(".tmp") for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------ download


def test_download_verify_extract_and_reuse(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes(MEMBERS)
    server.files["pack.zip"] = data
    cache = tmp_path / "cache"
    folder = fetch_archive(f"{server.url}/pack.zip", cache, _sha(data), show_progress=False)
    assert folder == cache / "pack"
    for name, content in MEMBERS.items():
        assert (folder / name).read_bytes() == content
    assert (cache / "pack.zip").read_bytes() == data
    assert not (cache / "pack.zip.part").exists()
    assert (folder / EXTRACT_MARKER).is_file()
    assert server.requests == [("/pack.zip", None)]
    # cached: no network at all the second time
    assert fetch_archive(f"{server.url}/pack.zip", cache, _sha(data), show_progress=False) == folder
    assert len(server.requests) == 1
    assert _no_leftovers(cache)


def test_resume_from_partial_file_uses_range(server: _Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    server.files["big.bin"] = data
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(data[:30000])
    download_file(f"{server.url}/big.bin", dest, _sha(data), show_progress=False, chunk_size=4096)
    assert dest.read_bytes() == data
    assert server.requests == [("/big.bin", "bytes=30000-")]
    assert not (tmp_path / "big.bin.part").exists()


def test_dropped_connection_is_resumed(server: _Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 300
    server.files["big.bin"] = data
    server.drops_left = 1
    dest = tmp_path / "big.bin"
    download_file(f"{server.url}/big.bin", dest, _sha(data), show_progress=False, retry_wait=0, chunk_size=4096)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2
    assert server.requests[0][1] is None and server.requests[1][1] == f"bytes={len(data) // 2}-"


def test_server_ignoring_range_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["f.bin"] = data
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage!")
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", _sha(data), show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=8-")]


def test_complete_part_file_answered_416_is_verified(server: _Server, tmp_path: Path) -> None:
    data = b"x" * 5000
    server.files["f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    download_file(f"{server.url}/f.bin", tmp_path / "f.bin", _sha(data), show_progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests == [("/f.bin", "bytes=5000-")]


def test_wrong_checksum_deletes_download_and_extracts_nothing(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes(MEMBERS)
    server.files["pack.zip"] = data
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(DataError) as info:
        fetch_archive(f"{server.url}/pack.zip", cache, wrong, show_progress=False)
    message = str(info.value)
    assert "pack.zip" in message and wrong in message and _sha(data) in message
    assert sorted(p.name for p in cache.iterdir()) == []  # no part, no archive, no extracted folder


def test_http_error_names_url(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"{server.url}/missing.zip") + ": HTTP 404"):
        download_file(f"{server.url}/missing.zip", tmp_path / "m.zip", "a" * 64, show_progress=False)


def test_unreachable_server_keeps_part_and_names_url(tmp_path: Path) -> None:
    srv = _Server()  # bound then closed: nothing listens on this port
    url = f"{srv.url}/x.zip"
    srv.server_close()
    with pytest.raises(DataError, match=re.escape(url) + ".*2 attempt"):
        download_file(url, tmp_path / "x.zip", "a" * 64, show_progress=False, retries=1, retry_wait=0, timeout=2)


def test_existing_archive_with_right_hash_is_not_downloaded(server: _Server, tmp_path: Path) -> None:
    data = b"payload"
    (tmp_path / "p.bin").write_bytes(data)
    download_file(f"{server.url}/p.bin", tmp_path / "p.bin", _sha(data), show_progress=False)
    assert server.requests == []


# ----------------------------------------------------------------------------------------------- extraction


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _fifo_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


@pytest.mark.parametrize(
    ("members", "special", "member", "reason"),
    [
        ({"ok.png": b"1", "../evil.png": b"x"}, None, "../evil.png", "'..'"),
        ({"ok/../../evil.png": b"x"}, None, "ok/../../evil.png", "'..'"),
        ({"/etc/evil.png": b"x"}, None, "/etc/evil.png", "absolute path"),
        ({"C:/evil.png": b"x"}, None, "C:/evil.png", "absolute path"),
        ({"ok.png": b"1"}, [(_symlink_info("link.png"), b"/etc/passwd")], "link.png", "symbolic link"),
        ({}, [(_fifo_info("pipe"), b"")], "pipe", "device or special file"),
        ({"a.png": b"1"}, [(zipfile.ZipInfo("a.png"), b"2")], "a.png", "duplicate member"),
    ],
    ids=["dotdot", "nested_dotdot", "absolute", "drive", "symlink", "fifo", "duplicate"],
)
def test_unsafe_zip_members_are_refused(tmp_path: Path, members, special, member: str, reason: str) -> None:
    archive = tmp_path / "bad.zip"
    expect_warning = pytest.warns(UserWarning, match="Duplicate name") if reason == "duplicate member" else nullcontext()
    with expect_warning:
        archive.write_bytes(_zip_bytes(members, special))
    dest = tmp_path / "out"
    with pytest.raises(DataError) as info:
        safe_extract(archive, dest)
    message = str(info.value)
    assert str(archive) in message and repr(member) in message and reason in message, message
    assert not dest.exists()
    assert not (tmp_path / "evil.png").exists()
    assert _no_leftovers(tmp_path)


def _tar_bytes(add) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        add(tf)
    return buffer.getvalue()


def _tar_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _tar_special(name: str, kind: bytes, linkname: str = "") -> object:
    def add(tf: tarfile.TarFile) -> None:
        _tar_file(tf, "ok.png", b"1")
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tf.addfile(info)

    return add


@pytest.mark.parametrize(
    ("add", "member", "reason"),
    [
        (_tar_special("hard.png", tarfile.LNKTYPE, "ok.png"), "hard.png", "hard link"),
        (_tar_special("soft.png", tarfile.SYMTYPE, "/etc/passwd"), "soft.png", "symbolic link"),
        (_tar_special("dev", tarfile.CHRTYPE), "dev", "device or special file"),
        (lambda tf: _tar_file(tf, "../evil.png", b"x"), "../evil.png", "'..'"),
    ],
    ids=["hardlink", "symlink", "chardev", "dotdot"],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, add, member: str, reason: str) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar_bytes(add))
    with pytest.raises(DataError, match=re.escape(repr(member)) + ".*" + re.escape(reason)):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_tar_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "good.tar"
    archive.write_bytes(_tar_bytes(lambda tf: [_tar_file(tf, n, d) for n, d in MEMBERS.items()]))
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "pack/sub/b.png").read_bytes() == MEMBERS["pack/sub/b.png"]


def test_not_an_archive_and_corrupt_zip(tmp_path: Path) -> None:
    text = tmp_path / "x.zip"
    text.write_text("plain text")
    with pytest.raises(DataError, match=re.escape(str(text)) + ": not a zip or tar archive"):
        safe_extract(text, tmp_path / "out")
    data = bytearray(_zip_bytes({"a.bin": bytes(range(256)) * 64}))
    start = data.index(b"PK\x03\x04") + 60  # inside the compressed data of the only member
    data[start : start + 20] = b"\x00" * 20
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        safe_extract(corrupt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsafe_archive_with_right_hash_is_not_extracted(server: _Server, tmp_path: Path) -> None:
    data = _zip_bytes({"../evil.png": b"x"})
    server.files["evil.zip"] = data
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=re.escape("'../evil.png'")):
        fetch_archive(f"{server.url}/evil.zip", cache, _sha(data), show_progress=False)
    assert not (cache / "evil").exists() and not (tmp_path / "evil.png").exists()


# ----------------------------------------------------------------------------------- div2k end to end


def test_prepare_div2k_end_to_end(server: _Server, tmp_path: Path) -> None:
    train = _zip_bytes({f"DIV2K_train_HR/{i:04d}.png": _png_bytes(20 + i, 18, i) for i in range(1, 4)})
    valid = _zip_bytes({f"DIV2K_valid_HR/{i:04d}.png": _png_bytes(18, 22, i) for i in range(801, 804)})
    server.files["DIV2K_train_HR.zip"] = train
    server.files["DIV2K_valid_HR.zip"] = valid
    div2k = Div2kConfig(
        base_url=server.url + "/",
        train_sha256=_sha(train),
        valid_sha256=_sha(valid).upper(),
        cache_dir=str(tmp_path / "cache"),
        max_val_images=2,
    )
    cfg = DataConfig(source="div2k", scales=(2, 3), min_size=8, div2k=div2k)
    out = tmp_path / "out"
    manifest = prepare_data(cfg, out, show_progress=False)
    assert manifest["counts"] == {"train": {"x2": 3, "x3": 3}, "val": {"x2": 2, "x3": 2}}
    assert [e["name"] for e in manifest["inputs"]["val"]] == ["0801", "0802"]
    assert manifest["files"]["train/x3/lr/0003.png"]["width"] == 7  # 23 -> 21 -> 7
    assert load_manifest(out, verify=True) == manifest
    assert sorted(path for path, _ in server.requests) == ["/DIV2K_train_HR.zip", "/DIV2K_valid_HR.zip"]

    # a second run uses the verified cache: no request
    assert prepare_data(cfg, tmp_path / "out2", show_progress=False) == manifest
    assert len(server.requests) == 2


def test_prepare_div2k_bad_hash_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    train = _zip_bytes({"DIV2K_train_HR/0001.png": _png_bytes(20, 20, 1)})
    server.files["DIV2K_train_HR.zip"] = train
    div2k = Div2kConfig(base_url=server.url, train_sha256="f" * 64, valid_sha256="e" * 64, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="DIV2K_train_HR.zip: SHA-256 mismatch"):
        prepare_data(DataConfig(source="div2k", min_size=8, div2k=div2k), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "c").iterdir()) == []
