"""``srnas finetune``: fine-tune the physically pruned network with distillation from the supernet (stage finetune)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from srnas.commands.common import (
    add_settings_arguments,
    log_data_input,
    print_json,
    settings_from_args,
)

LOG = logging.getLogger("srnas.finetune")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the pruned network with distillation (stage finetune)",
        description="Train the pruned network that search-ratio wrote (PRUNED, weights inherited from the supernet) on the "
        "prepared training pairs: L1 loss mixed with distillation from the supernet's largest subnet "
        "((1 - finetune.distill) * L1(HR) + finetune.distill * L1(teacher)), Adam, cosine schedule over finetune.steps. "
        "Checkpoints go to OUT/last.ckpt every finetune.checkpoint_every steps and a rerun resumes from there; the "
        "weights go to OUT/model.pt (a pruned-network file) and the figures to OUT/train_metrics.json.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--pruned", type=Path, default=Path("results/search_ratio/pruned.pt"),
                        help="the pruned network to fine-tune (default: %(default)s)")
    parser.add_argument("--supernet", type=Path, default=Path("results/train_supernet/supernet.pt"),
                        help="the trained supernet whose largest subnet is the teacher (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/finetune"), help="output folder (default: %(default)s)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing last.ckpt")
    parser.add_argument("--json", action="store_true", help="print the fine-tuning figures as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.finetune import finetune

    settings = settings_from_args(args)
    cfg = settings.finetune
    tags = {"srnas.data": settings.data.source, "srnas.distill": str(cfg.distill)}
    with tracking.stage_run(settings.tracking, "finetune", {"finetune": dataclasses.asdict(cfg)}, tags) as stage:
        log_data_input(stage, args.data_dir, "training")
        result = finetune(
            args.pruned,
            args.supernet,
            args.data_dir,
            cfg,
            args.out,
            on_metrics=lambda metrics, step: stage.log_metrics(metrics, step=step),
            resume=not args.no_resume,
        )
        stage.set_tags({"srnas.pruned": result.pruned, "srnas.scale": str(result.scale)})
        stage.log_artifact(result.metrics_path)
    LOG.info("fine-tuned %s x%d: %d steps in %.0f s, final loss %.4f, val PSNR %s, %s", result.pruned, result.scale,
             result.steps, result.seconds, result.final_loss,
             f"{result.val_psnr:.3f} dB" if result.val_psnr is not None else "n/a", result.model_path)
    if args.json:
        summary = dataclasses.asdict(result)
        print_json({k: str(v) if isinstance(v, Path) else v for k, v in summary.items()})
    return 0
