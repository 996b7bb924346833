"""The pipeline report: tables per scale from the stage outputs, written as Markdown plus one metrics JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srnas.errors import DataError


@dataclass(frozen=True)
class ModelResult:
    """Everything the report knows about one model at one scale."""

    model: str
    scale: int
    metrics: dict[str, float]
    sets: dict[str, dict[str, Any]]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read stage output ({exc})") from None


def collect_results(results_dir: Path) -> list[ModelResult]:
    """Read ``results/evaluate/*.json``; sorted by scale, then model."""
    evaluate_dir = results_dir / "evaluate"
    if not evaluate_dir.is_dir():
        raise DataError(f"{evaluate_dir}: no evaluation results (run the evaluate stage first)")
    found = []
    for path in sorted(evaluate_dir.glob("*.json")):
        payload = _read_json(path)
        found.append(ModelResult(payload["model"], int(payload["scale"]), payload["metrics"], payload["sets"]))
    if not found:
        raise DataError(f"{evaluate_dir}: no evaluation results (run the evaluate stage first)")
    return sorted(found, key=lambda r: (r.scale, r.model))


def render_markdown(results: list[ModelResult]) -> str:
    lines = ["# srnas report", ""]
    for scale in sorted({r.scale for r in results}):
        rows = [r for r in results if r.scale == scale]
        set_names = sorted({name for r in rows for name in r.sets})
        lines += [f"## x{scale}", ""]
        header = ["model"] + [f"{name} PSNR / SSIM" for name in set_names]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in rows:
            cells = [r.model]
            for name in set_names:
                s = r.sets.get(name)
                cells.append(f"{s['psnr']:.2f} / {s['ssim']:.4f}" if s else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("PSNR/SSIM: Y channel (BT.601), uint8, border of `scale` pixels cropped, SSIM 11x11 Gaussian (sigma 1.5).")
    return "\n".join(lines) + "\n"


def metrics_summary(results: list[ModelResult]) -> dict[str, dict[str, float]]:
    """``{"<model>_x<scale>": {metric: value}}``: what ``dvc metrics show`` reads."""
    return {f"{r.model}_x{r.scale}": dict(sorted(r.metrics.items())) for r in results}
