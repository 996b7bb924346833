"""The final pruned network's speedup over its unpruned parent: predicted by the latency model vs measured, repeated.

    .venv/bin/python bench/bench_pruning_speedup.py --ratio results/search_ratio/ratio.json \
        --table results/profile_device/cpu_auto [--repeats 3] [--runs 10]

Each repeat measures the pruned network and its parent end to end on the table's target exactly like the verdict
of ``search_ratio`` (:func:`srnas.search.run.measure_on_target`: the table's timing protocol, ``--runs`` calls per
round, the default ``latency`` section's rounds and passes; ``check_budget`` times the fine-tuned weights the same way) and prints both times, the
measured speedup and its error against the prediction; then the median over repeats. Nothing else should run on
the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from srnas.arch.pruned import PrunedSubnet, as_pruned
from srnas.config import LatencyConfig
from srnas.latency.profile import load_predictor
from srnas.search.run import measure_on_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=Path, required=True, help="search_ratio's ratio.json")
    parser.add_argument("--table", type=Path, required=True, help="the target's profile_device folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    ratio = json.loads(args.ratio.read_text())
    pruned = PrunedSubnet.from_dict(ratio["network"])
    parent = as_pruned(pruned.config)
    predictor = load_predictor(args.table)
    predicted = predictor.predict(parent) / predictor.predict(pruned)
    print(f"{pruned.name} vs parent {parent.name} on {predictor.table.target.name}: predicted "
          f"{predictor.predict(pruned):.1f} / {predictor.predict(parent):.1f} ms, speedup {predicted:.2f}x")
    errors = []
    for r in range(args.repeats):
        timed = measure_on_target(predictor, [pruned, parent], args.runs, LatencyConfig())
        if timed is None:
            raise SystemExit(f"{predictor.table.target.name}: its runtime is not available here")
        pruned_ms, parent_ms = timed
        measured = parent_ms / pruned_ms
        errors.append(measured / predicted - 1)
        print(f"repeat {r + 1}: pruned {pruned_ms:.1f} ms, parent {parent_ms:.1f} ms, speedup {measured:.2f}x "
              f"({100 * errors[-1]:+.1f}% vs predicted)", flush=True)
    print(f"median error over {args.repeats} repeats: {100 * statistics.median(errors):+.1f}%")


if __name__ == "__main__":
    main()
