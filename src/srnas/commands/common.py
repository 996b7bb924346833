"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from srnas.settings import Settings, load_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.params, tuple(args.overlay), args.config_json)


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every stage: where the configuration and the log go."""
    group = parser.add_argument_group("configuration")
    group.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file (default: %(default)s)")
    group.add_argument(
        "--overlay",
        type=Path,
        action="append",
        default=[],
        help="YAML merged on top of --params, e.g. config/smoke.yaml (repeatable)",
    )
    group.add_argument("--config-json", help="the whole configuration as JSON (Snakemake passes this; replaces --params)")
    parser.add_argument("--log", type=Path, help="also write the log to this file")
