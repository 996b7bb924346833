"""A short recovery fine-tune, stage 3's score when ``search_ratio.recovery_steps`` is above 0.

Right after pruning, the inherited weights score what removing filters *cost*, not what the pruned network reaches
once it is trained: across keep-ratio settings of one architecture that proxy ranked the settings' PSNR after
fine-tuning with Spearman 0.38 (``bench/bench_ratio_proxy.py``). A few hundred steps of the fine-tuning recipe
(``finetune``'s optimiser, schedule, batch, patch, bf16 and seed; no teacher, the plain form) let each candidate
recover before it is scored, at a cost per trial of that many training steps.

:func:`recover` trains a model in place and is deterministic: the same model, data and recipe give the same weights.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from srnas.config import FinetuneConfig, TrainConfig
from srnas.training import PatchSampler, resolve_bf16, step_generator, train_step
from srnas.training.loop import optimizer_and_schedule

__all__ = ["recover", "recovery_recipe"]


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
