"""Compiler-aware latency model: per-target layer table, measured pruning schemes, validated predictor.

- :mod:`~srnas.latency.targets`: targets from ``params.yaml`` (device, runtime, precision, threads, input size);
- :mod:`~srnas.latency.layers`: every layer a (pruned) subnet can contain;
- :mod:`~srnas.latency.measure`: timing one layer / one network on the target's runtime, in context;
- :mod:`~srnas.latency.table`: the lookup table, cached by target fingerprint;
- :mod:`~srnas.latency.schemes`: which pruning schemes really accelerate the target;
- :mod:`~srnas.latency.predictor`: table sum + fitted join overhead;
- :mod:`~srnas.latency.validate`: predicted vs measured on random subnets (within +-10%, MAPE, Spearman);
- :mod:`~srnas.latency.profile`: the ``profile_device`` stage for one target; :func:`load_predictor`.
"""

from srnas.latency.layers import LayerKey, enumerate_layers, network_layers
from srnas.latency.predictor import LatencyPredictor, OverheadModel, fit_overhead
from srnas.latency.profile import load_predictor, profile_target
from srnas.latency.table import LatencyTable, TableError, build_table
from srnas.latency.targets import Target, resolve_target, resolve_targets
from srnas.latency.validate import ValidationReport, sample_networks, spearman, validate_predictor

__all__ = [
    "LatencyPredictor",
    "LatencyTable",
    "LayerKey",
    "OverheadModel",
    "TableError",
    "Target",
    "ValidationReport",
    "build_table",
    "enumerate_layers",
    "fit_overhead",
    "load_predictor",
    "network_layers",
    "profile_target",
    "resolve_target",
    "resolve_targets",
    "sample_networks",
    "spearman",
    "validate_predictor",
]
