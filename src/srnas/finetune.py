"""Fine-tuning of the physically pruned network (the ``finetune`` stage), distilled from the supernet.

The student is the :class:`~srnas.arch.network.SubnetSR` that ``search_ratio`` wrote (``pruned.pt``, weights
inherited from the supernet). Pruning removed filters, so it first needs a few steps of training to recover. The
teacher is the supernet's largest subnet with its inherited weights, frozen: the student minimises::

    (1 - distill) * L1(student(lr), hr) + distill * L1(student(lr), teacher(lr))

with Adam and a cosine schedule, exactly like baseline training: the step loop, checkpoints, exact resume,
bf16 autocast and channels-last are :func:`srnas.training.loop.run_training`'s (see :mod:`srnas.training.loop`).
The teacher runs under the same autocast; with ``distill`` 0 it is neither built nor run (and the supernet file is
not read). With ``reparam: ecb`` every 3x3 conv of the student trains as an ECBSR edge-oriented convolution block
that starts equal to it (:func:`srnas.models.ecbsr.with_ecb_training_form`) and is collapsed back into one conv
before each save, so ``model.pt`` is the same deployable network either way. The reported ``train_loss`` / ``final_loss`` is the student's L1 to HR, comparable with the baselines.

A run resumes from ``out_dir/last.ckpt`` only when it was written for the same config (but for checkpoint, log and
validation cadence), the same pruned file and supernet file (SHA-256) and the same data; otherwise it warns and starts
over. Outputs: ``model.pt`` (:func:`~srnas.arch.network.load_network` reads it), ``train_metrics.json``, ``last.ckpt``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srnas.arch.network import SubnetSR, load_network, save_network
from srnas.config import FinetuneConfig
from srnas.digests import file_sha256
from srnas.errors import ConfigError
from srnas.models import count_params
from srnas.models.ecbsr import collapse_ecbs, with_ecb_training_form
from srnas.supernet.supernet import load_supernet
from srnas.training.loop import MetricsCallback, config_identity, load_training_data, run_training

__all__ = ["FinetuneResult", "finetune", "load_teacher"]


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did and wrote."""

    model_path: Path
    metrics_path: Path
    checkpoint_path: Path
    pruned: str
    teacher: str | None
    distill: float
    scale: int
    steps: int
    final_loss: float
    seconds: float
    steps_per_s: float
    val_psnr: float | None
    val_set: str | None
    params: int
    resumed_from_step: int


def load_teacher(supernet_path: Path, student: SubnetSR, pruned_path: Path) -> SubnetSR:
    """The largest subnet of the supernet in ``supernet_path`` (eval, frozen); ConfigError naming the file when it does
    not fit ``student`` (another scale, or a space the pruned network's subnet is not part of)."""
    supernet = load_supernet(supernet_path)
    if supernet.scale != student.scale:
        raise ConfigError(f"{supernet_path}: the supernet is x{supernet.scale} but the pruned network {pruned_path} is "
                          f"x{student.scale}")
    try:
        supernet.space.validate(student.pruned.config)
    except ConfigError as exc:
        raise ConfigError(f"{supernet_path}: the pruned network {pruned_path} does not come from this supernet's space "
                          f"({exc})") from None
    teacher = supernet.get_active_subnet(supernet.space.largest())
    return teacher.eval().requires_grad_(False)


def finetune(
    pruned_path: str | os.PathLike[str],
    supernet_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    cfg: FinetuneConfig,
    out_dir: str | os.PathLike[str],
    *,
    on_metrics: MetricsCallback | None = None,
    resume: bool = True,
    progress: bool | None = None,
    val_set: str | None = None,
) -> FinetuneResult:
    """Fine-tune the pruned network in ``pruned_path`` on ``data_dir/train/x{scale}``, distilled from the largest subnet
    of the supernet in ``supernet_path`` (unused when ``cfg.distill`` is 0); write ``out_dir/model.pt``.

    ``on_metrics``, ``resume``, ``progress`` and ``val_set`` behave as in :func:`srnas.training.train`.
    CheckpointError names an unreadable pruned or supernet file, ConfigError a supernet that does not fit,
    DataError missing data.
    """
    pruned_path, supernet_path = Path(pruned_path), Path(supernet_path)
    student = load_network(pruned_path)
    scale = student.scale
    teacher = load_teacher(supernet_path, student, pruned_path) if cfg.distill > 0 else None
    teacher_name = teacher.subnet.name if teacher is not None else None
    data = load_training_data(Path(data_dir), scale, cfg.lr_patch_size, val_set)
    identity: dict[str, Any] = {
        "pruned": file_sha256(pruned_path),
        "supernet": file_sha256(supernet_path) if teacher is not None else None,
        "scale": scale,
        "config": config_identity(cfg),
        "data": data.sampler.fingerprint(),
    }
    name = student.pruned.name

    trained = student
    if cfg.reparam == "ecb":
        with torch.random.fork_rng(devices=[]):  # the new branches' 1x1s start random: the same in every run
            torch.manual_seed(cfg.seed)
            trained = with_ecb_training_form(copy.deepcopy(student))

    def save_model(path: Path, model: nn.Module, metrics: dict[str, Any]) -> None:
        deployed = collapse_ecbs(copy.deepcopy(model)) if cfg.reparam == "ecb" else model
        assert isinstance(deployed, SubnetSR)
        save_network(path, deployed, extra={"metrics": metrics, "config": dataclasses.asdict(cfg)})

    result = run_training(trained, cfg, data, Path(out_dir), identity, label=f"{name} x{scale}", save_model=save_model,
                          describe={"pruned": name, "scale": scale, "teacher": teacher_name, "distill": cfg.distill,
                                    "reparam": cfg.reparam},
                          teacher=teacher, distill=cfg.distill, on_metrics=on_metrics, resume=resume, progress=progress)
    return FinetuneResult(result.model_path, result.metrics_path, result.checkpoint_path, name, teacher_name, cfg.distill,
                          scale, result.steps, result.final_loss, result.seconds, result.steps_per_s, result.val_psnr,
                          result.val_set, count_params(student), result.resumed_from_step)
