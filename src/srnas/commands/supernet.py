"""``srnas train-supernet``: train the weight-sharing supernet with the sandwich rule (stage train_supernet)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from srnas.commands.common import (
    add_settings_arguments,
    log_data_input,
    print_json,
    settings_from_args,
)

LOG = logging.getLogger("srnas.train_supernet")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-supernet",
        help="train the weight-sharing supernet (stage train_supernet)",
        description="Train the supernet of the `supernet.space` search space at `supernet.scale` on the prepared training "
        "pairs with the sandwich rule: each step the largest, the smallest and `supernet.train.num_random` random subnets, "
        "in-place distillation from the largest, one optimizer step. Checkpoints go to OUT/last.ckpt every "
        "supernet.train.checkpoint_every steps and a rerun resumes from there; the weights go to OUT/supernet.pt and the "
        "figures to OUT/train_metrics.json.\n\n"
        "Distributed: the same command under torchrun trains with DDP (gloo on CPU, NCCL on GPU), e.g.\n"
        "  torchrun --standalone --nproc_per_node 2 --no-python srnas train-supernet --out results/train_supernet\n"
        "supernet.train.batch_size is the global batch, split over the processes; only rank 0 writes. On several machines, "
        "the same command on each:\n"
        "  torchrun --nnodes 2 --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id srnas \\\n"
        "      -m srnas.cli train-supernet --out results/train_supernet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser)
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/train_supernet"), help="output folder (default: %(default)s)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing last.ckpt")
    parser.add_argument("--describe", action="store_true", help="print the search space and its size, then exit (no training)")
    parser.add_argument("--json", action="store_true", help="print the training figures (or, with --describe, the space) as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.arch.space import SearchSpace

    settings = settings_from_args(args)
    cfg = settings.supernet
    space = SearchSpace(cfg.space)
    if args.describe:
        if args.json:
            print_json({"space": space.to_dict(), "size": space.size(), "largest": space.largest().to_dict(),
                        "smallest": space.smallest().to_dict()})
        else:
            print(space.describe())
        return 0

    from srnas.supernet.train import train_supernet

    # Under torchrun only rank 0 talks to the tracking store; the other ranks train silently.
    is_main = os.environ.get("RANK", "0").strip() in ("", "0")
    tracking_cfg = settings.tracking if is_main else dataclasses.replace(settings.tracking, enabled=False)
    tags = {"srnas.scale": str(cfg.scale), "srnas.data": settings.data.source, "srnas.space_size": str(space.size()),
            "srnas.world_size": os.environ.get("WORLD_SIZE", "1")}
    params = {"supernet": dataclasses.asdict(cfg)}
    with tracking.stage_run(tracking_cfg, "train_supernet", params, tags) as stage:
        log_data_input(stage, args.data_dir, "training")
        result = train_supernet(
            args.data_dir,
            cfg,
            args.out,
            on_metrics=lambda metrics, step: stage.log_metrics(metrics, step=step),
            resume=not args.no_resume,
        )
        if is_main:
            stage.log_artifact(result.metrics_path)
    if is_main:
        LOG.info("trained the supernet x%d: %d steps in %.0f s, final loss %.4f (largest subnet), %s", cfg.scale, result.steps,
                 result.seconds, result.final_loss, result.supernet_path)
        if args.json:
            summary = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "supernet"}
            print_json({k: str(v) if isinstance(v, Path) else v for k, v in summary.items()})
    return 0
