"""Stage-2 search on this machine: wall time of a 200-trial search, Bayesian optimization vs random search, and the
chosen architecture's measured latency against its prediction.

    .venv/bin/python bench/bench_search.py --supernet SUPERNET.pt --table results/profile_device/cpu_auto \
        --data-dir results/prepare_data [--trials 200] [--seeds 0 1 2] [--strategies tpe random] [--json FILE]

Inputs are what the pipeline produced: a trained supernet (``train_supernet``), the target's latency table
(``profile_device``) and the prepared data (``prepare_data``; the search scores ``search_arch.val_set``, by default
``val`` or else the first evaluation set). Everything else is the default ``search_arch`` configuration (per-layer
schemes among the accelerated filter schemes, 32 LR crops of 64 px, ``search_ratio.importance``) under the default
``budget.latency_ms`` (33 ms), with no slack unless ``--slack`` says otherwise (the README's figures: no margin, the
scheme before the closed loop).

1. one search with the default strategy (TPE), timed from start to finish, its candidates measured end to end on
   the target until one fits (at least 5 rounds of ``budget.verify_runs`` calls, :mod:`srnas.search.verify`);
2. for each seed, a search per strategy with the same trial budget; for each, the best feasible PSNR and the trial
   at which it was first reached; for Bayesian optimization, the trial at which it first reached the best PSNR that
   random search found in all its trials (same seed), and the median of that over the seeds.

Nothing else should run on the machine meanwhile (the latency measurement of step 1 is timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from srnas.config import (
    BudgetConfig,
    LatencyConfig,
    RatioSearchConfig,
    SearchArchConfig,
)
from srnas.search import SearchInputs, search_arch
from srnas.search.run import first_reaching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True, help="the target's profile_device folder (holds table.json)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["tpe", "random"], help="the last one is the baseline")
    parser.add_argument("--budget-ms", type=float, default=BudgetConfig().latency_ms)
    parser.add_argument("--slack", type=float, default=0.0, help="budget.slack (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="study folders (default: a new temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="srnas-bench-search-"))
    inputs = SearchInputs(args.supernet, args.table, args.data_dir)
    base = dataclasses.replace(SearchArchConfig(), trials=args.trials)
    budget = dataclasses.replace(BudgetConfig(), latency_ms=args.budget_ms, slack=args.slack)
    importance = RatioSearchConfig().importance
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min); CPUs usable: {len(os.sched_getaffinity(0))}; work: {work}")
    figures: dict = {"trials": args.trials, "budget_ms": args.budget_ms, "seeds": args.seeds}

    # 1. wall time of the default search, and the chosen network measured
    start = time.perf_counter()
    result = search_arch(inputs, base, budget, work / "timed", importance=importance, latency=LatencyConfig(), progress=False)
    wall = time.perf_counter() - start
    c = result.chosen
    print(f"\n1. default search ({base.strategy}, {args.trials} trials, budget {args.budget_ms:g} ms): {wall:.1f} s wall "
          f"({result.seconds:.1f} s in search_arch, measurement included)")
    print(f"   chosen {c.candidate.name}: {c.psnr:.3f} dB, predicted {c.latency_ms:.2f} ms, measured {result.measured_ms:.2f} ms "
          f"({100 * (result.latency_error or 0):+.1f}%); front {len(result.front)} points")
    figures["timed"] = {"wall_s": wall, "chosen": c.candidate.name, "psnr": c.psnr, "predicted_ms": c.latency_ms,
                        "measured_ms": result.measured_ms, "latency_error": result.latency_error}

    # 2. strategies x seeds, same trial budget
    baseline = args.strategies[-1]
    runs: dict[str, dict[int, dict]] = {s: {} for s in args.strategies}
    for seed in args.seeds:
        for strategy in args.strategies:
            cfg = dataclasses.replace(base, strategy=strategy, seed=seed)
            t0 = time.perf_counter()
            r = search_arch(inputs, cfg, dataclasses.replace(budget, verify_runs=0), work / f"{strategy}_s{seed}",
                            importance=importance, progress=False)
            runs[strategy][seed] = {"best_psnr": r.chosen.psnr,
                                    "best_at": first_reaching(r.records, r.chosen.psnr, budget.latency_ms),
                                    "chosen": r.chosen.candidate.name, "predicted_ms": r.chosen.latency_ms,
                                    "seconds": time.perf_counter() - t0, "records": r.records}
    print(f"\n2. best feasible PSNR (dB) and the trial that first reached it, {args.trials} trials each")
    print("| seed | " + " | ".join(f"{s} best @trial" for s in args.strategies) + " | "
          + " | ".join(f"{s} reaches {baseline}'s best @trial" for s in args.strategies[:-1]) + " |")
    print("|---" * (1 + 2 * len(args.strategies) - 1) + "|")
    reach: dict[str, list[int]] = {s: [] for s in args.strategies[:-1]}
    for seed in args.seeds:
        target_psnr = runs[baseline][seed]["best_psnr"]
        cells = [f"{runs[s][seed]['best_psnr']:.3f} @{runs[s][seed]['best_at']} ({runs[s][seed]['seconds']:.0f} s)"
                 for s in args.strategies]
        for s in args.strategies[:-1]:
            at = first_reaching(runs[s][seed]["records"], target_psnr, budget.latency_ms)
            reach[s].append(at if at else args.trials + 1)  # never reached: counted as beyond the budget
            runs[s][seed][f"reaches_{baseline}_at"] = at or None
        print(f"| {seed} | " + " | ".join(cells) + " | " + " | ".join(str(runs[s][seed][f'reaches_{baseline}_at'] or 'never')
                                                                  for s in args.strategies[:-1]) + " |")
    for s in args.strategies[:-1]:
        median = statistics.median(reach[s])
        print(f"   {s}: median trials to reach {baseline}'s {args.trials}-trial best: {median:g} "
              f"(bar: at most {args.trials // 2})")
        figures[f"{s}_median_trials_to_{baseline}_best"] = median
    figures["runs"] = {s: {seed: {k: v for k, v in r.items() if k != "records"} for seed, r in by.items()} for s, by in runs.items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
