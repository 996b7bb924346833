"""The search space of the SR supernet and the subnet configurations it holds.

A subnet (``SubnetConfig``) is::

    head   conv3x3 (3 -> width) + ReLU
    cells  num_cells times one of
             conv   conv3x3 (width -> width) + ReLU                        (ECBSR-style plain layer; trained
                                                                            re-parameterised, supernet.reparam:
                                                                            ECB block or ReLU(x + conv3x3(x)),
                                                                            collapsed on export)
             wdsr   x + conv3x3(conv1x1(ReLU(conv1x1(x))))                 (WDSR-B: 1x1 expand to e*width,
                                                                            ReLU, 1x1 reduce to width, 3x3)
             skip   identity                                               (elastic depth)
    tail   conv3x3 (width -> 3*s^2), plus the input repeated s^2 times along channels, PixelShuffle(s)

With every cell ``conv`` the subnet is exactly :class:`srnas.models.plain.PlainNet` (width, num_cells + 2).

Why one global width, not a width per cell
------------------------------------------
- *Residual additions constrain widths.* A ``wdsr`` cell adds its input to its output, and the cells
  around it feed each other, so a cell's output width must equal its input width wherever a residual
  path crosses it. Per-cell widths would need a rule to reconcile them (zero-pad the narrower tensor or
  slice the wider one). Padding adds real memory traffic and compute on the target for channels that carry
  nothing -- padded or zeroed channels are not a physical saving (measured: unstructured zeros gave no speedup on
  any runtime, see docs/latency.md) -- and slicing
  silently drops features. With one width per subnet every addition is aligned by construction.
- *The space stays searchable.* 5 widths per cell over 6 cells would multiply the space by 5^5 = 3125 for
  choices whose effect on latency is mostly the sum of the per-layer widths; stage 2's budget is better
  spent on the block choices, which change the structure.
- *Per-layer widths are stage 3's job.* The pruning-ratio search refines each layer's width physically
  (SR-aware, keeping PixelShuffle groups and residual additions aligned) on the one architecture stage 2
  picks, where it costs one search instead of multiplying the space of every candidate.
- The WDSR expansion ratio *is* chosen per cell: the expanded channels live inside the block and meet no
  residual addition, so they need no alignment rule.

Widths are multiples of 8 (the SIMD width of fp32 AVX2 / bf16 AVX-512 kernels) so that every subnet the
search prices is one the runtime executes without padding.

Default sizing (measured)
-------------------------
``srnas.profiling.profile_module`` on this project's 2-core CI machine, 2 threads, median of 9, x2 at LR
360x640 (720p out); ranges are repeated runs on the shared machine:

=============================  =======  ==============  ====================
subnet                         GMAC     torch_bf16 ms   onnxruntime_fp32 ms
=============================  =======  ==============  ====================
w8-s.s.s.s.s.s (smallest)       0.25     13 - 17         14 - 21
w16-c.c.c.c.s.s (= plain16)     2.62     23 - 29         37
w16-c.c.c.c.c.c                 3.68     36 - 43         48 - 49
w32-w2.w2.w2.w2.w2.w2          19.4      154             256
w32-w4.w4.w4.w4.w4.w4 (largest) 25.1     252             414
w48-w4.w4.w4.w4.w4.w4          55.6      380             606
=============================  =======  ==============  ====================

(registered ``plain16`` in the same runs: 23 - 27 ms bf16, 36 - 37 ms ORT.) So the 33 ms budget cuts through the
width-8 and width-16 subnets, the smallest is at about half the budget (head and tail convs, residual and PixelShuffle at 720p:
memory-bound work) and the largest is 8-13x over it. At x4 (LR 180x320) the smallest is 10-11 ms and the largest
58 ms bf16 / 91 ms ORT. Width 48 is not a default: at x2 it only adds subnets 10x or more over the budget and it
doubles the cost of every sandwich step (the largest subnet dominates it); add it to ``supernet.space.widths``
for x4, where wider subnets fit the budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from srnas.config import SearchSpaceConfig, from_mapping
from srnas.errors import ConfigError

__all__ = [
    "CellConfig",
    "SubnetConfig",
    "SearchSpace",
    "as_subnet",
    "cell_macs_per_pixel",
    "subnet_macs_per_pixel",
]


def _json_value(text: str, what: str) -> Any:
    """``text`` parsed as JSON; ConfigError naming ``what`` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: not valid JSON ({exc})") from None


@dataclass(frozen=True)
class CellConfig:
    """One cell's choice: ``block`` (``conv``, ``wdsr`` or ``skip``) and, for ``wdsr`` only, ``expand`` (else 0)."""

    block: str
    expand: int = 0

    def __post_init__(self) -> None:
        if self.block not in ("conv", "wdsr", "skip"):
            raise ConfigError(f"cell block: unknown block {self.block!r}; choose from conv, wdsr, skip")
        if self.block == "wdsr" and self.expand < 1:
            raise ConfigError(f"cell block wdsr: expand must be a positive ratio, got {self.expand}")
        if self.block != "wdsr" and self.expand != 0:
            raise ConfigError(f"cell block {self.block}: expand is only for wdsr cells, got {self.expand}")

    @property
    def code(self) -> str:
        """Short name: ``c`` (conv), ``w4`` (wdsr, expand 4), ``s`` (skip)."""
        return {"conv": "c", "skip": "s"}.get(self.block, f"w{self.expand}")

    @classmethod
    def from_code(cls, code: str) -> CellConfig:
        if code == "c":
            return cls("conv")
        if code == "s":
            return cls("skip")
        if code.startswith("w") and code[1:].isdigit():
            return cls("wdsr", int(code[1:]))
        raise ConfigError(f"cell code {code!r}: expected c, s or w<expand> (e.g. w4)")


@dataclass(frozen=True)
class SubnetConfig:
    """One architecture of the space: a global ``width`` and one :class:`CellConfig` per cell.

    JSON round trip: ``SubnetConfig.from_json(cfg.to_json()) == cfg``. ``name`` is a compact, unique,
    file-name-safe spelling (``w24-c.w4.s.c.w2.c``) that :meth:`from_name` reads back.
    """

    width: int
    cells: tuple[CellConfig, ...]

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ConfigError(f"subnet width: expected a positive integer, got {self.width!r}")
        if not isinstance(self.cells, tuple) or not all(isinstance(c, CellConfig) for c in self.cells):
            raise ConfigError("subnet cells: expected a tuple of CellConfig")

    @property
    def active_cells(self) -> tuple[CellConfig, ...]:
        """The cells that compute something (not ``skip``)."""
        return tuple(c for c in self.cells if c.block != "skip")

    @property
    def depth(self) -> int:
        """Convolutions on the longest path: head + tail + 1 per conv cell + 3 per wdsr cell."""
        return 2 + sum(1 if c.block == "conv" else 3 for c in self.active_cells)

    @property
    def name(self) -> str:
        return f"w{self.width}-" + ".".join(c.code for c in self.cells)

    @classmethod
    def from_name(cls, name: str) -> SubnetConfig:
        head, _, cells = name.partition("-")
        if not head.startswith("w") or not head[1:].isdigit():
            raise ConfigError(f"subnet name {name!r}: expected w<width>-<cell>.<cell>..., e.g. w24-c.w4.s")
        codes = cells.split(".") if cells else []
        return cls(int(head[1:]), tuple(CellConfig.from_code(code) for code in codes))

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "cells": [dataclasses.asdict(c) for c in self.cells]}

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], where: str = "subnet") -> SubnetConfig:
        if not isinstance(mapping, Mapping) or set(mapping) != {"width", "cells"}:
            raise ConfigError(f"{where}: expected an object with keys width and cells, got {mapping!r}")
        cells = mapping["cells"]
        if not isinstance(cells, list):
            raise ConfigError(f"{where}.cells: expected a list, got {cells!r}")
        return cls(mapping["width"], tuple(from_mapping(CellConfig, c, f"{where}.cells[{i}]") for i, c in enumerate(cells)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        return cls.from_dict(_json_value(text, "subnet"))


def cell_macs_per_pixel(cell: CellConfig, width: int) -> int:
    """Multiply-accumulates per LR pixel of one cell (what :func:`srnas.models.gmacs` counts)."""
    if cell.block == "conv":
        return 9 * width * width
    if cell.block == "wdsr":
        return 2 * cell.expand * width * width + 9 * width * width
    return 0


def subnet_macs_per_pixel(cfg: SubnetConfig, scale: int) -> int:
    """Convolution MACs per LR pixel of a subnet (head + cells + tail); times H*W gives its MACs."""
    return 27 * cfg.width + sum(cell_macs_per_pixel(c, cfg.width) for c in cfg.cells) + 9 * cfg.width * 3 * scale * scale


class SearchSpace:
    """The set of subnets a :class:`SearchSpaceConfig` describes: size, extremes, sampling, validation.

    Immutable; JSON round trip with :meth:`to_json` / :meth:`from_json` (the config's fields).
    """

    def __init__(self, config: SearchSpaceConfig | None = None) -> None:
        self.config = config if config is not None else SearchSpaceConfig()
        cfg = self.config
        choices: list[CellConfig] = []
        for block in cfg.blocks:
            if block == "wdsr":
                choices.extend(CellConfig("wdsr", e) for e in cfg.expansions)
            else:
                choices.append(CellConfig(block))
        self.cell_choices: tuple[CellConfig, ...] = tuple(choices)

    # -- description ------------------------------------------------------------------------------

    @property
    def num_cells(self) -> int:
        return self.config.num_cells

    @property
    def widths(self) -> tuple[int, ...]:
        return self.config.widths

    @property
    def max_width(self) -> int:
        return self.config.widths[-1]

    @property
    def max_expand(self) -> int:
        return self.config.expansions[-1] if "wdsr" in self.config.blocks else 0

    def size(self) -> int:
        """Number of distinct subnets: widths x (cell choices)^num_cells."""
        return len(self.config.widths) * len(self.cell_choices) ** self.config.num_cells

    def describe(self) -> str:
        """A few lines for humans: the choices and the size of the space."""
        cfg = self.config
        size = self.size()
        return (
            f"search space: {cfg.num_cells} cells x {len(self.cell_choices)} choices per cell "
            f"({', '.join(c.code for c in self.cell_choices)}; c = conv3x3+ReLU, wN = WDSR-B expand N, s = skip), "
            f"global width in {list(cfg.widths)}\n"
            f"size: {len(cfg.widths)} x {len(self.cell_choices)}^{cfg.num_cells} = {size:,} subnets (~10^{math.log10(size):.1f})\n"
            f"largest:  {self.largest().name}\nsmallest: {self.smallest().name}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], where: str = "space") -> SearchSpace:
        return cls(from_mapping(SearchSpaceConfig, mapping, where))

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        return cls.from_dict(_json_value(text, "space"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)

    def __repr__(self) -> str:
        return f"SearchSpace({self.config!r})"

    # -- members ----------------------------------------------------------------------------------

    def _extreme(self, pick: Any, width: int) -> SubnetConfig:
        cell = pick(self.cell_choices, key=lambda c: (cell_macs_per_pixel(c, width), c.block != "skip", c.expand))
        return SubnetConfig(width, (cell,) * self.config.num_cells)

    def largest(self) -> SubnetConfig:
        """Widest width, every cell the most expensive choice (the sandwich rule's teacher)."""
        return self._extreme(max, self.config.widths[-1])

    def smallest(self) -> SubnetConfig:
        """Narrowest width, every cell the cheapest choice (skip when allowed: head + tail only)."""
        return self._extreme(min, self.config.widths[0])

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        """A random subnet: width uniform; per cell, block type uniform over ``blocks``, then expansion uniform."""
        cfg = self.config
        width = int(cfg.widths[int(rng.integers(len(cfg.widths)))])
        cells = []
        for _ in range(cfg.num_cells):
            block = cfg.blocks[int(rng.integers(len(cfg.blocks)))]
            expand = int(cfg.expansions[int(rng.integers(len(cfg.expansions)))]) if block == "wdsr" else 0
            cells.append(CellConfig(block, expand))
        return SubnetConfig(width, tuple(cells))

    def validate(self, subnet: SubnetConfig) -> SubnetConfig:
        """``subnet`` if it belongs to this space, else ConfigError saying what does not fit."""
        if not isinstance(subnet, SubnetConfig):
            raise ConfigError(f"expected a SubnetConfig, got {type(subnet).__name__}")
        if subnet.width not in self.config.widths:
            raise ConfigError(f"subnet {subnet.name}: width {subnet.width} not in the space's widths {list(self.config.widths)}")
        if len(subnet.cells) != self.config.num_cells:
            raise ConfigError(f"subnet {subnet.name}: {len(subnet.cells)} cells, the space has {self.config.num_cells}")
        for i, cell in enumerate(subnet.cells):
            if cell not in self.cell_choices:
                raise ConfigError(f"subnet {subnet.name}: cell {i} ({cell.code}) is not one of "
                                  f"{', '.join(c.code for c in self.cell_choices)}")
        return subnet

    def __contains__(self, subnet: object) -> bool:
        try:
            self.validate(subnet)  # type: ignore[arg-type]
        except ConfigError:
            return False
        return True

    def spread(self, count: int, rng: np.random.Generator, candidates: int = 2000) -> list[SubnetConfig]:
        """``count`` distinct subnets spread over the cost range: smallest, largest and, in between, the
        random subnets closest to evenly spaced quantiles of log MACs (for ranking benchmarks)."""
        if count < 2:
            raise ValueError(f"count must be at least 2, got {count}")
        lo, hi = self.smallest(), self.largest()
        pool = {self.sample(rng) for _ in range(candidates)} - {lo, hi}
        costs = sorted((math.log(subnet_macs_per_pixel(s, 2)), s.name, s) for s in pool)
        chosen = [lo]
        a, b = math.log(subnet_macs_per_pixel(lo, 2)), math.log(subnet_macs_per_pixel(hi, 2))
        for i in range(1, count - 1):
            target = a + (b - a) * i / (count - 1)
            best = min((c for c in costs if c[2] not in chosen), key=lambda c: abs(c[0] - target))
            chosen.append(best[2])
        chosen.append(hi)
        return chosen


def as_subnet(value: SubnetConfig | Mapping[str, Any] | str | Sequence[Any]) -> SubnetConfig:
    """A :class:`SubnetConfig` from itself, its dict, its JSON or its :attr:`SubnetConfig.name`."""
    if isinstance(value, SubnetConfig):
        return value
    if isinstance(value, Mapping):
        return SubnetConfig.from_dict(value)
    if isinstance(value, str):
        return SubnetConfig.from_json(value) if value.lstrip().startswith("{") else SubnetConfig.from_name(value)
    raise ConfigError(f"cannot read a subnet from {type(value).__name__} {value!r}")
