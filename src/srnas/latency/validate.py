"""Validate the latency predictor against end-to-end measurement of random subnets on the same target.

The figures (nn-Meter's): the share of networks predicted within +-10% of the measured latency, the mean
absolute percentage error (MAPE) and Spearman's rank correlation. Calibration networks (which fit the overhead
model) and validation networks are disjoint by construction: :func:`sample_networks` draws them from one
random stream and never returns a network twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from srnas.arch.pruned import PrunedSubnet, as_pruned, random_pruned
from srnas.arch.space import SearchSpace
from srnas.latency import measure as measuring
from srnas.latency.predictor import LatencyPredictor
from srnas.latency.targets import Target
from srnas.runtimes.timing import sweep

log = logging.getLogger(__name__)

__all__ = ["ValidationReport", "measure_networks", "sample_networks", "spearman", "validate_predictor"]

WITHIN = 0.10


def sample_networks(space: SearchSpace, count: int, rng: np.random.Generator, *, pruned_share: float, granularity: int,
                    exclude: Sequence[PrunedSubnet] = (), spread: bool = False) -> list[PrunedSubnet]:
    """``count`` distinct networks of ``space``, about ``pruned_share`` of them filter-pruned to ``granularity``.

    ``spread`` starts from :meth:`SearchSpace.spread` (smallest to largest, evenly over cost) instead of
    uniform samples: what calibration wants. ``exclude`` is never returned.
    """
    seen = {as_pruned(n) for n in exclude}
    out: list[PrunedSubnet] = []
    bases = space.spread(max(count, 2), rng) if spread else []
    n_pruned = int(round(count * pruned_share))
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct networks from this space")
        i = len(out)
        base = bases[i] if i < len(bases) else space.sample(rng)
        prune = (i % 2 == 1) if spread else (i < n_pruned)
        net = random_pruned(base, rng, granularity) if prune else as_pruned(base)
        if net in seen:
            if spread and i < len(bases):
                bases[i] = space.sample(rng)
            continue
        seen.add(net)
        out.append(net)
    if not spread:
        order = rng.permutation(len(out))
        out = [out[int(j)] for j in order]
    return out


MeasureNetwork = Callable[..., float]


def measure_networks(target: Target, nets: Sequence[PrunedSubnet], *, warmup: int, runs: int, rounds: int = 1,
                     passes: int = 1, reference_ms: float | None = None, measure: MeasureNetwork | None = None,
                     cache: dict[str, float] | None = None,
                     progress: Callable[[int, int, str, float], None] | None = None) -> list[float]:
    """End-to-end ms of each network on ``target`` under the protocol of :mod:`srnas.runtimes.timing`: absolute
    (``reference_ms`` None: the lowest of ``rounds`` medians, the rounds sweeping the whole list in alternating
    order) or paired with the reference whose latency is ``reference_ms`` (``measure`` then also gets ``rounds=``
    and ``reference_ms=``; the median of ``passes`` passes). ``cache`` (name -> ms) is read and filled."""
    measure = measuring.measure_network if measure is None else measure
    cache = {} if cache is None else cache
    todo = [n for n in dict.fromkeys(nets) if n.name not in cache]
    best = sweep(todo, lambda net, **paired: measure(target, net, warmup=warmup, runs=runs, **paired), rounds=rounds,
                 passes=passes, reference_ms=reference_ms, progress=None if progress is None else
                 lambda done, total, net, ms: progress(done, total, net.name, ms))
    cache.update({net.name: ms for net, ms in best.items()})
    return [cache[n.name] for n in nets]


def _ranks(values: Sequence[float]) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for v in np.unique(values):  # ties share their mean rank
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of the ranks, ties averaged); NaN below 2 points."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


@dataclass
class ValidationReport:
    """Predicted vs measured milliseconds of the validation networks of one target."""

    target: Target
    names: list[str]
    pruned: list[bool]
    predicted: list[float]
    measured: list[float]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> np.ndarray:
        """Relative errors (predicted - measured) / measured."""
        return (np.asarray(self.predicted) - np.asarray(self.measured)) / np.asarray(self.measured)

    @property
    def within_10(self) -> float:
        return float(np.mean(np.abs(self.errors) <= WITHIN)) if self.names else math.nan

    @property
    def mape(self) -> float:
        return float(np.mean(np.abs(self.errors))) if self.names else math.nan

    @property
    def spearman(self) -> float:
        return spearman(self.predicted, self.measured)

    def summary(self) -> dict[str, float]:
        errors = self.errors
        return {
            "networks": float(len(self.names)),
            "pruned_networks": float(sum(self.pruned)),
            "within_10pct": self.within_10,
            "mape": self.mape,
            "spearman": self.spearman,
            "max_abs_error": float(np.max(np.abs(errors))) if len(errors) else math.nan,
            "mean_error": float(np.mean(errors)) if len(errors) else math.nan,
            "measured_min_ms": float(min(self.measured)) if self.measured else math.nan,
            "measured_max_ms": float(max(self.measured)) if self.measured else math.nan,
            "seconds": self.seconds,
        }

    def describe(self) -> str:
        s = self.summary()
        return (f"{self.target.name}: {int(s['networks'])} networks ({int(s['pruned_networks'])} pruned), "
                f"{s['within_10pct']:.0%} within +-10%, MAPE {s['mape']:.1%}, Spearman {s['spearman']:.3f}, "
                f"worst {s['max_abs_error']:.1%}, measured {s['measured_min_ms']:.1f}-{s['measured_max_ms']:.1f} ms")

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.to_dict(),
            "summary": self.summary(),
            "networks": [
                {"name": n, "pruned": p, "predicted_ms": a, "measured_ms": b, "error": float(e)}
                for n, p, a, b, e in zip(self.names, self.pruned, self.predicted, self.measured, self.errors)
            ],
            **self.extra,
        }


def validate_predictor(predictor: LatencyPredictor, nets: Sequence[PrunedSubnet], *, warmup: int, runs: int,
                       rounds: int = 1, passes: int = 1, measure: MeasureNetwork | None = None,
                       progress: Callable[[int, int, str, float], None] | None = None) -> ValidationReport:
    """Measure each of ``nets`` end to end on the predictor's target, with the protocol its table was measured
    with, and compare with its prediction."""
    start = time.perf_counter()
    target = predictor.table.target
    measured = measure_networks(target, nets, warmup=warmup, runs=runs, rounds=rounds, passes=passes, measure=measure,
                                progress=progress, reference_ms=predictor.table.reference_ms)
    report = ValidationReport(target, [n.name for n in nets], [n.is_pruned for n in nets],
                              [predictor.predict(n) for n in nets], measured)
    report.seconds = time.perf_counter() - start
    log.info("%s", report.describe())
    return report
