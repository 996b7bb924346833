"""Baseline training (the ``train_baseline`` stage): L1 loss, Adam, cosine schedule, exact resume.

Outputs in ``out_dir``:

- ``last.ckpt``: model, optimizer, scheduler, step, RNG state and recent losses, written atomically every
  ``checkpoint_every`` steps and at the end. ``train(..., resume=True)`` continues from it.
- ``model.pt``: final fp32 weights with model name, scale and config (read by :func:`load_trained`).
- ``train_metrics.json``: final loss, steps, seconds, steps/s, validation PSNR.

Exact resume: the weights at step ``k`` depend only on the config, the data and the seed. Model
initialisation uses ``seed``; the patches of step ``k`` come from a generator seeded by ``(seed, k)``
(:func:`srnas.training.patches.step_generator`), so no sampler state needs to survive a kill; optimizer
and scheduler state are in the checkpoint. A run killed after a checkpoint and resumed ends with the same
weights as an uninterrupted run on the same machine and thread count.

Speed on CPU: bf16 autocast (``cfg.bf16``) and channels-last (``cfg.channels_last``); see
``bench/bench_train_step.py`` for measured step times. The loss is always computed in fp32.

The step loop itself (checkpoints, resume with an identity check, cosine schedule, progress, metrics, final
validation, atomic outputs) is :func:`run_training`, shared with fine-tuning (:mod:`srnas.finetune`), which
passes a frozen ``teacher`` to distill from; :func:`train` only builds the model and says how to save it.
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from srnas.atomic import write_json
from srnas.checkpoint import TRAINING_STATE, load_checkpoint, restore_training_state, save_checkpoint, save_trained
from srnas.config import TrainConfig
from srnas.errors import ConfigError, DataError, SrnasError
from srnas.inference import torch_upscaler
from srnas.metrics import calculate_psnr
from srnas.models import check_scale, count_params, create_model, model_info
from srnas.runtimes.availability import bf16_supported
from srnas.training.patches import ImagePairs, PatchSampler, load_pairs, step_generator

__all__ = [
    "TrainResult",
    "TrainingData",
    "TrainingDiverged",
    "config_identity",
    "find_val_set",
    "load_training_data",
    "resolve_bf16",
    "run_training",
    "train",
    "train_step",
]

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]
# ``save_model(path, model, metrics)``: write the final weights (atomically) with the scalar final metrics.
ModelSaver = Callable[[Path, nn.Module, dict[str, Any]], None]

# Config fields that do not change the trained weights: a checkpoint is resumed across changes of these.
_NON_IDENTITY_FIELDS = ("checkpoint_every", "log_every", "val_every")


class TrainingDiverged(SrnasError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
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


def validation_psnr(model: nn.Module, pairs: ImagePairs) -> float | None:
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


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files a killed run left behind (``.last.ckpt.XXXX.tmp``); finished files are never touched."""
    for name in ("last.ckpt", "model.pt", "train_metrics.json"):
        for tmp in out_dir.glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)


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

    The one step loop behind :func:`train` and fine-tuning: Adam + cosine schedule from ``cfg``, patches of step
    ``k`` from ``step_generator(cfg.seed, k)``, bf16 autocast and channels-last as configured, ``last.ckpt`` every
    ``cfg.checkpoint_every`` steps, resumed when its ``identity`` equals ``identity`` (else a warning and a fresh
    start). ``teacher``/``distill``: see :func:`train_step`. ``label`` names the run in logs and errors;
    ``describe`` leads ``train_metrics.json``; ``save_model`` writes ``model.pt``. See :func:`train` for the rest.
    """
    use_bf16 = resolve_bf16(cfg.bf16)
    channels_last = cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps, eta_min=cfg.min_lr)
    if teacher is not None:
        teacher = teacher.to(memory_format=torch.channels_last) if channels_last else teacher
        teacher.eval().requires_grad_(False)
    sampler, val_pairs, val_name = data.sampler, data.val_pairs, data.val_name

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    ckpt_path = out_dir / "last.ckpt"
    start_step = 0
    elapsed_before = 0.0
    losses: deque[float] = deque(maxlen=cfg.log_every)
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, TRAINING_STATE)
        if ckpt["identity"] != identity:
            logger.warning("%s: written for a different model, config or data; starting from scratch", ckpt_path)
        else:
            start_step, elapsed_before = restore_training_state(ckpt_path, ckpt, model, optimizer, scheduler)
            losses.extend(float(x) for x in ckpt["losses"])
            logger.info("resuming %s from %s at step %d/%d", label, ckpt_path, start_step, cfg.steps)

    def checkpoint(step: int, elapsed: float) -> None:
        save_checkpoint(ckpt_path, {
            "identity": identity,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "losses": list(losses),
            "elapsed_s": elapsed,
        })

    def emit(metrics: dict[str, float], step: int) -> None:
        if on_metrics is not None:
            on_metrics(metrics, step)

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=cfg.steps, initial=start_step, desc=label, unit="step", disable=not show_bar, dynamic_ncols=True)
    logger.info("training %s: %d steps, batch %d, LR patch %d, bf16 %s, channels_last %s, %d train images%s",
                label, cfg.steps, cfg.batch_size, cfg.lr_patch_size, use_bf16, channels_last, len(sampler),
                f", distill {distill} from a teacher" if teacher is not None and distill > 0 else "")
    t0 = time.perf_counter()
    window_t0, window_steps = t0, 0
    step = start_step
    try:
        while step < cfg.steps:
            lr_batch, hr_batch = sampler.sample(cfg.batch_size, step_generator(cfg.seed, step), cfg.augment, channels_last)
            loss = float(train_step(model, optimizer, lr_batch, hr_batch, use_bf16, teacher, distill))
            scheduler.step()
            step += 1
            window_steps += 1
            if not math.isfinite(loss):
                raise TrainingDiverged(f"{label}: training loss became {loss} at step {step}; try a lower lr")
            losses.append(loss)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = window_steps / max(now - window_t0, 1e-9)
                window_t0, window_steps = now, 0
                mean_loss = float(np.mean(losses))
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                if not show_bar:
                    logger.info("step %d/%d loss %.5f lr %.2e %.1f steps/s", step, cfg.steps, mean_loss, scheduler.get_last_lr()[0], rate)
                emit({"train_loss": mean_loss, "lr": float(scheduler.get_last_lr()[0]), "steps_per_s": rate}, step)
            if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps and val_pairs is not None:
                psnr = validation_psnr(model, val_pairs)
                if psnr is not None:
                    emit({"val_psnr": psnr}, step)
            if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint(step, elapsed_before + time.perf_counter() - t0)
    finally:
        bar.close()
    run_seconds = time.perf_counter() - t0
    steps_run = cfg.steps - start_step
    if steps_run == 0:  # resumed a finished run: nothing was trained now
        run_seconds = 0.0

    val_psnr = validation_psnr(model, val_pairs) if val_pairs is not None else None
    final_loss = float(np.mean(losses)) if losses else float("nan")
    seconds = elapsed_before + run_seconds
    steps_per_s = steps_run / run_seconds if run_seconds > 0 and steps_run > 0 else 0.0
    metrics: dict[str, Any] = {
        **describe,
        "steps": cfg.steps,
        "final_loss": final_loss,
        "seconds": seconds,
        "steps_per_s": steps_per_s,
        "val_psnr": val_psnr,
        "val_set": val_name,
        "val_images": len(val_pairs) if val_pairs is not None else 0,
        "train_images": len(sampler),
        "params": count_params(model),
        "bf16": use_bf16,
        "channels_last": channels_last,
        "resumed_from_step": start_step,
    }
    model_path = out_dir / "model.pt"
    metrics_path = out_dir / "train_metrics.json"
    save_model(model_path, model, {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})
    write_json(metrics_path, metrics)
    final = {"final_loss": final_loss, "train_seconds": seconds, "steps_per_s": steps_per_s}
    if val_psnr is not None:
        final["val_psnr"] = val_psnr
    emit(final, cfg.steps)
    logger.info("trained %s: loss %.5f, val PSNR %s, %.1f s", label, final_loss,
                f"{val_psnr:.3f} dB ({val_name})" if val_psnr is not None else "n/a", seconds)
    return TrainResult(model_path, metrics_path, ckpt_path, cfg.steps, final_loss, seconds, steps_per_s, val_psnr,
                       val_name, start_step, use_bf16, channels_last)


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
