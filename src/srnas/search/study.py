"""The Optuna side of stage 2 (the one module that imports optuna): samplers, the persisted study, trials.

The study lives in Optuna's RDB storage -- by default an SQLite file under the stage's output folder, or the database
``search_arch.storage`` names (:func:`storage_url`: PostgreSQL for workers on several hosts) -- named after what makes
its trials comparable (:func:`study_name`), so

- a killed search resumes where it stopped: completed trials stay in the file, a trial that was running when
  its process died is marked failed when the search resumes (:func:`fail_dead_trials`: its process, recorded in
  the trial, is gone; or, for a process on another host, by the heartbeat) and does not count, and the next run
  only adds the trials still missing (``trials`` counts *completed* trials);
- a resumed search continues the sequence an uninterrupted one would have sampled: the sampler is made afresh for
  every trial, seeded from the seed and the trials finished before it (:class:`TrialSeededSampler`), so a
  restarted process neither replays the first trials' proposals nor depends on what a killed trial had drawn;
- several processes share one study (``n_workers``, or worker jobs on other hosts: ``srnas search-arch --worker K``,
  seeded apart by :func:`worker_seed`): each asks the storage for its next trial, the samplers see every process's
  results, and each process runs trials until the study holds ``trials`` completed ones -- exactly that many: a
  process does not start a trial the study no longer needs, and waits while the last ones run elsewhere, taking over
  one whose process died (:func:`run_trials`);
- a changed budget, strategy, supernet or latency table gets a new study in the same file, and going back
  finds the old one; the name reads as what it is (``search_arch-x2-cpu_auto-33ms-<digest>``) and the digest keeps a
  changed configuration from resuming an old study.

What a dashboard (``optuna-dashboard sqlite:///results/search_arch/study.db``) shows: the objectives by name
(:data:`METRIC_NAMES`: ``psnr_db``, and ``predicted_ms`` in Pareto mode), the sampled parameters (width and cell
*levels*, schemes by name) and, beside them, the architecture by name (:data:`LABEL_PREFIX` parameters:
``arch_width`` 24, ``arch_cell0`` ``conv``; :func:`label_architecture`). The labels are recorded, not sampled, and
hidden from the samplers (:class:`TrialSeededSampler`), so the samplers see exactly the levels they model.

Each trial records its architecture, predicted latency and PSNR as user attributes; feasibility (predicted
latency within the budget plus its slack: admission) is a constraint the TPE and GP samplers model; random search
samples blindly. The choice among the feasible trials is made by measurement (:mod:`srnas.search.verify`).

Stage 3's keep-ratio study (:func:`search_keeps`) is persisted and resumed the same way, in its own stage's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from srnas.arch.space import CellConfig, SearchSpace, SubnetConfig
from srnas.atomic import process_alive
from srnas.config import SearchArchConfig, redact_url
from srnas.errors import ConfigError
from srnas.search.candidate import DENSE, ArchCandidate

__all__ = ["LABEL_PREFIX", "METRIC_NAMES", "TrialRecord", "TrialSeededSampler", "block_label", "block_levels", "completed",
           "completed_trials", "fail_dead_trials", "label_architecture", "make_sampler", "open_study", "plain_seeds",
           "quiet_optuna", "run_trials", "search_keeps", "storage_url", "study_name", "suggest_candidate", "trial_seed",
           "worker_seed"]

log = logging.getLogger(__name__)

# What a trial's latency and feasibility are stored under (user attributes).
ARCH_ATTR, LATENCY_ATTR, PSNR_ATTR = "arch", "latency_ms", "psnr"
# Which process runs a trial (recorded when it starts): what tells a trial left running by a dead process.
HOST_ATTR, PID_ATTR = "host", "pid"
HEARTBEAT_S, GRACE_S = 5, 20
POLL_S = 0.5  # how often a process that waits for the study's last trials (run elsewhere) looks again
SURPLUS_ATTR = "surplus"  # a trial started when the study needed no more (two processes took the last one at once)
OPEN_ATTEMPTS = 3  # processes that create a fresh database's tables at once may collide: the loser tries again
CONSTRAINT = "latency_over_budget_ms"
# The objectives' names (Optuna's metric names: what a dashboard shows instead of "Objective 0"), by search mode.
METRIC_NAMES = {"single": ["psnr_db"], "pareto": ["psnr_db", "predicted_ms"]}
# Parameters under this prefix name the architecture a trial's levels stand for: recorded, never sampled.
LABEL_PREFIX = "arch_"


@dataclass(frozen=True)
class TrialRecord:
    """One completed trial, in the order the study ran them."""

    number: int
    candidate: ArchCandidate
    psnr: float
    latency_ms: float
    feasible: bool
    seconds: float
    worker: str

    def row(self) -> dict[str, Any]:
        return {"trial": self.number, "name": self.candidate.name, "psnr": self.psnr, "latency_ms": self.latency_ms,
                "feasible": self.feasible, "seconds": self.seconds, "worker": self.worker,
                "width": self.candidate.subnet.width, "schemes": ".".join(self.candidate.schemes)}


# Bumped when what a trial records changes (v2: the architecture's labels beside the levels), so that a study of
# another version is never resumed.
STUDY_VERSION = 2


def study_name(stage: str, scale: int, target: str, budget_ms: float, identity: Mapping[str, Any]) -> str:
    """``<stage>-x<scale>-<target>-<budget>ms-<12 hex>``: readable (which stage, scale, target and budget), and the
    digest of everything that makes trials comparable (``identity``: config, supernet and table digests) keeps a changed
    configuration from resuming an old study."""
    payload = {"version": STUDY_VERSION, "identity": identity}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{stage}-x{scale}-{target}-{budget_ms:g}ms-{digest}"


def _strategy_sampler(strategy: str, seed: int) -> optuna.samplers.BaseSampler:
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def worker_seed(seed: int, worker: int) -> int:
    """The seed of worker job ``worker`` (``srnas search-arch --worker K``): ``seed`` itself for 0 (the plain command
    and its ``n_workers`` processes), else mixed from both (NumPy's SeedSequence), so that jobs started alike draw
    apart."""
    if worker == 0:
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])


def trial_seed(seed: int, finished: int, running: int) -> int:
    """The seed of a trial's sampler: from the study's ``seed``, the trials ``finished`` (completed) when it starts and
    the trials of other processes ``running`` then (0 with one process), mixed (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, finished, running]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The sampler of ``strategy``, made afresh for every trial and seeded by :func:`trial_seed`.

    A sampler seeded once per process restarts its random sequence whenever a killed search is resumed: the resumed
    process proposes the first trials again. Seeded per trial from what the study holds, a proposal depends only on
    the seed and the finished trials (their values included, for TPE and GP), so a resumed search samples what an
    uninterrupted one would have at the same point: the trial a kill interrupted (failed, not counted) is proposed
    again, then the sequence goes on. Fresh per trial also means no state carried between trials (GP's fitted
    kernels, TPE's cached search space): the history in the study is the whole input.
    """

    def __init__(self, strategy: str, seed: int) -> None:
        self.strategy = strategy
        self.seed = seed
        self._sampler = _strategy_sampler(strategy, seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        _claim(study, trial)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        finished = sum(t.state == TrialState.COMPLETE for t in trials)
        running = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        self._sampler = _strategy_sampler(self.strategy, trial_seed(self.seed, finished, running))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        """The inner sampler's space without the labels (:data:`LABEL_PREFIX`): they repeat the levels by name."""
        space = self._sampler.infer_relative_search_space(study, trial)
        return {name: dist for name, dist in space.items() if not name.startswith(LABEL_PREFIX)}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's sampler is seeded from the study (Optuna calls this for parallel jobs)."""


def _claim(study: optuna.Study, trial: FrozenTrial) -> None:
    """Record which process runs ``trial`` (host, pid) and its first heartbeat, as soon as the trial exists: before
    its parameters are sampled (seconds, for GP), so that a process killed while sampling leaves a trial another
    process can tell as dead (:func:`fail_dead_trials`; the heartbeat, from another host)."""
    storage = study._storage  # Optuna's sampler hooks get the study; its storage is where a trial's attributes go
    storage.set_trial_user_attr(trial._trial_id, HOST_ATTR, socket.gethostname())
    storage.set_trial_user_attr(trial._trial_id, PID_ATTR, os.getpid())
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        storage.record_heartbeat(trial._trial_id)


def make_sampler(strategy: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``strategy`` -- TPE or GP (both model the trials' latency constraint), or random sampling --
    seeded per trial (:class:`TrialSeededSampler`)."""
    return TrialSeededSampler(strategy, seed)


def storage_url(storage: str, local: Path) -> str:
    """Where a study lives: the database URL ``storage`` (``search_arch.storage``), or, when it is empty, the SQLite
    file ``local``."""
    return storage or f"sqlite:///{local.resolve()}"


def open_study(url: str, name: str, cfg: SearchArchConfig, seed: int) -> optuna.Study:
    """Stage 2's study ``name`` in the storage at ``url`` (:func:`storage_url`; created when missing), with a heartbeat
    for crashed trials and its objectives named."""
    return _open(url, name, METRIC_NAMES[cfg.mode], make_sampler(cfg.strategy, seed))


def _open(url: str, name: str, metrics: Sequence[str], sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """The study ``name`` at ``url``, one direction per metric: ``psnr*`` maximized, latencies minimized. A database
    that cannot be opened (no server there, a refused login, no driver) is a one-line ConfigError naming
    ``search_arch.storage`` and the URL, its password masked."""
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return _open_once(url, name, metrics, sampler)
        except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            if attempt < OPEN_ATTEMPTS and _collided(exc):
                time.sleep(0.2 + float(np.random.default_rng().random()))
                continue
            raise ConfigError(f"search_arch.storage: cannot open the study at {redact_url(url)}: "
                              f"{_first_line(exc, url)}") from None
    raise AssertionError("not reached")


def _open_once(url: str, name: str, metrics: Sequence[str], sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    sqlite = url.startswith("sqlite:")
    if sqlite and url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5; it is what resume relies on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url,
            # SQLite: wait for the file's lock; a server: check a pooled connection before use (a restarted server)
            engine_kwargs={"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True},
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
        )
    directions = ["maximize" if m.startswith("psnr") else "minimize" for m in metrics]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                load_if_exists=True)
    if study.metric_names != list(metrics):
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metrics))
    return study


def _collided(exc: BaseException) -> bool:
    """Whether opening failed because another process created the same tables, study or name at the same moment
    (a unique key taken, a table that exists): worth another try, unlike a refused connection."""
    cause = exc if isinstance(exc, sqlalchemy.exc.SQLAlchemyError) else exc.__cause__
    return isinstance(cause, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))


def _first_line(exc: BaseException, url: str) -> str:
    """What went wrong, on one line, without the password of ``url`` (a driver may repeat what it was given)."""
    cause = exc.__cause__ if isinstance(exc, ImportError) and exc.__cause__ is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = lines[0] if lines else type(cause).__name__
    redacted = redact_url(url)
    if redacted != url:  # mask the password wherever it appears, not only inside the URL
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        text = text.replace(url, redacted).replace(password, "***") if password else text
    return text


def suggest_candidate(trial: optuna.Trial, space: SearchSpace, schemes: Sequence[str], keep: float) -> ArchCandidate:
    """Width, one block per cell and one scheme per searchable layer: the same parameters every trial.

    Width and blocks are suggested as integer *levels* ordered by cost (widths ascending; blocks skip < conv <
    wdsr by expansion), so the samplers' models see that neighbouring choices behave alike (more compute, more PSNR
    and latency) instead of unrelated categories. A uniform integer is the same distribution as a uniform category,
    so random search samples exactly as before. Schemes stay categorical.
    """
    widths = sorted(space.widths)
    width = widths[trial.suggest_int("width", 0, len(widths) - 1)]
    blocks = block_levels(space)
    cells = tuple(blocks[trial.suggest_int(f"cell{i}", 0, len(blocks) - 1)] for i in range(space.num_cells))
    choices = [DENSE, *schemes]
    picked = [trial.suggest_categorical("scheme_head", choices)]
    picked += [trial.suggest_categorical(f"scheme_cell{i}", choices) for i in range(space.num_cells)]
    candidate = ArchCandidate.normalized(SubnetConfig(int(width), cells), picked, keep)
    label_architecture(trial, space, candidate.subnet)
    return candidate


def block_levels(space: SearchSpace) -> list[CellConfig]:
    """The space's cell choices in cost order, the integer levels trials suggest: skip < conv < wdsr by expansion."""
    return sorted(space.cell_choices, key=lambda c: (c.block != "skip", c.block == "wdsr", c.expand))


def block_label(cell: CellConfig) -> str:
    """A cell choice by name: ``conv``, ``skip``, ``wdsr4`` (wdsr, expansion 4)."""
    return f"wdsr{cell.expand}" if cell.block == "wdsr" else cell.block


def label_architecture(trial: optuna.Trial, space: SearchSpace, subnet: SubnetConfig) -> None:
    """Record the architecture ``trial``'s levels stand for as categorical parameters (``arch_width``: the width in
    channels; ``arch_cell<i>``: the cell's block by name), so that a dashboard shows (and filters and plots) the
    architecture, not only levels. Written to the storage, not suggested: no sampler draws them (and
    :class:`TrialSeededSampler` keeps them out of the samplers' models)."""
    labels: list[tuple[str, Any, optuna.distributions.CategoricalDistribution]] = [
        (f"{LABEL_PREFIX}width", subnet.width, optuna.distributions.CategoricalDistribution(sorted(space.widths)))]
    names = [block_label(c) for c in block_levels(space)]
    labels += [(f"{LABEL_PREFIX}cell{i}", block_label(cell), optuna.distributions.CategoricalDistribution(names))
               for i, cell in enumerate(subnet.cells)]
    for name, value, dist in labels:
        # Optuna has no public "record a parameter" call; the storage's set_trial_param is what suggest uses.
        trial.storage.set_trial_param(trial._trial_id, name, dist.to_internal_repr(value), dist)


def plain_seeds(space: SearchSpace) -> list[dict[str, Any]]:
    """Trial parameters of the space's plain networks: each width, the first ``d`` cells ``conv`` and the others
    ``skip`` (``d`` = 1 .. ``num_cells``), every layer dense -- the hand-designed family (plain / ECBSR ``m<d>c<w>``)
    the search is judged against. Empty when the space offers no ``conv`` or no ``skip`` cell."""
    blocks = block_levels(space)
    if CellConfig("conv") not in blocks or CellConfig("skip") not in blocks:
        return []
    conv, skip = blocks.index(CellConfig("conv")), blocks.index(CellConfig("skip"))
    n = space.num_cells
    dense = {"scheme_head": DENSE} | {f"scheme_cell{i}": DENSE for i in range(n)}
    return [{"width": w, **{f"cell{i}": conv if i < d else skip for i in range(n)}, **dense}
            for w in range(len(space.widths)) for d in range(1, n + 1)]


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _dead(trial: FrozenTrial, host: str, now: datetime) -> bool:
    """Whether a RUNNING ``trial`` was left by a process that is gone: one of this host whose pid is not alive, or one
    that died before it recorded its process (started more than the heartbeat's grace period ago). A trial of a
    process on another host is left to the heartbeat (Optuna fails it once its heartbeat is stale)."""
    pid = trial.user_attrs.get(PID_ATTR)
    if pid is None:
        started = trial.datetime_start
        return started is None or (now - started).total_seconds() > GRACE_S
    return trial.user_attrs.get(HOST_ATTR) == host and not process_alive(int(pid))


def fail_dead_trials(study: optuna.Study, now: datetime | None = None) -> list[int]:
    """Mark FAILED every RUNNING trial whose process is dead (see :func:`_dead`); return their numbers. Called when a
    search (re)starts, before its first trial, and before each trial after (:func:`run_trials`): a trial a killed
    process left RUNNING would otherwise stay so (the heartbeat only fails it once its grace period is over, maybe
    never if the search finishes first), counted as running by the samplers and by the processes waiting for the
    study's last trials. ``now``: the time trials' ages are taken at (default: now)."""
    host, now = socket.gethostname(), now or datetime.now()
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if _dead(t, host, now)]
    for number in failed:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if failed:
        log.info("trial(s) %s were left running by a process that is gone: marked failed, to be run again",
                 ", ".join(map(str, failed)))
    return failed


class SurplusTrial(Exception):
    """A trial the study no longer needs: processes had started the last ones it needed before this one (two took the
    last at the same moment). Marked failed, without parameters, so no sampler sees it; never a count."""


class _QuietSurplus(logging.Filter):
    """Keeps Optuna's warnings about a :class:`SurplusTrial` (``Trial N failed ...``, with a traceback) out of the log:
    it is no failure. ``numbers``: the surplus trials."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed ") for n in self.numbers)


def _counts(study: optuna.Study) -> tuple[int, int]:
    """(completed, running) trials of the study, every process's."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    return done, len(trials) - done


def _surplus(study: optuna.Study, number: int, wanted: int) -> bool:
    """Whether trial ``number`` is beyond the ``wanted`` trials: at least that many trials numbered before it are
    completed or running. Numbers are given out one at a time under the storage's lock, so every earlier trial is
    there to count, and exactly one of two processes that took the last trial at once finds its trial surplus."""
    earlier = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return sum(t.number < number for t in earlier) >= wanted


def _fail_stale(study: optuna.Study) -> None:
    """Optuna's heartbeat check: a RUNNING trial whose process (on any host) stopped beating is failed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_trials(study: optuna.Study, cfg: SearchArchConfig, budget_ms: float, space: SearchSpace, schemes: Sequence[str],
               evaluate: Callable[[ArchCandidate], tuple[float, float]], *, worker: str,
               on_trial: Callable[[TrialRecord], None] | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Run trials until the study holds ``cfg.trials`` completed ones, counting every process's on every host; a trial
    is feasible (admitted) when its predicted latency is at most ``budget_ms`` (the budget plus its slack: the
    candidates are then measured, :mod:`srnas.search.verify`). Returns how many trials this process completed.

    Exactly ``cfg.trials``: no trial starts while the completed and running ones already make the count; while the last
    trials run elsewhere this process waits (:data:`POLL_S`), and a trial whose process died -- of this host (its pid is
    gone: :func:`fail_dead_trials`) or of another (its heartbeat stopped) -- is failed and run again here; a trial two
    processes started at once beyond the count is failed unrun (:class:`SurplusTrial`). ``stop()`` true ends this
    process's trials between two trials (a worker whose parent died).
    """

    ran = 0
    quiet = _QuietSurplus()

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        if _surplus(study, trial.number, cfg.trials):
            trial.set_user_attr(SURPLUS_ATTR, True)
            quiet.numbers.add(trial.number)
            raise SurplusTrial(f"trial {trial.number}: the study has its {cfg.trials} trials completed or running")
        start = time.perf_counter()
        candidate = suggest_candidate(trial, space, schemes, cfg.prune_keep)
        psnr, latency_ms = evaluate(candidate)
        trial.set_user_attr(ARCH_ATTR, candidate.to_dict())
        trial.set_user_attr(LATENCY_ATTR, latency_ms)
        trial.set_user_attr(PSNR_ATTR, psnr)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        # <= 0 is feasible (Optuna's convention); TPE and GP model it, random sampling ignores it.
        trial.set_constraint(CONSTRAINT, latency_ms - budget_ms)
        return psnr if cfg.mode == "single" else (psnr, latency_ms)

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        if trial.state == TrialState.COMPLETE:
            ran += 1
            if on_trial is not None:
                on_trial(_record(trial, budget_ms))
        elif trial.user_attrs.get(SURPLUS_ATTR):
            log.info("trial %d was not needed (another process took the study's last trial at the same moment): "
                     "marked failed, unrun", trial.number)

    optimize_log = logging.getLogger("optuna.study._optimize")  # where Optuna reports a failed trial
    optimize_log.addFilter(quiet)
    try:
        waiting = False
        while stop is None or not stop():
            fail_dead_trials(study)
            done, running = _counts(study)
            if done >= cfg.trials:
                break
            if done + running >= cfg.trials:  # the last trials run elsewhere: wait for them, or take over a dead one's
                if not waiting:
                    log.info("%d of %d trials completed, the other %d running in other processes: waiting for them",
                             done, cfg.trials, running)
                waiting = True
                time.sleep(POLL_S)
                _fail_stale(study)
                continue
            waiting = False
            study.optimize(objective, n_trials=1, callbacks=[report], catch=(SurplusTrial,), gc_after_trial=False,
                           show_progress_bar=False)
    finally:
        optimize_log.removeFilter(quiet)
    return ran


def _record(trial: FrozenTrial, budget_ms: float) -> TrialRecord:
    attrs = trial.user_attrs
    latency = float(attrs[LATENCY_ATTR])
    return TrialRecord(trial.number, ArchCandidate.from_dict(attrs[ARCH_ATTR], f"trial {trial.number}"),
                       float(attrs[PSNR_ATTR]), latency, latency <= budget_ms, float(attrs.get("seconds", math.nan)),
                       str(attrs.get("worker", "")))


def completed_trials(study: optuna.Study, budget_ms: float) -> list[TrialRecord]:
    """Every completed trial, by trial number."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [_record(t, budget_ms) for t in sorted(trials, key=lambda t: t.number)]


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; the stage reports progress itself."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_keeps(path: Path, name: str, names: Sequence[str], start: Mapping[str, float], *, low: float, step: float,
                 strategy: str, seed: int, trials: int, budget_ms: float,
                 evaluate: Callable[[dict[str, float]], tuple[float, float]],
                 on_trial: Callable[[int, dict[str, float], float, float], None] | None = None
                 ) -> list[tuple[int, dict[str, float], float, float]]:
    """Stage 3's study ``name`` in the SQLite file ``path``: one keep ratio per name in [``low``, 1] (multiples of
    ``step`` from ``low``), maximizing ``evaluate(keeps)[0]`` (PSNR) under ``evaluate(keeps)[1]`` (predicted ms) <=
    ``budget_ms``, until the study holds ``trials`` completed trials.

    ``start`` is tried first (stage 2's choice), then the sampler's proposals. Persisted and resumed like stage 2's
    study: a rerun only runs the trials still missing (a trial a killed process left running is failed and run again),
    and the sampler, seeded per trial, continues the sequence. ``on_trial`` is called for each trial run here.
    Returns ``(number, keeps, psnr, latency_ms)`` per completed trial, by trial number.
    """
    study = _open(storage_url("", path), name, ["psnr_db"], make_sampler(strategy, seed))
    fail_dead_trials(study)
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(dict(start))

    def objective(trial: optuna.Trial) -> float:
        keeps = {name: trial.suggest_float(name, low, 1.0, step=step) for name in names}
        psnr, latency_ms = evaluate(keeps)
        trial.set_user_attr(LATENCY_ATTR, latency_ms)
        trial.set_constraint(CONSTRAINT, latency_ms - budget_ms)
        if on_trial is not None:
            on_trial(trial.number, keeps, psnr, latency_ms)
        return psnr

    remaining = trials - completed(study)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, gc_after_trial=False, show_progress_bar=False)
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    return [(t.number, {n: float(t.params[n]) for n in names}, float(t.values[0]), float(t.user_attrs[LATENCY_ATTR]))
            for t in done]
