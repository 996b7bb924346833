"""Measurement requests to a device agent, as JSON: what :mod:`srnas.latency.measure` sends for a target whose device
is a URL, and what the agent (:mod:`srnas.agent`) reads back into the same calls on its own machine.

Nothing in a request is ever run as code or unpickled:

- a target: its resolved fields (:meth:`srnas.latency.targets.Target.to_dict`);
- a layer: its table key (``op:cin:cout:scheme``, :class:`srnas.latency.layers.LayerKey`);
- a network to time with fresh weights: its description (a :class:`~srnas.arch.space.SubnetConfig` or
  :class:`~srnas.arch.pruned.PrunedSubnet` as a dict);
- a trained network (the final model, a baseline): its description -- the searched network's, or the registered
  model's name and scale -- and its weights as an ``.npz`` archive (``numpy.load(allow_pickle=False)``), base64.

The agent rebuilds the network from that and runs it exactly as this machine would (an ONNX Runtime target exports
it with :func:`srnas.export.export_onnx` there, as :func:`srnas.latency.measure.time_network` does here).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from srnas.arch.network import PRUNED_FORMAT, SubnetSR, network_from_payload
from srnas.arch.pruned import PrunedSubnet
from srnas.arch.space import SubnetConfig
from srnas.errors import ConfigError
from srnas.latency.layers import LayerKey
from srnas.latency.targets import Target
from srnas.loading import rebuild_registered, registered_origin

__all__ = ["AGENT_DEVICE", "layer_from_wire", "layer_to_wire", "network_from_wire", "network_to_wire", "target_from_wire",
           "target_to_wire"]

AGENT_DEVICE = "this-cpu"  # what a target's device becomes on the agent: the agent's own machine


def target_to_wire(target: Target) -> dict[str, Any]:
    return target.to_dict()


def target_from_wire(data: Mapping[str, Any]) -> Target:
    """The target of a request, on the agent's own machine (its device becomes :data:`AGENT_DEVICE`)."""
    try:
        hw = [int(v) for v in data["input_hw"]]
        if len(hw) != 2:
            raise ValueError(f"input_hw must be [height, width], got {hw}")
        return Target(str(data["name"]), AGENT_DEVICE, str(data["runtime"]), str(data["precision"]), int(data["threads"]),
                      (hw[0], hw[1]), int(data["scale"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"request target: {exc}") from None


def layer_to_wire(layer: LayerKey) -> str:
    return layer.id


def layer_from_wire(text: Any) -> LayerKey:
    try:
        return LayerKey.from_id(str(text))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"request layer {text!r}: {exc}") from None


def _weights(model: nn.Module) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _state_dict(text: Any) -> dict[str, torch.Tensor]:
    try:
        with np.load(io.BytesIO(base64.b64decode(str(text), validate=True)), allow_pickle=False) as archive:
            return {key: torch.from_numpy(archive[key].copy()) for key in archive.files}
    except (ValueError, OSError) as exc:
        raise ConfigError(f"request weights: not an npz archive of arrays ({exc})") from None


def network_to_wire(net: PrunedSubnet | SubnetConfig | nn.Module) -> dict[str, Any]:
    """A network for a request: a description (fresh weights), or a trained network's description and weights.
    ConfigError for a module that is neither a searched network nor a registered model read by
    :func:`srnas.loading.load_trained` (the agent could not rebuild it)."""
    if isinstance(net, PrunedSubnet):
        return {"pruned": net.to_dict()}
    if isinstance(net, SubnetConfig):
        return {"subnet": net.to_dict()}
    if isinstance(net, SubnetSR):
        return {"trained": {"pruned": net.pruned.to_dict(), "scale": net.scale}, "weights": _weights(net)}
    origin = registered_origin(net)
    if origin is None:
        raise ConfigError(f"{type(net).__name__}: a device agent can time a searched network or a registered model read "
                          "from its model.pt, not this module")
    return {"registered": {"model_name": origin[0], "scale": origin[1]}, "weights": _weights(net)}


def network_from_wire(data: Mapping[str, Any]) -> PrunedSubnet | SubnetConfig | nn.Module:
    """The network of a request (ConfigError naming what does not fit)."""
    try:
        if "pruned" in data:
            return PrunedSubnet.from_dict(data["pruned"])
        if "subnet" in data:
            return SubnetConfig.from_dict(data["subnet"])
        if "trained" in data:
            trained = data["trained"]
            payload = {"format": PRUNED_FORMAT, "pruned": trained["pruned"], "scale": int(trained["scale"]),
                       "state_dict": _state_dict(data["weights"])}
            return network_from_payload("request", payload)  # type: ignore[arg-type]
        if "registered" in data:
            registered = data["registered"]
            return rebuild_registered(str(registered["model_name"]), int(registered["scale"]), _state_dict(data["weights"]))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"request network: missing or malformed {exc}") from None
    raise ConfigError(f"request network: expected one of pruned, subnet, trained, registered; got {sorted(data)}")
