"""The weight-sharing SR supernet with once-for-all's contract.

``SRSupernet(space, scale, reparam)`` holds every subnet of ``space`` (a :class:`~srnas.arch.space.SearchSpace`
or its config) at one upscaling factor, its 3x3 convs trained in the re-parameterisable form ``reparam``
(``supernet.reparam``): ``ecb`` trains the head, the tail and every ``conv`` cell as ECBSR's edge-oriented block
(:class:`~srnas.supernet.layers.DynamicECB`), ``identity`` trains a ``conv`` cell as ``ReLU(x + conv3x3(x))`` and the
head and tail as plain convs. Either way a subnet deploys as the same plain network, one 3x3 conv per layer:

- ``set_active_subnet(cfg)`` validates ``cfg`` against the space and makes it the subnet ``forward`` runs;
- ``sample_active_subnet(rng)`` draws one uniformly (``SearchSpace.sample``), sets and returns it;
- ``get_active_subnet(cfg=None)`` returns a standalone :class:`~srnas.arch.network.SubnetSR` (plain
  ``nn.Conv2d`` / ``nn.PixelShuffle``) with the weights of ``cfg`` (default: the active subnet) copied out, the
  branches of each re-parameterisable conv collapsed into its one kernel. Its output equals
  ``supernet(x, subnet=cfg)`` (the tests hold it to 1e-6, and to 1e-5 against the ECB branches computed one by one,
  image borders included) and it exports and profiles like any registered model, so latency tables, pruning and
  export never see the training form.

``forward(x, subnet=None)`` runs ``subnet`` when given, else the active one: training code passes the subnet
explicitly and never depends on what was set before. The active subnet is the only state; layers keep none.

:func:`save_supernet` / :func:`load_supernet` store the space, scale, ``reparam`` and weights (``srnas-supernet/1``; a
file written before ``reparam`` existed holds the ``identity`` form and loads as such).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from srnas.arch.network import ConvCell, SubnetSR, WDSRCell
from srnas.arch.pruned import IMAGE_CHANNELS
from srnas.arch.space import SearchSpace, SubnetConfig, as_subnet
from srnas.checkpoint import CheckpointError, load_payload, save_payload
from srnas.config import SUPERNET_REPARAMS, SearchSpaceConfig, SupernetConfig
from srnas.errors import ConfigError
from srnas.models.ecbsr import export_conv
from srnas.supernet.layers import DynamicCell, DynamicConv2d, DynamicECB

__all__ = ["SRSupernet", "SUPERNET_FORMAT", "save_supernet", "load_supernet"]

SUPERNET_FORMAT = "srnas-supernet/1"
# What a supernet file without a ``reparam`` key holds: the form every supernet had before the key existed.
LEGACY_REPARAM = "identity"


class SRSupernet(nn.Module):
    """Head, ``num_cells`` dynamic cells and tail sized for the widest subnet; see the module docstring."""

    def __init__(self, space: SearchSpace | SearchSpaceConfig, scale: int, reparam: str = SupernetConfig.reparam) -> None:
        super().__init__()
        if reparam not in SUPERNET_REPARAMS:
            raise ConfigError(f"supernet.reparam: expected one of {', '.join(SUPERNET_REPARAMS)}, got {reparam!r}")
        self.space = space if isinstance(space, SearchSpace) else SearchSpace(space)
        self.scale = scale
        self.reparam = reparam
        self.channels = IMAGE_CHANNELS
        width, expand = self.space.max_width, max(self.space.max_expand, 1)
        out = IMAGE_CHANNELS * scale * scale
        ecb = reparam == "ecb"  # head and tail: no identity branch, they change the number of channels
        # (created in this order -- head, cells, tail -- so that a seed gives the identity form the weights it always had)
        self.head = DynamicECB(IMAGE_CHANNELS, width, identity=False) if ecb else DynamicConv2d(IMAGE_CHANNELS, width, 3)
        self.cells = nn.ModuleList(DynamicCell(width, expand, self.space.config.blocks, reparam) for _ in range(self.space.num_cells))
        self.tail = DynamicECB(width, out, identity=False) if ecb else DynamicConv2d(width, out, 3)
        self.upsample = nn.PixelShuffle(scale)
        self._active = self.space.largest()

    # -- once-for-all contract -------------------------------------------------------------------

    @property
    def active_subnet(self) -> SubnetConfig:
        return self._active

    def set_active_subnet(self, subnet: SubnetConfig | dict[str, Any] | str) -> SubnetConfig:
        """Make ``subnet`` (a config, its dict, JSON or name) the one ``forward`` runs; ConfigError if not in the space."""
        self._active = self.space.validate(as_subnet(subnet))
        return self._active

    def sample_active_subnet(self, rng: np.random.Generator) -> SubnetConfig:
        """Draw a subnet with ``rng`` (``SearchSpace.sample``), make it active and return it."""
        return self.set_active_subnet(self.space.sample(rng))

    def get_active_subnet(self, subnet: SubnetConfig | dict[str, Any] | str | None = None) -> SubnetSR:
        """A standalone :class:`SubnetSR` for ``subnet`` (default: the active one) with copied fp32 weights."""
        cfg = self._active if subnet is None else self.space.validate(as_subnet(subnet))
        width = cfg.width
        model = SubnetSR(cfg, self.scale)
        model.head = self.head.export(self.channels, width)
        exported: list[nn.Module] = []
        for cell, dyn in zip(cfg.cells, self.cells):
            if cell.block == "conv":
                assert dyn.conv is not None
                block = ConvCell(width, width)
                block.conv = export_conv(*dyn.conv_kernel(width))  # every branch of the training form in one kernel
            elif cell.block == "wdsr":
                assert dyn.wdsr is not None
                block = WDSRCell(width, width * cell.expand, width)
                block.expand = dyn.wdsr.expand.export(width, width * cell.expand)
                block.reduce = dyn.wdsr.reduce.export(width * cell.expand, width)
                block.conv = dyn.wdsr.conv.export(width, width)
            else:
                continue
            exported.append(block)
        model.cells = nn.Sequential(*exported)
        model.tail = self.tail.export(width, self.channels * self.scale * self.scale)
        return model.to(self.head.weight.device)

    # -- computation ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, subnet: SubnetConfig | None = None) -> torch.Tensor:
        cfg = self._active if subnet is None else subnet
        residual = torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        h = torch.relu(self.head(x, cfg.width))
        for cell, dyn in zip(cfg.cells, self.cells):
            h = dyn(h, cell)
        return self.upsample(self.tail(h, self.channels * self.scale * self.scale) + residual)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, reparam={self.reparam}, subnets={self.space.size():,}"


def save_supernet(path: str | os.PathLike[str], model: SRSupernet, extra: dict[str, Any] | None = None) -> None:
    """Write the space, scale, training form and fp32 NCHW weights atomically (read back by :func:`load_supernet`)."""
    state = {k: v.detach().float().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_payload(Path(path), {"format": SUPERNET_FORMAT, "space": model.space.to_dict(), "scale": model.scale,
                              "reparam": model.reparam, "state_dict": state, **(extra or {})})


def load_supernet(path: str | os.PathLike[str]) -> SRSupernet:
    """The supernet saved by :func:`save_supernet` (CPU, eval mode); CheckpointError naming the file when unusable.
    A file without ``reparam`` (written before it existed) holds the ``identity`` form."""
    path = Path(path)
    payload = load_payload(path, SUPERNET_FORMAT, ("space", "scale", "state_dict"))
    try:
        model = SRSupernet(SearchSpace.from_dict(payload["space"], f"{path}:space"), int(payload["scale"]),
                           str(payload.get("reparam", LEGACY_REPARAM)))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (ConfigError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model.eval()
