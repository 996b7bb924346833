"""``srnas plots-template``: a page template that makes ``dvc plots show`` / ``dvc plots diff`` render offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from srnas.plots_template import (
    CONFIG_KEY,
    DEFAULT_TEMPLATE,
    set_dvc_template,
    write_template,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plots-template",
        help="write a DVC plots page template with Vega, Vega-Lite and vega-embed inlined (offline plots)",
        description="DVC's plots page loads its JavaScript from a CDN and is blank without internet. After `npm ci` "
        f"(package.json pins the libraries), write a template with them inlined and set {CONFIG_KEY} in "
        ".dvc/config.local, so `dvc plots show` / `dvc plots diff` pages render offline. Undo: "
        f"dvc config --local --unset {CONFIG_KEY}",
    )
    parser.add_argument(
        "--node-modules",
        type=Path,
        default=Path("node_modules"),
        help="default: %(default)s",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_TEMPLATE,
        help="the template (default: %(default)s)",
    )
    parser.add_argument(
        "--no-config",
        action="store_true",
        help="only write the template (use it with `dvc plots show --html-template PATH`)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = write_template(args.out, args.node_modules)
    print(f"wrote {out}")
    if not args.no_config:
        value = set_dvc_template(out)
        print(f"set {CONFIG_KEY} = {value} in .dvc/config.local")
    return 0
