"""The deployable searched network: one class for every subnet of the search space, pruned or not.

:class:`SubnetSR` is an ordinary network of ``nn.Conv2d``, ``nn.ReLU`` and ``nn.PixelShuffle`` built from a
:class:`~srnas.arch.pruned.PrunedSubnet` (an unpruned :class:`~srnas.arch.space.SubnetConfig` is the one whose
channel counts are full). ``SRSupernet.get_active_subnet(cfg)`` returns one with the supernet's weights copied in,
:func:`srnas.pruning.prune_subnet` a physically pruned copy of one, and ``SubnetSR(cfg, scale)`` builds a freshly
initialised one (to train an architecture alone). It follows the registry's model contract (RGB NCHW in [0, 1] ->
x``scale``, attributes ``scale`` and ``has_weights``) so it goes through training steps, ONNX export, parity checks
and profiling exactly like a registered model, but it is not registered: subnets are named by their configuration.

:func:`save_network` / :func:`load_network` store one with its description: ``srnas-subnet/1`` (unpruned, the
subnet configuration) or ``srnas-pruned/1`` (the pruned description), both read back by :func:`load_network`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srnas.arch.pruned import IMAGE_CHANNELS, PrunedSubnet, as_pruned
from srnas.arch.space import SubnetConfig
from srnas.checkpoint import CheckpointError, load_payload, save_payload
from srnas.errors import ConfigError

__all__ = ["ConvCell", "WDSRCell", "SubnetSR", "NETWORK_FORMATS", "PRUNED_FORMAT", "SUBNET_FORMAT", "build_network",
           "load_network", "network_from_payload", "save_network"]

SUBNET_FORMAT = "srnas-subnet/1"
PRUNED_FORMAT = "srnas-pruned/1"
NETWORK_FORMATS = (SUBNET_FORMAT, PRUNED_FORMAT)


class ConvCell(nn.Module):
    """conv3x3 (``cin`` -> ``cout``) + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class WDSRCell(nn.Module):
    """WDSR-B residual block: ``x + conv3x3(reduce1x1(ReLU(expand1x1(x))))``, widths ``width -> mid -> red -> width``."""

    def __init__(self, width: int, mid: int, red: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(width, mid, 1)
        self.act = nn.ReLU(inplace=True)
        self.reduce = nn.Conv2d(mid, red, 1)
        self.conv = nn.Conv2d(red, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.reduce(self.act(self.expand(x))))


class SubnetSR(nn.Module):
    """One architecture of the search space, pruned or not, as a plain network (``skip`` cells are simply absent)."""

    has_weights = True
    trainable = True

    def __init__(self, net: PrunedSubnet | SubnetConfig, scale: int) -> None:
        super().__init__()
        self.pruned = as_pruned(net)
        self.scale = scale
        channels = self.pruned.channels
        self.head = nn.Conv2d(IMAGE_CHANNELS, channels[0], 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        cells: list[nn.Module] = []
        i, stream = 1, channels[0]
        for cell in self.pruned.config.active_cells:
            if cell.block == "conv":
                cells.append(ConvCell(stream, channels[i]))
                stream = channels[i]
                i += 1
            else:
                cells.append(WDSRCell(stream, channels[i], channels[i + 1]))
                i += 3
        self.cells = nn.Sequential(*cells)
        self.tail = nn.Conv2d(stream, IMAGE_CHANNELS * scale * scale, 3, padding=1)
        self.upsample = nn.PixelShuffle(scale)

    @property
    def subnet(self) -> SubnetConfig:
        """The architecture (cells and width) before pruning."""
        return self.pruned.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        return self.upsample(self.tail(self.cells(self.act(self.head(x)))) + residual)

    def extra_repr(self) -> str:
        return f"net={self.pruned.name}, scale={self.scale}"


def build_network(net: PrunedSubnet | SubnetConfig, scale: int, seed: int = 0) -> SubnetSR:
    """A :class:`SubnetSR` for ``net`` in eval mode with weights freshly initialised from ``seed`` (for measuring
    latency, which does not depend on their values)."""
    torch.manual_seed(seed)
    return SubnetSR(net, scale).eval()


def save_network(path: str | os.PathLike[str], model: SubnetSR, extra: dict[str, Any] | None = None) -> None:
    """Write a network's description, scale and fp32 weights atomically (read back by :func:`load_network`)."""
    state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    if model.pruned.is_pruned:
        described = {"format": PRUNED_FORMAT, "pruned": model.pruned.to_dict()}
    else:
        described = {"format": SUBNET_FORMAT, "subnet": model.subnet.to_dict()}
    save_payload(Path(path), {**described, "scale": model.scale, "state_dict": state, **(extra or {})})


def network_from_payload(path: Path, payload: dict[str, Any]) -> SubnetSR:
    """The :class:`SubnetSR` a loaded ``srnas-subnet/1`` or ``srnas-pruned/1`` payload holds, in eval mode;
    CheckpointError naming ``path`` when its description or weights do not fit."""
    key = "pruned" if payload["format"] == PRUNED_FORMAT else "subnet"
    if key not in payload:
        raise CheckpointError(f"{path}: missing key(s) {key}")
    try:
        described = PrunedSubnet.from_dict(payload[key]) if key == "pruned" else SubnetConfig.from_dict(payload[key])
        model = SubnetSR(described, int(payload["scale"]))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (ConfigError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model.eval()


def load_network(path: str | os.PathLike[str]) -> SubnetSR:
    """The :class:`SubnetSR` saved by :func:`save_network` (either format), in eval mode; CheckpointError when unusable."""
    path = Path(path)
    return network_from_payload(path, load_payload(path, NETWORK_FORMATS, ("scale", "state_dict")))
