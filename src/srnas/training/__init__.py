"""Baseline training: ``train(model_name, scale, data_dir, cfg, out_dir)``; the shared step loop; patch sampling."""

from srnas.training.loop import TrainingDiverged, TrainResult, resolve_bf16, train, train_step
from srnas.training.patches import ImagePairs, PatchSampler, load_pairs, step_generator

__all__ = [
    "ImagePairs",
    "PatchSampler",
    "TrainResult",
    "TrainingDiverged",
    "load_pairs",
    "resolve_bf16",
    "step_generator",
    "train",
    "train_step",
]
