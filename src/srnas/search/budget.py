"""The ``check_budget`` stage: the fine-tuned final model timed on the budget's target and held against the whole budget.

The searches chose their networks by measuring candidates against the same whole ``budget.latency_ms`` (no margin
is kept free, :mod:`srnas.search.verify`); this is the final verdict, on the weights fine-tuning produced.

What is timed: the weights ``finetune`` wrote (``results/finetune/model.pt``, read back with
:func:`srnas.loading.load_trained`), not a network rebuilt from its description with fresh weights: the deployed
arithmetic (weights decide int8 quantization, and denormal values slow some fp32 kernels down).

How: with the latency table's timing protocol (:func:`srnas.search.run.verdict_timing`: ``budget.verify_runs`` calls
per round, at least :data:`srnas.search.run.VERDICT_ROUNDS` rounds, ``latency.net_passes`` passes). Each timing gives
two figures (:class:`srnas.latency.measure.NetworkTiming`): wall-clock milliseconds -- what the calls took on this
machine, now -- and, under the paired protocol, the same rounds normalised to the table's reference speed. The
verdict uses the normalised figure when there is one (the figure the table's predictions are in and the searches
chose their candidates by; a host slowed down by its neighbours while it measures does not fail a model that fits),
the wall clock otherwise (absolute protocol); the result says which (:attr:`BudgetVerdict.basis`).

A table measured under another fingerprint than this machine's for its target (another CPU, thread count or library
version) is refused: its reference speed and its predictions describe another machine.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from srnas.arch.network import SubnetSR
from srnas.config import BudgetConfig, LatencyConfig
from srnas.errors import ConfigError, DataError
from srnas.latency.measure import NetworkTiming, target_available, time_network
from srnas.latency.predictor import LatencyPredictor
from srnas.latency.profile import TABLE_FILE, load_predictor
from srnas.latency.table import TableError
from srnas.latency.targets import Target
from srnas.loading import load_trained
from srnas.runtimes.timing import disturbances
from srnas.search.run import verdict_timing

__all__ = ["NORMALISED", "WALL_CLOCK", "BudgetVerdict", "check_budget", "measurable_predictor", "time_model"]

# The two figures a verdict may compare with the budget (the names of their check_budget.json fields).
NORMALISED, WALL_CLOCK = "normalised_ms", "wall_clock_ms"

MeasureModel = Callable[..., NetworkTiming]


@dataclass(frozen=True)
class BudgetVerdict:
    """The final model measured on the budget's target, against ``budget_ms``."""

    network: str
    target: str
    budget_ms: float
    timing: NetworkTiming
    predicted_ms: float
    fingerprint_id: str
    table_protocol: dict[str, Any]
    measurement: dict[str, int]
    device: str = "this-cpu"  # the target's device: this machine's label, or the URL of the agent that measured

    @property
    def basis(self) -> str:
        """Which figure the verdict compares with the budget: :data:`NORMALISED` when measured (paired protocol),
        else :data:`WALL_CLOCK`."""
        return WALL_CLOCK if self.timing.normalised_ms is None else NORMALISED

    @property
    def verdict_ms(self) -> float:
        return self.timing.verdict_ms

    @property
    def within_budget(self) -> bool:
        return self.verdict_ms <= self.budget_ms

    def to_dict(self) -> dict[str, Any]:
        """``check_budget.json``."""
        return {"network": self.network, "target": self.target, "device": self.device, "budget_ms": self.budget_ms,
                "verdict_ms": self.verdict_ms, "verdict_basis": self.basis,
                WALL_CLOCK: self.timing.wall_clock_ms, NORMALISED: self.timing.normalised_ms,
                "predicted_ms": self.predicted_ms, "within_budget": self.within_budget,
                "headroom_ms": self.budget_ms - self.verdict_ms, "fingerprint_id": self.fingerprint_id,
                "timing": {"table": self.table_protocol, "measurement": self.measurement},
                "disturbed_measurements": self.timing.disturbed, "busy": self.timing.disturbed > 0}

    def describe(self) -> str:
        """One line: both figures, which one the verdict used, the budget and the prediction."""
        timing = self.timing
        figures = (f"{timing.wall_clock_ms:.2f} ms wall clock" if timing.normalised_ms is None else
                   f"{timing.normalised_ms:.2f} ms at the table's reference speed, {timing.wall_clock_ms:.2f} ms wall clock")
        outcome = ("within" if self.within_budget else
                   f"{self.verdict_ms - self.budget_ms:.2f} ms ({100 * (self.verdict_ms / self.budget_ms - 1):.0f}%) over")
        return (f"final model {self.network} on {self.target}: {figures}; the verdict uses {self.basis}: {outcome} the "
                f"{self.budget_ms:g} ms budget (predicted {self.predicted_ms:.2f} ms)")


def time_model(target: Target, model: nn.Module, timing: Mapping[str, int], reference_ms: float | None,
               measure: MeasureModel) -> NetworkTiming:
    """:func:`_time_model`, with how many of its measurements the quiet guard saw disturbed (``disturbed``: the
    machine stayed busy; the verdict's JSON and the report flag the figure)."""
    with disturbances() as seen:
        timed = _time_model(target, model, timing, reference_ms, measure)
    return NetworkTiming(timed.wall_clock_ms, timed.normalised_ms, seen["disturbed"])


def _time_model(target: Target, model: nn.Module, timing: Mapping[str, int], reference_ms: float | None,
                measure: MeasureModel) -> NetworkTiming:
    """``model`` timed on ``target`` with the statistics of :func:`srnas.runtimes.timing.sweep`: absolute
    (``reference_ms`` None), ``rounds`` timings of ``runs`` calls, the lowest kept; paired, ``passes`` timings of
    ``rounds`` rounds each, the median of each figure kept."""
    if reference_ms is None:
        timings = [measure(target, model, warmup=timing["warmup"], runs=timing["runs"]) for _ in range(timing["rounds"])]
        return NetworkTiming(min(t.wall_clock_ms for t in timings))
    timings = [measure(target, model, warmup=timing["warmup"], runs=timing["runs"], rounds=timing["rounds"],
                       reference_ms=reference_ms) for _ in range(timing["passes"])]
    normalised = [t.normalised_ms for t in timings if t.normalised_ms is not None]
    return NetworkTiming(float(statistics.median(t.wall_clock_ms for t in timings)),
                         float(statistics.median(normalised)) if normalised else None)


def measurable_predictor(table_dir: str | os.PathLike[str]) -> LatencyPredictor:
    """The latency model in ``table_dir``, when its target can be measured here: ConfigError when the target's runtime
    is not available on this machine, TableError when the table was measured under another fingerprint (its
    reference speed and predictions describe another machine)."""
    table_dir = Path(table_dir)
    predictor = load_predictor(table_dir)
    table = predictor.table
    target = table.target
    if not target_available(target):
        raise ConfigError(f"budget.target {target.name}: its runtime {target.runtime} is not available on this machine, "
                          "so no model can be measured against the budget")
    here = target.fingerprint_id()
    if table.fingerprint_id != here:
        raise TableError(f"{table_dir / TABLE_FILE}: measured under fingerprint {table.fingerprint_id}, but this machine's "
                         f"for target {target.name} is {here} (another CPU, thread count or library version): rerun "
                         "profile-device here first")
    return predictor


def check_budget(model_path: str | os.PathLike[str], table_dir: str | os.PathLike[str], budget: BudgetConfig,
                 latency: LatencyConfig, *, measure: MeasureModel | None = None) -> BudgetVerdict:
    """Time the fine-tuned model in ``model_path`` on the target of the latency table in ``table_dir`` and hold it
    against the whole ``budget.latency_ms`` (see the module docstring). ``measure`` times one pass (default:
    :func:`srnas.latency.measure.time_network`). Raises, measuring nothing, when the target's runtime is not
    available here (ConfigError) or the table was measured under another fingerprint (TableError)."""
    model_path = Path(model_path)
    predictor = measurable_predictor(table_dir)
    table = predictor.table
    target = table.target
    here = target.fingerprint_id()
    model = load_trained(model_path)
    if not isinstance(model, SubnetSR):
        raise DataError(f"{model_path}: not a searched network (check-budget measures the final model of finetune)")
    timing = verdict_timing(latency, max(budget.verify_runs, 1))
    measured = time_model(target, model, timing, table.reference_ms, time_network if measure is None else measure)
    return BudgetVerdict(model.pruned.name, target.name, budget.latency_ms, measured, predictor.predict(model.pruned),
                         here, table.protocol(), timing, target.device)
