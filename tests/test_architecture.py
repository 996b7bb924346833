"""The architecture of docs/architecture.md, kept true: import-linter's contracts (layers, no cycles, one owner per
outside dependency), no private name imported across modules, and no import hidden inside a function to dodge a
cycle in library code."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "srnas"


def _lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "importlinter.cli"]
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([*command, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out.append((name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return out


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_contracts_catch_a_violation(tmp_path: Path) -> None:
    """The contracts can fail: the same configuration on a copy of the package where the search space imports mlflow
    (owned by srnas.tracking) and the bottom layer imports a stage."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "srnas", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    space = tmp_path / "src" / "srnas" / "arch" / "space.py"
    space.write_text(space.read_text(encoding="utf-8") + "\nimport mlflow  # noqa\n", encoding="utf-8")
    errors = tmp_path / "src" / "srnas" / "errors.py"
    errors.write_text(errors.read_text(encoding="utf-8") + "\nimport srnas.search.run  # noqa\n", encoding="utf-8")
    result = _lint_imports(tmp_path / "src", tmp_path)
    assert result.returncode != 0
    assert "Only srnas.tracking imports mlflow BROKEN" in " ".join(result.stdout.split())
    assert "srnas.errors -> srnas.search.run" in result.stdout


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("srnas"):
                offenders += [f"{name}: from {node.module} import {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__") and node.module != name]
    assert offenders == []


def _function_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    found = []
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def _imports_srnas(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "srnas"
    return any(alias.name.split(".")[0] == "srnas" for alias in node.names)


@pytest.mark.parametrize("name,tree", [m for m in _modules() if not m[0].startswith(("srnas.commands", "srnas.cli"))],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_library_code_imports_srnas_at_module_level(name: str, tree: ast.Module) -> None:
    """Only the CLI's command modules import lazily (so ``srnas --help`` does not load torch and mlflow); library
    modules import the package at the top, where the layer contracts see what they depend on."""
    late = [f"line {n.lineno}" for n in _function_imports(tree) if _imports_srnas(n)]
    assert late == [], f"{name}: srnas imported inside a function at {', '.join(late)}"
