"""Physical filter pruning of a trained subnet: :func:`prune_subnet` turns an unpruned
:class:`~srnas.arch.network.SubnetSR` into the smaller ``SubnetSR`` that a :class:`~srnas.arch.pruned.PrunedSubnet`
describes: the one module that does graph surgery on networks.

Channels are *removed*, not masked: for every pruned conv the ``k`` most important output filters (by the
L1 or L2 norm of their weights, :func:`filter_importance`) are kept in their original order, and the next
layer's input channels are sliced to match, so the result runs exactly the layers the latency table prices.

SR-aware alignment
------------------
A *stream* is the activation a head or ``conv`` cell produces, carried through the following ``wdsr`` cells
(each adds its input to its output) up to the next ``conv`` cell or the tail. The residual additions pair
channel ``c`` of every conv writing into a stream, so those convs (the producer and each wdsr cell's last
conv3x3) keep the *same* channel indices, chosen by their summed importance. The tail's ``3 s^2`` outputs
are never pruned (PixelShuffle groups and the global residual need them).

:func:`pruned_from_keep` turns per-conv keep ratios (what the stage-3 search chooses) into a
``PrunedSubnet``; :func:`srnas.arch.network.save_network` stores the result (``srnas-pruned/1``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from srnas.arch.network import SubnetSR
from srnas.arch.pruned import IMAGE_CHANNELS, PrunedSubnet, full_channels, round_channels
from srnas.arch.space import SubnetConfig
from srnas.errors import ConfigError

__all__ = [
    "CRITERIA",
    "filter_importance",
    "kept_channels",
    "prunable_convs",
    "prune_subnet",
    "pruned_from_keep",
]

CRITERIA = ("l1", "l2", "leading")


def filter_importance(weight: Tensor, criterion: str) -> Tensor:
    """One score per output filter of a conv ``weight`` (``out x in x kh x kw``), in fp32: its L1 or L2 norm, or
    for ``leading`` its position (first = most important): the order in which the supernet's weight sharing trains
    the filters, since a narrower subnet runs the leading filters of every layer."""
    if criterion not in CRITERIA:
        raise ConfigError(f"pruning criterion {criterion!r}: choose from {', '.join(CRITERIA)}")
    if criterion == "leading":
        return torch.arange(weight.shape[0], 0, -1, dtype=torch.float32)
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    return torch.linalg.vector_norm(flat, ord=1 if criterion == "l1" else 2, dim=1)


def _follows(config: SubnetConfig) -> tuple[int, ...]:
    """For each conv (order of ``PrunedSubnet.channels``), the conv whose channel choice it takes: itself
    when free, the stream's producer for a wdsr cell's last conv (the residual addition ties them)."""
    follows, stream = [0], 0
    for cell in config.active_cells:
        j = len(follows)
        if cell.block == "conv":
            follows.append(j)
            stream = j
        else:
            follows += [j, j + 1, stream]
    return tuple(follows)


def prunable_convs(config: SubnetConfig) -> tuple[int, ...]:
    """Indices into ``PrunedSubnet.channels`` that can be chosen freely (all but each wdsr cell's last conv)."""
    return tuple(j for j, f in enumerate(_follows(config)) if f == j)


def pruned_from_keep(config: SubnetConfig, keep: Sequence[float], granularity: int | Sequence[int]) -> PrunedSubnet:
    """``config`` with free conv ``prunable_convs(config)[i]`` keeping the share ``keep[i]`` (in (0, 1]) of its
    filters, rounded to a multiple of its granularity (one for all, or one per free conv) by
    :func:`~srnas.latency.layers.round_channels`; a wdsr cell's last conv follows its stream."""
    free = prunable_convs(config)
    keep = tuple(keep)
    if len(keep) != len(free):
        raise ConfigError(f"pruning {config.name}: expected {len(free)} keep ratios (one per free conv), got {len(keep)}")
    grains = tuple(granularity) if isinstance(granularity, Sequence) else (granularity,) * len(free)
    if len(grains) != len(free):
        raise ConfigError(f"pruning {config.name}: expected one granularity or {len(free)} (one per free conv), "
                          f"got {len(grains)}")
    for i, (k, g) in enumerate(zip(keep, grains)):
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0 < k <= 1:
            raise ConfigError(f"pruning {config.name}: keep ratio {i} is {k!r}; must be in (0, 1]")
        if isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 1:
            raise ConfigError(f"pruning {config.name}: granularity {i} is {g!r}; must be a positive integer")
    full = full_channels(config)
    chosen = {j: int(round_channels(full[j] * k, int(g), full[j])) for j, k, g in zip(free, keep, grains)}
    return PrunedSubnet(config, tuple(chosen[f] for f in _follows(config)))


def _convs(model: nn.Module, config: SubnetConfig) -> list[nn.Conv2d]:
    """Every conv but the tail, in the order of ``PrunedSubnet.channels`` (pruned or not, ``SubnetSR`` names them alike)."""
    convs = [model.head]
    for cell, module in zip(config.active_cells, model.cells, strict=True):
        convs += [module.conv] if cell.block == "conv" else [module.expand, module.reduce, module.conv]
    return convs


def _check(model: SubnetSR, pruned: PrunedSubnet, scale: int | None) -> None:
    """ConfigError unless ``pruned`` (and ``scale``) describe ``model``: weights copied across would not fit."""
    if not isinstance(model, SubnetSR):
        raise ConfigError(f"pruning: expected a SubnetSR to prune, got {type(model).__name__}")
    if model.pruned.is_pruned:
        raise ConfigError(f"pruning: {model.pruned.name} is pruned already; prune the unpruned subnet")
    if not isinstance(pruned, PrunedSubnet):
        raise ConfigError(f"pruning: expected a PrunedSubnet, got {type(pruned).__name__}")
    if pruned.config != model.subnet:
        raise ConfigError(f"pruning: the pruned configuration is for subnet {pruned.config.name}, "
                          f"the model is subnet {model.subnet.name}")
    if scale is not None and scale != model.scale:
        raise ConfigError(f"pruning {model.subnet.name}: asked for x{scale}, the model is x{model.scale}")
    if model.head.in_channels != IMAGE_CHANNELS or model.tail.out_channels != IMAGE_CHANNELS * model.scale ** 2:
        raise ConfigError(f"pruning {model.subnet.name}: the model's head/tail ({model.head.in_channels} in, "
                          f"{model.tail.out_channels} out) do not fit RGB x{model.scale}")


def kept_channels(model: SubnetSR, pruned: PrunedSubnet, criterion: str = "l1") -> tuple[Tensor, ...]:
    """The output filters each conv of ``model`` keeps under ``pruned`` (sorted indices, one tensor per entry
    of ``pruned.channels``): its top ``k`` by importance, summed over the convs of a stream (they are tied)."""
    _check(model, pruned, None)
    follows = _follows(pruned.config)
    summed: dict[int, Tensor] = {}
    for j, conv in enumerate(_convs(model, pruned.config)):
        score = filter_importance(conv.weight, criterion)
        summed[follows[j]] = summed[follows[j]] + score if follows[j] in summed else score
    # stable: equal scores keep the lower index, so the choice is deterministic
    top = {f: torch.argsort(s, descending=True, stable=True)[: pruned.channels[f]].sort().values
           for f, s in summed.items()}
    return tuple(top[f] for f in follows)


def _copy(src: nn.Conv2d, dst: nn.Conv2d, rows: Tensor | None, cols: Tensor | None) -> None:
    weight, bias = src.weight.detach().float(), src.bias.detach().float()
    if rows is not None:
        weight, bias = weight[rows], bias[rows]
    if cols is not None:
        weight = weight[:, cols]
    dst.weight.copy_(weight)
    dst.bias.copy_(bias)


def prune_subnet(model: SubnetSR, pruned: PrunedSubnet, criterion: str = "l1", scale: int | None = None) -> SubnetSR:
    """The physically pruned copy of ``model`` (weights taken from it, fp32, eval mode, on its device).

    ``pruned.config`` must be ``model.subnet``; ``scale``, when given, must be ``model.scale``.
    """
    _check(model, pruned, scale)
    keep = kept_channels(model, pruned, criterion)
    with torch.device("meta"):  # every parameter is copied below: skip the random initialisation
        net = SubnetSR(pruned, model.scale)
    net = net.to_empty(device=model.head.weight.device)
    inputs = (None, *keep)  # conv j reads conv j-1's kept filters (the head reads the image)
    with torch.no_grad():
        for j, (src, dst) in enumerate(zip(_convs(model, pruned.config), _convs(net, pruned.config), strict=True)):
            _copy(src, dst, keep[j], inputs[j])
        _copy(model.tail, net.tail, None, keep[-1])
    return net.eval()
