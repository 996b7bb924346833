"""Baseline training: ``train(model_name, scale, data_dir, cfg, out_dir)`` and ``load_trained(model.pt)``."""

from srnas.training.checkpoint import CheckpointError, load_trained
from srnas.training.loop import TrainingDiverged, TrainResult, cpu_has_native_bf16, resolve_bf16, train, train_step
from srnas.training.patches import ImagePairs, PatchSampler, load_pairs, step_generator

__all__ = [
    "CheckpointError",
    "ImagePairs",
    "PatchSampler",
    "TrainResult",
    "TrainingDiverged",
    "cpu_has_native_bf16",
    "load_pairs",
    "load_trained",
    "resolve_bf16",
    "step_generator",
    "train",
    "train_step",
]
