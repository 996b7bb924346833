"""The strongest hand-designed baselines that fit the budget: a width x depth grid measured on the target.

A re-parameterised plain network (ECBSR, Zhang et al. 2021) trains as a block of branches and deploys as a plain
stack of 3x3 convs: ``plain_m<M>c<C>`` and ``ecbsr_m<M>c<C>`` run the *same* network on the target (head, ``M``
body convs, tail; ``C`` channels). So one grid of plain networks, timed with the verdict protocol that
``check_budget`` applies to the final model (:func:`srnas.search.budget.time_model`), says which of both families
fit the budget. For each width of ``baselines.fit_widths`` the depth grows from 1 body block until a network misses
the budget (latency grows with depth, so deeper ones would miss too) or reaches ``baselines.fit_max_blocks``. The
pick is the fitting network with the most multiply-accumulates (the most computation the budget buys; ties go to the
wider one), the configuration a mobile SR engineer would tune by hand.

The baselines named ``plain_fit`` and ``ecbsr_fit`` in ``baselines.models`` then train as the picked
configuration (``srnas train --fitted``): :func:`srnas.models.fitted.resolve_fitted`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from srnas import atomic
from srnas.config import BudgetConfig, LatencyConfig
from srnas.export import ExportError
from srnas.latency.measure import time_network
from srnas.latency.targets import Target
from srnas.loading import load_trained, registered_model
from srnas.models import gmacs
from srnas.models.fitted import CHOICE_FILE, CHOICE_FORMAT, FIT_FAMILIES, FIT_SUFFIX, family_name
from srnas.search.budget import MeasureModel, measurable_predictor, time_model
from srnas.search.run import verdict_timing

log = logging.getLogger(__name__)

__all__ = ["GridPoint", "FitResult", "ModelVerdict", "fit_grid", "judge_baselines", "judge_models", "pick", "write_fit"]


@dataclass(frozen=True)
class GridPoint:
    """One plain network of the grid, measured: ``blocks`` body convs of ``width`` channels."""

    width: int
    blocks: int
    gmac: float
    verdict_ms: float
    wall_clock_ms: float
    fits: bool


@dataclass(frozen=True)
class FitResult:
    """The measured grid, the budget it was held against and the pick (None: nothing fits)."""

    target: str
    budget_ms: float
    basis: str
    points: tuple[GridPoint, ...]
    chosen: GridPoint | None

    def choice(self) -> dict[str, str]:
        """``{"plain_fit": "plain_m5c32", "ecbsr_fit": "ecbsr_m5c32"}``."""
        if self.chosen is None:
            return {}
        return {f"{f}{FIT_SUFFIX}": family_name(f, self.chosen.blocks, self.chosen.width) for f in FIT_FAMILIES}


def fit_grid(target: Target, budget_ms: float, widths: Sequence[int], max_blocks: int, timing: dict[str, int],
             reference_ms: float | None, *, measure: MeasureModel | None = None,
             progress: Callable[[GridPoint], None] | None = None) -> FitResult:
    """Measure the grid on ``target`` (see the module docstring) and pick the network to train."""
    measure = time_network if measure is None else measure
    points: list[GridPoint] = []
    for width in widths:
        for blocks in range(1, max_blocks + 1):
            net = registered_model(family_name("plain", blocks, width), target.scale)  # PlainNet, depth blocks + 2
            timed = time_model(target, net, timing, reference_ms, measure)
            point = GridPoint(width, blocks, gmacs(net, *target.input_hw), timed.verdict_ms, timed.wall_clock_ms,
                              timed.verdict_ms <= budget_ms)
            points.append(point)
            if progress is not None:
                progress(point)
            if not point.fits:
                break
    basis = "wall_clock_ms" if reference_ms is None else "normalised_ms"
    return FitResult(target.name, budget_ms, basis, tuple(points), pick(points))


def pick(points: Sequence[GridPoint]) -> GridPoint | None:
    """The fitting point with the most MACs (ties: the wider); None when none fits."""
    fitting = [p for p in points if p.fits]
    return max(fitting, key=lambda p: (p.gmac, p.width)) if fitting else None


def write_fit(out_dir: str | os.PathLike[str], result: FitResult) -> None:
    """``choice.json`` (what ``train --fitted`` reads) and ``grid.json`` (every measurement), atomically."""
    out_dir = Path(out_dir)
    atomic.write_json(out_dir / "grid.json", {"format": "srnas-fit-grid/1", "target": result.target,
                                              "budget_ms": result.budget_ms, "verdict_basis": result.basis,
                                              "points": [asdict(p) for p in result.points],
                                              "chosen": asdict(result.chosen) if result.chosen else None})
    atomic.write_json(out_dir / CHOICE_FILE, {"format": CHOICE_FORMAT, "target": result.target,
                                              "budget_ms": result.budget_ms, "models": result.choice()})


@dataclass(frozen=True)
class ModelVerdict:
    """A trained model timed like the final model (``check_budget``), against the same budget."""

    model: str
    verdict_ms: float
    wall_clock_ms: float
    within_budget: bool
    disturbed_measurements: int = 0  # measurements the quiet guard saw disturbed (the machine stayed busy)


def judge_models(models: dict[str, Any], target: Target, budget_ms: float, timing: dict[str, int],
                 reference_ms: float | None, *, measure: MeasureModel | None = None) -> list[ModelVerdict]:
    """Each of ``models`` (name -> trained nn.Module, deployed form) timed on ``target`` with the verdict protocol and
    held against ``budget_ms``: the in-budget marks of the report. A model that cannot be exported to the target's
    runtime (bicubic has no ``.pte``) is left out with a warning: it cannot be deployed there, so it has no verdict."""
    measure = time_network if measure is None else measure
    verdicts = []
    for name, model in models.items():
        try:
            timed = time_model(target, model, timing, reference_ms, measure)
        except ExportError as exc:
            log.warning("%s: left out on %s (%s), it cannot be exported for it: %s", name, target.name, target.runtime, exc)
            continue
        verdicts.append(ModelVerdict(name, timed.verdict_ms, timed.wall_clock_ms, timed.verdict_ms <= budget_ms,
                                     timed.disturbed))
        log.info("%s on %s: %.2f ms (%s the %g ms budget)", name, target.name, timed.verdict_ms,
                 "within" if verdicts[-1].within_budget else "over", budget_ms)
    return verdicts


def judge_baselines(train_dir: str | os.PathLike[str], table_dir: str | os.PathLike[str], budget: BudgetConfig,
                    latency: LatencyConfig, *, measure: MeasureModel | None = None) -> list[ModelVerdict]:
    """Every trained baseline in ``train_dir`` (``<model>_x<scale>/model.pt``, deployed form) at the scale of the
    budget's target, timed like ``check_budget`` times the final model and held against the same whole budget."""
    predictor = measurable_predictor(table_dir)
    table = predictor.table
    target = table.target
    suffix = f"_x{target.scale}"
    models = {path.parent.name[: -len(suffix)]: load_trained(path)
              for path in sorted(Path(train_dir).glob(f"*{suffix}/model.pt"))}
    timing = verdict_timing(latency, max(budget.verify_runs, 1))
    return judge_models(models, target, budget.latency_ms, timing, table.reference_ms, measure=measure)
