"""Pruning schemes, measured on the target: which ones really make it faster, and by how much.

Every candidate scheme is timed on the target against the same layer (or network) without it, in paired rounds
(``base, scheme, base, ..., base``: :func:`srnas.latency.measure.compare_layers`), ``latency.scheme_rounds`` of
them; each round gives a speedup. A decision reads the median speedup *and its spread*: the ``scheme_confidence``
interval of the median (distribution-free, from the order statistics: the sign-test interval). A scheme is
*accelerated* only when the whole interval lies at or above ``min_speedup`` (1.05: at least 5% faster), *not
accelerated* when it lies below; an interval that straddles the threshold is within the host's noise and decided
conservatively -- not accelerated, flagged ``within_noise`` in the scheme table (:func:`decide`). One timing per
scheme made the decision flip from build to build on a shared host (a scheme measured 0.80x in one, 2.11x in the
next); a decision now needs every round of the interval to agree. The search must not offer a scheme that is not
accelerated on this target. Candidates:

``filter_g16``, ``filter_g8``, ``filter_g4``, ``filter_g1``
    Filter (output channel) pruning with channel counts rounded to multiples of 16 / 8 / 4 / 1. Reported:
    the speedup of a conv3x3 and a conv1x1 layer pruned at each ratio of ``prune_ratios`` (geometric mean
    over the tested widths). Decided by what the granularity *adds*: the coarsest one must speed the layer
    up at some ratio; a finer one must make its extra counts (multiples of g that the coarser grid lacks,
    e.g. 24 for g=8) faster than rounding them up to the coarser grid (24 vs 32) -- otherwise the runtime
    pads them away (SIMD blocks) and finer pruning only costs accuracy.
``sparse50``, ``sparse90``
    Unstructured pruning: that share of each conv's weights set to zero, stored dense (neither torch nor ONNX
    Runtime has sparse convolution kernels on this CPU class, which the measurement shows; on ExecuTorch the
    measurement decides too).
``bf16`` (torch targets), ``int8`` (ONNX Runtime, static QDQ; ExecuTorch, PT2E with the XNNPACK quantizer)
    Reduced precision, per layer and per whole network (deployed per network: a latency measured in a
    precision is only ever paired with PSNR measured in that precision). Decided by the network speedup.
``sparse_2to4``
    2:4 semi-structured sparsity: only GPU runtimes accelerate it; *unavailable* on CPU targets.

A decision over several comparisons (widths, layer kinds, networks) combines them round by round: round ``i``'s
speedup is the geometric mean of every comparison's round ``i``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from srnas.arch.pruned import as_pruned, round_channels
from srnas.arch.space import SearchSpace, SubnetConfig
from srnas.config import LatencyConfig
from srnas.latency import measure as measuring
from srnas.latency.layers import LayerKey
from srnas.latency.table import LatencyCache, protocol_key
from srnas.latency.targets import Target
from srnas.runtimes.availability import bf16_supported

log = logging.getLogger(__name__)

__all__ = ["WITHIN_NOISE", "Decision", "SchemeResult", "SchemeReport", "decide", "measure_schemes", "median_interval",
           "schemes_markdown"]

# How each runtime that runs int8 quantizes a network (the int8 scheme's deployment).
INT8_DEPLOYMENT = {"onnxruntime_fp32": "static QDQ", "executorch_xnnpack_fp32": "PT2E static int8 (XNNPACK quantizer)"}
ACCELERATED = "accelerated"
NOT_ACCELERATED = "not accelerated"
UNAVAILABLE = "unavailable"
TARGET_PRECISION = "target precision"
# How a measured decision was reached (``decision`` in schemes.json): the interval above, below or across the threshold.
ABOVE, BELOW, WITHIN_NOISE, NOT_MEASURED = "accelerated", "not_accelerated", "within_noise", "not_measured"


def median_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """``(median, low, high)`` of ``values`` with a distribution-free ``confidence`` interval of the median.

    The sign-test interval: for ``k`` sorted values, ``[x_(j), x_(k+1-j)]`` holds the median with probability
    ``1 - 2 P(B <= j - 1)``, ``B ~ Binomial(k, 1/2)``, for any continuous distribution; the narrowest such interval
    of at least ``confidence`` is returned. Too few values for ``confidence`` (5 are needed for 90%): ``low`` 0 and
    ``high`` infinity (nothing can be concluded). NaN values are left out; none left: all NaN.
    """
    x = sorted(v for v in values if not math.isnan(v))
    k = len(x)
    if k == 0:
        return math.nan, math.nan, math.nan
    median = (x[(k - 1) // 2] + x[k // 2]) / 2
    low, high, tail = 0.0, math.inf, 0.0  # tail: P(B <= j - 1)
    for j in range(1, k // 2 + 1):
        tail += math.comb(k, j - 1) / 2**k
        if 1 - 2 * tail < confidence:
            break
        low, high = x[j - 1], x[k - j]
    return median, low, high


class Decision(NamedTuple):
    """A decision over per-round speedups: their median, its interval, how many rounds, and the verdict (:func:`decide`)."""

    median: float
    low: float
    high: float
    rounds: int
    verdict: str

    @property
    def accelerated(self) -> bool:
        return self.verdict == ABOVE


def decide(speedups: Sequence[float], threshold: float, confidence: float) -> Decision:
    """The decision on a scheme from its per-round speedups (a pure function of the measured ratios).

    ``accelerated`` when the ``confidence`` interval of the median speedup (:func:`median_interval`) lies at or above
    ``threshold``; ``not_accelerated`` when it lies below; ``within_noise`` when it straddles it: the rounds cannot
    tell, and the scheme is not offered -- a wrong "accelerated" costs the search accuracy for no speed, a wrong "not
    accelerated" only one option. ``not_measured`` (not offered either) when no round gave a valid speedup.
    """
    median, low, high = median_interval(speedups, confidence)
    rounds = sum(not math.isnan(v) for v in speedups)
    if rounds == 0:
        verdict = NOT_MEASURED
    elif low >= threshold:
        verdict = ABOVE
    elif high < threshold:
        verdict = BELOW
    else:
        verdict = WITHIN_NOISE
    return Decision(median, low, high, rounds, verdict)


@dataclass
class SchemeResult:
    """One scheme on one target: its measured speedups (name -> median x faster) and the decision: ``decisive``, the
    median speedup the decision is about, within ``interval`` (its confidence interval over ``rounds`` paired
    rounds), and ``decision`` (:func:`decide`'s verdict; for a scheme not measured, its ``status``)."""

    scheme: str
    kind: str
    status: str
    decisive: float
    speedups: dict[str, float] = field(default_factory=dict)
    note: str = ""
    interval: tuple[float, float] = (math.nan, math.nan)
    rounds: int = 0
    decision: str = ""

    @property
    def accelerated(self) -> bool:
        return self.status == ACCELERATED

    @classmethod
    def decided(cls, scheme: str, kind: str, decision: Decision, speedups: dict[str, float], note: str) -> SchemeResult:
        if decision.verdict == NOT_MEASURED and speedups and all(math.isnan(v) for v in speedups.values()):
            note = f"no round was measured quietly: other processes kept the machine busy; {note}"
        return cls(scheme, kind, ACCELERATED if decision.accelerated else NOT_ACCELERATED, decision.median, speedups, note,
                   (decision.low, decision.high), decision.rounds, decision.verdict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, a speedup lost in the noise or not measured, becomes null; so does an unbounded interval)."""
        payload = asdict(self)
        payload["decisive"] = _finite(self.decisive)
        payload["speedups"] = {k: _finite(v) for k, v in self.speedups.items()}
        payload["interval"] = [_finite(v) for v in self.interval]
        payload["decision"] = self.decision or self.status.replace(" ", "_")
        return payload


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class SchemeReport:
    target: Target
    min_speedup: float
    results: list[SchemeResult]
    confidence: float = 0.9

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
        return {"target": self.target.to_dict(), "min_speedup": self.min_speedup, "confidence": self.confidence,
                "accepted": self.accepted(), "schemes": [r.to_dict() for r in self.results]}


def _geomean(values: Sequence[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _per_round(comparisons: Sequence[Sequence[float]]) -> list[float]:
    """Round ``i``: the geometric mean of every comparison's round ``i`` (NaN rounds left out)."""
    rounds = min((len(c) for c in comparisons), default=0)
    return [_geomean([c[i] for c in comparisons]) for i in range(rounds)]


CompareLayers = Callable[..., list[float]]
CompareNetworks = Callable[..., list[float]]
Pair = tuple[LayerKey, LayerKey]


def measure_schemes(
    target: Target,
    space: SearchSpace,
    cfg: LatencyConfig,
    *,
    compare_layers: CompareLayers | None = None,
    compare_networks: CompareNetworks | None = None,
    cache: LatencyCache | None = None,
) -> SchemeReport:
    """Measure every candidate scheme on ``target`` (see the module docstring) and decide which are accelerated.

    Each comparison -- a layer with and without the scheme (:func:`srnas.latency.measure.compare_layers`), a network
    in fp32 and in the scheme's precision (:func:`~srnas.latency.measure.compare_networks`) -- is ``cfg.scheme_rounds``
    paired rounds of ``cfg.runs`` calls (networks: ``cfg.net_runs``) after ``cfg.warmup`` (``cfg.net_warmup``), kept
    round by round in ``cache`` (the target's :class:`~srnas.latency.table.LatencyCache`), so a rerun measures nothing
    and writes the same decisions.
    """
    compare_layers = compare_layers or measuring.compare_layers
    compare_networks = compare_networks or measuring.compare_networks
    with contextlib.ExitStack() as stack:
        if cache is None:
            cache = LatencyCache(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-schemes-")), target.fingerprint())
        rounds = cfg.scheme_rounds
        layer_pairs = cache.section("layer_comparisons", protocol_key(target, cfg.warmup, cfg.runs, rounds))
        net_pairs = cache.section("network_comparisons", protocol_key(target, cfg.net_warmup, cfg.net_runs, rounds))
        # The comparisons a decision needs depend on earlier decisions (the reference granularity): ask, measure what
        # was missing, decide again, until nothing is missing.
        for _ in range(10):
            missing_layers: dict[str, Pair] = {}
            missing_nets: dict[str, tuple[SubnetConfig, str]] = {}

            def cached(pairs: dict[str, Any], missing: dict[str, Any], key: str, job: Any) -> list[float]:
                """The rounds measured under ``key``; a missing one is noted (``job``) and stands in as no speedup."""
                if key not in pairs:
                    missing[key] = job
                    return [1.0] * rounds
                return list(pairs[key])

            def layer_speedups(base: LayerKey, other: LayerKey) -> list[float]:
                return cached(layer_pairs, missing_layers, f"{base.id}>{other.id}", (base, other))

            def net_speedups(net: SubnetConfig, precision: str) -> list[float]:
                return cached(net_pairs, missing_nets, f"{net.name}@fp32>{precision}", (net, precision))

            report = _decide(target, space, cfg, layer_speedups, net_speedups)
            if not missing_layers and not missing_nets:
                return report
            for key, (base, other) in sorted(missing_layers.items()):
                layer_pairs[key] = [float(v) for v in compare_layers(target, base, other, warmup=cfg.warmup, runs=cfg.runs,
                                                                     rounds=rounds)]
            for key, (net, precision) in sorted(missing_nets.items()):
                net_pairs[key] = [float(v) for v in compare_networks(target, as_pruned(net), base_precision="fp32",
                                                                     precision=precision, warmup=cfg.net_warmup,
                                                                     runs=cfg.net_runs, rounds=rounds)]
            cache.save()
    raise RuntimeError("scheme measurement did not settle")  # pragma: no cover - each pass only adds comparisons


def _decide(target: Target, space: SearchSpace, cfg: LatencyConfig,
            layer_speedups: Callable[[LayerKey, LayerKey], list[float]],
            net_speedups: Callable[[SubnetConfig, str], list[float]]) -> SchemeReport:
    widths = tuple(cfg.scheme_widths) or tuple(w for w in space.widths if w >= 16) or space.widths[-1:]
    ops = ("conv", "expand")  # a conv3x3 and a conv1x1 whose output channels are pruned
    results: list[SchemeResult] = []
    threshold, confidence = cfg.min_speedup, cfg.scheme_confidence

    def judged(comparisons: Sequence[Sequence[float]]) -> Decision:
        return decide(_per_round(comparisons), threshold, confidence)

    # --- filter pruning at each granularity ---------------------------------------------------------------
    reference: int | None = None  # the coarsest accelerated granularity so far
    for g in sorted(cfg.granularities, reverse=True):
        speedups: dict[str, float] = {}
        if reference is None:
            by_ratio: list[Decision] = []
            for ratio in cfg.prune_ratios:
                pairs = [(LayerKey(op, w, w), LayerKey(op, w, c)) for op in ops for w in widths
                         if (c := round_channels(w * (1 - ratio), g, w)) < w]
                if pairs:
                    decision = judged([layer_speedups(*pair) for pair in pairs])
                    speedups[f"ratio {ratio:g}"] = decision.median
                    by_ratio.append(decision)
            # the ratio that makes the best case: the highest lower end of its interval
            best = max(by_ratio, key=lambda d: (d.low if d.low == d.low else -math.inf, d.median), default=None)
            note = "the best ratio's speedup vs the unpruned layer"
            if best is None:
                best = decide([], threshold, confidence)
                note = f"no ratio prunes any of the widths {list(widths)} at this granularity"
        else:
            comparisons = []
            for op in ops:
                for w in widths:
                    extra = [c for c in range(g, w, g) if c % reference != 0]
                    # at most three extra counts per width, spread over the range
                    picks = sorted({extra[round(i * (len(extra) - 1) / 2)] for i in range(3)}) if extra else []
                    for c in picks:
                        up = min(w, -(-c // reference) * reference)
                        comparisons.append(layer_speedups(LayerKey(op, w, up), LayerKey(op, w, c)))
            best = judged(comparisons)
            speedups[f"vs rounding up to {reference}"] = best.median
            note = f"counts only g={g} allows, vs the same layer rounded up to a multiple of {reference}"
        result = SchemeResult.decided(f"filter_g{g}", "filter", best, speedups, note)
        if result.accelerated:
            reference = g
        results.append(result)

    # --- unstructured zeros -------------------------------------------------------------------------------
    for sparsity in cfg.sparsities:
        scheme = f"sparse{round(sparsity * 100)}"
        per_width = {w: layer_speedups(LayerKey("conv", w, w), LayerKey("conv", w, w, scheme)) for w in widths}
        speedups = {f"conv3x3 w{w}": decide(v, threshold, confidence).median for w, v in per_width.items()}
        results.append(SchemeResult.decided(scheme, "unstructured", judged(list(per_width.values())), speedups,
                                            f"{sparsity:.0%} of the weights zero, dense kernels; geometric mean over widths"))

    # --- precision ----------------------------------------------------------------------------------------
    nets = [SubnetConfig(w, (space.largest().cells)) for w in widths]

    def precision_scheme(precision: str, deployed_as: str) -> SchemeResult:
        """Speedup of running in ``precision`` vs fp32: a conv3x3 per width (shown) and whole networks (decisive)."""
        speedups = {f"conv3x3 w{w}": decide(layer_speedups(LayerKey("conv", w, w, "fp32"), LayerKey("conv", w, w, precision)),
                                            threshold, confidence).median for w in widths}
        per_net = {net.name: net_speedups(net, precision) for net in nets}
        speedups |= {f"net {name}": decide(v, threshold, confidence).median for name, v in per_net.items()}
        decision = judged(list(per_net.values()))
        if target.precision == precision:
            note = f"this target already runs {precision}; speedup vs fp32 shown"
            return SchemeResult(precision, "precision", TARGET_PRECISION, decision.median, speedups, note,
                                (decision.low, decision.high), decision.rounds)
        return SchemeResult.decided(precision, "precision", decision, speedups,
                                    f"{deployed_as}; quality must be measured in {precision}")

    if target.runtime in INT8_DEPLOYMENT:
        results.append(precision_scheme("int8", f"{INT8_DEPLOYMENT[target.runtime]} per network (an int8 target's table)"))
    else:
        if bf16_supported():
            results.append(precision_scheme("bf16", "per network (use the bf16 target's table)"))
        else:
            results.append(SchemeResult("bf16", "precision", UNAVAILABLE, math.nan, {}, "the CPU has no native bf16"))

    results.append(SchemeResult("sparse_2to4", "semi-structured", UNAVAILABLE, math.nan, {},
                                "2:4 sparsity is accelerated only by GPU runtimes (sparse tensor cores); none here"))
    return SchemeReport(target, threshold, results, confidence)


def schemes_markdown(report: SchemeReport) -> str:
    """The scheme table for the report: one row per scheme with its measured speedups and the decision."""
    t = report.target
    lines = [
        f"### Pruning schemes on {t.name}",
        "",
        f"{t.device}, {t.runtime} {t.precision}, {t.threads} thread(s), LR {t.input_hw[0]}x{t.input_hw[1]} (x{t.scale}); "
        f"a scheme is kept when the {report.confidence:.0%} interval of its median paired speedup lies at or above "
        f"{report.min_speedup:.2f}x (across it: within the noise, not kept).",
        "",
        "| scheme | kind | measured speedup (median) | decision |",
        "|---|---|---|---|",
    ]
    for r in report.results:
        shown = ", ".join(f"{k}: {v:.2f}x" for k, v in r.speedups.items()) or "-"
        decision = r.status
        if not math.isnan(r.decisive):
            low, high = r.interval
            band = f"{low:.2f}-{high:.2f}x" if math.isfinite(high) else "unbounded"
            decision += f" ({r.decisive:.2f}x, interval {band}, {r.rounds} rounds)"
        if r.decision == WITHIN_NOISE:
            decision += ", within the noise"
        lines.append(f"| {r.scheme} | {r.kind} | {shown} | {decision}; {r.note} |")
    return "\n".join(lines) + "\n"
