"""Supernet training (the ``train_supernet`` stage): the sandwich rule with in-place distillation, DDP-ready.

Each step, on one batch of patches:

1. the **largest** subnet is trained against HR: ``L1(sr_largest, hr)``;
2. the **smallest** and ``num_random`` **random** subnets are trained against a mix of HR and the largest
   subnet's *detached* output (in-place distillation)::

       (1 - distill) * L1(sr, hr) + distill * L1(sr, sr_largest.detach())

   Pure distillation (``distill = 1``, BigNAS's choice) gives the small subnets a target they can reach and
   keeps them consistent with the teacher; HR alone (``distill = 0``) pulls every subnet towards the same
   ground truth but lets the small ones fight the large ones over the shared filters. The default 0.5
   keeps HR in the loss of every subnet (SR targets are exact, unlike classification's soft labels, so the
   ground truth stays useful) while half of the small subnets' gradient follows the teacher;
3. the loss minimised is ``L_largest + child_weight * sum(L_other)``, back-propagated once (the gradients of
   all subnets accumulate in the shared weights), then one Adam step and one cosine-schedule step.

   ``child_weight`` < 1 keeps the largest subnet's own gradient from being outvoted on the weights every subnet
   shares. Measured on T91 (2000 steps, batch 32, default space, Set5 x2; ``bench/bench_supernet.py``): the
   largest subnet inherited 36.03 dB with ``child_weight`` 1 and 36.35 dB with 0.5, against 36.43 dB for the
   same architecture trained alone; two mid-size subnets did as well or better with 0.5 (34.46 -> 34.47,
   34.68 -> 34.74 dB). Fewer random subnets (``num_random`` 1) also helped the largest (36.23) but hurt the
   others (34.16, 34.21); pure distillation (``distill`` 1) hurt the largest (35.80).

The subnets of step ``k`` (largest, smallest, then ``num_random`` draws of ``SearchSpace.sample``) come from
a generator seeded by ``(seed, k)``; the patches from one seeded by ``(seed, k, rank)``. Nothing random
outlives a step, so a run resumed from ``last.ckpt`` ends with the same weights as an uninterrupted one on the
same machine, thread count and number of processes.

Distributed data parallel: launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1 in the
environment) the same call initialises a process group (gloo on CPU, NCCL on GPU), wraps the sandwich in
``DistributedDataParallel`` (one forward computing every subnet of the step, one backward, so DDP all-reduces
once), gives each process ``batch_size / N`` patches from its own patch generator, and lets only rank 0 log,
show progress and write files. Replicas start from the same seed and DDP broadcasts rank 0's weights, so
they stay identical. ``batch_size`` is the global batch: the effective batch does not change with N.

CPU speed: bf16 autocast (``bf16``) and channels-last activations (``channels_last``), as in baseline
training; the losses are computed in fp32. ``bench/bench_supernet.py`` measures a supernet step against a
plain training step of the largest subnet.

Outputs in ``out_dir`` (rank 0): ``last.ckpt`` (resumable), ``supernet.pt`` (:func:`load_supernet`),
``train_metrics.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from srnas.arch.space import SearchSpace, SubnetConfig
from srnas.atomic import write_json
from srnas.checkpoint import TRAINING_STATE, CheckpointError, load_checkpoint, restore_training_state, save_checkpoint
from srnas.config import SupernetConfig
from srnas.errors import ConfigError, DataError
from srnas.models import check_scale, count_params
from srnas.supernet.supernet import SRSupernet, save_supernet
from srnas.training.loop import TrainingDiverged, resolve_bf16, resolve_val_dir, validation_psnr
from srnas.training.patches import ImagePairs, PatchSampler, load_pairs

__all__ = [
    "SupernetTrainResult",
    "DistContext",
    "distributed_context",
    "patch_generator",
    "sandwich_subnets",
    "SandwichLoss",
    "train_supernet",
]

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]

# Config fields that do not change the trained weights: a checkpoint is resumed across changes of these.
_NON_IDENTITY_FIELDS = ("checkpoint_every", "log_every", "val_every", "device")


@dataclass(frozen=True)
class SupernetTrainResult:
    """What :func:`train_supernet` did; ``supernet`` is the trained module (this process's replica)."""

    supernet_path: Path
    metrics_path: Path
    checkpoint_path: Path
    steps: int
    final_loss: float
    seconds: float
    steps_per_s: float
    val_psnr_largest: float | None
    val_psnr_smallest: float | None
    val_set: str | None
    resumed_from_step: int
    world_size: int
    bf16: bool
    channels_last: bool
    supernet: SRSupernet = dataclasses.field(repr=False, compare=False)  # the trained weights, on every rank


# ------------------------------------------------------------------------------------ randomness


def patch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The patch generator of one process at one step: a pure function of ``(seed, step, rank)``."""
    state = np.random.SeedSequence([seed, step, rank, 0x5342]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


def sandwich_subnets(space: SearchSpace, seed: int, step: int, num_random: int) -> list[SubnetConfig]:
    """The subnets trained at ``step``: largest, smallest, then ``num_random`` uniform draws (same on every rank)."""
    rng = np.random.default_rng([seed, step, 0x5357])
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(num_random))]


# ----------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``world_size`` processes, this one ``rank`` (``local_rank`` on its node)."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def resolve_device(mode: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's ``local_rank`` GPU) when available, else CPU; ``cpu``; ``cuda``."""
    if mode == "cpu" or (mode == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("supernet.train.device: cuda requested but torch sees no CUDA device")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@contextlib.contextmanager
def distributed_context(device_mode: str = "auto") -> Iterator[DistContext]:
    """Join (or start) the process group ``torchrun`` describes in ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``.

    Without those variables (or ``WORLD_SIZE=1``) this is a single process and touches nothing. A group
    this context created (gloo on CPU, NCCL on GPU) is destroyed on exit; one that was already initialised
    by the caller is used and left alone.
    """
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_mode, local_rank)
    if world <= 1:
        yield DistContext(1, 0, 0, device, False)
        return
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    ctx = DistContext(dist.get_world_size(), dist.get_rank(), local_rank, device, owns)
    try:
        yield ctx
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- the step


class SandwichLoss(nn.Module):
    """One sandwich step's forward: every subnet of the step on one batch, returning the loss to minimise.

    ``subnets[0]`` is the teacher (the largest): ``L1(sr, hr)``. Every other subnet adds ``child_weight *
    ((1 - distill) * L1(sr, hr) + distill * L1(sr, teacher.detach()))``. Computing all subnets in a single
    ``forward`` lets ``DistributedDataParallel`` wrap it unchanged (one forward, one backward, one all-reduce
    per step). Returns ``(total, report)``; ``report`` holds, detached, each subnet's L1 to HR (largest first).
    """

    def __init__(self, supernet: SRSupernet, *, distill: float = 0.5, child_weight: float = 0.5, bf16: bool = False) -> None:
        super().__init__()
        self.supernet = supernet
        self.distill = distill
        self.child_weight = child_weight
        self.bf16 = bf16

    def _run(self, lr: torch.Tensor, subnet: SubnetConfig) -> torch.Tensor:
        with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            sr = self.supernet(lr, subnet)
        return sr.float()

    def forward(self, lr: torch.Tensor, hr: torch.Tensor, subnets: Sequence[SubnetConfig]) -> tuple[torch.Tensor, torch.Tensor]:
        teacher = self._run(lr, subnets[0])
        total = F.l1_loss(teacher, hr)
        report = [total.detach()]
        target = teacher.detach()
        for subnet in subnets[1:]:
            sr = self._run(lr, subnet)
            to_hr = F.l1_loss(sr, hr)
            if self.distill == 0.0:
                loss = to_hr
            elif self.distill == 1.0:
                loss = F.l1_loss(sr, target)
            else:
                loss = (1.0 - self.distill) * to_hr + self.distill * F.l1_loss(sr, target)
            total = total + self.child_weight * loss
            report.append(to_hr.detach())
        return total, torch.stack(report)


# ------------------------------------------------------------------------------------------ driver


def _identity(cfg: SupernetConfig, data_fingerprint: str, world_size: int) -> dict[str, Any]:
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _NON_IDENTITY_FIELDS}
    return {"scale": cfg.scale, "space": SearchSpace(cfg.space).to_dict(), "train": train, "data": data_fingerprint,
            "world_size": world_size}


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files a killed run left behind (``.last.ckpt.XXXX.tmp``); finished files are never touched."""
    for name in ("last.ckpt", "supernet.pt", "train_metrics.json"):
        for tmp in out_dir.glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)


def _subnet_psnr(supernet: SRSupernet, subnet: SubnetConfig, pairs: ImagePairs) -> float | None:
    """Validation PSNR of ``subnet`` with inherited weights (a standalone copy, fp32, CPU)."""
    model = supernet.get_active_subnet(subnet).cpu().eval()
    return validation_psnr(model, pairs)


def train_supernet(
    data_dir: str | os.PathLike[str],
    cfg: SupernetConfig,
    out_dir: str | os.PathLike[str],
    *,
    on_metrics: MetricsCallback | None = None,
    resume: bool = True,
    progress: bool | None = None,
    val_set: str | None = None,
) -> SupernetTrainResult:
    """Train the supernet of ``cfg.space`` at ``cfg.scale`` on ``data_dir/train/x{scale}`` (prepared data).

    ``on_metrics(metrics, step)`` (rank 0 only) receives float metrics every ``log_every`` steps:
    ``train_loss`` (the largest subnet's L1 to HR, comparable with baseline training), ``loss_smallest``,
    ``loss_random`` (mean over the random subnets), ``lr``, ``steps_per_s``; ``val_psnr_largest`` /
    ``val_psnr_smallest`` at validations; the final figures at the end. Losses are averaged over processes.
    ``resume``: continue from ``out_dir/last.ckpt`` when it was written for the same space, scale, training
    config, data and number of processes (otherwise it is ignored with a warning; an unreadable one raises
    CheckpointError). ``progress``: tqdm bar (None: only on a terminal). ``val_set``: the prepared set scored
    (default ``val``, else the first eval set by name). Under ``torchrun`` see the module docstring.
    """
    train_cfg = cfg.train
    scale = check_scale(cfg.scale, "supernet.scale")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train_dir = data_dir / "train" / f"x{scale}"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: training data not found (run `srnas prepare-data` with scale {scale})")
    space = SearchSpace(cfg.space)

    with distributed_context(train_cfg.device) as dist_ctx:
        world, rank, device = dist_ctx.world_size, dist_ctx.rank, dist_ctx.device
        if train_cfg.batch_size % world:
            raise ConfigError(f"supernet.train.batch_size: {train_cfg.batch_size} does not split over {world} processes")
        local_batch = train_cfg.batch_size // world
        sampler = PatchSampler(load_pairs(train_dir, scale), train_cfg.lr_patch_size)
        val_pairs: ImagePairs | None = None
        val_name: str | None = None
        if dist_ctx.is_main:
            val_dir = resolve_val_dir(data_dir, scale, val_set)
            if val_dir is not None:
                val_pairs = load_pairs(val_dir, scale)
                val_name = val_dir.parent.name
            else:
                logger.warning("%s: no validation set for x%d; val_psnr_* will be null", data_dir, scale)

        use_bf16 = resolve_bf16(train_cfg.bf16) if device.type == "cpu" else (
            train_cfg.bf16 == "on" or (train_cfg.bf16 == "auto" and torch.cuda.is_bf16_supported()))
        channels_last = train_cfg.channels_last
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            supernet = SRSupernet(space, scale)
        supernet.to(device)
        supernet.train()
        optimizer = torch.optim.Adam(supernet.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_cfg.steps, eta_min=train_cfg.min_lr)
        identity = _identity(cfg, sampler.fingerprint(), world)

        ckpt_path = out_dir / "last.ckpt"
        if dist_ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(out_dir)
        start_step = 0
        elapsed_before = 0.0
        window = max(train_cfg.log_every, 1)
        history: dict[str, deque[float]] = {k: deque(maxlen=window) for k in ("largest", "smallest", "random")}
        if resume and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path, TRAINING_STATE)
            if ckpt["identity"] != identity:
                if dist_ctx.is_main:
                    logger.warning("%s: written for a different space, config, data or process count; starting from scratch", ckpt_path)
            else:
                start_step, elapsed_before = restore_training_state(ckpt_path, ckpt, supernet, optimizer, scheduler)
                try:
                    for key, values in ckpt["losses"].items():
                        history[key].extend(float(v) for v in values)
                except (KeyError, ValueError, TypeError, AttributeError) as exc:
                    raise CheckpointError(f"{ckpt_path}: cannot restore the loss history: {exc}") from None
                if dist_ctx.is_main:
                    logger.info("resuming the supernet x%d from %s at step %d/%d", scale, ckpt_path, start_step, train_cfg.steps)

        sandwich: nn.Module = SandwichLoss(supernet, distill=train_cfg.distill, child_weight=train_cfg.child_weight, bf16=use_bf16)
        if dist_ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            sandwich = DistributedDataParallel(
                sandwich,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,  # each step uses one block type per cell, not all
            )

        def checkpoint(step: int, elapsed: float) -> None:
            save_checkpoint(ckpt_path, {
                "identity": identity,
                "step": step,
                "model": supernet.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "losses": {k: list(v) for k, v in history.items()},
                "elapsed_s": elapsed,
            })

        def emit(metrics: dict[str, float], step: int) -> None:
            if on_metrics is not None and dist_ctx.is_main:
                on_metrics(metrics, step)

        def means() -> dict[str, float]:
            out = {"train_loss": float(np.mean(history["largest"])) if history["largest"] else float("nan"),
                   "loss_smallest": float(np.mean(history["smallest"])) if history["smallest"] else float("nan")}
            if history["random"]:
                out["loss_random"] = float(np.mean(history["random"]))
            return out

        def validate() -> dict[str, float]:
            if val_pairs is None:
                return {}
            found = {"val_psnr_largest": _subnet_psnr(supernet, space.largest(), val_pairs),
                     "val_psnr_smallest": _subnet_psnr(supernet, space.smallest(), val_pairs)}
            return {k: v for k, v in found.items() if v is not None}

        show_bar = dist_ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
        bar = tqdm(total=train_cfg.steps, initial=start_step, desc=f"supernet x{scale}", unit="step", disable=not show_bar,
                   dynamic_ncols=True)
        if dist_ctx.is_main:
            logger.info("training the supernet x%d (%s subnets): %d steps, sandwich of %d, batch %d over %d process(es), "
                        "LR patch %d, bf16 %s, channels_last %s, %s", scale, f"{space.size():,}", train_cfg.steps,
                        2 + train_cfg.num_random, train_cfg.batch_size, world, train_cfg.lr_patch_size, use_bf16,
                        channels_last, device)
        t0 = time.perf_counter()
        window_t0, window_steps = t0, 0
        step = start_step
        quiet = warnings.catch_warnings()
        quiet.__enter__()
        # 1x1 weights' gradients come back with channels-last strides, which DDP reports as a layout mismatch
        # with its bucket views; for size-1 dimensions the memory layout is the same.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        try:
            while step < train_cfg.steps:
                lr_batch, hr_batch = sampler.sample(local_batch, patch_generator(train_cfg.seed, step, rank), train_cfg.augment,
                                                    channels_last)
                if device.type != "cpu":
                    lr_batch = lr_batch.to(device, non_blocking=True)
                    hr_batch = hr_batch.to(device, non_blocking=True)
                subnets = sandwich_subnets(space, train_cfg.seed, step, train_cfg.num_random)
                optimizer.zero_grad(set_to_none=True)
                total, report = sandwich(lr_batch, hr_batch, subnets)
                total.backward()
                optimizer.step()
                scheduler.step()
                if dist_ctx.distributed:
                    torch.distributed.all_reduce(report)
                    report = report / world
                values = report.cpu().tolist()
                step += 1
                window_steps += 1
                if not all(math.isfinite(v) for v in values):
                    raise TrainingDiverged(f"supernet x{scale}: training loss became {values} at step {step}; try a lower lr")
                history["largest"].append(values[0])
                history["smallest"].append(values[1])
                if len(values) > 2:
                    history["random"].append(float(np.mean(values[2:])))
                bar.update(1)
                if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                    now = time.perf_counter()
                    rate = window_steps / max(now - window_t0, 1e-9)
                    window_t0, window_steps = now, 0
                    current = means()
                    bar.set_postfix(loss=f"{current['train_loss']:.4f}", small=f"{current['loss_smallest']:.4f}", refresh=False)
                    if dist_ctx.is_main and not show_bar:
                        logger.info("step %d/%d loss largest %.5f smallest %.5f lr %.2e %.2f steps/s", step, train_cfg.steps,
                                    current["train_loss"], current["loss_smallest"], scheduler.get_last_lr()[0], rate)
                    emit({**current, "lr": float(scheduler.get_last_lr()[0]), "steps_per_s": rate}, step)
                if train_cfg.val_every and step % train_cfg.val_every == 0 and step < train_cfg.steps and dist_ctx.is_main:
                    emit(validate(), step)
                if dist_ctx.is_main and (step == train_cfg.steps or (train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0)):
                    checkpoint(step, elapsed_before + time.perf_counter() - t0)
        finally:
            quiet.__exit__(None, None, None)
            bar.close()
        run_seconds = time.perf_counter() - t0
        steps_run = train_cfg.steps - start_step
        if steps_run == 0:
            run_seconds = 0.0

        supernet_path = out_dir / "supernet.pt"
        metrics_path = out_dir / "train_metrics.json"
        final = means()
        seconds = elapsed_before + run_seconds
        steps_per_s = steps_run / run_seconds if run_seconds > 0 and steps_run > 0 else 0.0
        val = validate() if dist_ctx.is_main else {}
        if dist_ctx.is_main:
            metrics: dict[str, Any] = {
                "scale": scale,
                "steps": train_cfg.steps,
                "final_loss": final["train_loss"],
                "final_loss_smallest": final["loss_smallest"],
                "seconds": seconds,
                "steps_per_s": steps_per_s,
                "val_psnr_largest": val.get("val_psnr_largest"),
                "val_psnr_smallest": val.get("val_psnr_smallest"),
                "val_set": val_name,
                "val_images": len(val_pairs) if val_pairs is not None else 0,
                "train_images": len(sampler),
                "params": count_params(supernet),
                "space_size": space.size(),
                "largest": space.largest().name,
                "smallest": space.smallest().name,
                "sandwich": 2 + train_cfg.num_random,
                "world_size": world,
                "bf16": use_bf16,
                "channels_last": channels_last,
                "resumed_from_step": start_step,
            }
            save_supernet(supernet_path, supernet, extra={"config": dataclasses.asdict(cfg), "metrics": {
                k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}})
            write_json(metrics_path, metrics)
            emit({"final_loss": final["train_loss"], "final_loss_smallest": final["loss_smallest"], "train_seconds": seconds,
                  "steps_per_s": steps_per_s, **val}, train_cfg.steps)
            logger.info("trained the supernet x%d: loss largest %.5f smallest %.5f, val PSNR largest %s smallest %s, %.1f s",
                        scale, final["train_loss"], final["loss_smallest"],
                        f"{val['val_psnr_largest']:.3f}" if "val_psnr_largest" in val else "n/a",
                        f"{val['val_psnr_smallest']:.3f}" if "val_psnr_smallest" in val else "n/a", seconds)
        dist_ctx.barrier()  # no process leaves (and tears the group down) before rank 0 has written everything
    return SupernetTrainResult(supernet_path, metrics_path, ckpt_path, train_cfg.steps, final["train_loss"], seconds,
                               steps_per_s, val.get("val_psnr_largest"), val.get("val_psnr_smallest"), val_name, start_step,
                               world, use_bf16, channels_last, supernet)
