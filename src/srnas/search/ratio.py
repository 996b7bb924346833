"""The ``search_ratio`` stage (stage 3): per-layer pruning ratios for the stage-2 architecture, then pruned for real.

Stage 2 chose an architecture and, per layer, ``dense`` or a filter scheme priced at one nominal keep ratio. Here
every pruned *conv* (the head, a conv cell's conv, a wdsr cell's expand and reduce) gets its own keep ratio in
[``min_keep``, 1], rounded to its scheme's channel grid (the rounding the latency model found fastest), searched by
Bayesian optimization under the same admission limit as stage 2 (predicted latency within the budget plus its
slack). The score is validation PSNR on the search's crops: of the supernet's inherited weights right after pruning
(``recovery_steps`` 0), or after a short recovery fine-tune of ``recovery_steps`` steps (:mod:`srnas.search.recovery`);
``bench/bench_ratio_proxy.py`` measures how well each ranks the settings' PSNR after the final fine-tune. The first
trial is stage 2's own choice. The choice closes the loop like stage 2's (:mod:`srnas.search.verify`): the best trials
are measured on the target, best proxy first, and the first whose measured latency fits the whole budget is pruned
and written -- so the result is never worse on the proxy than stage 2's choice unless that one measures over the
budget here.

``search_ratio.enabled`` false: the stage steps aside and writes the same outputs for stage 2's choice pruned at
``search_arch.prune_keep`` (what stage 2 priced and measured), with inherited weights; ``ratio.json`` says
``"skipped": true`` and why, ``trials.csv`` holds that one row.

Outputs in ``out_dir``: ``pruned.pt`` (the physically pruned network with inherited weights, for ``finetune``),
``ratio.json`` (keeps, channels, proxy PSNR, predicted latency, how it was chosen and every candidate measured, and
the measured speedup over the unpruned parent), ``trials.csv``, ``ratio_metrics.json``; and ``study.db``, the
persisted Optuna study (``search_ratio-x<scale>-<target>-<budget>ms-<digest>``; not an output): a killed search
resumes with the trials still missing, like stage 2's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from srnas import atomic
from srnas.arch.network import save_network
from srnas.arch.pruned import PrunedSubnet, as_pruned
from srnas.config import BudgetConfig, FinetuneConfig, LatencyConfig, RatioSearchConfig, SearchArchConfig
from srnas.digests import file_sha256
from srnas.errors import DataError
from srnas.search import study as studies
from srnas.search.candidate import DENSE, ArchCandidate
from srnas.search.pareto import write_rows
from srnas.search.recovery import RecoveryScorer
from srnas.search.run import STUDY_FILE, SearchInputs, TrialEvaluator, network_measurer
from srnas.search.verify import Measurement, Pick, select

log = logging.getLogger(__name__)

__all__ = ["RatioResult", "search_ratio"]


SKIPPED_BY = "search_arch"  # ``chosen_by`` of a stage that stepped aside: stage 2 chose


@dataclass
class RatioResult:
    candidate: ArchCandidate
    network: PrunedSubnet
    psnr: float
    predicted_ms: float
    parent_predicted_ms: float
    measured_ms: float | None
    parent_measured_ms: float | None
    trials: int
    seconds: float
    chosen_by: str = ""
    measured: tuple[Measurement, ...] = ()
    reason: str = ""
    skipped: bool = False
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def predicted_speedup(self) -> float:
        return self.parent_predicted_ms / self.predicted_ms

    @property
    def measured_speedup(self) -> float | None:
        if self.measured_ms is None or self.parent_measured_ms is None:
            return None
        return self.parent_measured_ms / self.measured_ms

    def metrics(self) -> dict[str, float]:
        out = {"proxy_psnr": self.psnr, "predicted_ms": self.predicted_ms, "parent_predicted_ms": self.parent_predicted_ms,
               "predicted_speedup": self.predicted_speedup, "trials": float(self.trials), "search_s": self.seconds,
               "skipped": float(self.skipped), **self.extra}
        if self.measured_ms is not None:
            out["measured_ms"] = float(self.measured_ms)
        if self.measured_speedup is not None:
            out |= {"parent_measured_ms": float(self.parent_measured_ms or 0.0), "measured_speedup": self.measured_speedup,
                    "speedup_error": self.measured_speedup / self.predicted_speedup - 1.0}
        return out


def _stage2_choice(arch_path: Path) -> dict[str, Any]:
    """``arch.json`` of stage 2 (DataError when missing or not one)."""
    arch = atomic.read_json(arch_path, DataError, "run search-arch first")
    if not isinstance(arch, dict) or not isinstance(arch.get("chosen"), dict):
        raise DataError(f"{arch_path}: not a search_arch result (no chosen architecture)")
    return arch


def search_ratio(inputs: SearchInputs, arch_path: str | os.PathLike[str], cfg: RatioSearchConfig, arch_cfg: SearchArchConfig,
                 budget: BudgetConfig, out_dir: str | os.PathLike[str], *, latency: LatencyConfig | None = None,
                 finetune: FinetuneConfig | None = None) -> RatioResult:
    """Search per-conv keep ratios for the architecture in ``arch_path`` (stage 2's ``arch.json``) under ``budget``,
    scored on stage 2's crops (``arch_cfg``) and pruned by ``cfg.importance``, choose by measurement; write
    ``out_dir``. ``cfg.enabled`` false: step aside (see the module docstring). ``finetune``: the recipe the
    recovery fine-tunes follow when ``cfg.recovery_steps`` is above 0 (default: :class:`FinetuneConfig`'s)."""
    start_time = time.perf_counter()
    arch_path, out_dir = Path(arch_path), Path(out_dir)
    arch = _stage2_choice(arch_path)
    candidate = ArchCandidate.from_dict(arch["chosen"], f"{arch_path}:chosen")
    studies.quiet_optuna()
    evaluator = TrialEvaluator(inputs, arch_cfg, cfg.importance)
    evaluator.space.validate(candidate.subnet)
    target = evaluator.predictor.table.target.name
    schemes = candidate.conv_schemes()
    names = [f"keep{i}" for i, s in enumerate(schemes) if s != DENSE]

    def network(keeps: dict[str, float]) -> PrunedSubnet:
        return candidate.network([1.0 if s == DENSE else keeps[f"keep{i}"] for i, s in enumerate(schemes)])

    score: Callable[[PrunedSubnet], float] = evaluator.quality.psnr_network
    if cfg.recovery_steps and cfg.enabled:
        score = RecoveryScorer(evaluator.quality, inputs.data_dir, finetune or FinetuneConfig(), cfg.recovery_steps)

    def evaluate(keeps: dict[str, float]) -> tuple[float, float]:
        net = network(keeps)
        return score(net), evaluator.predictor.predict(net)

    rows: list[dict[str, Any]] = []

    def seen(number: int, keeps: dict[str, float], psnr: float, ms: float) -> None:
        rows.append({"trial": number, "network": network(keeps).name, "psnr": psnr, "latency_ms": ms,
                     "feasible": ms <= budget.admit_ms, **keeps})

    parent = as_pruned(candidate.subnet)
    parent_predicted = evaluator.predictor.predict(parent)
    if not cfg.enabled:
        keeps = {n: arch_cfg.prune_keep for n in names}
        psnr, predicted = evaluate(keeps)
        seen(0, keeps, psnr, predicted)
        best = network(keeps)  # candidate.pruned(arch_cfg.prune_keep): what stage 2 priced
        stage2_ms = arch["chosen"].get("measured_ms")
        reason = (f"search_ratio.enabled is false: stage 2's choice pruned at search_arch.prune_keep "
                  f"({arch_cfg.prune_keep:g}), as stage 2 priced{' and measured' if stage2_ms is not None else ''} it")
        result = RatioResult(candidate, best, psnr, predicted, parent_predicted,
                             float(stage2_ms) if stage2_ms is not None else None, None, 1, time.perf_counter() - start_time,
                             SKIPPED_BY, (), reason, skipped=True)
        _write(result, rows, keeps, cfg, budget, evaluator, out_dir)
        log.info("search_ratio steps aside (%s): %s, proxy %.2f dB, %.1f ms predicted", reason, best.name, psnr, predicted)
        return result

    grid = round((arch_cfg.prune_keep - cfg.min_keep) / cfg.keep_step)
    start = {n: min(1.0, cfg.min_keep + grid * cfg.keep_step) for n in names}
    if names:
        # what makes trials comparable: not how many there are, nor how the chosen ones are measured
        identity = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("trials", "enabled")},
                    "crops": {k: getattr(arch_cfg, k) for k in ("val_crops", "crop_size", "val_set")},
                    "architecture": candidate.to_dict(), "start": start,
                    "budget": {"target": budget.target, "latency_ms": budget.latency_ms, "slack": budget.slack},
                    "finetune": dataclasses.asdict(finetune or FinetuneConfig()) if cfg.recovery_steps else None,
                    "supernet": file_sha256(inputs.supernet), "table": file_sha256(inputs.table_dir / "table.json")}
        name = studies.study_name("search_ratio", evaluator.predictor.table.target.scale, target, budget.latency_ms,
                                  identity)
        with tqdm(total=cfg.trials, desc="search_ratio", unit="trial", file=sys.stderr, disable=None, leave=False) as bar:
            done = studies.search_keeps(out_dir / STUDY_FILE, name, names, start, low=cfg.min_keep, step=cfg.keep_step,
                                        strategy=cfg.strategy, seed=cfg.seed, trials=cfg.trials,
                                        budget_ms=budget.admit_ms, evaluate=evaluate,
                                        on_trial=lambda number, keeps, psnr, ms: bar.update())
        for number, keeps_, psnr_, ms_ in done:
            seen(number, keeps_, psnr_, ms_)
        results = [(k, p, ms) for _, k, p, ms in done]
    else:  # stage 2 pruned nothing: the architecture is the result
        psnr, ms = evaluate({})
        results = [({}, psnr, ms)]
        seen(0, {}, psnr, ms)
    measure, why = network_measurer(evaluator.predictor, budget.verify_runs, latency or LatencyConfig())
    selection = select([Pick(network(k).name, p, ms, k) for k, p, ms in results], budget_ms=budget.latency_ms,
                       admit_ms=budget.admit_ms, limit=budget.verify_candidates,
                       measure=None if measure is None else (lambda k: measure(network(k))),
                       where=f"search_ratio on {target}", reason=why)
    keeps, psnr, predicted = selection.chosen.item, selection.chosen.psnr, selection.chosen.predicted_ms
    best = network(keeps)
    parent_measured = measure(parent) if measure is not None else None
    result = RatioResult(candidate, best, psnr, predicted, parent_predicted, selection.measured_ms, parent_measured,
                         len(results), time.perf_counter() - start_time, selection.chosen_by, selection.measured,
                         selection.reason, extra=selection.metrics())
    _write(result, rows, keeps, cfg, budget, evaluator, out_dir)
    log.info("search_ratio: %s chosen by %s, proxy %.2f dB, %.1f ms predicted%s (unpruned parent %.1f ms: %.2fx predicted%s); "
             "%d trials, %d candidate(s) measured", best.name, result.chosen_by, psnr, predicted,
             f", {result.measured_ms:.1f} ms measured" if result.measured_ms is not None else "", parent_predicted,
             result.predicted_speedup, f", {result.measured_speedup:.2f}x measured" if result.measured_speedup else "",
             len(results), len(result.measured))
    return result


def _write(result: RatioResult, rows: list[dict[str, Any]], keeps: dict[str, float], cfg: RatioSearchConfig,
           budget: BudgetConfig, evaluator: TrialEvaluator, out_dir: Path) -> None:
    save_network(out_dir / "pruned.pt", evaluator.quality.model(result.network),
                extra={"importance": cfg.importance, "keeps": keeps})
    fields = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith(("trial", "network", "psnr", "latency", "feasible")), k))
    write_rows(out_dir / "trials.csv", rows, fields)
    payload: dict[str, Any] = {
        "format": "srnas-search-ratio/1", "architecture": result.candidate.to_dict(), "network": result.network.to_dict(),
        "name": result.network.name, "keeps": keeps, "strategy": cfg.strategy, "budget_ms": budget.latency_ms,
        "admit_ms": budget.admit_ms, "target": evaluator.predictor.table.target.name, "importance": cfg.importance,
        "skipped": result.skipped, "chosen_by": result.chosen_by, "measured": [m.to_dict() for m in result.measured],
        **({"skip_reason": result.reason} if result.skipped else {"chosen_by_reason": result.reason} if result.reason else {}),
        **{k: (v if math.isfinite(v) else None) for k, v in result.metrics().items() if k != "skipped"}}
    atomic.write_json(out_dir / "ratio_metrics.json", {k: v for k, v in result.metrics().items() if math.isfinite(v)})
    atomic.write_json(out_dir / "ratio.json", payload)
