"""``srnas search-arch``: stage 2, compiler-aware architecture and pruning-scheme search (stage search_arch)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from srnas.commands.common import print_json, settings_from_args

LOG = logging.getLogger("srnas.search_arch")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from srnas.cli import add_settings_arguments

    parser = subparsers.add_parser(
        "search-arch",
        help="search architecture and per-layer pruning schemes under a latency budget (stage search_arch)",
        description="Bayesian optimization (search_arch.strategy: tpe or gp; random as the baseline) over the supernet's "
        "space -- global width, one block per cell -- and, for the head and each cell, a pruning scheme among dense and "
        "the filter schemes the latency model measured as accelerated on the target. Objective: validation PSNR with "
        "inherited supernet weights on fixed LR crops, in the target's precision; constraint: predicted latency at most "
        "search_arch.budget_ms (mode pareto: the PSNR/latency front). The Optuna study persists in OUT/study.db: a "
        "killed search resumes, search_arch.n_workers processes share it. Each trial becomes a nested MLflow run. "
        "Writes OUT/arch.json (chosen architecture, predicted and measured latency), trials.csv, pareto.csv, "
        "pareto.png and search_metrics.json.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--supernet", type=Path, default=Path("results/train_supernet/supernet.pt"),
                        help="trained supernet (default: %(default)s)")
    parser.add_argument("--tables", type=Path, default=Path("results/profile_device"),
                        help="profile_device output; the target's table is TABLES/<target> (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/search_arch"), help="output folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.search.run import SearchInputs, search_arch, target_name

    settings = settings_from_args(args)
    cfg = settings.search_arch
    target = target_name(cfg, settings.latency)
    inputs = SearchInputs(args.supernet, args.tables / target, args.data_dir)
    params = {"search_arch": dataclasses.asdict(cfg) | {"target": target}}
    with tracking.stage_run(settings.tracking, "search_arch", params, {"srnas.target": target}) as stage:
        result = search_arch(inputs, cfg, args.out, latency=settings.latency)
        for record in result.records:
            with stage.candidate(f"trial-{record.number}", params={"arch": record.candidate.name, "width": record.candidate.subnet.width,
                                                                    "cells": ".".join(c.code for c in record.candidate.subnet.cells),
                                                                    "schemes": ".".join(record.candidate.schemes),
                                                                    "worker": record.worker}) as trial_run:
                trial_run.log_metrics({"psnr": record.psnr, "predicted_ms": record.latency_ms,
                                       "feasible": float(record.feasible)})
        chosen = result.chosen.candidate
        stage.log_params({"chosen": chosen.name, "chosen_schemes": ".".join(chosen.schemes)})
        stage.log_metrics(result.metrics())
        for name in ("arch.json", "pareto.png", "pareto.csv", "trials.csv"):
            stage.log_artifact(args.out / name, "search_arch")
    print(f"chosen {chosen.name}: {result.chosen.psnr:.2f} dB, {result.chosen.latency_ms:.1f} ms predicted"
          + (f", {result.measured_ms:.1f} ms measured ({100 * (result.latency_error or 0):+.1f}%)" if result.measured_ms else "")
          + f" (budget {cfg.budget_ms:g} ms on {target}); {len(result.records)} trials, {len(result.front)} on the front")
    if args.json:
        print_json(result.metrics() | {"chosen": chosen.name})
    return 0
