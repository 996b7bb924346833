"""The standalone subnet: an ordinary network of ``nn.Conv2d``, ``nn.ReLU`` and ``nn.PixelShuffle``.

``SRSupernet.get_active_subnet(cfg)`` returns a :class:`SubnetSR` with the supernet's weights copied in;
``SubnetSR(cfg, scale)`` builds a freshly initialised one (to train an architecture alone). It follows the
registry's model contract (RGB NCHW in [0, 1] -> x``scale``, attributes ``scale`` and ``has_weights``) so it
goes through training steps, ONNX export, parity checks and profiling exactly like a registered model,
but it is not registered: subnets are named by their configuration, not by a registry entry.

:func:`save_subnet` / :func:`load_subnet` store one with its configuration (``srnas-subnet/1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srnas.errors import ConfigError, SrnasError
from srnas.supernet.space import SubnetConfig

__all__ = ["ConvCell", "WDSRCell", "SubnetSR", "SUBNET_FORMAT", "save_subnet", "load_subnet"]

SUBNET_FORMAT = "srnas-subnet/1"


class ConvCell(nn.Module):
    """conv3x3 (width -> width) + ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class WDSRCell(nn.Module):
    """WDSR-B residual block: ``x + conv3x3(reduce1x1(ReLU(expand1x1(x))))``, expansion ``expand``."""

    def __init__(self, width: int, expand: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(width, width * expand, 1)
        self.act = nn.ReLU(inplace=True)
        self.reduce = nn.Conv2d(width * expand, width, 1)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.reduce(self.act(self.expand(x))))


class SubnetSR(nn.Module):
    """One architecture of the search space as a plain network (``skip`` cells are simply absent)."""

    has_weights = True
    trainable = True

    def __init__(self, subnet: SubnetConfig, scale: int, channels: int = 3) -> None:
        super().__init__()
        self.subnet = subnet
        self.scale = scale
        width = subnet.width
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        cells: list[nn.Module] = []
        for cell in subnet.active_cells:
            cells.append(ConvCell(width) if cell.block == "conv" else WDSRCell(width, cell.expand))
        self.cells = nn.Sequential(*cells)
        self.tail = nn.Conv2d(width, channels * scale * scale, 3, padding=1)
        self.upsample = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        return self.upsample(self.tail(self.cells(self.act(self.head(x)))) + residual)

    def extra_repr(self) -> str:
        return f"subnet={self.subnet.name}, scale={self.scale}"


def save_subnet(path: str | os.PathLike[str], model: SubnetSR, extra: dict[str, Any] | None = None) -> None:
    """Write a subnet's configuration, scale and fp32 weights atomically (read back by :func:`load_subnet`)."""
    from srnas.training.checkpoint import _save

    state = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    _save(Path(path), {"format": SUBNET_FORMAT, "subnet": model.subnet.to_dict(), "scale": model.scale,
                       "state_dict": state, **(extra or {})})


def load_subnet(path: str | os.PathLike[str]) -> SubnetSR:
    """The :class:`SubnetSR` saved by :func:`save_subnet`, in eval mode; CheckpointError when unusable."""
    from srnas.training.checkpoint import CheckpointError, _load

    path = Path(path)
    payload = _load(path, SUBNET_FORMAT, ("subnet", "scale", "state_dict"))
    try:
        model = SubnetSR(SubnetConfig.from_dict(payload["subnet"]), int(payload["scale"]))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (ConfigError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except SrnasError:
        raise
    return model.eval()
