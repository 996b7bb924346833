"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from srnas.settings import Settings, load_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.params, tuple(args.overlay), args.config_json)


def log_data_input(stage: Any, data_dir: Path, context: str) -> None:
    """Log the prepared data in ``data_dir`` as an MLflow dataset input of ``stage`` (a :class:`srnas.tracking.StageRun`):
    named after its source, its digest the prepared manifest's SHA-256 (the same images give the same digest), its
    source the raw folder or URL it was prepared from, its profile the image counts. Nothing when there is no manifest."""
    path = data_dir / "manifest.json"
    if not path.is_file():
        return
    raw = path.read_bytes()
    manifest = json.loads(raw)
    config = manifest.get("config", {})
    kind = str(manifest.get("source", "data"))
    if config.get("root"):
        source = str(Path(config["root"]).resolve())
    elif kind == "div2k":
        source = str(config.get("div2k", {}).get("base_url", kind))
    else:
        source = f"{kind} (built in)"  # skimage's sample images
    stage.log_dataset(kind, hashlib.sha256(raw).hexdigest(), source, context,
                      {"sets": manifest.get("sets"), "scales": manifest.get("scales"), "counts": manifest.get("counts")})


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
