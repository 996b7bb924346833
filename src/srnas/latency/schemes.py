"""Pruning schemes, measured on the target: which ones really make it faster, and by how much.

Every candidate scheme is timed on the target against the same layer (or network) without it; a scheme
whose speedup is below ``min_speedup`` (1.05: at least 5% faster) is *not accelerated* and the search
must not offer it for this target. Candidates:

``filter_g16``, ``filter_g8``, ``filter_g4``, ``filter_g1``
    Filter (output channel) pruning with channel counts rounded to multiples of 16 / 8 / 4 / 1. Reported:
    the speedup of a conv3x3 and a conv1x1 layer pruned at each ratio of ``prune_ratios`` (geometric mean
    over the tested widths). Decided by what the granularity *adds*: the coarsest one must speed the layer
    up at some ratio; a finer one must make its extra counts (multiples of g that the coarser grid lacks,
    e.g. 24 for g=8) faster than rounding them up to the coarser grid (24 vs 32) -- otherwise the runtime
    pads them away (SIMD blocks) and finer pruning only costs accuracy.
``sparse50``, ``sparse90``
    Unstructured pruning: that share of each conv's weights set to zero, stored dense (neither runtime has
    sparse convolution kernels on this CPU class, which the measurement shows).
``bf16`` (torch targets), ``int8`` (ONNX Runtime, static QDQ)
    Reduced precision, per layer and per whole network (deployed per network: a latency measured in a
    precision is only ever paired with PSNR measured in that precision). Decided by the network speedup.
``sparse_2to4``
    2:4 semi-structured sparsity: only GPU runtimes accelerate it; *unavailable* on CPU targets.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from srnas.arch.pruned import as_pruned, round_channels
from srnas.arch.space import SearchSpace, SubnetConfig
from srnas.config import LatencyConfig
from srnas.latency import measure as measuring
from srnas.latency.layers import LayerKey
from srnas.latency.table import LatencyCache, build_table, protocol_key
from srnas.latency.targets import Target
from srnas.latency.validate import measure_networks
from srnas.runtimes.availability import bf16_supported

log = logging.getLogger(__name__)

__all__ = ["SchemeResult", "SchemeReport", "measure_schemes", "schemes_markdown"]

ACCELERATED = "accelerated"
NOT_ACCELERATED = "not accelerated"
UNAVAILABLE = "unavailable"
TARGET_PRECISION = "target precision"


@dataclass
class SchemeResult:
    """One scheme on one target: its measured speedups (name -> x faster) and the decision."""

    scheme: str
    kind: str
    status: str
    decisive: float
    speedups: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def accelerated(self) -> bool:
        return self.status == ACCELERATED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, a speedup lost in the noise or not measured, becomes null)."""
        payload = asdict(self)
        payload["decisive"] = _finite(self.decisive)
        payload["speedups"] = {k: _finite(v) for k, v in self.speedups.items()}
        return payload


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class SchemeReport:
    target: Target
    min_speedup: float
    results: list[SchemeResult]

    def get(self, scheme: str) -> SchemeResult | None:
        return next((r for r in self.results if r.scheme == scheme), None)

    def accepted(self) -> list[str]:
        return [r.scheme for r in self.results if r.accelerated]

    def table_granularity(self, granularities: Sequence[int], floor: int) -> int:
        """The finest accelerated filter granularity, not finer than ``floor`` (the table's channel grid).

        When none is accelerated, the coarsest (filter pruning then buys nothing here).
        """
        accepted = [g for g in granularities if (r := self.get(f"filter_g{g}")) is not None and r.accelerated]
        coarsest = max(granularities)
        if not accepted:
            return coarsest
        return max(min(accepted), min(floor, coarsest))

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(), "min_speedup": self.min_speedup,
                "accepted": self.accepted(), "schemes": [r.to_dict() for r in self.results]}


def _geomean(values: Sequence[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _ratio(before: float, after: float) -> float:
    """``before / after`` (how many times faster), NaN when a time is not positive (lost in the noise)."""
    return before / after if before > 0 and after > 0 else math.nan


MeasureLayer = Callable[..., float]
MeasureNetwork = Callable[..., float]


def measure_schemes(
    target: Target,
    space: SearchSpace,
    cfg: LatencyConfig,
    *,
    measure_layer: MeasureLayer | None = None,
    measure_network: MeasureNetwork | None = None,
    cache: LatencyCache | None = None,
    reference_ms: float | None = None,
) -> SchemeReport:
    """Measure every candidate scheme on ``target`` (see the module docstring) and decide which are accelerated.

    Layers are measured like table entries (:func:`~srnas.latency.table.build_table`: lowest median of
    ``cfg.scheme_rounds`` sweeps) and networks like validation networks; ``cache`` (the target's
    :class:`~srnas.latency.table.LatencyCache`) shares them with the table and makes a rerun measure nothing.
    ``reference_ms``: measure with the paired protocol against that reference (:mod:`srnas.runtimes.timing`).
    """
    measure_layer = measure_layer or measuring.measure_layer
    measure_network = measure_network or measuring.measure_network
    with contextlib.ExitStack() as stack:
        if cache is None:
            cache = LatencyCache(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-schemes-")), target.fingerprint())
        layers: dict[LayerKey, float] = {}
        nets = cache.section("networks", protocol_key(target, **cfg.net_timing(), reference_ms=reference_ms))
        # The layers a decision needs depend on earlier decisions (the reference granularity): ask, measure what
        # was missing, decide again, until nothing is missing.
        for _ in range(10):
            missing_layers: set[LayerKey] = set()
            missing_nets: dict[str, tuple[SubnetConfig, str]] = {}

            def layer_ms(layer: LayerKey) -> float:
                if layer not in layers:
                    missing_layers.add(layer)
                    return 1.0
                return layers[layer]

            def net_ms(net: SubnetConfig, precision: str) -> float:
                key = f"{net.name}@{precision}"
                if key not in nets:
                    missing_nets[key] = (net, precision)
                    return 1.0
                return nets[key]

            report = _decide(target, space, cfg, layer_ms, net_ms)
            if not missing_layers and not missing_nets:
                return report
            if missing_layers:
                table = build_table(target, missing_layers, granularity=0, **cfg.layer_timing(cfg.scheme_rounds),
                                    reference_ms=reference_ms, cache_dir=cache.path.parent, cache=cache, measure=measure_layer)
                layers.update(table.entries)
            for key, (net, precision) in missing_nets.items():
                def measure(t: Target, n: Any, *, _p: str = precision, **timing: Any) -> float:
                    return measure_network(t, n, precision=_p, **timing)

                nets[key] = measure_networks(target, [as_pruned(net)], **cfg.net_timing(), reference_ms=reference_ms,
                                             measure=measure)[0]
            cache.save()
    raise RuntimeError("scheme measurement did not settle")  # pragma: no cover - each pass only adds layers


def _decide(target: Target, space: SearchSpace, cfg: LatencyConfig, layer_ms: Callable[[LayerKey], float],
            net_ms: Callable[[SubnetConfig, str], float]) -> SchemeReport:
    widths = tuple(cfg.scheme_widths) or tuple(w for w in space.widths if w >= 16) or space.widths[-1:]
    ops = ("conv", "expand")  # a conv3x3 and a conv1x1 whose output channels are pruned
    results: list[SchemeResult] = []
    threshold = cfg.min_speedup

    # --- filter pruning at each granularity ---------------------------------------------------------------
    reference: int | None = None  # the coarsest accelerated granularity so far
    for g in sorted(cfg.granularities, reverse=True):
        speedups: dict[str, float] = {}
        for ratio in cfg.prune_ratios:
            values = []
            for op in ops:
                for w in widths:
                    c = round_channels(w * (1 - ratio), g, w)
                    if c < w:
                        values.append(_ratio(layer_ms(LayerKey(op, w, w)), layer_ms(LayerKey(op, w, c))))
            if values:
                speedups[f"ratio {ratio:g}"] = _geomean(values)
        if reference is None:
            decisive = max((v for v in speedups.values() if v == v), default=math.nan)
            note = "best speedup over the ratios, vs the unpruned layer"
            if not speedups:
                note = f"no ratio prunes any of the widths {list(widths)} at this granularity"
        else:
            values = []
            for op in ops:
                for w in widths:
                    extra = [c for c in range(g, w, g) if c % reference != 0]
                    # at most three extra counts per width, spread over the range
                    picks = sorted({extra[round(i * (len(extra) - 1) / 2)] for i in range(3)}) if extra else []
                    for c in picks:
                        up = min(w, -(-c // reference) * reference)
                        values.append(_ratio(layer_ms(LayerKey(op, w, up)), layer_ms(LayerKey(op, w, c))))
            decisive = _geomean(values) if values else math.nan
            speedups[f"vs rounding up to {reference}"] = decisive
            note = f"counts only g={g} allows, vs the same layer rounded up to a multiple of {reference}"
        status = ACCELERATED if decisive >= threshold else NOT_ACCELERATED
        if status == ACCELERATED:
            reference = g
        results.append(SchemeResult(f"filter_g{g}", "filter", status, decisive, speedups, note))

    # --- unstructured zeros -------------------------------------------------------------------------------
    for sparsity in cfg.sparsities:
        scheme = f"sparse{round(sparsity * 100)}"
        speedups = {}
        for w in widths:
            speedups[f"conv3x3 w{w}"] = _ratio(layer_ms(LayerKey("conv", w, w)), layer_ms(LayerKey("conv", w, w, scheme)))
        decisive = _geomean(list(speedups.values()))
        status = ACCELERATED if decisive >= threshold else NOT_ACCELERATED
        results.append(SchemeResult(scheme, "unstructured", status, decisive, speedups,
                                    f"{sparsity:.0%} of the weights zero, dense kernels; geometric mean over widths"))

    # --- precision ----------------------------------------------------------------------------------------
    nets = [SubnetConfig(w, (space.largest().cells)) for w in widths]

    def precision_scheme(precision: str, deployed_as: str) -> SchemeResult:
        """Speedup of running in ``precision`` vs fp32: a conv3x3 per width (shown) and whole networks (decisive)."""
        speedups = {f"conv3x3 w{w}": _ratio(layer_ms(LayerKey("conv", w, w, "fp32")), layer_ms(LayerKey("conv", w, w, precision)))
                    for w in widths}
        for net in nets:
            speedups[f"net {net.name}"] = _ratio(net_ms(net, "fp32"), net_ms(net, precision))
        decisive = _geomean([v for k, v in speedups.items() if k.startswith("net")])
        if target.precision == precision:
            status, note = TARGET_PRECISION, f"this target already runs {precision}; speedup vs fp32 shown"
        else:
            status = ACCELERATED if decisive >= threshold else NOT_ACCELERATED
            note = f"{deployed_as}; quality must be measured in {precision}"
        return SchemeResult(precision, "precision", status, decisive, speedups, note)

    if not target.runtime.startswith("torch"):
        results.append(precision_scheme("int8", "static QDQ per network (an int8 target's table)"))
    else:
        if bf16_supported():
            results.append(precision_scheme("bf16", "per network (use the bf16 target's table)"))
        else:
            results.append(SchemeResult("bf16", "precision", UNAVAILABLE, math.nan, {}, "the CPU has no native bf16"))

    results.append(SchemeResult("sparse_2to4", "semi-structured", UNAVAILABLE, math.nan, {},
                                "2:4 sparsity is accelerated only by GPU runtimes (sparse tensor cores); none here"))
    return SchemeReport(target, threshold, results)


def schemes_markdown(report: SchemeReport) -> str:
    """The scheme table for the report: one row per scheme with its measured speedups and the decision."""
    t = report.target
    lines = [
        f"### Pruning schemes on {t.name}",
        "",
        f"{t.device}, {t.runtime} {t.precision}, {t.threads} thread(s), LR {t.input_hw[0]}x{t.input_hw[1]} (x{t.scale}); "
        f"a scheme is kept when at least {report.min_speedup:.2f}x faster.",
        "",
        "| scheme | kind | measured speedup | decision |",
        "|---|---|---|---|",
    ]
    for r in report.results:
        shown = ", ".join(f"{k}: {v:.2f}x" for k, v in r.speedups.items()) or "-"
        decision = r.status if math.isnan(r.decisive) else f"{r.status} ({r.decisive:.2f}x)"
        lines.append(f"| {r.scheme} | {r.kind} | {shown} | {decision}; {r.note} |")
    return "\n".join(lines) + "\n"
