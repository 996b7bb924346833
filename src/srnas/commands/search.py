"""The searches and their verdict: ``srnas search-arch`` (stage 2), ``srnas search-ratio`` (stage 3) and
``srnas check-budget`` (the final model measured against the latency budget)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from srnas.commands.common import add_settings_arguments, print_json, settings_from_args

LOG = logging.getLogger("srnas.search_arch")
BUDGET_LOG = logging.getLogger("srnas.check_budget")


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    """What both searches read: the supernet, the latency tables, the prepared data."""
    parser.add_argument("--supernet", type=Path, default=Path("results/train_supernet/supernet.pt"),
                        help="trained supernet (default: %(default)s)")
    parser.add_argument("--tables", type=Path, default=Path("results/profile_device"),
                        help="profile_device output; the target's table is TABLES/<target> (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")


def _inputs(args: argparse.Namespace, settings: Any) -> tuple[str, Any]:
    """(target name, SearchInputs) of a search command."""
    from srnas.latency.targets import budget_target_name
    from srnas.search.run import SearchInputs

    target = budget_target_name(settings.budget, settings.latency)
    return target, SearchInputs(args.supernet, args.tables / target, args.data_dir)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search-arch",
        help="search architecture and per-layer pruning schemes under a latency budget (stage search_arch)",
        description="Bayesian optimization (search_arch.strategy: tpe or gp; random as the baseline) over the supernet's "
        "space -- global width, one block per cell -- and, for the head and each cell, a pruning scheme among dense and "
        "the filter schemes the latency model measured as accelerated on the target. Objective: validation PSNR with "
        "inherited supernet weights on fixed LR crops, in the target's precision (filter-scheme layers pruned by "
        "search_ratio.importance); constraint: predicted latency at most budget.latency_ms plus budget.slack of it on "
        "budget.target (mode pareto: the PSNR/latency front). Then the loop closes on the target: up to "
        "budget.verify_candidates of the best admitted candidates are measured, best PSNR first, and the first whose "
        "measured latency fits the whole budget.latency_ms is chosen (budget.verify_runs 0: the best predicted within "
        "budget.latency_ms). The Optuna study persists in OUT/study.db, or in the database search_arch.storage names "
        "(postgresql://user@host/db): a killed search resumes, search_arch.n_workers processes share it, and worker "
        "jobs (--worker K, on this or other hosts) add trials to it. Each trial becomes a nested MLflow run. "
        "Writes OUT/arch.json (chosen architecture, predicted and measured latency, how it was chosen, every candidate "
        "measured), trials.csv, pareto.csv, pareto.png and search_metrics.json.",
    )
    add_settings_arguments(parser)
    _add_inputs(parser)
    parser.add_argument("--out", type=Path, default=Path("results/search_arch"), help="output folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--worker", type=int, metavar="K",
                        help="run as worker job K (1 or more; a SLURM array task, a process on another host): add trials "
                        "to the study, with a seed of its own, until it holds search_arch.trials completed ones, then exit "
                        "without choosing or writing outputs (the command without --worker does, from every worker's "
                        "trials). Same inputs and configuration as that command; share the study through "
                        "search_arch.storage (a database every host reaches) or, on one machine, OUT/study.db")
    parser.set_defaults(handler=run)
    add_ratio_parser(subparsers)
    add_budget_parser(subparsers)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.config import redact_url
    from srnas.search.run import join_search, search_arch

    settings = settings_from_args(args)
    cfg, budget, importance = settings.search_arch, settings.budget, settings.search_ratio.importance
    target, inputs = _inputs(args, settings)
    if args.worker is not None:  # a worker job: trials only; the plain command tracks and writes them all
        ran = join_search(inputs, cfg, budget, args.out, importance=importance, worker=args.worker)
        print(f"worker {args.worker}: {ran} trial(s) completed; the study has its {cfg.trials} trials")
        return 0
    params = {"search_arch": dataclasses.asdict(cfg) | {"storage": redact_url(cfg.storage)},
              "budget": dataclasses.asdict(budget) | {"target": target}, "importance": importance}
    with tracking.stage_run(settings.tracking, "search_arch", params, {"srnas.target": target}) as stage:
        result = search_arch(inputs, cfg, budget, args.out, importance=importance, latency=settings.latency,
                             finetune=settings.finetune)
        for record in result.records:
            with stage.candidate(f"trial-{record.number}", params={"arch": record.candidate.name, "width": record.candidate.subnet.width,
                                                                    "cells": ".".join(c.code for c in record.candidate.subnet.cells),
                                                                    "schemes": ".".join(record.candidate.schemes),
                                                                    "worker": record.worker}) as trial_run:
                trial_run.log_metrics({"psnr": record.psnr, "predicted_ms": record.latency_ms,
                                       "feasible": float(record.feasible)})
        chosen = result.chosen.candidate
        stage.log_params({"chosen": chosen.name, "chosen_schemes": ".".join(chosen.schemes),
                          "chosen_by": result.selection.chosen_by})
        stage.log_metrics(result.metrics())
        for name in ("arch.json", "pareto.png", "pareto.csv", "trials.csv"):
            stage.log_artifact(args.out / name, "search_arch")
    print(f"chosen {chosen.name} by {result.selection.chosen_by}: {result.chosen.psnr:.2f} dB, {result.chosen.latency_ms:.1f} ms predicted"
          + (f", {result.measured_ms:.1f} ms measured ({100 * (result.latency_error or 0):+.1f}%)" if result.measured_ms else "")
          + f" (budget {budget.latency_ms:g} ms on {target}); {len(result.records)} trials, {len(result.front)} on the front, "
          f"{len(result.selection.measured)} candidate(s) measured")
    if args.json:
        print_json(result.metrics() | {"chosen": chosen.name})
    return 0


def add_ratio_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search-ratio",
        help="search per-layer pruning ratios for the stage-2 architecture, prune it physically (stage search_ratio)",
        description="For every conv that search-arch gave a filter-pruning scheme, search the share of filters it keeps "
        "(search_ratio.min_keep to 1, rounded to the scheme's channel grid) by Bayesian optimization under "
        "budget.latency_ms plus budget.slack (predicted), scored by validation PSNR right after pruning the supernet's "
        "inherited weights (search_ratio.importance picks the filters), or after search_ratio.recovery_steps steps of "
        "the fine-tuning recipe when above 0; then, like search-arch, measures up to "
        "budget.verify_candidates of the best trials and keeps the best whose measured latency fits budget.latency_ms. "
        "search_ratio.enabled false: steps aside, writing the same outputs for stage 2's choice pruned at "
        "search_arch.prune_keep. Writes OUT/pruned.pt (the physically pruned network, for finetune), "
        "OUT/ratio.json (ratios, channels, the candidates measured, predicted and measured speedup over the unpruned "
        "parent), trials.csv and ratio_metrics.json.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--arch", type=Path, default=Path("results/search_arch/arch.json"), help="search-arch result (default: %(default)s)")
    _add_inputs(parser)
    parser.add_argument("--out", type=Path, default=Path("results/search_ratio"), help="output folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(handler=run_ratio)


def run_ratio(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.search.ratio import search_ratio

    settings = settings_from_args(args)
    cfg, arch_cfg, budget = settings.search_ratio, settings.search_arch, settings.budget
    target, inputs = _inputs(args, settings)
    params = {"search_ratio": dataclasses.asdict(cfg), "budget": dataclasses.asdict(budget) | {"target": target}}
    with tracking.stage_run(settings.tracking, "search_ratio", params, {"srnas.target": target}) as stage:
        result = search_ratio(inputs, args.arch, cfg, arch_cfg, budget, args.out, latency=settings.latency,
                              finetune=settings.finetune)
        stage.log_params({"network": result.network.name, "chosen_by": result.chosen_by})
        stage.log_metrics(result.metrics())
        stage.log_artifact(args.out / "ratio.json", "search_ratio")
    measured = result.measured_speedup
    print(("stage 3 skipped (search_ratio.enabled false): " if result.skipped else "")
          + f"pruned {result.network.name} (chosen by {result.chosen_by}): proxy {result.psnr:.2f} dB, {result.predicted_ms:.1f} ms predicted, "
          f"{result.predicted_speedup:.2f}x over the unpruned parent predicted"
          + (f", {measured:.2f}x measured" if measured else "") + f" (budget {budget.latency_ms:g} ms on {target})")
    if args.json:
        print_json(result.metrics() | {"network": result.network.name})
    return 0


def add_budget_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-budget",
        help="measure the final model on the target and fail when it misses the latency budget (stage check_budget)",
        description="Time the fine-tuned final model (CHECKPOINT, its own weights) end to end on budget.target -- the "
        "runtime, precision, threads and input size of the latency table -- with the latency model's network protocol "
        "(at least 5 rounds of budget.verify_runs calls). Records the wall-clock milliseconds and, under the paired "
        "protocol, the same rounds normalised to the table's reference speed, which is what the verdict then uses "
        "(OUT says which). Writes OUT (JSON) and exits 0 when that figure is at most budget.latency_ms (the whole budget, "
        "the figure the searches chose their candidates by); otherwise exits 1 saying by how much it missed. Refuses (exit 2, "
        "nothing written) a table measured under another fingerprint than this machine's for the target.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--checkpoint", type=Path, default=Path("results/finetune/model.pt"), help="final model (default: %(default)s)")
    parser.add_argument("--tables", type=Path, default=Path("results/profile_device"), help="profile_device output (default: %(default)s)")
    parser.add_argument("--baselines", type=Path,
                        help="also time every trained baseline here (<model>_x<scale>/model.pt at the target's scale) the "
                        "same way and hold it against the same budget: the report's in-budget marks (e.g. results/train_baseline)")
    parser.add_argument("--out", type=Path, default=Path("results/check_budget.json"), help="result (default: %(default)s)")
    parser.set_defaults(handler=run_budget)


def run_budget(args: argparse.Namespace) -> int:
    from srnas import atomic, tracking
    from srnas.search.budget import check_budget
    from srnas.search.fit import judge_baselines
    from srnas.latency.targets import budget_target_name

    settings = settings_from_args(args)
    budget = settings.budget
    target = budget_target_name(budget, settings.latency)
    with tracking.stage_run(settings.tracking, "check_budget", {"budget_ms": budget.latency_ms, "target": target},
                            {"srnas.target": target}) as stage:
        verdict = check_budget(args.checkpoint, args.tables / target, budget, settings.latency)
        baselines = ([] if args.baselines is None else
                     judge_baselines(args.baselines, args.tables / target, budget, settings.latency))
        figures = {"verdict_ms": verdict.verdict_ms, "wall_clock_ms": verdict.timing.wall_clock_ms,
                   "predicted_ms": verdict.predicted_ms, "within_budget": float(verdict.within_budget)}
        if verdict.timing.normalised_ms is not None:
            figures["normalised_ms"] = verdict.timing.normalised_ms
        figures |= {f"baseline_{b.model}_ms": b.verdict_ms for b in baselines}
        stage.log_metrics(figures)
        if verdict.within_budget:
            atomic.write_json(args.out, verdict.to_dict() | {"baselines": [dataclasses.asdict(b) for b in baselines]})
    if not verdict.within_budget:
        BUDGET_LOG.error("%s", verdict.describe())
        return 1
    BUDGET_LOG.info("%s", verdict.describe())
    return 0
