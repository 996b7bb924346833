"""``srnas prepare-data``: HR/LR pairs for every configured scale, with a manifest."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from srnas.commands.common import (
    add_settings_arguments,
    log_data_input,
    settings_from_args,
)

LOG = logging.getLogger("srnas.prepare_data")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-data",
        help="prepare HR/LR image pairs (stage prepare_data)",
        description="Read the configured source (skimage, folder or div2k), crop HR to a multiple of each scale, "
        "make LR with MATLAB-compatible bicubic, and write PNGs plus manifest.json. The output folder is replaced "
        "atomically: on any error nothing is written.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("results/prepare_data"), help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.data.prepare import prepare_data

    settings = settings_from_args(args)
    with tracking.stage_run(settings.tracking, "prepare_data", {"data": dataclasses.asdict(settings.data)}) as stage:
        manifest = prepare_data(settings.data, args.out)
        counts = manifest.get("counts", {})
        stage.log_metrics({f"images_{key}": float(value) for key, value in _flatten_counts(counts).items()})
        stage.log_artifact(args.out / "manifest.json")
        log_data_input(stage, args.out, "prepared")
    LOG.info("prepared data in %s", args.out)
    return 0


def _flatten_counts(counts: dict) -> dict[str, int]:
    flat: dict[str, int] = {}
    for set_name, per_scale in counts.items():
        if isinstance(per_scale, dict):
            for scale, count in per_scale.items():
                flat[f"{set_name}_{scale}".lower()] = int(count)
        else:
            flat[str(set_name).lower()] = int(per_scale)
    return flat
