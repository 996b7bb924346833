"""Latency model on this machine: table build time, measured pruning schemes, and predictor validation.

    .venv/bin/python bench/bench_latency.py [--target cpu_ort_fp32 ...] [--count 50] [--fresh] [--retest] [--threads N] [--out DIR]

For each target of the default ``latency`` configuration (ONNX Runtime fp32, PyTorch fp32, PyTorch bf16 where
the CPU has native bf16) on the default search space at x2 (LR 360x640 -> 1280x720):

1. builds the table like ``srnas profile-device`` (schemes, per-layer table, overhead calibration) and prints how
   long it took -- with ``--fresh`` into an empty cache, so the time is a real build, not a cache hit;
2. prints the scheme table with the measured speedups;
3. measures ``--count`` random subnets (half of them filter-pruned, none of the calibration networks) end to end
   and prints the share within +-10% of the prediction, the MAPE and the Spearman correlation.

``srnas validate-latency`` computes the same figures and logs them to MLflow. Measure on a quiet machine: on a
shared CPU every figure is as noisy as the neighbours. Run one target per invocation to stay in a time budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from srnas.arch.space import SearchSpace
from srnas.config import LatencyConfig, SearchSpaceConfig
from srnas.latency.measure import target_available
from srnas.latency.profile import calibration_from_table, profile_target
from srnas.latency.schemes import schemes_markdown
from srnas.latency.targets import select_targets
from srnas.latency.validate import sample_networks, validate_predictor
from srnas.runtimes.timing import quiet_stats

SCALE = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", default=[], help="target name (repeatable; default: all)")
    parser.add_argument("--count", type=int, default=50, help="validation networks per target (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="build into an empty cache (time a real build)")
    parser.add_argument("--cache-dir", type=Path, help="measurement cache (default: latency.cache_dir; a new one with --fresh)")
    parser.add_argument("--skip-validation", action="store_true", help="only build (or load) the table")
    parser.add_argument("--out", type=Path, default=Path("results/bench_latency"), help="output folder (default: %(default)s)")
    parser.add_argument("--protocol", choices=("paired", "absolute"), help="timing protocol (default: latency.protocol)")
    parser.add_argument("--retest", action="store_true",
                        help="measure the validation networks a second time: the measurement's own repeatability")
    parser.add_argument("--threads", type=int, help="run every target on this many threads instead of its own "
                        "(the target's name gets a _t<N> suffix)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    cfg = LatencyConfig() if args.protocol is None else LatencyConfig(protocol=args.protocol)
    space = SearchSpace(SearchSpaceConfig())
    print(f"search space: {space.describe().splitlines()[0]}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min); CPUs usable: {len(os.sched_getaffinity(0))}")
    cache_dir = args.cache_dir or (Path(tempfile.mkdtemp(prefix="srnas-latency-cache-")) if args.fresh else Path(cfg.cache_dir))
    print(f"measurement cache: {cache_dir}")
    for target in (resolved.target for resolved in select_targets(cfg, SCALE, args.target)):
        if args.threads is not None:
            target = dataclasses.replace(target, name=f"{target.name}_t{args.threads}", threads=args.threads)
        print(f"\n=== {target.label}")
        if not target_available(target):
            print("runtime not available on this machine: skipped")
            continue
        result = profile_target(target, space, cfg, args.out / target.name, cache_dir=cache_dir)
        table = result.table
        print(f"fingerprint {table.fingerprint_id}; table: {len(table)} layers on the granularity-{table.granularity} grid, "
              f"{table.measured} measured, {table.reused} from cache")
        print(f"table build (schemes + layers + calibration): {result.seconds:.0f} s")
        print(f"timing protocol: {table.protocol()}")
        print(f"quiet guard so far: {quiet_stats}")
        print(f"overhead model: {result.predictor.overhead}")
        print()
        print(schemes_markdown(result.schemes))
        if args.skip_validation:
            continue
        nets = sample_networks(space, args.count, np.random.default_rng(cfg.seed + 1), pruned_share=cfg.pruned_share,
                               granularity=table.granularity, exclude=calibration_from_table(table))
        start = time.perf_counter()
        report = validate_predictor(result.predictor, nets, **cfg.net_timing())
        s = report.summary()
        print(f"validation ({time.perf_counter() - start:.0f} s): {report.describe()}")
        print(f"quiet guard so far: {quiet_stats}")
        print(f"  within +-10%: {s['within_10pct']:.1%}   MAPE: {s['mape']:.2%}   Spearman: {s['spearman']:.4f}   "
              f"mean error {s['mean_error']:+.2%}")
        worst = sorted(zip(report.errors, report.names, report.predicted, report.measured), key=lambda r: -abs(r[0]))[:5]
        for err, name, pred, meas in worst:
            print(f"  {err:+7.1%}  predicted {pred:8.2f} ms  measured {meas:8.2f} ms  {name}")
        if args.retest:
            again = validate_predictor(result.predictor, nets, **cfg.net_timing())
            change = np.asarray(again.measured) / np.asarray(report.measured) - 1
            print(f"retest (the same {len(nets)} networks measured again): {np.mean(np.abs(change) <= 0.10):.1%} within "
                  f"+-10% of the first measurement, median |change| {np.median(np.abs(change)):.2%}, worst {np.max(np.abs(change)):.1%}; "
                  f"second measurement vs prediction: {again.describe()}")
            report.extra["retest"] = again.to_dict()
        (args.out / target.name).mkdir(parents=True, exist_ok=True)
        (args.out / target.name / "validation.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
