"""End-to-end latency of any subnet, pruned or not: the sum of its layers' table entries plus a fitted overhead.

    predicted(net) = sum_i table[layer_i] + sum_joins (per_join_ms + per_join_channel_ms * channels)

A *join* is the hand-over of an activation from one layer to the next (``n - 1`` joins for ``n`` layers,
``channels`` the width handed over). Table entries are measured per layer in the network's context (see
:mod:`srnas.latency.measure`); what is left between the sum and a measured network -- memory traffic at the
hand-overs, cache effects, per-call costs -- is fitted by least squares on relative error over a handful of
measured *calibration* networks (:func:`fit_overhead`), held out from the validation. A network of one layer
has no join, so its prediction is exactly its table entry. No FLOP count enters the prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from srnas.arch.pruned import PrunedSubnet, as_pruned
from srnas.arch.space import SubnetConfig
from srnas.latency.layers import LayerKey, network_layers
from srnas.latency.table import LatencyTable

__all__ = ["LatencyPredictor", "OverheadModel", "fit_overhead", "join_features"]


@dataclass(frozen=True)
class OverheadModel:
    """Per-join cost ``per_join_ms + per_join_channel_ms * channels`` (zero: the plain table sum)."""

    per_join_ms: float = 0.0
    per_join_channel_ms: float = 0.0
    calibration_networks: int = 0
    calibration_mape: float = math.nan

    def cost(self, joins: int, join_channels: int) -> float:
        return self.per_join_ms * joins + self.per_join_channel_ms * join_channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> OverheadModel:
        return cls(**{k: (float(v) if k != "calibration_networks" else int(v)) for k, v in payload.items()})


def join_features(layers: Sequence[LayerKey]) -> tuple[int, int]:
    """(number of joins, channels handed over across them) of a chain of layers."""
    return max(len(layers) - 1, 0), sum(layer.cout for layer in layers[:-1])


@dataclass
class LatencyPredictor:
    """Predicts milliseconds on the table's target for a :class:`PrunedSubnet`, a ``SubnetConfig`` or a layer chain."""

    table: LatencyTable
    overhead: OverheadModel = field(default_factory=OverheadModel)

    @property
    def scale(self) -> int:
        return self.table.target.scale

    def layers(self, net: PrunedSubnet | SubnetConfig) -> tuple[LayerKey, ...]:
        return network_layers(as_pruned(net), self.scale)

    def table_sum(self, layers: Sequence[LayerKey]) -> float:
        return float(sum(self.table.lookup(layer) for layer in layers))

    def predict_layers(self, layers: Sequence[LayerKey]) -> float:
        """Milliseconds of a network that runs ``layers`` in this order."""
        if not layers:
            raise ValueError("a network has at least one layer")
        return self.table_sum(layers) + self.overhead.cost(*join_features(layers))

    def predict(self, net: PrunedSubnet | SubnetConfig) -> float:
        """Milliseconds of one end-to-end call of ``net`` on the target."""
        return self.predict_layers(self.layers(net))

    def breakdown(self, net: PrunedSubnet | SubnetConfig) -> list[tuple[str, float]]:
        """(layer id, ms) per layer, then ``("overhead", ms)``: what the prediction is made of."""
        layers = self.layers(net)
        rows = [(layer.id, self.table.lookup(layer)) for layer in layers]
        return rows + [("overhead", self.overhead.cost(*join_features(layers)))]


def fit_overhead(table: LatencyTable, nets: Sequence[PrunedSubnet | SubnetConfig], measured_ms: Sequence[float]) -> OverheadModel:
    """Least squares of the relative error of ``table_sum + a * joins + b * join_channels`` against ``measured_ms``."""
    if len(nets) != len(measured_ms) or len(nets) < 2:
        raise ValueError(f"need at least 2 measured networks (and one time each), got {len(nets)} and {len(measured_ms)}")
    plain = LatencyPredictor(table)
    rows, rhs = [], []
    for net, ms in zip(nets, measured_ms):
        layers = plain.layers(net)
        joins, channels = join_features(layers)
        rows.append([joins / ms, channels / ms])
        rhs.append((ms - plain.table_sum(layers)) / ms)
    a = np.asarray(rows, dtype=np.float64)
    b = np.asarray(rhs, dtype=np.float64)
    # Columns on a common scale for conditioning; a tiny ridge keeps two calibration nets well posed.
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    an = a / norms
    coef = np.linalg.solve(an.T @ an + 1e-6 * np.eye(an.shape[1]), an.T @ b) / norms
    model = OverheadModel(float(coef[0]), float(coef[1]), calibration_networks=len(nets))
    fitted = LatencyPredictor(table, model)
    mape = float(np.mean([abs(fitted.predict(n) - ms) / ms for n, ms in zip(nets, measured_ms)]))
    return OverheadModel(model.per_join_ms, model.per_join_channel_ms, len(nets), mape)
