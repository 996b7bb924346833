"""What stage 2 chooses: an architecture of the search space plus a pruning scheme for each of its layers.

A *searchable layer* is the head or one cell. Its scheme is ``dense`` (unpruned) or a filter-pruning scheme the
latency model measured as accelerated on the target (``filter_g16``: output channels removed, the count rounded
to a multiple of 16). A ``conv`` cell prunes its conv; a ``wdsr`` cell its 1x1 expand and reduce convs (its last
conv adds the cell's input, so it keeps the stream width); the head prunes the stream it starts. Stage 2 prices a
scheme at one nominal keep ratio (``search_arch.prune_keep``); stage 3 searches the real ratios.

Per-layer rather than per-conv schemes keep the space the same for every trial (the samplers model a fixed set
of parameters: head, ``num_cells`` blocks, ``num_cells + 1`` schemes, width), which Bayesian optimization needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from srnas.arch.pruned import PrunedSubnet, full_channels, round_channels
from srnas.arch.space import SubnetConfig
from srnas.errors import ConfigError
from srnas.pruning import pruned_from_keep

__all__ = ["DENSE", "ArchCandidate", "scheme_granularity"]

DENSE = "dense"


def scheme_granularity(scheme: str) -> int:
    """The channel granularity of a filter scheme (``filter_g8`` -> 8); ConfigError for anything else."""
    if scheme.startswith("filter_g") and scheme[len("filter_g"):].isdigit() and int(scheme[len("filter_g"):]) >= 1:
        return int(scheme[len("filter_g"):])
    raise ConfigError(f"pruning scheme {scheme!r}: expected {DENSE} or filter_g<granularity> (e.g. filter_g16)")


def _effective(scheme: str, full: int, keep: float) -> str:
    """``scheme``, or ``dense`` when pruning a ``full``-filter layer to ``keep`` on its grid removes nothing."""
    if scheme == DENSE or round_channels(full * keep, scheme_granularity(scheme), full) < full:
        return scheme
    return DENSE


@dataclass(frozen=True)
class ArchCandidate:
    """``subnet`` and ``schemes``: one per searchable layer (head, then each cell; a skip cell is always dense)."""

    subnet: SubnetConfig
    schemes: tuple[str, ...]

    def __post_init__(self) -> None:
        schemes = tuple(self.schemes)
        if len(schemes) != 1 + len(self.subnet.cells):
            raise ConfigError(f"candidate {self.subnet.name}: expected {1 + len(self.subnet.cells)} schemes "
                              f"(head + one per cell), got {len(schemes)}")
        for scheme in schemes:
            if scheme != DENSE:
                scheme_granularity(scheme)
        for cell, scheme in zip(self.subnet.cells, schemes[1:]):
            if cell.block == "skip" and scheme != DENSE:
                raise ConfigError(f"candidate {self.subnet.name}: a skip cell has no layer to prune ({scheme})")
        object.__setattr__(self, "schemes", schemes)

    @classmethod
    def normalized(cls, subnet: SubnetConfig, schemes: Sequence[str], keep: float) -> ArchCandidate:
        """Like the constructor, but a scheme that would prune nothing becomes ``dense``: a skip cell's, and one whose
        rounding keeps every filter at ``keep`` (``filter_g16`` on a width-8 layer). Proposals that build the same
        network then share one name, one cached score and one point on the front."""
        full = full_channels(subnet)
        fixed = [_effective(schemes[0], full[0], keep)]
        i = 1
        for cell, scheme in zip(subnet.cells, schemes[1:]):
            if cell.block == "skip":
                fixed.append(DENSE)
                continue
            widths = full[i:i + 1] if cell.block == "conv" else full[i:i + 2]
            fixed.append(DENSE if all(_effective(scheme, w, keep) == DENSE for w in widths) else scheme)
            i += 1 if cell.block == "conv" else 3
        return cls(subnet, tuple(fixed))

    @property
    def is_pruned(self) -> bool:
        return any(s != DENSE for s in self.schemes)

    @property
    def name(self) -> str:
        """The subnet's name, plus ``/`` and one code per layer (``d`` dense, ``g16`` filter_g16) when pruned."""
        if not self.is_pruned:
            return self.subnet.name
        return self.subnet.name + "/" + ".".join("d" if s == DENSE else f"g{scheme_granularity(s)}" for s in self.schemes)

    def conv_schemes(self) -> tuple[str, ...]:
        """The scheme of every freely prunable conv, in :func:`srnas.pruning.prunable_convs` order: the head's, then
        a conv cell's for its conv and a wdsr cell's for its expand and reduce (its last conv follows its stream)."""
        out = [self.schemes[0]]
        for cell, scheme in zip(self.subnet.cells, self.schemes[1:]):
            if cell.block != "skip":
                out += [scheme] * (1 if cell.block == "conv" else 2)
        return tuple(out)

    def network(self, keeps: Sequence[float]) -> PrunedSubnet:
        """The filter-pruned subnet: prunable conv ``i`` keeps ``keeps[i]`` of its filters, rounded to the grid of its
        scheme (a ``dense`` conv, on the grid of 1, keeps exactly that share: pass 1)."""
        grains = [1 if s == DENSE else scheme_granularity(s) for s in self.conv_schemes()]
        return pruned_from_keep(self.subnet, keeps, grains)

    def pruned(self, keep: float) -> PrunedSubnet:
        """The filter-pruned subnet: each pruned layer keeps ``keep`` of its filters, rounded to its scheme's grid."""
        return self.network([1.0 if s == DENSE else keep for s in self.conv_schemes()])

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": self.subnet.to_dict(), "schemes": list(self.schemes), "name": self.name}

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], where: str = "candidate") -> ArchCandidate:
        if not isinstance(mapping, Mapping) or not {"subnet", "schemes"} <= set(mapping):
            raise ConfigError(f"{where}: expected an object with keys subnet and schemes, got {mapping!r}")
        return cls(SubnetConfig.from_dict(mapping["subnet"], f"{where}.subnet"), tuple(mapping["schemes"]))
