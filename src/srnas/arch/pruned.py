"""What a searched network is, pruned or not: a subnet configuration plus the output width of every conv.

:class:`PrunedSubnet` is a subnet configuration (:class:`~srnas.arch.space.SubnetConfig`) plus the output channel
count of every convolution but the tail (filter pruning: whole output channels are removed, so the next layer's
input shrinks too). Two constraints keep it a valid SR network (SR-aware pruning):

- a ``wdsr`` cell adds its input to its output, so its last conv keeps the cell's input width;
- the tail keeps its ``3 s^2`` outputs (the PixelShuffle groups and the global residual need them).

An unpruned subnet is the ``PrunedSubnet`` whose counts are :func:`full_channels` (:func:`as_pruned`), so every
stage after the search handles one description. The network it describes is :class:`srnas.arch.network.SubnetSR`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from srnas.arch.space import SubnetConfig, as_subnet
from srnas.errors import ConfigError

__all__ = ["IMAGE_CHANNELS", "PrunedSubnet", "as_pruned", "full_channels", "pruned_like", "random_pruned", "round_channels"]

IMAGE_CHANNELS = 3


def full_channels(config: SubnetConfig) -> tuple[int, ...]:
    """Output channels of every conv but the tail of the unpruned subnet, in forward order."""
    width = config.width
    channels = [width]
    for cell in config.active_cells:
        if cell.block == "conv":
            channels.append(width)
        else:
            channels += [width * cell.expand, width, width]
    return tuple(channels)


@dataclass(frozen=True)
class PrunedSubnet:
    """A subnet with filter pruning: ``channels[i]`` is the output width of conv ``i`` (tail excluded).

    Conv order: head, then per active cell: ``conv`` -> 1 conv; ``wdsr`` -> expand, reduce, conv3x3. Each
    count is at most the unpruned one (:func:`full_channels`); a ``wdsr`` cell's last count equals its input.
    """

    config: SubnetConfig
    channels: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.config, SubnetConfig):
            raise ConfigError(f"pruned subnet: config must be a SubnetConfig, got {type(self.config).__name__}")
        channels = tuple(self.channels)
        object.__setattr__(self, "channels", channels)
        full = full_channels(self.config)
        if len(channels) != len(full):
            raise ConfigError(f"pruned subnet {self.config.name}: expected {len(full)} channel counts, got {len(channels)}")
        for i, (c, f) in enumerate(zip(channels, full)):
            if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= f:
                raise ConfigError(f"pruned subnet {self.config.name}: conv {i} keeps {c!r} channels; must be 1..{f}")
        i, stream = 1, channels[0]
        for cell in self.config.active_cells:
            if cell.block == "conv":
                stream = channels[i]
                i += 1
            else:
                if channels[i + 2] != stream:
                    raise ConfigError(f"pruned subnet {self.config.name}: the wdsr cell at conv {i} adds its input "
                                      f"({stream} channels) to its output, so its last conv must keep {stream}, "
                                      f"not {channels[i + 2]}")
                i += 3

    @property
    def is_pruned(self) -> bool:
        return self.channels != full_channels(self.config)

    @property
    def name(self) -> str:
        """``<subnet name>`` when unpruned, else ``<subnet name>/p<c0>.<c1>...``."""
        if not self.is_pruned:
            return self.config.name
        return f"{self.config.name}/p" + ".".join(map(str, self.channels))

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": self.config.to_dict(), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, mapping: Any) -> PrunedSubnet:
        if not isinstance(mapping, dict) or set(mapping) != {"subnet", "channels"}:
            raise ConfigError(f"pruned subnet: expected keys subnet and channels, got {mapping!r}")
        return cls(SubnetConfig.from_dict(mapping["subnet"]), tuple(mapping["channels"]))


def as_pruned(net: PrunedSubnet | SubnetConfig | Any) -> PrunedSubnet:
    """A :class:`PrunedSubnet` from itself, or from an (unpruned) subnet configuration, its dict or name."""
    if isinstance(net, PrunedSubnet):
        return net
    config = as_subnet(net)
    return PrunedSubnet(config, full_channels(config))


def round_channels(count: float, granularity: int, full: int) -> int:
    """``count`` rounded to the nearest multiple of ``granularity``, at least one multiple, at most ``full``."""
    if granularity < 1:
        raise ValueError(f"granularity must be positive, got {granularity}")
    rounded = max(granularity, int(math.floor(count / granularity + 0.5)) * granularity)
    return min(full, rounded)


def random_pruned(config: SubnetConfig, rng: np.random.Generator, granularity: int, min_keep: float = 0.25) -> PrunedSubnet:
    """``config`` with every prunable conv keeping a uniform random share in [``min_keep``, 1] of its filters,
    rounded to ``granularity`` (a wdsr cell's last conv follows its input, the tail is never pruned)."""
    full = full_channels(config)
    channels = [round_channels(full[0] * rng.uniform(min_keep, 1.0), granularity, full[0])]
    i, stream = 1, channels[0]
    for cell in config.active_cells:
        if cell.block == "conv":
            c = round_channels(full[i] * rng.uniform(min_keep, 1.0), granularity, full[i])
            channels.append(c)
            stream = c
            i += 1
        else:
            mid = round_channels(full[i] * rng.uniform(min_keep, 1.0), granularity, full[i])
            red = round_channels(full[i + 1] * rng.uniform(min_keep, 1.0), granularity, full[i + 1])
            channels += [mid, red, stream]
            i += 3
    return PrunedSubnet(config, tuple(channels))


def pruned_like(net: PrunedSubnet, channels: Sequence[int]) -> PrunedSubnet:
    """A copy of ``net`` with other channel counts (validated)."""
    return dataclasses.replace(net, channels=tuple(channels))
