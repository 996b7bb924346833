"""Every layer configuration a subnet of the search space can contain, pruned or not.

A subnet (:class:`~srnas.supernet.space.SubnetConfig`) is a chain of *layers*, each one unit of the
latency table (:class:`LayerKey`): ``op`` x input width x output width x scheme. The ops, in the order a
subnet runs them::

    head       conv3x3 (3 -> c) + ReLU                      the image in
    conv       conv3x3 (cin -> cout) + ReLU                 a ``conv`` cell
    expand     conv1x1 (c -> m) + ReLU                      first layer of a ``wdsr`` cell
    reduce     conv1x1 (m -> r)                             second layer of a ``wdsr`` cell
    wdsr_conv  conv3x3 (r -> c) + the cell's input (add)    last layer of a ``wdsr`` cell
    tail       conv3x3 (c -> 3 s^2) + input repeated s^2 times (add) + PixelShuffle(s)

``skip`` cells contain no layer. A layer is measured with its activation and its addition, because the
runtimes fuse them (ONNX Runtime runs Conv+ReLU and Conv+Add as one kernel).

Pruned subnets
--------------
:class:`PrunedSubnet` is a subnet configuration plus the output channel count of every convolution but
the tail (filter pruning: whole output channels are removed, so the next layer's input shrinks too).
Two constraints keep it a valid SR network (SR-aware pruning):

- a ``wdsr`` cell adds its input to its output, so its last conv keeps the cell's input width;
- the tail keeps its ``3 s^2`` outputs (the PixelShuffle groups and the global residual need them).

:func:`build_pruned_module` builds the physically pruned standalone network (plain ``nn.Conv2d`` with
fewer channels) for measurement.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from srnas.errors import ConfigError
from srnas.supernet.space import SearchSpace, SubnetConfig, as_subnet

__all__ = [
    "IMAGE_CHANNELS",
    "LAYER_OPS",
    "LayerKey",
    "PrunedSubnet",
    "PrunedSR",
    "as_pruned",
    "build_pruned_module",
    "channel_grid",
    "enumerate_layers",
    "full_channels",
    "network_layers",
    "random_pruned",
    "round_channels",
]

IMAGE_CHANNELS = 3
LAYER_OPS = ("head", "conv", "expand", "reduce", "wdsr_conv", "tail")
# Ops whose kernel is 3x3 (the others are 1x1).
_KERNEL = {"head": 3, "conv": 3, "expand": 1, "reduce": 1, "wdsr_conv": 3, "tail": 3}


@dataclass(frozen=True, order=True)
class LayerKey:
    """One entry of the latency table: ``op`` (see :data:`LAYER_OPS`), widths, and ``scheme`` (``dense``)."""

    op: str
    cin: int
    cout: int
    scheme: str = "dense"

    def __post_init__(self) -> None:
        if self.op not in LAYER_OPS:
            raise ValueError(f"layer op {self.op!r}: choose from {', '.join(LAYER_OPS)}")
        if self.cin < 1 or self.cout < 1:
            raise ValueError(f"layer {self.op}: widths must be positive, got {self.cin} -> {self.cout}")

    @property
    def kernel(self) -> int:
        return _KERNEL[self.op]

    @property
    def id(self) -> str:
        """``op:cin:cout:scheme``, the table's JSON key (read back by :meth:`from_id`)."""
        return f"{self.op}:{self.cin}:{self.cout}:{self.scheme}"

    @classmethod
    def from_id(cls, text: str) -> LayerKey:
        parts = text.split(":")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"layer id {text!r}: expected op:cin:cout:scheme")
        return cls(parts[0], int(parts[1]), int(parts[2]), parts[3])


# ------------------------------------------------------------------------------------ pruned nets


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


def network_layers(net: PrunedSubnet | SubnetConfig, scale: int, scheme: str = "dense") -> tuple[LayerKey, ...]:
    """The layers ``net`` runs, in order (what the predictor sums)."""
    pruned = as_pruned(net)
    ch = pruned.channels
    layers = [LayerKey("head", IMAGE_CHANNELS, ch[0], scheme)]
    i, stream = 1, ch[0]
    for cell in pruned.config.active_cells:
        if cell.block == "conv":
            layers.append(LayerKey("conv", stream, ch[i], scheme))
            stream = ch[i]
            i += 1
        else:
            mid, red = ch[i], ch[i + 1]
            layers += [LayerKey("expand", stream, mid, scheme), LayerKey("reduce", mid, red, scheme),
                       LayerKey("wdsr_conv", red, stream, scheme)]
            i += 3
    layers.append(LayerKey("tail", stream, IMAGE_CHANNELS * scale * scale, scheme))
    return tuple(layers)


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


# ------------------------------------------------------------------------------------ enumeration


def channel_grid(granularity: int, maximum: int, extra: Iterable[int] = ()) -> tuple[int, ...]:
    """Every multiple of ``granularity`` up to ``maximum``, plus ``extra`` (the unpruned widths), sorted."""
    return tuple(sorted({*range(granularity, maximum + 1, granularity), *(e for e in extra if 1 <= e <= maximum)}))


def enumerate_layers(space: SearchSpace, scale: int, granularity: int, scheme: str = "dense") -> tuple[LayerKey, ...]:
    """Every layer a subnet of ``space`` can contain when pruned to multiples of ``granularity`` (or not pruned).

    Stream widths (head, conv cells, wdsr inputs and outputs, tail input) take the values of
    :func:`channel_grid` up to the widest width; a wdsr cell's expanded and reduced widths go up to
    ``max_expand x max_width`` (and the reduced one up to the widest width). Every (input, output) pair is
    listed, since pruning makes neighbouring layers' widths independent.
    """
    cfg = space.config
    widths = cfg.widths
    stream = channel_grid(granularity, space.max_width, widths)
    layers: set[LayerKey] = {LayerKey("head", IMAGE_CHANNELS, c, scheme) for c in stream}
    layers |= {LayerKey("tail", c, IMAGE_CHANNELS * scale * scale, scheme) for c in stream}
    if "conv" in cfg.blocks:
        layers |= {LayerKey("conv", a, b, scheme) for a in stream for b in stream}
    if "wdsr" in cfg.blocks:
        mids = channel_grid(granularity, space.max_width * space.max_expand, [w * e for w in widths for e in cfg.expansions])
        layers |= {LayerKey("expand", a, m, scheme) for a in stream for m in mids}
        layers |= {LayerKey("reduce", m, r, scheme) for m in mids for r in stream}
        layers |= {LayerKey("wdsr_conv", r, c, scheme) for r in stream for c in stream}
    return tuple(sorted(layers))


# ----------------------------------------------------------------------------------------- modules


class _PrunedConvCell(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _PrunedWDSRCell(nn.Module):
    def __init__(self, width: int, mid: int, red: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(width, mid, 1)
        self.act = nn.ReLU(inplace=True)
        self.reduce = nn.Conv2d(mid, red, 1)
        self.conv = nn.Conv2d(red, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.reduce(self.act(self.expand(x))))


class PrunedSR(nn.Module):
    """The physically pruned standalone network of a :class:`PrunedSubnet` (same forward as ``SubnetSR``)."""

    has_weights = True
    trainable = True

    def __init__(self, pruned: PrunedSubnet, scale: int) -> None:
        super().__init__()
        self.pruned = pruned
        self.scale = scale
        layers = network_layers(pruned, scale)
        self.head = nn.Conv2d(IMAGE_CHANNELS, layers[0].cout, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        cells: list[nn.Module] = []
        i = 1
        for cell in pruned.config.active_cells:
            if cell.block == "conv":
                cells.append(_PrunedConvCell(layers[i].cin, layers[i].cout))
                i += 1
            else:
                cells.append(_PrunedWDSRCell(layers[i].cin, layers[i].cout, layers[i + 1].cout))
                i += 3
        self.cells = nn.Sequential(*cells)
        self.tail = nn.Conv2d(layers[-1].cin, IMAGE_CHANNELS * scale * scale, 3, padding=1)
        self.upsample = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        return self.upsample(self.tail(self.cells(self.act(self.head(x)))) + residual)

    def extra_repr(self) -> str:
        return f"pruned={self.pruned.name}, scale={self.scale}"


def build_pruned_module(net: PrunedSubnet | SubnetConfig, scale: int, seed: int = 0) -> nn.Module:
    """The standalone network for ``net`` in eval mode: ``SubnetSR`` when unpruned, else :class:`PrunedSR`.

    Weights are freshly initialised (from ``seed``): latency does not depend on their values.
    """
    from srnas.supernet.subnet import SubnetSR

    pruned = as_pruned(net)
    torch.manual_seed(seed)
    if not pruned.is_pruned:
        return SubnetSR(pruned.config, scale).eval()
    return PrunedSR(pruned, scale).eval()


def pruned_like(net: PrunedSubnet, channels: Sequence[int]) -> PrunedSubnet:
    """A copy of ``net`` with other channel counts (validated)."""
    return dataclasses.replace(net, channels=tuple(channels))
