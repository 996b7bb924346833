"""``srnas report``: the Markdown report and the metrics summary of a pipeline run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from srnas.commands.common import settings_from_args

LOG = logging.getLogger("srnas.report")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from srnas.cli import add_settings_arguments

    parser = subparsers.add_parser(
        "report",
        help="write results/report.md and the metrics summary (stage report)",
        description="Collect the stage outputs under --results into a Markdown report and one metrics JSON. "
        "Closes the pipeline's parent MLflow run.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/report.md"), help="report file (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, default=Path("results/metrics.json"), help="metrics summary (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import atomic, tracking
    from srnas.report import collect_results, metrics_summary, render_markdown

    settings = settings_from_args(args)
    with tracking.stage_run(settings.tracking, "report", {"results": str(args.results)}) as stage:
        results = collect_results(args.results)
        atomic.write_text(args.out, render_markdown(results))
        atomic.write_json(args.metrics, metrics_summary(results))
        for r in results:
            stage.log_metrics(r.metrics)
        stage.log_artifact(args.out)
    tracking.end_pipeline(settings.tracking, "FINISHED")
    LOG.info("report written to %s", args.out)
    return 0
