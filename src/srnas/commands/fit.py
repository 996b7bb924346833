"""``srnas fit-baselines``: the plain / ECBSR configuration with the most computation that fits the latency budget
(stage fit_baselines)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from srnas.commands.common import add_settings_arguments, print_json, settings_from_args

LOG = logging.getLogger("srnas.fit_baselines")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-baselines",
        help="measure a width x depth grid of plain / ECBSR networks against the budget, pick the one to train "
        "(stage fit_baselines)",
        description="Time plain 3x3 conv networks (head, 1..baselines.fit_max_blocks body convs, tail; each width of "
        "baselines.fit_widths) on budget.target with check-budget's verdict protocol, deepening each width until a "
        "network misses budget.latency_ms. An ECBSR network deploys as exactly such a plain network (its branches "
        "collapse into one 3x3 conv), so the grid serves both families. The fitting network with the most "
        "multiply-accumulates becomes plain_fit and ecbsr_fit (baselines.models). Writes OUT/choice.json (what "
        "`srnas train --fitted` reads) and OUT/grid.json (every measurement).",
    )
    add_settings_arguments(parser)
    parser.add_argument("--tables", type=Path, default=Path("results/profile_device"),
                        help="profile_device output; the target's table is TABLES/<target> (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/fit_baselines"), help="output folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the grid as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.search.budget import measurable_predictor
    from srnas.search.fit import fit_grid, write_fit
    from srnas.latency.targets import budget_target_name
    from srnas.search.run import verdict_timing

    settings = settings_from_args(args)
    budget, baselines = settings.budget, settings.baselines
    target = budget_target_name(budget, settings.latency)
    table = measurable_predictor(args.tables / target).table
    timing = verdict_timing(settings.latency, max(budget.verify_runs, 1))
    params = {"budget": dataclasses.asdict(budget) | {"target": target}, "fit_widths": list(baselines.fit_widths),
              "fit_max_blocks": baselines.fit_max_blocks}
    with tracking.stage_run(settings.tracking, "fit_baselines", params, {"srnas.target": target}) as stage:
        result = fit_grid(table.target, budget.latency_ms, baselines.fit_widths, baselines.fit_max_blocks, timing,
                          table.reference_ms,
                          progress=lambda p: LOG.info("m%dc%d: %.2f ms (%s), %.2f GMAC", p.blocks, p.width, p.verdict_ms,
                                                      "fits" if p.fits else "over", p.gmac))
        write_fit(args.out, result)
        stage.log_artifact(args.out / "grid.json", "fit_baselines")
        if result.chosen is not None:
            stage.log_params(result.choice())
            stage.log_metrics({"chosen_ms": result.chosen.verdict_ms, "chosen_gmac": result.chosen.gmac})
    if result.chosen is None:
        LOG.warning("no network of the grid fits %g ms on %s: plain_fit and ecbsr_fit cannot train", budget.latency_ms, target)
    else:
        c = result.chosen
        print(f"fits {budget.latency_ms:g} ms on {target}: m{c.blocks}c{c.width} ({c.verdict_ms:.2f} ms, {c.gmac:.2f} GMAC) "
              f"-> {', '.join(f'{k} = {v}' for k, v in result.choice().items())}; {len(result.points)} networks measured")
    if args.json:
        print_json([dataclasses.asdict(p) for p in result.points])
    return 0
