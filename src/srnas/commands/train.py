"""``srnas train``: train one baseline at one scale (stage train_baseline)."""

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

LOG = logging.getLogger("srnas.train")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a baseline model (stage train_baseline)",
        description="Train a registered model on the prepared training pairs: L1 loss, Adam, cosine schedule, "
        "a budget in steps (train.steps, or train.steps_by_model.MODEL). Checkpoints go to OUT/last.ckpt every train.checkpoint_every steps and a "
        "rerun resumes from there; the final weights go to OUT/model.pt. Models without weights (bicubic) get a "
        "model.pt that records the architecture, so every model goes through the same export/profile/evaluate path.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--model", required=True, help="registered model name (see `srnas models`)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/train_baseline/plain32_x2")
    parser.add_argument("--fitted", type=Path, default=Path("results/fit_baselines/choice.json"),
                        help="what plain_fit / ecbsr_fit stand for: `srnas fit-baselines` output (default: %(default)s)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing last.ckpt")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import atomic, tracking
    from srnas.checkpoint import save_trained
    from srnas.errors import ConfigError
    from srnas.models import create_model, model_info
    from srnas.models.fitted import baseline_choices, is_baseline, resolve_fitted
    from srnas.training import train
    from srnas.training.history import HISTORY_FILE, TrainHistory

    settings = settings_from_args(args)
    network = resolve_fitted(args.model, args.fitted)  # the registry name (plain_fit / ecbsr_fit: the budget's pick)
    info = model_info(network)
    unknown = sorted(name for name in settings.train.steps_by_model if not is_baseline(name))
    if unknown:
        raise ConfigError(f"train.steps_by_model: unknown model(s) {', '.join(unknown)}; {baseline_choices()}")
    train_cfg = settings.train.for_model(args.model)
    tags = {"srnas.model": args.model, "srnas.scale": str(args.scale), "srnas.data": settings.data.source}
    params = {"model": args.model, "network": network, "scale": args.scale, "train": dataclasses.asdict(train_cfg)}
    with tracking.stage_run(settings.tracking, "train_baseline", params, tags) as stage:
        log_data_input(stage, args.data_dir, "training")
        if not info.has_weights:
            save_trained(args.out / "model.pt", create_model(network, args.scale), network, args.scale, {})
            atomic.write_json(args.out / "train_metrics.json", {"steps": 0, "trained": False})
            TrainHistory(("train_loss", "lr", "val_psnr")).write(args.out / HISTORY_FILE)  # no curve: the header only
            LOG.info("%s has no weights: recorded the architecture in %s", args.model, args.out / "model.pt")
            return 0
        result = train(
            network,
            args.scale,
            args.data_dir,
            train_cfg,
            args.out,
            on_metrics=lambda metrics, step: stage.log_metrics(metrics, step=step),
            resume=not args.no_resume,
        )
        stage.log_artifact(result.metrics_path)
    LOG.info("trained %s (%s) x%d: %d steps in %.0f s, final loss %.4f", args.model, network, args.scale, result.steps, result.seconds, result.final_loss)
    return 0
