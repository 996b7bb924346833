"""Baseline training (the ``train_baseline`` stage): L1 loss, Adam, cosine schedule, exact resume.

Outputs in ``out_dir``:

- ``last.ckpt``: model, optimizer, scheduler, step, RNG state and recent losses, written atomically every
  ``checkpoint_every`` steps and at the end. ``train(..., resume=True)`` continues from it.
- ``model.pt``: final fp32 weights with model name, scale and config (read by :func:`load_trained`), and the
  final figures that depend only on the training (no wall clock, nothing about how the run was resumed: see
  :data:`RUN_FIGURES`), so the same training writes the same bytes.
- ``train_metrics.json``: final loss, steps, seconds, steps/s, validation PSNR.
- ``train_log.csv``: the training curve, one row per reported step (:mod:`srnas.training.history`).

Exact resume: the weights at step ``k`` depend only on the config, the data and the seed. Model
initialisation uses ``seed``; the patches of step ``k`` come from a generator seeded by ``(seed, k)``
(:func:`srnas.training.patches.step_generator`), so no sampler state needs to survive a kill; optimizer
and scheduler state are in the checkpoint. A run killed after a checkpoint and resumed ends with the same
weights as an uninterrupted run on the same machine and thread count.

Speed on CPU: bf16 autocast (``cfg.bf16``) and channels-last (``cfg.channels_last``); see
``bench/bench_train_step.py`` for measured step times. The loss is always computed in fp32.

The one training loop: :func:`run_loop` drives a :class:`StepFunction` (what one step trains, how the weights are
validated and saved) and owns everything around it: ``last.ckpt`` (written every ``checkpoint_every`` steps, resumed
after an identity check), the named loss windows and the divergence check, logging, progress and metrics every
``log_every`` steps, validation, the final figures, ``train_metrics.json`` and the model file, stale temporaries of a
killed run, and, under ``torchrun``, which process writes. Three kinds of training are step functions on it:
baseline training (:func:`train`) and fine-tuning (:mod:`srnas.finetune`, distilled from a frozen teacher) are
:class:`SupervisedStep`; supernet training is :class:`srnas.supernet.train.SandwichStep`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from tqdm import tqdm

from srnas.atomic import remove_stale_temporaries, write_json
from srnas.checkpoint import (
    TRAINING_STATE,
    CheckpointError,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    save_trained,
)
from srnas.config import TrainConfig
from srnas.errors import ConfigError, DataError, SrnasError
from srnas.inference import torch_upscaler
from srnas.metrics import calculate_psnr
from srnas.models import check_scale, count_params, create_model, model_info
from srnas.runtimes.availability import bf16_supported
from srnas.training.history import HISTORY_FILE, TrainHistory
from srnas.training.patches import ImagePairs, PatchSampler, load_pairs, step_generator

__all__ = [
    "LoopResult",
    "LoopSpec",
    "StepFunction",
    "SupervisedStep",
    "TrainResult",
    "TrainingData",
    "TrainingDiverged",
    "config_identity",
    "find_val_set",
    "load_training_data",
    "optimizer_and_schedule",
    "resolve_bf16",
    "run_loop",
    "run_training",
    "train",
    "train_step",
    "validation_psnr",
]

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]
# ``save_model(path, model, metrics)``: write the final weights (atomically) with the scalar final metrics.
ModelSaver = Callable[[Path, nn.Module, dict[str, Any]], None]

CHECKPOINT_FILE = "last.ckpt"
METRICS_FILE = "train_metrics.json"
# Figures of ``train_metrics.json`` that describe the run rather than the weights (wall clock, where it resumed):
# kept out of the model file, whose bytes then depend on the training alone.
RUN_FIGURES = ("seconds", "steps_per_s", "resumed_from_step")

# Config fields that do not change the trained weights: a checkpoint is resumed across changes of these
# (``device`` is the supernet's: a run may resume on another device).
_NON_IDENTITY_FIELDS = ("checkpoint_every", "log_every", "val_every", "device")


class TrainingDiverged(SrnasError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` (or :func:`run_training`) did and wrote."""

    model_path: Path
    metrics_path: Path
    checkpoint_path: Path
    steps: int
    final_loss: float
    seconds: float
    steps_per_s: float
    val_psnr: float | None
    val_set: str | None
    resumed_from_step: int
    bf16: bool
    channels_last: bool


@functools.cache
def resolve_bf16(mode: str) -> bool:
    """``"on"`` -> True, ``"off"`` -> False, ``"auto"`` -> whether the CPU has native bf16."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode == "auto":
        return bf16_supported()
    raise ConfigError(f"bf16: expected auto, on or off, got {mode!r}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, lr_batch: torch.Tensor, hr_batch: torch.Tensor,
               use_bf16: bool, teacher: nn.Module | None = None, distill: float = 0.0) -> torch.Tensor:
    """One optimisation step on a batch; returns the (detached, fp32) L1 loss to HR.

    With a frozen ``teacher`` and ``distill`` > 0 the loss minimised is ``(1 - distill) * L1(sr, hr) + distill *
    L1(sr, teacher(lr))`` (the teacher runs under the same autocast, without gradients); the figure returned is
    still the L1 to HR, so losses stay comparable with plain training.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
        sr = model(lr_batch)
    sr = sr.float()
    to_hr = loss = F.l1_loss(sr, hr_batch)
    if teacher is not None and distill > 0.0:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            target = teacher(lr_batch)
        to_teacher = F.l1_loss(sr, target.float())
        loss = (1.0 - distill) * to_hr + distill * to_teacher
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return to_hr.detach()


def find_val_set(data_dir: Path, scale: int) -> Path | None:
    """``data_dir/val/x{s}`` if present, else the first (by name) eval set with ``x{s}/hr`` and ``x{s}/lr``."""
    preferred = data_dir / "val" / f"x{scale}"
    if (preferred / "hr").is_dir() and (preferred / "lr").is_dir():
        return preferred
    if not data_dir.is_dir():
        return None
    for candidate in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name != "train" and not p.name.startswith(".")):
        folder = candidate / f"x{scale}"
        if (folder / "hr").is_dir() and (folder / "lr").is_dir():
            return folder
    return None


def validation_psnr(model: nn.Module, pairs: ImagePairs) -> float:
    """Mean PSNR (Y channel, ``scale`` pixels of border cropped) of the model in fp32 over ``pairs``."""
    was_training = model.training
    upscale = torch_upscaler(model)
    try:
        scores = [calculate_psnr(upscale(lr), hr, crop_border=pairs.scale, test_y_channel=True) for lr, hr in zip(pairs.lr, pairs.hr)]
    finally:
        model.train(was_training)
    return float(np.mean(scores))


@dataclass(frozen=True)
class TrainingData:
    """Training patches and validation images of one prepared-data folder at one scale."""

    sampler: PatchSampler
    val_pairs: ImagePairs | None
    val_name: str | None


def resolve_val_dir(data_dir: Path, scale: int, val_set: str | None) -> Path | None:
    """``data_dir/<val_set>/x{scale}`` (DataError when it was not prepared), else :func:`find_val_set`."""
    if not val_set:
        return find_val_set(data_dir, scale)
    val_dir = data_dir / val_set / f"x{scale}"
    if not (val_dir / "hr").is_dir():
        raise DataError(f"{val_dir}: validation set {val_set!r} not found for x{scale}")
    return val_dir


def load_training_data(data_dir: Path, scale: int, lr_patch_size: int, val_set: str | None = None) -> TrainingData:
    """``data_dir/train/x{scale}`` as patches, plus the validation set (``val_set``, else :func:`find_val_set`).

    DataError when the training data or a named validation set is missing; no validation set at all is a warning.
    """
    train_dir = data_dir / "train" / f"x{scale}"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: training data not found (run `srnas prepare-data` with scale {scale})")
    sampler = PatchSampler(load_pairs(train_dir, scale), lr_patch_size)
    val_dir = resolve_val_dir(data_dir, scale, val_set)
    val_pairs = load_pairs(val_dir, scale) if val_dir is not None else None
    val_name = val_dir.parent.name if val_dir is not None else None
    if val_pairs is None:
        logger.warning("%s: no validation set for x%d (val/ or an eval set); val_psnr will be null", data_dir, scale)
    return TrainingData(sampler, val_pairs, val_name)


def config_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The config fields that change the trained weights (a checkpoint is resumed only when they match)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NON_IDENTITY_FIELDS}


def optimizer_and_schedule(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Adam, CosineAnnealingLR]:
    """Adam over ``model``'s parameters (``cfg.lr``, ``cfg.weight_decay``) and its cosine schedule from ``cfg.lr`` down to
    ``cfg.min_lr`` over ``cfg.steps`` steps: the optimisation every kind of training uses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.min_lr)


# ------------------------------------------------------------------------------------------- the loop


class StepFunction(Protocol):
    """One kind of training as :func:`run_loop` drives it.

    ``model``, ``optimizer`` and ``scheduler`` are what ``last.ckpt`` saves and restores. ``step(k)`` trains step ``k``
    (0-based): one optimiser step and one schedule step on the batch of step ``k``, which must be a pure function of the
    seed and ``k`` (so a resumed run repeats an uninterrupted one); it returns the step's named losses, the same on every
    process. ``validate()`` scores the current weights (called on the main process only); a figure it cannot compute
    is left out. ``save_model(path, metrics)`` writes the final weights atomically, with the scalar final metrics.
    ``is_main``: this process logs, reports and writes files (the only process but under ``torchrun``);
    ``barrier()`` returns once every process has reached it; ``share(value)`` returns the main process's ``value`` (plain
    data) on every process.
    """

    @property
    def model(self) -> nn.Module: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def scheduler(self) -> LRScheduler: ...

    @property
    def is_main(self) -> bool: ...

    def step(self, index: int) -> dict[str, float]: ...

    def validate(self) -> dict[str, float]: ...

    def save_model(self, path: Path, metrics: dict[str, Any]) -> None: ...

    def barrier(self) -> None: ...

    def share(self, value: Any) -> Any: ...


@dataclass(frozen=True)
class LoopSpec:
    """How :func:`run_loop` names, resumes and reports one run.

    ``label`` names the run in logs, errors and the progress bar; ``summary`` says what is trained (logged at the
    start). ``identity``: ``last.ckpt`` is resumed only when it was written with an equal identity; otherwise the run
    warns that it was written for ``mismatch`` and starts over. ``losses``: the names ``step()`` returns (the first is
    the headline loss); each is reported as its mean over the last ``log_every`` steps. ``final_losses``: the losses
    reported at the end, as ``(name, final name)`` pairs. ``validation``: the names ``validate()`` returns (null in
    ``train_metrics.json`` when missing). ``describe``: the fields of ``train_metrics.json`` that say what was trained on
    what (model, data, precision...). ``model_file``: the final weights' file name in the output folder.
    """

    label: str
    summary: str
    identity: dict[str, Any]
    describe: dict[str, Any]
    model_file: str = "model.pt"
    losses: tuple[str, ...] = ("train_loss",)
    final_losses: tuple[tuple[str, str], ...] = (("train_loss", "final_loss"),)
    validation: tuple[str, ...] = ("val_psnr",)
    mismatch: str = "a different model, config or data"


@dataclass(frozen=True)
class LoopResult:
    """What :func:`run_loop` did and wrote: ``final`` holds the final losses by their final names (``final_loss``...),
    ``validation`` the final validation (empty but on the main process, which alone wrote the files)."""

    model_path: Path
    metrics_path: Path
    checkpoint_path: Path
    steps: int
    final: dict[str, float]
    seconds: float
    steps_per_s: float
    validation: dict[str, float]
    resumed_from_step: int


def _restore_windows(path: Path, saved: Any, windows: dict[str, deque[float]]) -> None:
    """Refill the loss windows from a checkpoint's ``losses``: a mapping of loss names to values, or a bare list (the
    one-loss format written before the losses were named), which is the headline loss's. Names this run does not
    report are ignored (so a checkpoint whose losses had other names resumes the weights with empty windows)."""
    if isinstance(saved, list):
        saved = {next(iter(windows)): saved}
    try:
        for name, window in windows.items():
            window.extend(float(v) for v in saved.get(name, ()))
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot restore the loss history: {exc}") from None


def _main_checkpoint(path: Path, step_fn: StepFunction) -> dict[str, Any] | None:
    """The main process's ``path`` (None when it has none), on every process: under ``torchrun`` on several machines the
    others may have no copy of it, or an older one. CheckpointError on every process when it cannot be read."""
    found: dict[str, Any] = {}
    failure: CheckpointError | None = None
    if step_fn.is_main and path.exists():
        try:
            found = {"checkpoint": load_checkpoint(path, TRAINING_STATE)}
        except CheckpointError as exc:
            failure, found = exc, {"error": str(exc)}
    found = step_fn.share(found)
    if failure is not None:
        raise failure
    if "error" in found:
        raise CheckpointError(found["error"])
    return found.get("checkpoint")


def _resume(path: Path, ckpt: dict[str, Any], step_fn: StepFunction, spec: LoopSpec, windows: dict[str, deque[float]],
            history: TrainHistory, steps: int) -> tuple[int, float]:
    """Restore ``ckpt`` (read from ``path``) into ``step_fn``, ``windows`` and ``history`` when it was written for ``spec.identity``;
    return (step, seconds trained so far), ``(0, 0.0)`` for a checkpoint of another run. CheckpointError when it cannot be restored."""
    if ckpt["identity"] != spec.identity:
        if step_fn.is_main:
            logger.warning("%s: written for %s; starting from scratch", path, spec.mismatch)
        return 0, 0.0
    start_step, elapsed = restore_training_state(path, ckpt, step_fn.model, step_fn.optimizer, step_fn.scheduler)
    _restore_windows(path, ckpt["losses"], windows)
    history.restore(path, ckpt.get("history"))
    if step_fn.is_main:
        logger.info("resuming %s from %s at step %d/%d", spec.label, path, start_step, steps)
    return start_step, elapsed


def _save_checkpoint(path: Path, identity: dict[str, Any], step_fn: StepFunction, step: int,
                     windows: dict[str, deque[float]], history: TrainHistory, elapsed: float) -> None:
    """Write ``last.ckpt`` atomically: everything :func:`_resume` needs to continue after ``step`` steps."""
    save_checkpoint(path, {
        "identity": identity,
        "step": step,
        "model": step_fn.model.state_dict(),
        "optimizer": step_fn.optimizer.state_dict(),
        "scheduler": step_fn.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "losses": {name: list(window) for name, window in windows.items()},
        "history": history.state(),
        "elapsed_s": elapsed,
    })


def _means(windows: dict[str, deque[float]]) -> dict[str, float]:
    """The mean of every loss window that holds a value."""
    return {name: float(np.mean(window)) for name, window in windows.items() if window}


def _pairs_text(figures: dict[str, float], fmt: str) -> str:
    """``name value, name value`` for a log line."""
    return ", ".join(f"{name} {value:{fmt}}" for name, value in figures.items())


def run_loop(
    step_fn: StepFunction,
    spec: LoopSpec,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    on_metrics: MetricsCallback | None = None,
    resume: bool = True,
    progress: bool | None = None,
) -> LoopResult:
    """Run ``step_fn`` for ``cfg.steps`` steps and write ``out_dir/{last.ckpt, <spec.model_file>, train_metrics.json,
    train_log.csv}``.

    The one training loop. It resumes ``last.ckpt`` when ``resume`` and the identity allow (see :class:`LoopSpec`),
    raises TrainingDiverged when a loss is not finite, reports every ``cfg.log_every`` steps (and at the last) the
    mean of each loss over those steps with ``lr`` and ``steps_per_s``, validates every ``cfg.val_every`` steps
    (0: only at the end), writes ``last.ckpt`` every ``cfg.checkpoint_every`` steps (0: only at the end) and finally
    the weights and ``train_metrics.json``; ``train_log.csv`` (:mod:`srnas.training.history`) is rewritten at every
    report and validation. ``on_metrics(metrics, step)`` receives the figures; ``progress``: tqdm bar
    (None: only on a terminal). Only the main process logs, reports and writes; every process waits for it to finish.
    """
    is_main = step_fn.is_main
    ckpt_path = out_dir / CHECKPOINT_FILE
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT_FILE, spec.model_file, METRICS_FILE, HISTORY_FILE):  # a killed run's temporaries; finished files stay
            remove_stale_temporaries(out_dir / name)
    windows: dict[str, deque[float]] = {name: deque(maxlen=cfg.log_every) for name in spec.losses}
    history = TrainHistory((*spec.losses, "lr", *spec.validation))
    history_path = out_dir / HISTORY_FILE
    start_step, elapsed_before = 0, 0.0
    ckpt = _main_checkpoint(ckpt_path, step_fn) if resume else None
    if ckpt is not None:
        start_step, elapsed_before = _resume(ckpt_path, ckpt, step_fn, spec, windows, history, cfg.steps)

    def emit(metrics: dict[str, float], step: int) -> None:
        if on_metrics is not None and is_main and metrics:
            on_metrics(metrics, step)

    show_bar = is_main and (sys.stderr.isatty() if progress is None else progress)
    bar = tqdm(total=cfg.steps, initial=start_step, desc=spec.label, unit="step", disable=not show_bar, dynamic_ncols=True)
    if is_main:
        logger.info("training %s: %s", spec.label, spec.summary)
    t0 = time.perf_counter()
    window_t0, window_steps = t0, 0
    step = start_step
    try:
        while step < cfg.steps:
            losses = step_fn.step(step)
            step += 1
            window_steps += 1
            if not all(math.isfinite(v) for v in losses.values()):
                raise TrainingDiverged(f"{spec.label}: training loss became {_pairs_text(losses, '.5f')} at step {step}; "
                                       "try a lower lr")
            for name, value in losses.items():
                windows[name].append(value)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = window_steps / max(now - window_t0, 1e-9)
                window_t0, window_steps = now, 0
                current = _means(windows)
                lr = float(step_fn.scheduler.get_last_lr()[0])
                bar.set_postfix({name.removeprefix("train_").removeprefix("loss_"): f"{value:.4f}" for name, value in current.items()},
                                refresh=False)
                if is_main and not show_bar:
                    logger.info("step %d/%d %s, lr %.2e, %.2f steps/s", step, cfg.steps, _pairs_text(current, ".5f"), lr, rate)
                emit({**current, "lr": lr, "steps_per_s": rate}, step)
                history.record(step, {**current, "lr": lr})
            if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps and is_main:
                validated = step_fn.validate()
                emit(validated, step)
                history.record(step, validated)
            if is_main and history.has(step):
                history.write(history_path)
            if is_main and (step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                _save_checkpoint(ckpt_path, spec.identity, step_fn, step, windows, history,
                                 elapsed_before + time.perf_counter() - t0)
    finally:
        bar.close()
    run_seconds = time.perf_counter() - t0
    steps_run = cfg.steps - start_step
    if steps_run == 0:  # resumed a finished run: nothing was trained now
        run_seconds = 0.0

    means = _means(windows)
    final = {final_name: means.get(name, float("nan")) for name, final_name in spec.final_losses}
    seconds = elapsed_before + run_seconds
    steps_per_s = steps_run / run_seconds if run_seconds > 0 and steps_run > 0 else 0.0
    validation = step_fn.validate() if is_main else {}
    model_path = out_dir / spec.model_file
    metrics_path = out_dir / METRICS_FILE
    if is_main:
        metrics: dict[str, Any] = {
            **spec.describe,
            "steps": cfg.steps,
            **final,
            "seconds": seconds,
            "steps_per_s": steps_per_s,
            **{name: validation.get(name) for name in spec.validation},
            "resumed_from_step": start_step,
        }
        step_fn.save_model(model_path, {k: v for k, v in metrics.items()
                                        if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in RUN_FIGURES})
        write_json(metrics_path, metrics)
        history.record(cfg.steps, validation)
        history.write(history_path)
        emit({**final, "train_seconds": seconds, "steps_per_s": steps_per_s, **validation}, cfg.steps)
        logger.info("trained %s: %s; %s; %.1f s", spec.label, _pairs_text(final, ".5f"),
                    _pairs_text(validation, ".3f") or "no validation", seconds)
    step_fn.barrier()  # no process leaves (and tears a process group down) before the main one has written everything
    return LoopResult(model_path, metrics_path, ckpt_path, cfg.steps, final, seconds, steps_per_s, validation, start_step)


# ------------------------------------------------------------------------ baseline training and fine-tuning


@dataclass(frozen=True)
class SupervisedStep:
    """The step function of baseline training and fine-tuning (one process): :func:`train_step` on the patches of step
    ``k`` (``step_generator(cfg.seed, k)``), distilled from a frozen ``teacher`` when one is given, then one schedule
    step. Reports ``train_loss`` (the L1 to HR); validates ``val_psnr`` on ``data.val_pairs``; ``saver`` writes the
    final weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    cfg: TrainConfig
    data: TrainingData
    saver: ModelSaver
    use_bf16: bool
    teacher: nn.Module | None = None
    distill: float = 0.0

    @property
    def is_main(self) -> bool:
        return True

    def step(self, index: int) -> dict[str, float]:
        cfg = self.cfg
        lr_batch, hr_batch = self.data.sampler.sample(cfg.batch_size, step_generator(cfg.seed, index), cfg.augment, cfg.channels_last)
        loss = float(train_step(self.model, self.optimizer, lr_batch, hr_batch, self.use_bf16, self.teacher, self.distill))
        self.scheduler.step()
        return {"train_loss": loss}

    def validate(self) -> dict[str, float]:
        if self.data.val_pairs is None:
            return {}
        return {"val_psnr": validation_psnr(self.model, self.data.val_pairs)}

    def save_model(self, path: Path, metrics: dict[str, Any]) -> None:
        self.saver(path, self.model, metrics)

    def barrier(self) -> None:
        """One process: nothing to wait for."""

    def share(self, value: Any) -> Any:
        """One process: ``value`` is already everywhere."""
        return value


def run_training(
    model: nn.Module,
    cfg: TrainConfig,
    data: TrainingData,
    out_dir: Path,
    identity: dict[str, Any],
    *,
    label: str,
    save_model: ModelSaver,
    describe: dict[str, Any],
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    on_metrics: MetricsCallback | None = None,
    resume: bool = True,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``cfg.steps`` steps and write ``out_dir/{last.ckpt,model.pt,train_metrics.json}``.

    Baseline training and fine-tuning: a :class:`SupervisedStep` on :func:`run_loop`, with Adam + cosine schedule from
    ``cfg`` and bf16 autocast and channels-last as configured; ``last.ckpt`` is resumed when its identity equals
    ``identity``. ``teacher``/``distill``: see :func:`train_step`. ``label`` names the run in logs and errors;
    ``describe`` leads ``train_metrics.json``; ``save_model`` writes ``model.pt``. See :func:`train` for the rest.
    """
    use_bf16 = resolve_bf16(cfg.bf16)
    channels_last = cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer, scheduler = optimizer_and_schedule(model, cfg)
    if teacher is not None:
        teacher = teacher.to(memory_format=torch.channels_last) if channels_last else teacher
        teacher.eval().requires_grad_(False)
    sampler, val_pairs, val_name = data.sampler, data.val_pairs, data.val_name
    spec = LoopSpec(
        label=label,
        summary=f"{cfg.steps} steps, batch {cfg.batch_size}, LR patch {cfg.lr_patch_size}, bf16 {use_bf16}, channels_last "
                f"{channels_last}, {len(sampler)} train images"
                + (f", distill {distill} from a teacher" if teacher is not None and distill > 0 else ""),
        identity=identity,
        describe={**describe, "val_set": val_name, "val_images": len(val_pairs) if val_pairs is not None else 0,
                  "train_images": len(sampler), "params": count_params(model), "bf16": use_bf16, "channels_last": channels_last},
    )
    step_fn = SupervisedStep(model, optimizer, scheduler, cfg, data, save_model, use_bf16, teacher, distill)
    result = run_loop(step_fn, spec, cfg, Path(out_dir), on_metrics=on_metrics, resume=resume, progress=progress)
    return TrainResult(result.model_path, result.metrics_path, result.checkpoint_path, result.steps, result.final["final_loss"],
                       result.seconds, result.steps_per_s, result.validation.get("val_psnr"), val_name,
                       result.resumed_from_step, use_bf16, channels_last)


def train(
    model_name: str,
    scale: int,
    data_dir: Path,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    on_metrics: MetricsCallback | None = None,
    resume: bool = True,
    progress: bool | None = None,
    val_set: str | None = None,
) -> TrainResult:
    """Train registered model ``model_name`` at ``scale`` on ``data_dir/train/x{scale}`` (prepared data).

    ``on_metrics(metrics, step)`` receives float metrics: ``train_loss``, ``lr`` and ``steps_per_s`` every
    ``log_every`` steps, ``val_psnr`` at validations, and the final figures at the end.
    ``resume``: continue from ``out_dir/last.ckpt`` when it exists and was written for the same model,
    scale, training config and data (a checkpoint for anything else is ignored with a warning; an
    unreadable one raises CheckpointError). ``progress``: tqdm bar (None: only on a terminal).
    ``val_set``: the prepared set scored for ``val_psnr`` (default: ``val``, else the first eval set by name).
    Raises ConfigError for an unknown model or one without weights (``bicubic``), DataError for missing data.
    """
    info = model_info(model_name)
    check_scale(scale)
    if not info.has_weights:
        raise ConfigError(f"model {model_name!r} has no weights to train; it goes straight to export/evaluate")
    data = load_training_data(Path(data_dir), scale, cfg.lr_patch_size, val_set)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = create_model(model_name, scale)
    identity = {"model_name": model_name, "scale": scale, "config": config_identity(cfg), "data": data.sampler.fingerprint()}

    def save_model(path: Path, trained: nn.Module, metrics: dict[str, Any]) -> None:
        save_trained(path, trained, model_name, scale, dataclasses.asdict(cfg), extra={"metrics": metrics})

    return run_training(model, cfg, data, Path(out_dir), identity, label=f"{model_name} x{scale}", save_model=save_model,
                        describe={"model": model_name, "scale": scale}, on_metrics=on_metrics, resume=resume,
                        progress=progress)
