"""Atomic writes: every output is written to a temporary sibling, then renamed into place.

A reader (or a resumed stage) never sees a half-written file or folder. A writer killed before the rename (SIGKILL,
power loss) cannot remove its temporary: :func:`remove_stale_temporaries` clears those of a target whose writer is
the only one (a stage's own outputs), so a resumed stage leaves nothing behind either; :func:`atomic_dir` does it
for its folder. :func:`read_json` reads a file back with errors that name it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srnas.errors import SrnasError


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


def _temporaries(target: Path) -> list[Path]:
    """The temporary siblings :func:`atomic_path` and :func:`atomic_dir` create for ``target``:
    ``.<name>.<8 random characters>.tmp<suffix>`` (``tempfile``'s names), and what a writer put beside one
    (``<temporary>.data``: an ONNX file's external weights)."""
    return sorted(target.parent.glob(f".{glob.escape(target.name)}.{'?' * 8}.tmp*"))


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries (files or folders) that writers of ``target`` killed mid-write left beside it; return
    them. Only for a target that one process writes at a time -- a stage's own output, which Snakemake and DVC give
    one job -- and before that process writes it: a concurrent writer's temporary would go too."""
    stale = _temporaries(Path(target))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched.
    ``suffix`` lets writers that pick a format from the extension (PIL, torch.onnx) see it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
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

    An existing ``target`` is kept until the new folder is complete, and restored on failure. ``target`` has one
    writer (a stage's output folder, a download's extraction): the temporaries of writers killed before they finished
    are removed first (:func:`remove_stale_temporaries`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
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
