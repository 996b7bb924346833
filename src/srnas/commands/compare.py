"""``srnas compare``: one table of models across MLflow experiments, without opening a browser."""

from __future__ import annotations

import argparse
from typing import Any

from srnas.commands.common import add_settings_arguments, print_json, settings_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="print a table of models across MLflow experiments",
        description="Join the latest evaluate and profile_model runs per (experiment, model, scale) into one table: "
        "PSNR/SSIM per set and latency per runtime. The browser alternative: "
        "mlflow ui --backend-store-uri sqlite:///mlflow.db",
    )
    add_settings_arguments(parser)
    parser.add_argument("--experiment", action="append", help="experiment name (repeatable; default: all)")
    parser.add_argument("--json", action="store_true", help="print rows as JSON")
    parser.set_defaults(handler=run)


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge stage runs (oldest first) into rows keyed by experiment, model and scale; later runs win."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in runs:
        tags = run["tags"]
        model, scale = tags.get("srnas.model"), tags.get("srnas.scale")
        if not model or not scale or run["stage"] not in ("evaluate", "profile_model"):
            continue
        key = (run["experiment"], model, scale)
        row = rows.setdefault(key, {"experiment": key[0], "model": model, "scale": int(scale), "data": tags.get("srnas.data", "")})
        row.update({name: value for name, value in run["metrics"].items() if name.startswith(("psnr_", "ssim_", "latency_ms_"))})
    return sorted(rows.values(), key=lambda r: (r["experiment"], r["scale"], r["model"]))


def render_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no evaluate or profile_model runs found"
    fixed = ["experiment", "data", "model", "scale"]
    metric_columns = sorted({k for row in rows for k in row if k not in fixed}, key=lambda k: (not k.startswith("psnr"), k))
    header = fixed + metric_columns
    cells = [[_fmt(row.get(col)) for col in header] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from srnas import tracking

    settings = settings_from_args(args)
    rows = comparison_rows(tracking.query_runs(settings.tracking, args.experiment))
    if args.json:
        print_json(rows)
    else:
        print(render_table(rows))
    return 0
