"""Latency of plain 16- and 32-channel SR nets at 640x360 -> 1280x720 on every available runtime,
and what the glibc malloc fix does to page faults.

    .venv/bin/python bench/bench_runtimes.py [--runs 20] [--threads 2]

Part 1 times each net on every runtime ``srnas.profiling.available_runtimes()`` lists (the
profilers apply the in-process mallopt fix). Part 2 runs eager torch fp32 in fresh processes
without MALLOC_* variables: with no fix, with ``mallopt`` in-process, and with the environment
variables of ``malloc_env()``, and prints minor page faults per forward for each.

Numbers are only as quiet as the machine: on a shared CPU, compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from srnas.export import export_onnx
from srnas.fingerprint import cpu_model, fingerprint_id, target_fingerprint
from srnas.profiling import lr_size_for_720p, profile_all
from srnas.runtimes.allocator import apply_malloc_fix, malloc_env
from srnas.runtimes.availability import available_runtimes
from srnas.runtimes.timing import time_calls

SCALE = 2
WIDTHS = (16, 32)


def plain_net(width: int, scale: int = SCALE) -> nn.Module:
    """Head conv, four width->width convs, tail conv to 3*s^2, PixelShuffle; ReLU between convs."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(width, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)]
    return nn.Sequential(*layers).eval()


def child(mode: str, runs: int, threads: int) -> None:
    """Measure eager torch fp32 with the allocator as ``mode`` left it; print JSON per width."""
    if mode == "mallopt" and not apply_malloc_fix():
        raise SystemExit("mallopt is not available here")
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, *lr_size_for_720p(SCALE))
    rows = {}
    with torch.inference_mode():
        for width in WIDTHS:
            model = plain_net(width)
            times, faults = time_calls(lambda: model(x), 3, runs)
            times.sort()
            rows[width] = {"median_ms": times[len(times) // 2], "faults_per_run": faults}
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--child", choices=("none", "mallopt", "env"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs, args.threads)
        return

    hw = lr_size_for_720p(SCALE)
    runtimes = available_runtimes()
    fp = target_fingerprint("bench", "mixed", args.threads)
    print(f"CPU {cpu_model()} ({', '.join(k for k, v in fp['cpu_flags'].items() if v)}), {args.threads} threads, "
          f"torch {fp['torch']}, onnxruntime {fp.get('onnxruntime')}, executorch {fp.get('executorch', 'not installed')}")
    print(f"input 1x3x{hw[0]}x{hw[1]} -> x{SCALE} = 1280x720, {args.runs} runs after 3 warm-up, fingerprint {fingerprint_id(fp)}")
    print("(shared CPU: other processes add noise; compare within one run)\n")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for width in WIDTHS:
            model = plain_net(width)
            onnx_path = export_onnx(model, Path(tmp) / f"plain{width}.onnx")
            for r in profile_all(model, onnx_path, hw, args.threads, runs=args.runs):
                results[(width, r.runtime)] = r
    header = f"{'net':<14}" + "".join(f"{rt:>24}" for rt in runtimes)
    print("median / p90 ms")
    print(header)
    for width in WIDTHS:
        cells = "".join(f"{results[(width, rt)].median_ms:>12.1f} /{results[(width, rt)].p90_ms:>9.1f}  " for rt in runtimes)
        print(f"plain {width}-ch    {cells}")
    print("\nminor page faults per forward (in-process fix active)")
    for width in WIDTHS:
        print(f"plain {width}-ch    " + "".join(f"{results[(width, rt)].minor_faults_per_run:>24.0f}" for rt in runtimes))

    print("\nglibc malloc fix, eager torch fp32, fresh process each (median ms, minor page faults per forward)")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    setups = {"no fix": ("none", base_env), "mallopt in-process": ("mallopt", base_env), "MALLOC_* env": ("env", {**base_env, **malloc_env()})}
    print(f"{'allocator':<22}" + "".join(f"{f'plain {w}-ch':>28}" for w in WIDTHS))
    for label, (mode, env) in setups.items():
        cmd = [sys.executable, __file__, "--child", mode, "--runs", str(args.runs), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{label:<22}" + "".join(f"{rows[str(w)]['median_ms']:>12.1f} ms {rows[str(w)]['faults_per_run']:>9.0f} flt" for w in WIDTHS))


if __name__ == "__main__":
    main()
