"""The per-layer latency lookup table of one target, cached on disk by the target's fingerprint.

:func:`build_table` measures every :class:`~srnas.latency.layers.LayerKey` asked for on the target, unless a
measurement made under the same fingerprint (CPU model and flags, runtime, precision, threads, library
versions), input size, scale and protocol is in the cache: then it is reused and nothing is run. A changed
fingerprint (a new onnxruntime, another thread count, another CPU) has its own cache file, so the table
is measured again. The cache is one JSON file per fingerprint id in ``cache_dir``::

    {"format": "srnas-latency-cache/1", "fingerprint": {...},
     "layers":   {"<H>x<W>/w<warmup>r<runs>": {"conv:16:24:dense": 1.23, ...}},
     "networks": {"<H>x<W>/w<warmup>r<runs>": {"<network name>": 12.3, ...}}}

:class:`LatencyTable` looks layers up; a width between grid points (a pruning granularity finer than the
table's) is interpolated linearly from its neighbours, and says so (:meth:`LatencyTable.exact`).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srnas import atomic
from srnas.errors import SrnasError
from srnas.fingerprint import fingerprint_id
from srnas.latency import measure as measuring
from srnas.latency.layers import LayerKey
from srnas.latency.measure import REFERENCE_LAYER
from srnas.latency.targets import Target
from srnas.runtimes.timing import ABSOLUTE, PAIRED, sweep

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "TABLE_FORMAT", "LatencyCache", "LatencyTable", "TableError", "build_table", "protocol_key"]

CACHE_FORMAT = "srnas-latency-cache/1"
PENDING = "pending_layers"  # cache section: passes measured by a table build that has not finished
PENDING_SAVE_S = 2.0  # a build saves what it measured at least this often (and when it fails)
TABLE_FORMAT = "srnas-latency-table/1"


class TableError(SrnasError):
    """A latency table is missing, unreadable, for another target, or lacks a layer."""


def protocol_key(target: Target, warmup: int, runs: int, rounds: int = 1, reference_ms: float | None = None,
                 passes: int = 1) -> str:
    """What, besides the fingerprint, a cached measurement depends on: input size and timing protocol (paired
    measurements also on their passes and the reference latency they are expressed in)."""
    key = f"{target.input_hw[0]}x{target.input_hw[1]}/w{warmup}r{runs}" + (f"x{rounds}" if rounds > 1 else "")
    return key if reference_ms is None else f"{key}p{passes}/paired@{reference_ms:.6g}"


class LatencyCache:
    """Measurements of one fingerprint on disk (``<cache_dir>/<fingerprint id>.json``)."""

    def __init__(self, cache_dir: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
        self.fingerprint = dict(fingerprint)
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.path = Path(cache_dir) / f"{self.fingerprint_id}.json"
        self.data: dict[str, Any] = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "layers": {}, "networks": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("%s: unreadable latency cache (%s); measuring again", self.path, exc)
                return
            if loaded.get("format") == CACHE_FORMAT and loaded.get("fingerprint") == self.fingerprint:
                self.data.update({k: v for k, v in loaded.items() if k not in ("format", "fingerprint") and isinstance(v, dict)})
            else:
                log.warning("%s: cache for another fingerprint or format; measuring again", self.path)

    def section(self, kind: str, protocol: str) -> dict[str, float]:
        """The measurements of ``kind`` (``layers``, ``networks``, ``schemes``) under ``protocol``, to read and fill."""
        return self.data.setdefault(kind, {}).setdefault(protocol, {})

    def save(self) -> None:
        atomic.write_json(self.path, self.data)


@dataclass
class LatencyTable:
    """Milliseconds per layer on one target, with where they came from.

    ``reference_ms`` is set when the entries were measured with the paired protocol (:mod:`srnas.runtimes.timing`):
    the latency of :data:`srnas.latency.measure.REFERENCE_LAYER` every entry is expressed against; measurements
    compared with this table's predictions must use it too (:meth:`protocol`).
    """

    target: Target
    fingerprint: dict[str, Any]
    granularity: int
    warmup: int
    runs: int
    entries: dict[LayerKey, float]
    rounds: int = 1
    passes: int = 1
    reference_ms: float | None = None
    build_seconds: float = 0.0
    measured: int = 0
    reused: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    _grids: dict[tuple[str, str], tuple[list[int], list[int]]] = field(default_factory=dict, repr=False)

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, layer: object) -> bool:
        return layer in self.entries

    def exact(self, layer: LayerKey) -> bool:
        """True when ``layer`` was measured (no interpolation)."""
        return layer in self.entries

    def _grid(self, op: str, scheme: str) -> tuple[list[int], list[int]]:
        key = (op, scheme)
        if key not in self._grids:
            cins = sorted({k.cin for k in self.entries if k.op == op and k.scheme == scheme})
            couts = sorted({k.cout for k in self.entries if k.op == op and k.scheme == scheme})
            self._grids[key] = (cins, couts)
        return self._grids[key]

    def lookup(self, layer: LayerKey) -> float:
        """Milliseconds of ``layer``: measured, or bilinear between the nearest measured widths."""
        value = self.entries.get(layer)
        if value is not None:
            return value
        cins, couts = self._grid(layer.op, layer.scheme)
        if not cins:
            raise TableError(f"latency table of {self.target.name}: no {layer.op} layers with scheme {layer.scheme} "
                             f"(needed for {layer.id})")

        def bracket(values: list[int], v: int) -> tuple[int, int, float]:
            if len(values) == 1:
                return values[0], values[0], 0.0
            i = min(max(bisect.bisect_left(values, v), 1), len(values) - 1)
            lo, hi = values[i - 1], values[i]
            return lo, hi, (v - lo) / (hi - lo)

        a0, a1, ta = bracket(cins, layer.cin)
        b0, b1, tb = bracket(couts, layer.cout)
        corners = {}
        for a in (a0, a1):
            for b in (b0, b1):
                key = LayerKey(layer.op, a, b, layer.scheme)
                if key not in self.entries:
                    raise TableError(f"latency table of {self.target.name}: {layer.id} is not measured and cannot be "
                                     f"interpolated ({key.id} is missing)")
                corners[(a, b)] = self.entries[key]
        low = corners[(a0, b0)] * (1 - tb) + corners[(a0, b1)] * tb
        high = corners[(a1, b0)] * (1 - tb) + corners[(a1, b1)] * tb
        return low * (1 - ta) + high * ta

    def protocol(self) -> dict[str, Any]:
        out: dict[str, Any] = {"warmup": self.warmup, "runs": self.runs, "rounds": self.rounds}
        if self.reference_ms is None:
            return out | {"kind": ABSOLUTE, "statistic": "lowest of the rounds' median ms"}
        return out | {"kind": PAIRED, "passes": self.passes, "reference": REFERENCE_LAYER.id, "reference_ms": self.reference_ms,
                      "statistic": "median over passes of reference_ms x median over rounds of "
                                   "(lowest call / the reference's lowest calls around it)"}

    @property
    def protocol_kind(self) -> str:
        return ABSOLUTE if self.reference_ms is None else PAIRED

    def build_info(self) -> dict[str, Any]:
        """How this table was obtained (varies between runs, so it is kept out of :meth:`to_dict`)."""
        return {"seconds": self.build_seconds, "measured": self.measured, "reused": self.reused, "entries": len(self.entries),
                "granularity": self.granularity, "fingerprint_id": self.fingerprint_id, "protocol": self.protocol()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and deterministic: the same measurements give the same bytes (build info excluded)."""
        return {
            "format": TABLE_FORMAT,
            "target": self.target.to_dict(),
            "fingerprint_id": self.fingerprint_id,
            "fingerprint": self.fingerprint,
            "granularity": self.granularity,
            "protocol": self.protocol(),
            "entries": {k.id: v for k, v in sorted(self.entries.items())},
            **self.extra,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], where: str = "latency table") -> LatencyTable:
        if payload.get("format") != TABLE_FORMAT:
            raise TableError(f"{where}: not a latency table ({TABLE_FORMAT})")
        if payload.get("available") is False:
            raise TableError(f"{where}: target {payload.get('target', {}).get('name')} was not profiled: {payload.get('reason')}")
        try:
            t = payload["target"]
            target = Target(t["name"], t["device"], t["runtime"], t["precision"], int(t["threads"]),
                            (int(t["input_hw"][0]), int(t["input_hw"][1])), int(t["scale"]))
            known = {"format", "target", "fingerprint_id", "fingerprint", "granularity", "protocol", "entries"}
            return cls(target=target, fingerprint=dict(payload["fingerprint"]), granularity=int(payload["granularity"]),
                       warmup=int(payload["protocol"]["warmup"]), runs=int(payload["protocol"]["runs"]),
                       rounds=int(payload["protocol"].get("rounds", 1)), passes=int(payload["protocol"].get("passes", 1)),
                       reference_ms=(float(payload["protocol"]["reference_ms"])
                                     if payload["protocol"].get("kind") == PAIRED else None),
                       entries={LayerKey.from_id(k): float(v) for k, v in payload["entries"].items()},
                       extra={k: v for k, v in payload.items() if k not in known})
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TableError(f"{where}: malformed latency table ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        path = Path(path)
        payload = atomic.read_json(path, TableError, "no latency table: run `srnas profile-device` first")
        return cls.from_dict(payload, str(path))


MeasureLayer = Callable[..., float]


def build_table(
    target: Target,
    layers: Iterable[LayerKey],
    *,
    granularity: int,
    warmup: int,
    runs: int,
    cache_dir: str | os.PathLike[str],
    rounds: int = 1,
    passes: int = 1,
    reference_ms: float | None = None,
    measure: MeasureLayer | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: LatencyCache | None = None,
) -> LatencyTable:
    """The table of ``layers`` on ``target``: cached measurements under the same fingerprint, the rest measured.

    ``measure(target, layer, warmup=, runs=) -> ms`` defaults to :func:`srnas.latency.measure.measure_layer`.
    Absolute protocol (``reference_ms`` None): each entry is the lowest of ``rounds`` medians, the rounds sweeping
    the whole list in alternating order. Paired: ``measure`` also gets ``rounds=`` and ``reference_ms=`` and
    brackets each round with the reference; the entry is the median of ``passes`` such measurements, the passes
    sweeping the list (:func:`srnas.runtimes.timing.sweep`).
    ``cache`` is an open :class:`LatencyCache` of this fingerprint to share (default: open the one in ``cache_dir``).
    """
    measure = measuring.measure_layer if measure is None else measure
    start = time.perf_counter()
    fingerprint = target.fingerprint()
    if cache is None or cache.fingerprint != fingerprint:
        cache = LatencyCache(cache_dir, fingerprint)
    protocol = protocol_key(target, warmup, runs, rounds, reference_ms, passes)
    section = cache.section("layers", protocol)
    wanted = sorted(set(layers))
    missing = [layer for layer in wanted if layer.id not in section]
    # Passes measured by a build that stopped (killed, a device agent unreachable): kept, so a rerun resumes there.
    pending: dict[str, list[float]] = cache.data.setdefault(PENDING, {}).setdefault(protocol, {})
    prior = {layer: pending[layer.id] for layer in missing if layer.id in pending}
    log.info("%s: %d layers, %d cached under fingerprint %s, %d to measure%s", target.name, len(wanted),
             len(wanted) - len(missing), cache.fingerprint_id, len(missing),
             f" ({len(prior)} partly measured before)" if prior else "")
    saved = time.monotonic()

    def measured(done: int, total: int, layer: LayerKey, ms: float) -> None:
        nonlocal saved
        pending.setdefault(layer.id, []).append(ms)
        if time.monotonic() - saved > PENDING_SAVE_S:
            cache.save()
            saved = time.monotonic()
        if progress is not None:
            progress(done, total)

    try:
        best = sweep(missing, lambda layer, **paired: measure(target, layer, warmup=warmup, runs=runs, **paired),
                     rounds=rounds, passes=passes, reference_ms=reference_ms, progress=measured, prior=prior)
    except BaseException:
        if any(pending.values()):
            cache.save()  # what was measured survives the failure: a rerun resumes
        raise
    section.update({layer.id: ms for layer, ms in best.items()})
    for layer in missing:
        pending.pop(layer.id, None)
    if missing:
        cache.save()
    entries = {layer: section[layer.id] for layer in wanted}
    return LatencyTable(target=target, fingerprint=fingerprint, granularity=granularity, warmup=warmup, runs=runs, rounds=rounds,
                        passes=passes if reference_ms is not None else 1, reference_ms=reference_ms, entries=entries,
                        build_seconds=time.perf_counter() - start, measured=len(missing), reused=len(wanted) - len(missing))
