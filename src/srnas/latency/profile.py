"""The ``profile_device`` stage for one target: schemes, table, overhead calibration, written to one folder.

``<out>/table.json``  the lookup table (fingerprint, granularity, entries), the fitted overhead model and the
                      calibration networks (held out from validation), build time;
``<out>/schemes.json`` / ``schemes.md``  the measured pruning schemes and which ones are accelerated;
``<out>/build.json``  how the table was obtained (seconds, layers measured / reused from the cache).

``table.json``, ``schemes.*`` depend only on the measurements, so a rerun served from the cache writes the same
bytes (downstream stages do not rerun); ``build.json`` changes every run.

:func:`load_predictor` reads ``table.json`` back into a :class:`~srnas.latency.predictor.LatencyPredictor`,
which is what the searches use.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from tqdm import tqdm

from srnas import atomic
from srnas.arch.pruned import PrunedSubnet
from srnas.arch.space import SearchSpace
from srnas.config import LatencyConfig
from srnas.latency import measure as measuring
from srnas.latency.auto import RuntimeChoice
from srnas.latency.layers import enumerate_layers
from srnas.latency.measure import REFERENCE_LAYER
from srnas.latency.predictor import LatencyPredictor, OverheadModel, fit_overhead
from srnas.latency.schemes import WITHIN_NOISE, SchemeReport, measure_schemes, schemes_markdown
from srnas.latency.table import LatencyCache, LatencyTable, TableError, build_table, protocol_key
from srnas.latency.targets import Target
from srnas.latency.validate import measure_networks, sample_networks
from srnas.runtimes.timing import ABSOLUTE

log = logging.getLogger(__name__)

__all__ = ["ProfileResult", "calibration_networks", "load_predictor", "profile_target", "write_unavailable"]

TABLE_FILE = "table.json"
SCHEMES_JSON = "schemes.json"
SCHEMES_MD = "schemes.md"
BUILD_JSON = "build.json"


@dataclass
class ProfileResult:
    target: Target
    table: LatencyTable
    schemes: SchemeReport
    predictor: LatencyPredictor
    calibration: list[PrunedSubnet]
    calibration_ms: list[float]
    seconds: float

    def metrics(self) -> dict[str, float]:
        n = self.target.name
        out = {
            f"table_build_s_{n}": self.seconds,
            f"table_entries_{n}": float(len(self.table)),
            f"table_measured_{n}": float(self.table.measured),
            f"table_granularity_{n}": float(self.table.granularity),
            f"calibration_mape_{n}": self.predictor.overhead.calibration_mape,
        }
        for r in self.schemes.results:
            if r.decisive == r.decisive:  # not NaN
                out[f"scheme_speedup_{r.scheme}_{n}"] = float(r.decisive)
        return out


def calibration_networks(space: SearchSpace, cfg: LatencyConfig, granularity: int) -> list[PrunedSubnet]:
    """The networks that fit the overhead model: spread over the cost range, every other one pruned."""
    rng = np.random.default_rng(cfg.seed)
    return sample_networks(space, cfg.calibration_subnets, rng, pruned_share=0.5, granularity=granularity, spread=True)


def profile_target(target: Target, space: SearchSpace, cfg: LatencyConfig, out_dir: str | os.PathLike[str], *,
                   cache_dir: str | os.PathLike[str] | None = None, runtime_choice: RuntimeChoice | None = None) -> ProfileResult:
    """Measure schemes and table on ``target``, calibrate the overhead, write ``out_dir``; cached by fingerprint.
    ``runtime_choice``: how ``runtime: auto`` chose the target's runtime (recorded in ``build.json``)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    cache = LatencyCache(cache_dir if cache_dir is not None else cfg.cache_dir, target.fingerprint())
    log.info("%s: fingerprint %s", target.label, cache.fingerprint_id)

    reference_ms = measure_reference_cached(target, cfg, cache)
    schemes = measure_schemes(target, space, cfg, cache=cache)
    for r in schemes.results:
        if r.rounds:
            log.info("%s: scheme %s %s (%.2fx, interval %.2f-%.2fx over %d rounds%s)", target.name, r.scheme, r.status,
                     r.decisive, *r.interval, r.rounds, ", within the noise" if r.decision == WITHIN_NOISE else "")
        else:
            log.info("%s: scheme %s %s (%s)", target.name, r.scheme, r.status, r.note)
    granularity = schemes.table_granularity(cfg.granularities, cfg.min_table_granularity)
    layers = enumerate_layers(space, target.scale, granularity)
    log.info("%s: table on the granularity-%d grid: %d layers", target.name, granularity, len(layers))

    with _Progress(f"{target.name} layers", "layer") as bar:

        def progress(i: int, n: int) -> None:
            bar.update(i, n)
            if i % 25 == 0 or i == n:
                log.info("%s: measured %d/%d layers", target.name, i, n)

        table = build_table(target, layers, granularity=granularity, **cfg.layer_timing(), reference_ms=reference_ms,
                            cache_dir=cache.path.parent, cache=cache, progress=progress)
    calibration = calibration_networks(space, cfg, granularity)
    net_timing = cfg.net_timing()
    with _Progress(f"{target.name} calibration", "net") as bar:
        measured = measure_networks(target, calibration, **net_timing, reference_ms=reference_ms,
                                    cache=cache.section("networks", protocol_key(target, **net_timing, reference_ms=reference_ms)),
                                    progress=lambda i, n, *_: bar.update(i, n))
    cache.save()
    overhead = fit_overhead(table, calibration, measured)
    predictor = LatencyPredictor(table, overhead)
    seconds = time.perf_counter() - start
    table.build_seconds = seconds
    table.extra = {
        "overhead": overhead.to_dict(),
        "calibration": [{"network": n.to_dict(), "name": n.name, "measured_ms": ms, "predicted_ms": predictor.predict(n)}
                        for n, ms in zip(calibration, measured)],
        "space": space.to_dict(),
        "accepted_schemes": schemes.accepted(),
        "net_protocol": net_timing | {"kind": table.protocol_kind},
    }
    table.save(out_dir / TABLE_FILE)
    atomic.write_json(out_dir / BUILD_JSON, table.build_info() | {
        "target": target.name, "calibration_mape": overhead.calibration_mape,
        "runtime_choice": runtime_choice.to_dict() if runtime_choice is not None else None})
    atomic.write_json(out_dir / SCHEMES_JSON, schemes.to_dict())
    atomic.write_text(out_dir / SCHEMES_MD, schemes_markdown(schemes))
    log.info("%s: %d layers (%d measured, %d reused), granularity %d, overhead %s, calibration MAPE %.1f%%, %.0f s",
             target.name, len(table), table.measured, table.reused, granularity, overhead, 100 * overhead.calibration_mape, seconds)
    return ProfileResult(target, table, schemes, predictor, calibration, measured, seconds)


class _Progress:
    """A tqdm bar over measurements (on a terminal only, like the rest of the project's bars), made at the first
    update, when the total is known: ``update(done, total)``."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self._bar = desc, unit, None

    def update(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, disable=None, leave=False,
                             dynamic_ncols=True)
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def measure_reference_cached(target: Target, cfg: LatencyConfig, cache: LatencyCache) -> float | None:
    """The reference latency of the paired protocol on ``target`` (None for ``protocol: absolute``), measured once per
    fingerprint and kept in ``cache``: every cached paired measurement is expressed against this value."""
    if cfg.protocol == ABSOLUTE:
        return None
    section = cache.section("reference", protocol_key(target, cfg.net_warmup, cfg.reference_runs, cfg.reference_rounds))
    if REFERENCE_LAYER.id not in section:
        section[REFERENCE_LAYER.id] = measuring.measure_reference(target, warmup=cfg.net_warmup, runs=cfg.reference_runs,
                                                        rounds=cfg.reference_rounds)
        cache.save()
    log.info("%s: reference %s at %.3f ms (paired protocol)", target.name, REFERENCE_LAYER.id, section[REFERENCE_LAYER.id])
    return float(section[REFERENCE_LAYER.id])


def write_unavailable(target: Target, out_dir: str | os.PathLike[str], reason: str) -> None:
    """The stage's outputs for a target this machine cannot run: they say so instead of holding numbers."""
    out_dir = Path(out_dir)
    payload: dict[str, Any] = {"format": "srnas-latency-table/1", "available": False, "reason": reason,
                               "target": target.to_dict()}
    atomic.write_json(out_dir / TABLE_FILE, payload)
    atomic.write_json(out_dir / SCHEMES_JSON, {"target": target.to_dict(), "available": False, "reason": reason, "schemes": []})
    atomic.write_text(out_dir / SCHEMES_MD, f"### Pruning schemes on {target.name}\n\nnot measured: {reason}\n")
    atomic.write_json(out_dir / BUILD_JSON, {"target": target.name, "available": False, "reason": reason})


def load_predictor(path: str | os.PathLike[str]) -> LatencyPredictor:
    """The predictor stored in a ``table.json`` written by :func:`profile_target`."""
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_FILE
    table = LatencyTable.load(path)
    overhead = table.extra.get("overhead")
    if overhead is None:
        raise TableError(f"{path}: no overhead model (written by an older or partial profile_device run)")
    return LatencyPredictor(table, OverheadModel.from_dict(overhead))


def calibration_from_table(table: LatencyTable) -> list[PrunedSubnet]:
    """The calibration networks recorded in a table (to keep validation disjoint from them)."""
    return [PrunedSubnet.from_dict(row["network"]) for row in table.extra.get("calibration", [])]
