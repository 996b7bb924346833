"""The ablation table: the final model of several pipeline runs (variants of one benchmark), side by side with the
best baseline within the budget.

    .venv/bin/python bench/ablation_table.py "stage 2 + stage 3=../bx2/results" \
        "stage 2 alone=../bx2-skip/results" [...]

Each ``label=RESULTS`` is the ``results`` folder of a finished run (``check_budget.json``, ``evaluate/final_x*.json``,
``search_ratio/ratio.json``, ``evaluate/<baseline>_x*.json``). Prints a markdown table: the final network, its
latency measured by ``check_budget``, PSNR / SSIM per set, and per set the lead over the best baseline that
``check_budget`` measured within the budget in that same run (so every row compares like with like). Reads files
only; measures nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def row(label: str, results: Path) -> tuple[str, list[str]]:
    verdict = _json(results / "check_budget.json")
    final_path = next(iter(sorted((results / "evaluate").glob("final_x*.json"))))
    final = _json(final_path)
    scale = final["scale"]
    ratio = _json(results / "search_ratio" / "ratio.json")
    baselines = {}
    for b in verdict.get("baselines", []):
        path = results / "evaluate" / f"{b['model']}_x{scale}.json"
        trained = results / "train_baseline" / f"{b['model']}_x{scale}" / "train_metrics.json"
        if b["within_budget"] and path.is_file() and trained.is_file() and _json(trained).get("steps"):
            baselines[b["model"]] = _json(path)["sets"]
    cells = [label, f"`{ratio['name']}`" + (" (stage 3 skipped)" if ratio.get("skipped") else ""),
             f"{verdict['verdict_ms']:.1f}"]
    leads = []
    for name, s in final["sets"].items():
        cells.append(f"{s['psnr']:.2f} / {s['ssim']:.4f}")
        best = max(baselines.items(), key=lambda kv: kv[1].get(name, {}).get("psnr", float("-inf")), default=None)
        leads.append(f"{s['psnr'] - best[1][name]['psnr']:+.2f} ({best[0]})" if best and name in best[1] else "-")
    return label, cells + leads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=RESULTS_DIR")
    args = parser.parse_args()
    rows = []
    sets: list[str] = []
    for spec in args.runs:
        label, _, folder = spec.partition("=")
        if not folder:
            parser.error(f"{spec!r}: expected label=RESULTS_DIR")
        results = Path(folder)
        final = _json(next(iter(sorted((results / "evaluate").glob("final_x*.json")))))
        sets = sets or list(final["sets"])
        rows.append(row(label, results)[1])
    header = ["variant", "final network", "measured ms"] + [f"{n} PSNR / SSIM" for n in sets] + \
             [f"{n} lead (dB) over best in-budget baseline" for n in sets]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
