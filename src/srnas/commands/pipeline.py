"""``srnas pipeline start|end``: the parent MLflow run that groups one pipeline run's stages.

Snakemake calls these from ``onstart``/``onsuccess``/``onerror``. Under ``dvc repro`` the first stage
opens the parent itself and the ``report`` stage closes it.
"""

from __future__ import annotations

import argparse

from srnas.commands.common import add_settings_arguments, settings_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pipeline", help="open or close the parent MLflow run of a pipeline run")
    parser.add_argument("action", choices=("start", "end"))
    parser.add_argument("--status", choices=("FINISHED", "FAILED"), default="FINISHED", help="for end (default: %(default)s)")
    parser.add_argument("--name", default="pipeline", help="run name for start (default: %(default)s)")
    parser.add_argument("--runner", default="snakemake", help="tag recording what ran the pipeline")
    add_settings_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking

    settings = settings_from_args(args)
    if args.action == "start":
        run_id = tracking.start_pipeline(settings.tracking, args.name, {"srnas.runner": args.runner, "srnas.data": settings.data.source})
        print(run_id)
    else:
        tracking.end_pipeline(settings.tracking, args.status)
    return 0
