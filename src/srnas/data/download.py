"""Verified downloads and safe archive extraction (used by the ``div2k`` source).

- :func:`download_file` streams a URL with ``urllib`` into ``<dest>.part``, resumes an existing part with
  an HTTP ``Range`` request (and after a dropped connection, up to ``retries`` times), checks the SHA-256
  of the complete file, and only then renames it to ``dest``. A hash mismatch deletes the part and
  raises :class:`DataError` naming the file and both hashes.
- :func:`safe_extract` checks *every* member of a zip or tar archive before writing anything: absolute
  paths, ``..`` components, symbolic and hard links, device files, FIFOs and duplicate names are refused
  (DataError naming the member). Files are written into a temporary folder that replaces the target
  folder only when complete (:func:`srnas.atomic.atomic_dir`).
- :func:`fetch_archive` combines both with a cache: the extracted folder carries a marker with the
  archive hash, so a later run with the same hash downloads and extracts nothing.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from srnas.atomic import atomic_dir, write_json
from srnas.digests import file_sha256
from srnas.errors import ConfigError, DataError

__all__ = ["download_file", "fetch_archive", "safe_extract", "EXTRACT_MARKER"]

LOG = logging.getLogger(__name__)

#: Written inside an extracted folder: which archive (name and SHA-256) it came from.
EXTRACT_MARKER = ".srnas-extracted.json"

_CHUNK = 1 << 20
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")


class _Retryable(Exception):
    """A transient network failure: keep the part file and resume."""


def _check_sha256(sha256: str, what: str) -> str:
    value = sha256.strip().lower()
    if not value:
        raise ConfigError(f"{what}: no SHA-256 given; a download is never used unverified")
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ConfigError(f"{what}: {sha256!r} is not a SHA-256 (64 hexadecimal digits)")
    return value


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    *,
    show_progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    chunk_size: int = _CHUNK,
) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256; return ``dest``.

    An existing ``dest`` with the right hash is reused; one with another hash is downloaded again.
    ``<dest>.part`` is resumed with an HTTP Range request (a server that ignores Range restarts it).
    """
    dest = Path(dest)
    expected = _check_sha256(sha256, str(dest.name))
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"{url}: only http and https downloads are supported")
    if dest.is_file():
        if file_sha256(dest) == expected:
            return dest
        LOG.warning("%s: SHA-256 differs from the expected %s; downloading it again", dest, expected)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    attempt = 0
    while True:
        try:
            _fetch_into(url, part, timeout=timeout, chunk_size=chunk_size, show_progress=show_progress)
            break
        except _Retryable as exc:
            attempt += 1
            if attempt > retries:
                raise DataError(
                    f"{url}: download failed after {attempt} attempt(s): {exc}; "
                    f"the partial file {part} is kept and the next run resumes it"
                ) from None
            LOG.warning("%s: %s; resuming (attempt %d of %d)", url, exc, attempt + 1, retries + 1)
            time.sleep(retry_wait * attempt)

    actual = file_sha256(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{dest.name}: SHA-256 mismatch for the download from {url}: expected {expected}, got {actual}; "
            "the bad download was deleted"
        )
    os.replace(part, dest)
    return dest


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    return int(match.group(1)) if match else None


def _fetch_into(url: str, part: Path, *, timeout: float, chunk_size: int, show_progress: bool) -> None:
    """One request: append to ``part`` from its current size (or rewrite it when Range is ignored)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "srnas-prepare-data", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked by the caller)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return  # the part is already complete; the hash check decides
        if exc.code in _RETRY_HTTP:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retryable(f"cannot connect ({reason})") from None

    with response:
        if offset and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server answered a range from {start} instead of {offset}; restarting")
            mode = "ab"
        else:
            if offset:
                LOG.info("%s: the server ignored the Range request; downloading from the start", url)
            offset, mode = 0, "wb"
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        with (
            open(part, mode) as handle,
            tqdm(
                total=None if length is None else offset + length,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not show_progress,
            ) as bar,
        ):
            try:
                while chunk := response.read(chunk_size):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as exc:
                raise _Retryable(f"connection lost after {offset + received} bytes ({exc!r})") from None
        if length is not None and received < length:
            raise _Retryable(f"connection closed after {offset + received} of {offset + length} bytes")


# ---------------------------------------------------------------------------------------------- extraction


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The safe relative path of a member, or DataError naming it."""
    if "\x00" in name:
        raise DataError(f"{archive}: unsafe member {name!r}: NUL byte in the name")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise DataError(f"{archive}: unsafe member {name!r}: absolute path")
    parts = tuple(p for p in PurePosixPath(normalized).parts if p not in ("", "."))
    if ".." in parts:
        raise DataError(f"{archive}: unsafe member {name!r}: '..' path component")
    return parts


def _zip_plan(archive: Path, zf: zipfile.ZipFile) -> list[tuple[tuple[str, ...], bool, zipfile.ZipInfo]]:
    plan = []
    for info in zf.infolist():
        parts = _member_parts(archive, info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise DataError(f"{archive}: unsafe member {info.filename!r}: symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DataError(f"{archive}: unsafe member {info.filename!r}: device or special file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise DataError(f"{archive}: member {info.filename!r} is encrypted")
        plan.append((parts, info.is_dir() or kind == stat.S_IFDIR, info))
    return plan


def _tar_plan(archive: Path, tf: tarfile.TarFile) -> list[tuple[tuple[str, ...], bool, tarfile.TarInfo]]:
    plan = []
    for info in tf.getmembers():
        parts = _member_parts(archive, info.name)
        if info.issym():
            raise DataError(f"{archive}: unsafe member {info.name!r}: symbolic link")
        if info.islnk():
            raise DataError(f"{archive}: unsafe member {info.name!r}: hard link")
        if info.ischr() or info.isblk() or info.isfifo():
            raise DataError(f"{archive}: unsafe member {info.name!r}: device or special file")
        if not (info.isreg() or info.isdir()):
            raise DataError(f"{archive}: unsafe member {info.name!r}: unsupported member type")
        plan.append((parts, info.isdir(), info))
    return plan


def _check_plan(archive: Path, plan: list) -> None:
    files: dict[tuple[str, ...], str] = {}
    for parts, is_dir, info in plan:
        if not parts:
            if is_dir:
                continue
            raise DataError(f"{archive}: unsafe member {_name(info)!r}: empty path")
        if not is_dir:
            if parts in files:
                raise DataError(f"{archive}: duplicate member {_name(info)!r}")
            files[parts] = _name(info)
    file_paths = set(files)
    for parts in files:  # a file used as a folder by another member
        for i in range(1, len(parts)):
            if parts[:i] in file_paths:
                raise DataError(f"{archive}: member {files[parts]!r} lies inside the file member {files[parts[:i]]!r}")


def _name(info: zipfile.ZipInfo | tarfile.TarInfo) -> str:
    return info.filename if isinstance(info, zipfile.ZipInfo) else info.name


@contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[str, zipfile.ZipFile | tarfile.TarFile]]:
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                yield "zip", zf
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                yield "tar", tf
        else:
            raise DataError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as exc:
        raise DataError(f"{archive}: corrupt archive ({exc})") from None


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, marker: dict | None = None) -> Path:
    """Extract ``archive`` (zip or tar) into the folder ``dest``, atomically; refuse unsafe members.

    All members are checked before anything is written. ``dest`` is replaced only when extraction is
    complete; on any error it is left as it was. ``marker``, when given, is written to
    ``dest/.srnas-extracted.json``.
    """
    archive, dest = Path(archive), Path(dest)
    with _open_archive(archive) as (kind, handle):
        plan = _zip_plan(archive, handle) if kind == "zip" else _tar_plan(archive, handle)  # type: ignore[arg-type]
        _check_plan(archive, plan)
        with atomic_dir(dest) as tmp:
            root = tmp.resolve()
            for parts, is_dir, info in plan:
                if not parts:
                    continue
                target = root.joinpath(*parts)
                if not target.resolve().is_relative_to(root):  # defence in depth; _member_parts already refused
                    raise DataError(f"{archive}: unsafe member {_name(info)!r}: escapes the target folder")
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    source: IO[bytes] | None
                    if kind == "zip":
                        source = handle.open(info)  # type: ignore[union-attr,arg-type]
                    else:
                        source = handle.extractfile(info)  # type: ignore[union-attr,arg-type]
                    if source is None:
                        raise DataError(f"{archive}: member {_name(info)!r} has no data")
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as exc:
                    raise DataError(f"{archive}: member {_name(info)!r} is corrupt ({exc})") from None
            if marker is not None:
                write_json(tmp / EXTRACT_MARKER, marker)
    return dest


def _archive_stem(name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def fetch_archive(
    url: str,
    cache_dir: str | os.PathLike[str],
    sha256: str,
    *,
    show_progress: bool = True,
    **download_options: object,
) -> Path:
    """Download ``url`` into ``cache_dir`` (verified), extract it to ``cache_dir/<archive stem>``; return that folder.

    A folder already extracted from an archive with this SHA-256 is reused without any network access.
    """
    cache_dir = Path(cache_dir)
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    if not name or name in (".", ".."):
        raise DataError(f"{url}: the URL names no archive file")
    expected = _check_sha256(sha256, name)
    archive = cache_dir / name
    folder = cache_dir / _archive_stem(name)
    marker_path = folder / EXTRACT_MARKER
    if marker_path.is_file():
        try:
            if json.loads(marker_path.read_text(encoding="utf-8")).get("sha256") == expected:
                return folder
        except (OSError, ValueError, AttributeError):
            pass
    download_file(url, archive, expected, show_progress=show_progress, **download_options)  # type: ignore[arg-type]
    return safe_extract(archive, folder, marker={"archive": name, "sha256": expected, "url": url})
