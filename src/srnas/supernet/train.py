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

Several machines: ``torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d ...`` on each; ranks are global
(``RANK``, patches and writing) and ``LOCAL_RANK`` picks the GPU. Only rank 0 reads ``last.ckpt`` and sends it to
the others (:meth:`DistContext.share`), so nodes without a copy of ``out_dir`` (no shared disk) resume with it. The
weights depend on the world size, not on how the processes are spread over machines (``tests/test_supernet_ddp.py``
holds two one-process nodes equal to one two-process node, bit for bit).

The step loop (checkpoints, exact resume, loss windows, logging, validation, final metrics, which process writes) is
the one every training runs on, :func:`srnas.training.loop.run_loop`; this module supplies its step function,
:class:`SandwichStep`.

CPU speed: bf16 autocast (``bf16``) and channels-last activations (``channels_last``), as in baseline
training; the losses are computed in fp32. ``bench/bench_supernet.py`` measures a supernet step against a
plain training step of the largest subnet.

Outputs in ``out_dir`` (rank 0): ``last.ckpt`` (resumable), ``supernet.pt`` (:func:`load_supernet`),
``train_metrics.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from srnas.arch.space import SearchSpace, SubnetConfig
from srnas.config import SupernetConfig
from srnas.errors import ConfigError, DataError
from srnas.models import check_scale, count_params
from srnas.supernet.supernet import SRSupernet, save_supernet
from srnas.training.loop import (
    LoopSpec,
    config_identity,
    optimizer_and_schedule,
    resolve_bf16,
    resolve_val_dir,
    run_loop,
    validation_psnr,
)
from srnas.training.patches import ImagePairs, PatchSampler, load_pairs

__all__ = [
    "SupernetTrainResult",
    "DistContext",
    "distributed_context",
    "patch_generator",
    "sandwich_subnets",
    "SandwichLoss",
    "SandwichStep",
    "train_supernet",
]

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]

# The losses a sandwich step reports: the largest subnet's L1 to HR (comparable with baseline training), the
# smallest's, and the mean over the random subnets (when there are any).
SANDWICH_LOSSES = ("train_loss", "loss_smallest", "loss_random")


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

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (``value`` itself in one process).

        ``value`` is plain data (tensors, numbers, strings, lists, dicts, None): it travels as ``torch.save`` bytes and
        is read back with ``weights_only=True``, so nothing but plain data is ever unpickled.
        """
        if not self.distributed:
            return value
        data = b""
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(value, buffer)
            data = buffer.getvalue()
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        torch.distributed.broadcast(size, src=0)
        if self.is_main:
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device)
        else:
            payload = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        torch.distributed.broadcast(payload, src=0)
        if self.is_main:
            return value
        return torch.load(io.BytesIO(payload.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)


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


# ------------------------------------------------------------------------------------ the step function


@dataclass(frozen=True)
class SandwichStep:
    """The supernet's step function on :func:`~srnas.training.loop.run_loop`.

    Step ``k``: this process's ``batch_size / N`` patches from ``patch_generator(seed, k, rank)``, the subnets of
    ``sandwich_subnets(space, seed, k, num_random)``, one forward of ``sandwich`` (the :class:`SandwichLoss` of
    ``supernet``, wrapped in ``DistributedDataParallel`` under torchrun), one backward, one Adam step and one schedule
    step. Reports :data:`SANDWICH_LOSSES`, each averaged over the processes; validates the largest and the smallest
    subnet with inherited weights (``val_psnr_largest``, ``val_psnr_smallest``) on ``val_pairs`` (rank 0's).
    """

    supernet: SRSupernet
    sandwich: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    cfg: SupernetConfig
    sampler: PatchSampler
    val_pairs: ImagePairs | None
    dist: DistContext

    @property
    def model(self) -> nn.Module:
        return self.supernet

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def step(self, index: int) -> dict[str, float]:
        train, dist = self.cfg.train, self.dist
        lr_batch, hr_batch = self.sampler.sample(train.batch_size // dist.world_size, patch_generator(train.seed, index, dist.rank),
                                                 train.augment, train.channels_last)
        if dist.device.type != "cpu":
            lr_batch = lr_batch.to(dist.device, non_blocking=True)
            hr_batch = hr_batch.to(dist.device, non_blocking=True)
        subnets = sandwich_subnets(self.supernet.space, train.seed, index, train.num_random)
        self.optimizer.zero_grad(set_to_none=True)
        total, report = self.sandwich(lr_batch, hr_batch, subnets)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        if dist.distributed:
            torch.distributed.all_reduce(report)
            report = report / dist.world_size
        values = report.cpu().tolist()
        losses = {"train_loss": values[0], "loss_smallest": values[1]}
        if len(values) > 2:
            losses["loss_random"] = float(np.mean(values[2:]))
        return losses

    def subnet_psnr(self, subnet: SubnetConfig, pairs: ImagePairs) -> float:
        """Validation PSNR of ``subnet`` with inherited weights (a standalone copy, fp32, CPU)."""
        return validation_psnr(self.supernet.get_active_subnet(subnet).cpu().eval(), pairs)

    def validate(self) -> dict[str, float]:
        if self.val_pairs is None:
            return {}
        space = self.supernet.space
        return {"val_psnr_largest": self.subnet_psnr(space.largest(), self.val_pairs),
                "val_psnr_smallest": self.subnet_psnr(space.smallest(), self.val_pairs)}

    def save_model(self, path: Path, metrics: dict[str, Any]) -> None:
        save_supernet(path, self.supernet, extra={"config": dataclasses.asdict(self.cfg), "metrics": metrics})

    def barrier(self) -> None:
        self.dist.barrier()

    def share(self, value: Any) -> Any:
        return self.dist.share(value)


# ------------------------------------------------------------------------------------------ driver


def _identity(cfg: SupernetConfig, data_fingerprint: str, world_size: int) -> dict[str, Any]:
    """What a ``last.ckpt`` must have been written for to be resumed: space, scale, training form, weight-changing config,
    data, processes."""
    return {"scale": cfg.scale, "space": SearchSpace(cfg.space).to_dict(), "reparam": cfg.reparam, "train": config_identity(cfg.train),
            "data": data_fingerprint, "world_size": world_size}


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
        world, device = dist_ctx.world_size, dist_ctx.device
        if train_cfg.batch_size % world:
            raise ConfigError(f"supernet.train.batch_size: {train_cfg.batch_size} does not split over {world} processes")
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
            supernet = SRSupernet(space, scale, cfg.reparam)
        supernet.to(device)
        supernet.train()
        optimizer, scheduler = optimizer_and_schedule(supernet, train_cfg)
        sandwich: nn.Module = SandwichLoss(supernet, distill=train_cfg.distill, child_weight=train_cfg.child_weight, bf16=use_bf16)
        if dist_ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            sandwich = DistributedDataParallel(
                sandwich,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,  # each step uses one block type per cell, not all
            )
        step_fn = SandwichStep(supernet, sandwich, optimizer, scheduler, cfg, sampler, val_pairs, dist_ctx)
        spec = LoopSpec(
            label=f"supernet x{scale}",
            summary=f"{space.size():,} subnets ({cfg.reparam} form), {train_cfg.steps} steps, sandwich of "
                    f"{2 + train_cfg.num_random}, batch {train_cfg.batch_size} over {world} process(es), LR patch "
                    f"{train_cfg.lr_patch_size}, bf16 {use_bf16}, channels_last {channels_last}, {device}",
            identity=_identity(cfg, sampler.fingerprint(), world),
            describe={"scale": scale, "reparam": cfg.reparam, "val_set": val_name,
                      "val_images": len(val_pairs) if val_pairs is not None else 0,
                      "train_images": len(sampler), "params": count_params(supernet), "space_size": space.size(),
                      "largest": space.largest().name, "smallest": space.smallest().name,
                      "sandwich": 2 + train_cfg.num_random, "world_size": world, "bf16": use_bf16, "channels_last": channels_last},
            model_file="supernet.pt",
            losses=SANDWICH_LOSSES,
            final_losses=(("train_loss", "final_loss"), ("loss_smallest", "final_loss_smallest")),
            validation=("val_psnr_largest", "val_psnr_smallest"),
            mismatch="a different space, config, data or process count",
        )
        with warnings.catch_warnings():
            # 1x1 weights' gradients come back with channels-last strides, which DDP reports as a layout mismatch
            # with its bucket views; for size-1 dimensions the memory layout is the same.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            result = run_loop(step_fn, spec, train_cfg, out_dir, on_metrics=on_metrics, resume=resume, progress=progress)
    return SupernetTrainResult(result.model_path, result.metrics_path, result.checkpoint_path, result.steps,
                               result.final["final_loss"], result.seconds, result.steps_per_s,
                               result.validation.get("val_psnr_largest"), result.validation.get("val_psnr_smallest"), val_name,
                               result.resumed_from_step, world, use_bf16, channels_last, supernet)
