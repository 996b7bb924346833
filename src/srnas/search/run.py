"""The ``search_arch`` stage: inputs, worker processes, the chosen architecture, its measured latency, outputs.

Outputs in ``out_dir``:

``arch.json``           the chosen architecture (PSNR, predicted and measured latency), how it was chosen
                        (``chosen_by``: ``measured`` or ``predicted``), every candidate measured (``measured``) and, in
                        ``pareto`` mode, every admitted Pareto point; what stage 3 reads
``trials.csv``          every completed trial (architecture, schemes, PSNR, predicted latency, feasible: admitted,
                        predicted within ``budget.latency_ms * (1 + budget.slack)``)
``pareto.csv`` / ``.png`` the PSNR / latency front over all trials
``search_metrics.json`` the figures, the latency model's error on the measured candidates among them (a DVC metric)
``study.db``            the persisted Optuna study (kept between runs: resume and sharing; not an output), named
                        ``search_arch-x<scale>-<target>-<budget>ms-<digest>``; with ``search_arch.storage`` set, the
                        study lives in that database instead

Worker jobs (:func:`join_search`, ``srnas search-arch --worker K``) add trials to the same study from other processes
or hosts and write nothing: the plain command, run before, beside or after them, writes the outputs from every
worker's trials.

The choice closes the loop on the target (:mod:`srnas.search.verify`): trials are admitted by *predicted* latency
within the slack-widened budget, then the best of them are measured, best PSNR first, and the first whose measured
latency fits the whole budget is chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from srnas import atomic
from srnas.arch.pruned import PrunedSubnet
from srnas.arch.space import SearchSpace
from srnas.config import (
    BudgetConfig,
    FinetuneConfig,
    LatencyConfig,
    SearchArchConfig,
    redact_url,
)
from srnas.digests import file_sha256
from srnas.errors import ConfigError, DataError
from srnas.latency.measure import target_available
from srnas.latency.predictor import LatencyPredictor
from srnas.latency.profile import load_predictor
from srnas.latency.validate import measure_networks
from srnas.search import pareto
from srnas.search import study as studies
from srnas.search.candidate import DENSE, ArchCandidate, scheme_granularity
from srnas.search.quality import QualityEvaluator
from srnas.search.recovery import RecoveryScorer
from srnas.search.study import TrialRecord
from srnas.search.verify import Pick, SearchError, Selection, select
from srnas.supernet.supernet import load_supernet
from srnas.training.loop import resolve_val_dir
from srnas.training.patches import load_pairs

log = logging.getLogger(__name__)

__all__ = ["SearchError", "SearchInputs", "SearchResult", "TrialEvaluator", "join_search", "measure_on_target", "network_measurer",
           "search_arch", "searchable_schemes"]

STUDY_FILE = "study.db"
# A verdict (the chosen network's latency, a pruning speedup, the final budget check) takes at least this many
# rounds (more than a table entry, which the table's other entries steady): see verdict_timing.
VERDICT_ROUNDS = 5
READY_TIMEOUT_S = 600  # a worker that has not loaded its inputs by then has failed
ARCH_FILE = "arch.json"


def verdict_timing(latency: LatencyConfig, runs: int) -> dict[str, int]:
    """How a verdict times a network: the ``latency`` section's network timing, ``runs`` calls per round and at
    least :data:`VERDICT_ROUNDS` rounds."""
    return latency.net_timing(runs, VERDICT_ROUNDS)


@dataclass(frozen=True)
class SearchInputs:
    """What the stage reads: the trained supernet, the target's latency table folder, the prepared data."""

    supernet: Path
    table_dir: Path
    data_dir: Path


@dataclass
class SearchResult:
    chosen: TrialRecord
    records: list[TrialRecord]
    front: list[TrialRecord]
    selection: Selection[TrialRecord]
    seconds: float
    study: str
    out_dir: Path
    rescored: tuple[dict[str, Any], ...] = ()  # search_arch.recovery_steps: the candidates re-scored, both scores

    @property
    def measured_ms(self) -> float | None:
        """The chosen architecture's measured latency (None when chosen by prediction)."""
        return self.selection.measured_ms

    @property
    def latency_error(self) -> float | None:
        """(measured - predicted) / predicted of the chosen architecture."""
        if self.measured_ms is None:
            return None
        return (self.measured_ms - self.chosen.latency_ms) / self.chosen.latency_ms

    def metrics(self) -> dict[str, float]:
        feasible = [r for r in self.records if r.feasible]
        out = {"best_psnr": self.chosen.psnr, "predicted_ms": self.chosen.latency_ms, "trials": float(len(self.records)),
               "feasible_share": len(feasible) / len(self.records), "front_size": float(len(self.front)),
               "trials_to_best": float(first_reaching(self.records, self.chosen.psnr)), "search_s": self.seconds,
               **self.selection.metrics()}
        if self.measured_ms is not None:
            out["measured_ms"] = self.measured_ms
            out["latency_error"] = float(self.latency_error or 0.0)
        return out


def searchable_schemes(predictor: LatencyPredictor) -> list[str]:
    """The accelerated filter schemes the table prices by measurement (granularity on or above its channel grid)."""
    accepted = predictor.table.extra.get("accepted_schemes", [])
    grid = predictor.table.granularity
    schemes = [s for s in accepted if s.startswith("filter_g") and scheme_granularity(s) >= grid]
    dropped = [s for s in accepted if s.startswith("filter_g") and s not in schemes]
    if dropped:
        log.info("accelerated but not searched (finer than the table's granularity-%d grid): %s", grid, ", ".join(dropped))
    return sorted(schemes, key=scheme_granularity, reverse=True)


def first_reaching(records: list[TrialRecord], psnr: float, within_ms: float | None = None) -> int:
    """1-based index of the first feasible trial (admitted; or predicted within ``within_ms`` when given) with PSNR at
    least ``psnr`` (0 when none)."""
    return next((i + 1 for i, r in enumerate(records)
                 if (r.feasible if within_ms is None else r.latency_ms <= within_ms) and r.psnr >= psnr), 0)


def _val_folder(data_dir: Path, cfg: SearchArchConfig, scale: int) -> Path:
    folder = resolve_val_dir(data_dir, scale, cfg.val_set or None)
    if folder is None:
        raise DataError(f"{data_dir}: no validation or evaluation set prepared at x{scale} (run `srnas prepare-data`)")
    return folder


@dataclass(frozen=True)
class _Job:
    """Everything a worker process needs (picklable: paths and the config)."""

    inputs: SearchInputs
    cfg: SearchArchConfig
    budget: BudgetConfig
    importance: str
    storage: str  # the study's storage URL
    study_name: str
    threads: int


class TrialEvaluator:
    """A trial's two numbers: PSNR with inherited weights and predicted latency; built once per process. Filter-scheme
    layers are pruned by ``importance`` (``search_ratio.importance``: the criterion stage 3 prunes with)."""

    def __init__(self, inputs: SearchInputs, cfg: SearchArchConfig, importance: str) -> None:
        self.predictor = load_predictor(inputs.table_dir)
        self.supernet = load_supernet(inputs.supernet)
        self.space = self.supernet.space
        target = self.predictor.table.target
        if target.scale != self.supernet.scale:
            raise ConfigError(f"{inputs.table_dir}: the latency table is for x{target.scale}, the supernet "
                              f"{inputs.supernet} for x{self.supernet.scale}")
        table_space = self.predictor.table.extra.get("space")
        if table_space is not None and SearchSpace.from_dict(table_space) != self.space:
            raise ConfigError(f"{inputs.table_dir}: the latency table was built for another search space than "
                              f"{inputs.supernet}'s; rerun profile-device")
        self.schemes = searchable_schemes(self.predictor)
        pairs = load_pairs(_val_folder(inputs.data_dir, cfg, self.supernet.scale), self.supernet.scale)
        self.quality = QualityEvaluator(self.supernet, pairs, count=cfg.val_crops, size=cfg.crop_size,
                                        precision=target.precision, prune_keep=cfg.prune_keep, importance=importance)
        self.prune_keep = cfg.prune_keep

    def latency(self, candidate: ArchCandidate) -> float:
        return self.predictor.predict(candidate.pruned(self.prune_keep))

    def __call__(self, candidate: ArchCandidate) -> tuple[float, float]:
        return self.quality.psnr(candidate), self.latency(candidate)

    def fastest(self) -> tuple[ArchCandidate, float]:
        """The cheapest candidate the space offers (smallest subnet, every layer dense or pruned by one scheme)."""
        smallest = self.space.smallest()
        options = [ArchCandidate.normalized(smallest, [s] * (1 + self.space.num_cells), self.prune_keep)
                   for s in [DENSE, *self.schemes]]
        return min(((c, self.latency(c)) for c in options), key=lambda item: item[1])


def _worker(job: _Job, index: int, ready: Any) -> None:
    """A worker process: its own evaluator and sampler (seeded per trial from the study, like the main process's),
    the shared study; says when it is ready, stops after its current trial when the main process is gone."""
    parent = os.getppid()
    torch.set_num_threads(job.threads)
    studies.quiet_optuna()
    evaluator = TrialEvaluator(job.inputs, job.cfg, job.importance)
    study = studies.open_study(job.storage, job.study_name, job.cfg, job.cfg.seed)
    ready.set()
    studies.run_trials(study, job.cfg, job.budget.admit_ms, evaluator.space, evaluator.schemes, evaluator,
                       worker=f"{index}:{os.getpid()}", stop=lambda: os.getppid() != parent)


def _prepare(inputs: SearchInputs, cfg: SearchArchConfig, budget: BudgetConfig,
             importance: str) -> tuple[TrialEvaluator, str]:
    """The evaluator of this process and the study's name; the inputs and the budget checked."""
    for path in (inputs.supernet, inputs.table_dir):
        if not path.exists():
            raise DataError(f"{path}: not found (run train-supernet and profile-device first)")
    studies.quiet_optuna()
    evaluator = TrialEvaluator(inputs, cfg, importance)
    target = evaluator.predictor.table.target
    fastest, fastest_ms = evaluator.fastest()
    if fastest_ms > budget.admit_ms:
        raise ConfigError(f"budget.latency_ms: {budget.latency_ms:g} ms ({budget.admit_ms:g} ms with the slack) is below the fastest "
                          f"subnet of the space on {target.name} ({fastest.name}: {fastest_ms:.1f} ms predicted); raise the "
                          "budget or shrink the space")
    # what makes trials comparable: not how many there are, nor how the candidates are measured afterwards, nor where
    # the trials are stored
    after = ("trials", "n_workers", "recovery_steps", "recovery_per_width", "storage")  # the choice after the trials
    identity = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in after},
                "budget": {"target": budget.target, "latency_ms": budget.latency_ms, "slack": budget.slack},
                "importance": importance,
                "supernet": file_sha256(inputs.supernet), "table": file_sha256(inputs.table_dir / "table.json")}
    return evaluator, studies.study_name("search_arch", target.scale, target.name, budget.latency_ms, identity)


def _open_study(cfg: SearchArchConfig, out_dir: Path, name: str, seed: int, evaluator: TrialEvaluator) -> tuple[Any, str]:
    """(study, its storage URL): stage 2's study opened (``search_arch.storage``, else ``out_dir``'s SQLite file) with
    ``seed``, the trials dead processes left running failed, a fresh study's plain seeds enqueued."""
    storage = studies.storage_url(cfg.storage, out_dir / STUDY_FILE)
    study = studies.open_study(storage, name, cfg, seed)
    studies.fail_dead_trials(study)  # before any trial starts: the samplers must not count them as running
    if cfg.plain_seeds and not study.get_trials(deepcopy=False):
        seeds = studies.plain_seeds(evaluator.space)
        for params in seeds:  # a fresh study only: a resumed one holds them already (another worker's, too)
            study.enqueue_trial(params, skip_if_exists=True)
        log.info("search_arch: the %d plain networks of the space (each width, 1 to %d conv cells, dense) enqueued as "
                 "the first trials", len(seeds), evaluator.space.num_cells)
    done = studies.completed(study)
    if done:
        log.info("resuming study %s in %s: %d of %d trials already completed", name, _where(cfg, out_dir), done, cfg.trials)
    elif cfg.storage:
        log.info("study %s in %s", name, _where(cfg, out_dir))
    return study, storage


def _where(cfg: SearchArchConfig, out_dir: Path) -> str:
    """Where the study lives, for a log line: the SQLite file, or the database URL with its password masked."""
    return redact_url(cfg.storage) if cfg.storage else str(out_dir / STUDY_FILE)


def join_search(inputs: SearchInputs, cfg: SearchArchConfig, budget: BudgetConfig, out_dir: str | os.PathLike[str], *,
                importance: str, worker: int) -> int:
    """Worker job ``worker`` (1 or more) of the search of ``cfg``: one more process adding trials to the study the
    plain search uses (``search_arch.storage``: a database every host reaches; else ``out_dir``'s SQLite file, for
    processes of one machine) until it holds ``cfg.trials`` completed trials, then it returns how many it completed.
    Seeded apart from the other jobs (:func:`srnas.search.study.worker_seed`); needs the same inputs and
    configuration as the plain command (the study's name is their digest). Writes no output: the plain command does,
    from every worker's trials. Runs in this process only (``n_workers`` is the plain command's)."""
    if worker < 1:
        raise ConfigError(f"--worker: must be 1 or more (0 is the plain command), got {worker}")
    out_dir = Path(out_dir)
    evaluator, name = _prepare(inputs, cfg, budget, importance)
    log.info("search_arch worker %d joins study %s in %s: until %d trials are completed", worker, name,
             _where(cfg, out_dir), cfg.trials)
    study, _ = _open_study(cfg, out_dir, name, studies.worker_seed(cfg.seed, worker), evaluator)
    ran = studies.run_trials(study, cfg, budget.admit_ms, evaluator.space, evaluator.schemes, evaluator,
                             worker=f"{worker}:{os.getpid()}")
    log.info("search_arch worker %d: %d trial(s) completed here; the study holds %d of %d", worker, ran,
             studies.completed(study), cfg.trials)
    return ran


def search_arch(inputs: SearchInputs, cfg: SearchArchConfig, budget: BudgetConfig, out_dir: str | os.PathLike[str], *,
                importance: str, latency: LatencyConfig | None = None, progress: bool | None = None,
                on_trial: Callable[[TrialRecord], None] | None = None,
                finetune: FinetuneConfig | None = None) -> SearchResult:
    """Run (or resume) the search of ``cfg`` under ``budget`` and write the outputs; see the module docstring.
    ``finetune``: the recipe of the recovery fine-tunes when ``cfg.recovery_steps`` is above 0 (default: its defaults).

    ``importance``: which filters a filter-scheme layer keeps (``search_ratio.importance``). ``latency``: the network
    timing protocol for the candidates measured after the trials (``net_warmup``, ``net_rounds``; ``budget.verify_runs``
    calls per round, 0 to choose by prediction). ``progress``: tqdm bar (None: on a terminal).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    out_dir = Path(out_dir)
    evaluator, name = _prepare(inputs, cfg, budget, importance)
    target = evaluator.predictor.table.target
    log.info("search_arch on %s: predicted latency admitted up to %.1f ms (budget %.1f ms plus a %.0f%% slack), then up to "
             "%d candidates measured; %s, %s mode, %d trials, %d worker(s); schemes searched: %s", target.name,
             budget.admit_ms, budget.latency_ms, 100 * budget.slack, budget.verify_candidates, cfg.strategy, cfg.mode,
             cfg.trials, cfg.n_workers, ", ".join([DENSE, *evaluator.schemes]))
    study, storage = _open_study(cfg, out_dir, name, cfg.seed, evaluator)

    threads = max(1, torch.get_num_threads() // cfg.n_workers)
    job = _Job(inputs, cfg, budget, importance, storage, name, threads)
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(1, cfg.n_workers)]
    others = [ctx.Process(target=_worker, args=(job, i, ready[i - 1]), name=f"search_arch-worker-{i}")
              for i in range(1, cfg.n_workers)]
    for p in others:
        p.start()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    bar = tqdm(total=cfg.trials, initial=min(studies.completed(study), cfg.trials), desc="search_arch", unit="trial",
               disable=(not _is_tty()) if progress is None else not progress)

    def seen(record: TrialRecord) -> None:
        bar.n = min(studies.completed(study), cfg.trials)
        bar.set_postfix_str(f"{record.psnr:.2f} dB {record.latency_ms:.1f} ms", refresh=True)
        if on_trial is not None:
            on_trial(record)

    try:
        _wait_until_ready(others, ready)
        studies.run_trials(study, cfg, budget.admit_ms, evaluator.space, evaluator.schemes, evaluator,
                           worker=f"0:{os.getpid()}", on_trial=seen)
    finally:
        torch.set_num_threads(previous_threads)
        for p in others:
            p.join()
        bar.close()
    failed = [p.name for p in others if p.exitcode != 0]
    if failed:
        raise SearchError(f"search worker(s) {', '.join(failed)} failed (exit codes "
                          f"{', '.join(str(p.exitcode) for p in others if p.exitcode != 0)}); rerun to resume")

    records = studies.completed_trials(study, budget.admit_ms)
    front = pareto.pareto_front(records)
    picks = [Pick(r.candidate.name, r.psnr, r.latency_ms, r) for r in records]
    rescored: list[dict[str, Any]] = []
    if cfg.recovery_steps:
        scorer = RecoveryScorer(evaluator.quality, inputs.data_dir, finetune or FinetuneConfig(), cfg.recovery_steps)
        picks = []
        for r in best_per_width(records, budget.admit_ms, cfg.recovery_per_width):
            psnr = scorer(r.candidate.pruned(cfg.prune_keep))
            picks.append(Pick(r.candidate.name, psnr, r.latency_ms, r))
            rescored.append({"name": r.candidate.name, "inherited_psnr": r.psnr, "recovered_psnr": psnr,
                             "predicted_ms": r.latency_ms})
            log.info("search_arch: %s after %d recovery steps: %.3f dB (inherited %.3f dB), %.2f ms predicted",
                     r.candidate.name, cfg.recovery_steps, psnr, r.psnr, r.latency_ms)
    measure, why = network_measurer(evaluator.predictor, budget.verify_runs, latency or LatencyConfig())
    selection = select(picks, budget_ms=budget.latency_ms,
                       admit_ms=budget.admit_ms, limit=budget.verify_candidates,
                       measure=None if measure is None else (lambda r: measure(r.candidate.pruned(cfg.prune_keep))),
                       where=f"search_arch on {target.name}", reason=why)
    chosen = selection.chosen.item
    result = SearchResult(chosen, records, front, selection, time.perf_counter() - start, name, out_dir, tuple(rescored))
    _write_outputs(result, cfg, budget, importance, target.name)
    measured = result.measured_ms
    log.info("chosen %s by %s: %.2f dB, %.1f ms predicted%s (budget %.1f ms, %d candidate(s) measured); %d trials, %d on the "
             "front, %.0f s", chosen.candidate.name, selection.chosen_by, chosen.psnr, chosen.latency_ms,
             f", {measured:.1f} ms measured" if measured is not None else "", budget.latency_ms, len(selection.measured),
             len(records), len(front), result.seconds)
    return result


def _wait_until_ready(workers: list[Any], ready: list[Any]) -> None:
    """Start trials only once every worker has loaded its inputs, so that the processes share the trials."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(event.is_set() for event in ready):
        dead = [p.name for p, event in zip(workers, ready) if not event.is_set() and not p.is_alive()]
        if dead or time.monotonic() > deadline:
            for p in workers:
                p.terminate()
            raise SearchError(f"search worker(s) {', '.join(dead) or 'all'} did not start (see the error above); "
                              "rerun to resume")
        time.sleep(0.05)


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def network_measurer(predictor: LatencyPredictor, runs: int,
                     latency: LatencyConfig) -> tuple[Callable[[PrunedSubnet], float] | None, str]:
    """``(measure, why_not)``: ``measure(net)`` is the end-to-end ms of ``net`` on the predictor's target with its
    table's timing protocol -- ``runs`` calls per round, at least :data:`VERDICT_ROUNDS` rounds; under the paired
    protocol the figure normalised to the table's reference speed, the one ``check_budget``'s verdict uses -- or None
    and the reason when nothing can be measured (``runs`` 0, the target's runtime not available here). Warns when this
    machine is not the one the table was measured on."""
    target = predictor.table.target
    if runs == 0:
        return None, "budget.verify_runs is 0"
    if not target_available(target):
        log.warning("%s: runtime %s not available here; latency is predicted only", target.name, target.runtime)
        return None, f"runtime {target.runtime} of target {target.name} is not available here"
    if predictor.table.fingerprint_id != target.fingerprint_id():
        log.warning("%s: the latency table was measured under fingerprint %s, this machine is %s", target.name,
                    predictor.table.fingerprint_id, target.fingerprint_id())
    timing = verdict_timing(latency, runs)
    return (lambda net: measure_networks(target, [net], **timing, reference_ms=predictor.table.reference_ms)[0]), ""


def measure_on_target(predictor: LatencyPredictor, nets: list[PrunedSubnet], runs: int,
                      latency: LatencyConfig) -> list[float] | None:
    """:func:`network_measurer`'s figure for each of ``nets``, measured together (None when nothing can be measured)."""
    measure, _ = network_measurer(predictor, runs, latency)
    if measure is None:
        return None
    return measure_networks(predictor.table.target, nets, **verdict_timing(latency, runs),
                            reference_ms=predictor.table.reference_ms)


def best_per_width(records: list[TrialRecord], admit_ms: float, count: int) -> list[TrialRecord]:
    """The ``count`` best admitted records (predicted within ``admit_ms``) of each width by inherited PSNR, one per
    predicted cost (candidates of one width and one predicted latency -- the same layers, skips placed elsewhere --
    deploy alike: the best of them stands for all, so the ``count`` span different costs); widths in increasing
    order, best first within a width."""
    groups: dict[int, dict[float, TrialRecord]] = {}
    for r in sorted(records, key=lambda r: (-r.psnr, r.latency_ms, r.candidate.name)):
        group = groups.setdefault(r.candidate.subnet.width, {})
        if r.latency_ms <= admit_ms and len(group) < count:
            group.setdefault(round(r.latency_ms, 6), r)
    return [r for width in sorted(groups) for r in groups[width].values()]


def _write_outputs(result: SearchResult, cfg: SearchArchConfig, budget: BudgetConfig, importance: str, target: str) -> None:
    out = result.out_dir
    chosen = result.chosen

    def point(r: TrialRecord) -> dict[str, Any]:
        return {"trial": r.number, **r.candidate.to_dict(), "network": r.candidate.pruned(cfg.prune_keep).to_dict(),
                "psnr": r.psnr, "predicted_ms": r.latency_ms}

    payload: dict[str, Any] = {
        "format": "srnas-search-arch/1", "target": target, "budget_ms": budget.latency_ms,
        "admit_ms": budget.admit_ms, "slack": budget.slack, "verify_candidates": budget.verify_candidates,
        "strategy": cfg.strategy, "mode": cfg.mode, "prune_keep": cfg.prune_keep, "importance": importance,
        "trials": len(result.records),
        "study": {"storage": redact_url(cfg.storage), "name": result.study} if cfg.storage else {"file": STUDY_FILE, "name": result.study},
        "chosen": point(chosen) | {"measured_ms": result.measured_ms, "latency_error": result.latency_error},
        **result.selection.to_dict(),
    }
    if result.rescored:
        payload["rescored"] = {"recovery_steps": cfg.recovery_steps, "candidates": list(result.rescored)}
    if cfg.mode == "pareto":
        payload["front"] = [point(r) for r in result.front if r.feasible]
    pareto.write_csv(out / "trials.csv", result.records)
    pareto.write_csv(out / "pareto.csv", result.front)
    title = (f"search_arch on {target}: {cfg.strategy}, {len(result.records)} trials, budget {budget.latency_ms:g} ms, "
             f"chosen by {result.selection.chosen_by}")
    pareto.plot_front(out / "pareto.png", result.records, result.front, budget.latency_ms, chosen, title,
                      admit_ms=budget.admit_ms)
    atomic.write_json(out / "search_metrics.json", {k: (v if math.isfinite(v) else None) for k, v in result.metrics().items()})
    atomic.write_json(out / ARCH_FILE, payload)
