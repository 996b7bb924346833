"""A short recovery fine-tune before scoring: stage 3's score when ``search_ratio.recovery_steps`` is above 0, and
stage 2's re-scoring of its best candidates per width when ``search_arch.recovery_steps`` is.

Right after pruning, the inherited weights score what removing filters *cost*, not what the pruned network reaches
once it is trained: across keep-ratio settings of one architecture that proxy ranked the settings' PSNR after
fine-tuning with Spearman 0.38 (``bench/bench_ratio_proxy.py``). A few hundred steps of the fine-tuning recipe
(``finetune``'s optimiser, schedule, batch, patch, bf16 and seed; no teacher, the plain form) let each candidate
recover before it is scored, at a cost per trial of that many training steps. In stage 2 the same repairs a bias
of weight sharing: the first channels of every layer are trained by every subnet, the ones beyond them only by the
wider subnets, so inherited PSNR under-rates width (Kendall tau 0.29 over eight subnets near the x2 budget, against
0.82 over the whole space: docs/supernet.md).

:func:`recover` trains a model in place and is deterministic: the same model, data and recipe give the same weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from srnas.arch.pruned import PrunedSubnet
from srnas.config import FinetuneConfig, TrainConfig
from srnas.search.quality import QualityEvaluator
from srnas.training import PatchSampler, load_pairs, resolve_bf16, step_generator, train_step
from srnas.training.loop import optimizer_and_schedule

__all__ = ["RecoveryScorer", "recover", "recovery_recipe"]


def recovery_recipe(finetune: FinetuneConfig, steps: int) -> TrainConfig:
    """``finetune``'s optimisation over ``steps`` steps (its cosine schedule compressed to them), without a teacher."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in dataclasses.asdict(finetune).items() if k in fields} | {"steps": steps})


def recover(model: nn.Module, sampler: PatchSampler, recipe: TrainConfig) -> nn.Module:
    """Train ``model`` (in place) for ``recipe.steps`` steps of L1 to HR on patches of ``sampler``; returns it in eval
    mode. Step ``i`` draws the batch of :func:`srnas.training.step_generator` ``(recipe.seed, i)``."""
    use_bf16 = resolve_bf16(recipe.bf16)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer, schedule = optimizer_and_schedule(model, recipe)
    for step in range(recipe.steps):
        lr, hr = sampler.sample(recipe.batch_size, step_generator(recipe.seed, step), recipe.augment, recipe.channels_last)
        train_step(model, optimizer, lr, hr, use_bf16)
        schedule.step()
    return model.eval()


class RecoveryScorer:
    """``scorer(network)``: PSNR on ``quality``'s crops of ``network`` (inherited weights, physically pruned) after
    :func:`recover` with ``finetune``'s recipe over ``steps`` steps on ``data_dir/train/x{scale}``; cached by name."""

    def __init__(self, quality: QualityEvaluator, data_dir: Path, finetune: FinetuneConfig, steps: int) -> None:
        scale = quality.supernet.scale
        self.quality = quality
        self.recipe = recovery_recipe(finetune, steps)
        self.sampler = PatchSampler(load_pairs(data_dir / "train" / f"x{scale}", scale), self.recipe.lr_patch_size)
        self._cache: dict[str, float] = {}

    def __call__(self, network: PrunedSubnet) -> float:
        if network.name not in self._cache:
            model = recover(self.quality.model(network), self.sampler, self.recipe)
            self._cache[network.name] = self.quality.psnr_model(model)
        return self._cache[network.name]
