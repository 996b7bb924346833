"""Atomic writes: every output is written to a temporary sibling, then renamed into place.

A reader (or a resumed stage) never sees a half-written file or folder. :func:`read_json` reads such a file back with
errors that name it.

Temporary siblings are named ``.<target name>.<pid>-<host>.<random>.tmp[suffix]``: the writing process and machine
are in the name, so the next write of the same target removes the ones whose process is gone (a killed run's
litter) and never one another live process is still writing.

A write that fails for a reason the user must fix (disk full, quota, read-only or unwritable folder) raises
:class:`~srnas.errors.OutputError` naming the target path; the target is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srnas.errors import OutputError, SrnasError

# errno -> what the user is told; any other OSError is a bug or a system fault and propagates as it is
_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (is the folder read-only?)",
    errno.EPERM: "operation not permitted (is the folder read-only?)",
}


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:6]


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-{_host_tag()}."


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (another user's counts: signal 0 is refused, not lost);
    any doubt answers yes, so nothing a live process owns is taken for a dead one's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists and belongs to someone else
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary siblings of ``target`` that a process of this machine left when it was killed (its process
    is gone); return them. Temporaries of live processes, other machines and other targets are kept."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)-{_host_tag()}\.[A-Za-z0-9_]+\.tmp")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    prefix = f".{target.name}."
    for entry in entries:
        match = pattern.match(entry.name) if entry.name.startswith(prefix) else None
        if match is None or process_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _write_failure(target: Path, exc: OSError) -> OutputError | None:
    reason = _WRITE_FAILURES.get(exc.errno) if exc.errno is not None else None
    return None if reason is None else OutputError(f"{target}: cannot write: {reason}")


@contextlib.contextmanager
def _output_errors(target: Path) -> Iterator[None]:
    """Turn a disk-full / read-only ``OSError`` into an :class:`OutputError` naming ``target``."""
    try:
        yield
    except OSError as exc:
        failure = _write_failure(target, exc)
        if failure is None:
            raise
        raise failure from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched; a disk-full or read-only failure
    (in the caller's writing too) is an :class:`OutputError` naming ``target``.
    ``suffix`` lets writers that pick a format from the extension (PIL, torch.onnx) see it.
    """
    target = Path(target)
    with _output_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _output_errors(target):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs are readable like any new file
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], payload: Any) -> None:
    write_text(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``target`` whole.

    An existing ``target`` is kept until the new folder is complete, and restored on failure. Temporary folders a
    killed run left next to ``target`` are removed first (:func:`remove_stale_temporaries`).
    """
    target = Path(target)
    with _output_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    moved = False
    try:
        with _output_errors(target):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
            if old.exists():
                shutil.rmtree(old)
            if target.exists():
                os.replace(target, old)
                moved = True
            os.replace(tmp, target)
    except BaseException:
        if moved and not target.exists():
            with contextlib.suppress(OSError):
                os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def read_json(path: str | os.PathLike[str], error: type[SrnasError], missing: str) -> Any:
    """The JSON value in ``path``; ``error`` naming the file when it does not exist (``missing``: what to run first)
    or is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found ({missing})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
