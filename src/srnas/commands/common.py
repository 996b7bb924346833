"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from srnas.settings import Settings, load_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.params, tuple(args.overlay), args.config_json)


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
