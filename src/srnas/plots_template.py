"""An offline page for ``dvc plots show`` / ``dvc plots diff``.

DVC's plots page (``dvc_plots/index.html``) loads Vega, Vega-Lite and vega-embed from a CDN, so it renders blank on a
machine without internet. DVC takes a custom page template (``--html-template``, or ``plots.html_template`` in its
config, a path relative to ``.dvc/``); :func:`build_template` writes one with the three libraries inlined, read from
``node_modules`` (``npm ci`` installs the versions ``package.json`` pins). DVC fills ``{plot_divs}`` (and
``{refresh_tag}``); the template has no ``{scripts}``, so DVC's CDN script tags are left out.

:func:`set_dvc_template` records the template in ``.dvc/config.local`` (not committed: the file is generated), with
``dvc config --local``; without that setting DVC keeps its CDN page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from srnas.atomic import write_text
from srnas.errors import SrnasError

# loading order: vega-lite needs vega, vega-embed both
VENDOR_SCRIPTS = (
    "vega/build/vega.min.js",
    "vega-lite/build/vega-lite.min.js",
    "vega-embed/build/vega-embed.min.js",
)
CONFIG_KEY = "plots.html_template"
# next to .dvc/config.local, which names it: removing one without the other is unlikely (DVC fails on a setting
# whose file is gone: it reads the path as the template)
DEFAULT_TEMPLATE = Path(".dvc/plots_template.html")
# DVC replaces these in the whole template, inlined scripts included
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

_PAGE_HEAD = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
"""
_PAGE_TAIL = """    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=\S*\s*$", re.MULTILINE)
_END_TAG = re.compile(r"</(script)", re.IGNORECASE)


def _inline_script(path: Path, node_modules: Path) -> str:
    if not path.is_file():
        raise SrnasError(f"run `npm ci` first: {path} not found")
    code = path.read_text(encoding="utf-8")
    for placeholder in DVC_PLACEHOLDERS:
        if placeholder in code:
            raise SrnasError(
                f"{path}: contains {placeholder}, which DVC would replace: cannot inline it"
            )
    code = _SOURCE_MAP.sub("", code)  # the page is standalone: no .map beside it
    # a literal "</script" would end the element early
    code = _END_TAG.sub(r"<\\/\1", code)
    name = path.relative_to(node_modules).as_posix()
    return f"    <script>/* {name} */\n{code.rstrip()}\n    </script>\n"


def build_template(node_modules: str | os.PathLike[str] = "node_modules") -> str:
    """The page template with the vendor scripts of ``node_modules`` inlined; one line naming the first missing file."""
    root = Path(node_modules)
    scripts = "".join(_inline_script(root / name, root) for name in VENDOR_SCRIPTS)
    return _PAGE_HEAD + scripts + _PAGE_TAIL


def write_template(
    out: str | os.PathLike[str] = DEFAULT_TEMPLATE,
    node_modules: str | os.PathLike[str] = "node_modules",
) -> Path:
    """Write :func:`build_template` to ``out`` atomically; return ``out``."""
    out = Path(out)
    write_text(out, build_template(node_modules))
    return out


def set_dvc_template(
    template: str | os.PathLike[str], repo: str | os.PathLike[str] = "."
) -> str:
    """Set ``plots.html_template`` in ``repo``'s ``.dvc/config.local`` to ``template`` (relative to ``.dvc/``, as DVC
    reads it); return the value set."""
    dvc_dir = Path(repo).resolve() / ".dvc"
    if not dvc_dir.is_dir():
        raise SrnasError(
            f"{dvc_dir}: not found (run from the root of a DVC repository)"
        )
    value = Path(os.path.relpath(Path(template).resolve(), dvc_dir)).as_posix()
    command = [sys.executable, "-m", "dvc", "config", "--local", CONFIG_KEY, value]
    try:
        result = subprocess.run(
            command,
            cwd=dvc_dir.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SrnasError(f"dvc config --local {CONFIG_KEY}: {exc}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [
            f"exit status {result.returncode}"
        ]
        raise SrnasError(f"dvc config --local {CONFIG_KEY}: {lines[-1]}")
    return value
