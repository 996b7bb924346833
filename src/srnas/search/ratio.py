"""The ``search_ratio`` stage (stage 3): per-layer pruning ratios for the stage-2 architecture, then pruned for real.

Stage 2 chose an architecture and, per layer, ``dense`` or a filter scheme priced at one nominal keep ratio. Here
every pruned *conv* (the head, a conv cell's conv, a wdsr cell's expand and reduce) gets its own keep ratio in
[``min_keep``, 1], rounded to its scheme's channel grid (the rounding the latency model found fastest), searched by
Bayesian optimization under the same predicted-latency budget. The score is a cheap proxy: validation PSNR of the
supernet's inherited weights right after L1/L2 pruning (no recovery training; ``bench/bench_ratio_proxy.py``
checks how well it ranks against PSNR after fine-tuning). The first trial is stage 2's own choice, so the result is
never worse than it on the proxy.

Outputs in ``out_dir``: ``pruned.pt`` (the physically pruned network with inherited weights, for ``finetune``),
``ratio.json`` (keeps, channels, proxy PSNR, predicted latency, and the measured speedup over the unpruned parent),
``trials.csv``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srnas import atomic
from srnas.arch.network import save_network
from srnas.arch.pruned import PrunedSubnet, as_pruned
from srnas.config import BudgetConfig, LatencyConfig, RatioSearchConfig, SearchArchConfig
from srnas.errors import DataError
from srnas.search import study as studies
from srnas.search.candidate import DENSE, ArchCandidate
from srnas.search.pareto import write_rows
from srnas.search.run import SearchError, SearchInputs, TrialEvaluator, measure_on_target

log = logging.getLogger(__name__)

__all__ = ["RatioResult", "search_ratio"]


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
               "predicted_speedup": self.predicted_speedup, "trials": float(self.trials), "search_s": self.seconds}
        if self.measured_speedup is not None:
            out |= {"measured_ms": float(self.measured_ms or 0.0), "parent_measured_ms": float(self.parent_measured_ms or 0.0),
                    "measured_speedup": self.measured_speedup,
                    "speedup_error": self.measured_speedup / self.predicted_speedup - 1.0}
        return out


def search_ratio(inputs: SearchInputs, arch_path: str | os.PathLike[str], cfg: RatioSearchConfig, arch_cfg: SearchArchConfig,
                 budget: BudgetConfig, out_dir: str | os.PathLike[str], *, latency: LatencyConfig | None = None) -> RatioResult:
    """Search per-conv keep ratios for the architecture in ``arch_path`` (stage 2's ``arch.json``) under ``budget``,
    scored on stage 2's crops (``arch_cfg``) and pruned by ``cfg.importance``; write ``out_dir``."""
    start_time = time.perf_counter()
    arch_path, out_dir = Path(arch_path), Path(out_dir)
    if not arch_path.is_file():
        raise DataError(f"{arch_path}: not found (run search-arch first)")
    try:
        chosen = json.loads(arch_path.read_text(encoding="utf-8"))["chosen"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{arch_path}: not a search_arch result ({exc})") from None
    candidate = ArchCandidate.from_dict(chosen, f"{arch_path}:chosen")
    studies.quiet_optuna()
    evaluator = TrialEvaluator(inputs, arch_cfg, cfg.importance)
    evaluator.space.validate(candidate.subnet)
    schemes = candidate.conv_schemes()
    names = [f"keep{i}" for i, s in enumerate(schemes) if s != DENSE]

    def network(keeps: dict[str, float]) -> PrunedSubnet:
        return candidate.network([1.0 if s == DENSE else keeps[f"keep{i}"] for i, s in enumerate(schemes)])

    def evaluate(keeps: dict[str, float]) -> tuple[float, float]:
        net = network(keeps)
        return evaluator.quality.psnr_network(net), evaluator.predictor.predict(net)

    grid = round((arch_cfg.prune_keep - cfg.min_keep) / cfg.keep_step)
    start = {n: min(1.0, cfg.min_keep + grid * cfg.keep_step) for n in names}
    rows: list[dict[str, Any]] = []

    def seen(number: int, keeps: dict[str, float], psnr: float, ms: float) -> None:
        rows.append({"trial": number, "network": network(keeps).name, "psnr": psnr, "latency_ms": ms,
                     "feasible": ms <= budget.search_ms, **keeps})

    if names:
        results = studies.search_keeps(names, start, low=cfg.min_keep, step=cfg.keep_step, strategy=cfg.strategy,
                                       seed=cfg.seed, trials=cfg.trials, budget_ms=budget.search_ms, evaluate=evaluate,
                                       on_trial=seen)
    else:  # stage 2 pruned nothing: the architecture is the result
        psnr, ms = evaluate({})
        results = [({}, psnr, ms)]
        seen(0, {}, psnr, ms)
    feasible = [r for r in results if r[2] <= budget.search_ms]
    if not feasible:
        raise SearchError(f"search_ratio: no trial fits {budget.search_ms:g} ms (budget.latency_ms less the margin) "
                          f"(fastest {min(r[2] for r in results):.1f} ms)")
    keeps, psnr, predicted = max(feasible, key=lambda r: (r[1], -r[2]))
    best = network(keeps)
    parent = as_pruned(candidate.subnet)
    parent_predicted = evaluator.predictor.predict(parent)
    measured = measure_on_target(evaluator.predictor, [best, parent], budget.verify_runs, latency or LatencyConfig())
    result = RatioResult(candidate, best, psnr, predicted, parent_predicted, measured[0] if measured else None,
                         measured[1] if measured else None, len(results), time.perf_counter() - start_time)
    _write(result, rows, keeps, cfg, budget, evaluator, out_dir)
    log.info("search_ratio: %s, proxy %.2f dB, %.1f ms predicted (unpruned parent %.1f ms: %.2fx predicted%s); %d trials",
             best.name, psnr, predicted, parent_predicted, result.predicted_speedup,
             f", {result.measured_speedup:.2f}x measured" if result.measured_speedup else "", len(results))
    return result


def _write(result: RatioResult, rows: list[dict[str, Any]], keeps: dict[str, float], cfg: RatioSearchConfig,
           budget: BudgetConfig, evaluator: TrialEvaluator, out_dir: Path) -> None:
    save_network(out_dir / "pruned.pt", evaluator.quality.model(result.network),
                extra={"importance": cfg.importance, "keeps": keeps})
    fields = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith(("trial", "network", "psnr", "latency", "feasible")), k))
    write_rows(out_dir / "trials.csv", rows, fields)
    payload = {"format": "srnas-search-ratio/1", "architecture": result.candidate.to_dict(), "network": result.network.to_dict(),
               "name": result.network.name, "keeps": keeps, "strategy": cfg.strategy, "budget_ms": budget.latency_ms,
               "search_budget_ms": budget.search_ms,
               "target": evaluator.predictor.table.target.name, "importance": cfg.importance,
               **{k: (v if math.isfinite(v) else None) for k, v in result.metrics().items()}}
    atomic.write_json(out_dir / "ratio_metrics.json", {k: v for k, v in result.metrics().items() if math.isfinite(v)})
    atomic.write_json(out_dir / "ratio.json", payload)
