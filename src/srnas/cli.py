"""The ``srnas`` command: one subcommand per pipeline stage, plus tools for users.

Every subcommand has ``--help``. Bad input exits with status 2 and one line naming the file or key.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from srnas import __version__
from srnas.errors import SrnasError

LOG = logging.getLogger("srnas")

# Each entry: module in srnas.commands exposing ``add_parser(subparsers)``; imported lazily so
# ``srnas --help`` does not pay for torch or mlflow.
COMMANDS = (
    "prepare_data",
    "train",
    "export",
    "profile",
    "evaluate",
    "pipeline",
    "supernet",
    "latency",
    "search",
    "fit",
    "finetune",
    "report",
    "compare",
    "upscale",
    "models",
    "config_cmd",
    "plots",
    "device",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="srnas",
        description="Real-time super-resolution by neural architecture and pruning search.",
    )
    parser.add_argument("--version", action="version", version=f"srnas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"srnas.commands.{name}").add_parser(subparsers)
    return parser


class _FileOnly(logging.Filter):
    """Keeps records marked ``file_only`` off the terminal: the error the terminal gets as one line (or as Python's
    own traceback) goes to the log file with its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _setup_logging(verbose: bool, log_file: Path | None) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    terminal = logging.StreamHandler(sys.stderr)
    terminal.addFilter(_FileOnly())
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.captureWarnings(True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "log", None))
    try:
        result = args.handler(args)
    except SrnasError as exc:
        print(f"srnas: error: {exc}", file=sys.stderr)
        LOG.exception("srnas: error: %s", exc, extra={"file_only": True})  # noqa: TRY401 (the one line, then details)
        return 2
    except KeyboardInterrupt:
        print("srnas: interrupted", file=sys.stderr)
        LOG.exception("srnas: interrupted", extra={"file_only": True})
        return 130
    except Exception:  # a bug: the log file gets the traceback, then Python as usual
        LOG.critical("srnas %s failed", args.command, exc_info=True, extra={"file_only": True})
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
