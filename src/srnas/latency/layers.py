"""Every layer configuration a subnet of the search space can contain, pruned or not.

A subnet (:class:`~srnas.arch.space.SubnetConfig`) is a chain of *layers*, each one unit of the
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

Pruned subnets (:class:`~srnas.arch.pruned.PrunedSubnet`) run the same ops with fewer channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from srnas.arch.pruned import IMAGE_CHANNELS, PrunedSubnet, as_pruned
from srnas.arch.space import SearchSpace, SubnetConfig

__all__ = ["LAYER_OPS", "LayerKey", "channel_grid", "enumerate_layers", "network_layers"]

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
