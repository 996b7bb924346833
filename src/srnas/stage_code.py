"""The package source a pipeline stage runs, so that a change to any of it reruns the stage.

A stage is one ``srnas`` subcommand, whose module is ``srnas.commands.<command>``; the code it runs is every module of
the package that module imports, transitively (read from the source with :mod:`ast`, lazy imports inside functions
included; nothing is imported or run). Files are grouped in units a workflow lists as dependencies: a subpackage's
folder (``src/srnas/latency``), a top-level module's file (``src/srnas/export.py``), and the command modules one by
one (``src/srnas/commands/train.py``: a change to one subcommand reruns only its stages). ``dvc.yaml`` lists these
units (DVC hashes a folder's contents); the Snakefile derives each rule's code inputs from :func:`stage_code_files`
(the same units as files: Snakemake compares a folder's time stamp, which a changed file inside does not move), and
a test holds ``dvc.yaml`` to :func:`stage_code`.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

__all__ = ["module_imports", "stage_code", "stage_code_files", "stage_modules"]

PACKAGE = "srnas"


def _module_path(src: Path, module: str) -> Path | None:
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def _import_statements(source: str, filename: str, module: str,
                       is_package: bool) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(target, names)`` of every import in ``source`` (the text of ``module``'s file): ``import a.b`` gives
    ``("a.b", ())``, ``from .x import y`` gives (``module``'s ``x``, ``("y",)``). Parsed once per distinct text: the
    Snakefile asks for the stages one by one, and they share most of their modules."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = ".".join(parts[: len(parts) - node.level + (1 if is_package else 0)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((target, tuple(alias.name for alias in node.names)))
    return tuple(found)


def module_imports(src: Path, module: str) -> set[str]:
    """The ``srnas`` modules ``module`` imports directly (anywhere in the file), as importable names."""
    path = _module_path(src, module)
    if path is None:
        return set()
    found: set[str] = set()
    source = path.read_text(encoding="utf-8")
    for target, names in _import_statements(source, str(path), module, path.name == "__init__.py"):
        found.add(target)
        # ``from srnas.latency import measure`` imports a submodule, not a name
        found |= {f"{target}.{name}" for name in names if _module_path(src, f"{target}.{name}")}
    return {m for m in found if m.split(".")[0] == PACKAGE and _module_path(src, m) is not None}


def _with_parents(module: str) -> set[str]:
    """``module`` and every package above it (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def stage_modules(src: str | Path, command: str) -> set[str]:
    """Every ``srnas`` module the subcommand module ``srnas.commands.<command>`` runs, itself included."""
    src = Path(src)
    todo = list(_with_parents(f"{PACKAGE}.commands.{command}"))
    if _module_path(src, f"{PACKAGE}.commands.{command}") is None:
        raise ValueError(f"no module {PACKAGE}.commands.{command} under {src}")
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in module_imports(src, module):
            todo.extend(_with_parents(imported) - seen)
    return seen


def stage_code(src: str | Path, command: str) -> list[str]:
    """The dependency units (``src/srnas/<subpackage>`` folders, ``src/srnas/<module>.py`` files) of a stage, sorted;
    ``src`` is the folder holding the ``srnas`` package (``src``), and the units are paths under it."""
    src = Path(src)
    units: set[str] = set()
    for module in stage_modules(src, command):
        parts = module.split(".")
        path = _module_path(src, module)
        assert path is not None
        if len(parts) == 1:
            units.add((src / PACKAGE / "__init__.py").as_posix())
        elif (len(parts) == 2 and path.name != "__init__.py") or parts[1] == "commands":
            units.add(path.as_posix())
        else:
            units.add((src / PACKAGE / parts[1]).as_posix())
    return sorted(units)


def stage_code_files(src: str | Path, command: str) -> list[str]:
    """:func:`stage_code` with every folder replaced by its ``.py`` files (what Snakemake lists as inputs)."""
    files: list[str] = []
    for unit in stage_code(src, command):
        path = Path(unit)
        files += sorted(p.as_posix() for p in path.glob("*.py")) if path.is_dir() else [unit]
    return files
