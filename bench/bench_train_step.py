"""Median training-step time (ms) of baseline models: fp32 NCHW vs bf16 autocast + channels-last, side by side.

A step is exactly what ``srnas.training.train`` does per iteration: vectorised patch sampling from uint8
images in memory, forward, L1 loss, backward, Adam update. Batch 32, x2, LR patches 24 and 32 (HR 48 / 64).
Warm-up steps are discarded; the median over the measured steps is printed. The modes' steps are
interleaved (one step of each in turn) so that background load affects them alike.

    .venv/bin/python bench/bench_train_step.py                 # the default table
    .venv/bin/python bench/bench_train_step.py --all-modes     # also fp32+channels-last and bf16 NCHW
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 .venv/bin/python bench/bench_train_step.py

Timings are wall-clock on a shared machine: other processes on the same cores add noise, so compare the
columns of one run rather than runs taken at different times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from srnas.models import create_model
from srnas.runtimes.availability import bf16_supported
from srnas.training import ImagePairs, PatchSampler, step_generator, train_step

MODES = {  # name: (bf16, channels_last)
    "fp32-NCHW": (False, False),
    "fp32-CL": (False, True),
    "bf16-NCHW": (True, False),
    "bf16+CL": (True, True),
}


def synthetic_pairs(count: int, lr_size: int, scale: int, seed: int = 0) -> ImagePairs:
    rng = np.random.default_rng(seed)
    hrs = tuple(rng.integers(0, 256, (lr_size * scale, lr_size * scale, 3), dtype=np.uint8) for _ in range(count))
    lrs = tuple(np.ascontiguousarray(hr[::scale, ::scale]) for hr in hrs)
    return ImagePairs(tuple(f"img{i}" for i in range(count)), lrs, hrs, scale)


class Trainer:
    """One model + optimizer + sampler in one precision/layout mode; ``step()`` returns its wall time (s)."""

    def __init__(self, model_name: str, pairs: ImagePairs, patch: int, batch: int, bf16: bool, channels_last: bool) -> None:
        torch.manual_seed(0)
        model = create_model(model_name, pairs.scale)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.sampler = PatchSampler(pairs, patch)
        self.batch, self.bf16, self.channels_last = batch, bf16, channels_last
        self.steps = 0

    def step(self) -> float:
        t0 = time.perf_counter()
        lr, hr = self.sampler.sample(self.batch, step_generator(0, self.steps), True, self.channels_last)
        train_step(self.model, self.optimizer, lr, hr, self.bf16)
        self.steps += 1
        return time.perf_counter() - t0


def time_modes(model_name: str, pairs: ImagePairs, patch: int, batch: int, modes: list[str], warmup: int,
               repeat: int) -> dict[str, float]:
    """Median ms/step per mode; the modes' steps are interleaved so background load hits them alike."""
    trainers = {m: Trainer(model_name, pairs, patch, batch, *MODES[m]) for m in modes}
    for trainer in trainers.values():
        for _ in range(warmup):
            trainer.step()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeat):
        for m, trainer in trainers.items():
            times[m].append(trainer.step())
    return {m: statistics.median(t) * 1e3 for m, t in times.items()}


def time_sampling(pairs: ImagePairs, patch: int, batch: int, repeat: int = 50) -> float:
    sampler = PatchSampler(pairs, patch)
    times = []
    for step in range(repeat):
        t0 = time.perf_counter()
        sampler.sample(batch, step_generator(0, step), True, True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[5:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["plain16", "plain32", "espcn"])
    parser.add_argument("--patches", nargs="+", type=int, default=[24, 32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--all-modes", action="store_true", help="also fp32 channels-last and bf16 NCHW")
    args = parser.parse_args()

    modes = list(MODES) if args.all_modes else ["fp32-NCHW", "bf16+CL"]
    pairs = synthetic_pairs(count=16, lr_size=128, scale=2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {bf16_supported()}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    print(f"batch {args.batch}, x2, median of {args.repeat} steps after {args.warmup} warm-up; ms per step (sampling included)")
    for patch in args.patches:
        print(f"patch sampling alone, LR {patch} / HR {2 * patch}: {time_sampling(pairs, patch, args.batch):.2f} ms")
    header = f"{'model':<9} {'LR patch':>8} " + " ".join(f"{m:>10}" for m in modes) + f" {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        for patch in args.patches:
            ms = time_modes(name, pairs, patch, args.batch, modes, args.warmup, args.repeat)
            speedup = ms["fp32-NCHW"] / ms["bf16+CL"]
            print(f"{name:<9} {patch:>8} " + " ".join(f"{ms[m]:>10.1f}" for m in modes) + f" {speedup:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
