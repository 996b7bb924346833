"""Where a batch command writes: one output per input file, every path checked before anything is written.

:func:`plan_outputs` maps each input to ``out_dir/<stem><suffix>`` and refuses the whole batch with an
:class:`~srnas.errors.OutputError` (one line naming the files) when

- ``out_dir`` is an existing file, or one of the input folders;
- two inputs would write the same output (``a.png`` and ``a.jpg``, or ``x/a.png`` and ``y/a.png``; names that differ
  only in case count as the same, as on macOS and Windows). Such names are refused, never renamed: an output's name
  always says which input it came from, and a batch gives the same names whatever order its inputs come in;
- an output would replace an input (the same path, a link to it, or a hard link);
- an output already exists and ``overwrite`` is false: a file the current run did not create is never replaced
  unless the user asked for it.

The same file given twice (as a file and inside a folder) is upscaled once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from srnas.errors import OutputError

__all__ = ["plan_outputs"]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def plan_outputs(inputs: Sequence[Path], out_dir: Path, suffix: str, *, input_dirs: Sequence[Path] = (),
                 overwrite: bool = False) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs, in input order, for writing one ``<stem><suffix>`` per input into ``out_dir``;
    :class:`OutputError` (before anything is written) when a write would collide or replace what it must not."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: output folder is an existing file")
    out_id = _identity(out_dir)
    for folder in input_dirs:
        if out_id is not None and _identity(folder) == out_id:
            raise OutputError(f"{out_dir}: output folder is the input folder {folder}; choose another folder, the "
                              "outputs would mix with (or replace) its images")
    input_ids: dict[tuple[int, int], Path] = {}
    plan: list[tuple[Path, Path]] = []
    claimed: dict[str, Path] = {}
    for source in inputs:
        identity = _identity(source)
        if identity is not None and identity in input_ids:
            continue  # the same file twice
        if identity is not None:
            input_ids[identity] = source
        target = out_dir / f"{source.stem}{suffix}"
        key = os.path.normcase(target.name).casefold()
        if key in claimed:
            raise OutputError(f"{claimed[key]} and {source} would both be written to {target}; rename one, or upscale "
                              "them into different folders")
        claimed[key] = source
        plan.append((source, target))
    for source, target in plan:
        identity = _identity(target)
        if identity is None and not target.is_symlink():
            continue
        if identity in input_ids:
            raise OutputError(f"{target}: output would replace the input {input_ids[identity]}; choose another --out folder")
        if not overwrite:
            raise OutputError(f"{target}: already exists (the output for {source}); pass --overwrite to replace it, or "
                              "choose another --out folder")
        if target.is_dir():
            raise OutputError(f"{target}: a folder is in the way of the output for {source}")
    return plan
