"""Dynamic layers: one max-size weight, sliced to the active subnet's channels (once-for-all style).

A :class:`DynamicConv2d` holds ``weight`` of shape ``max_out x max_in x k x k`` and computes a convolution
with ``weight[:out, :in]`` and ``bias[:out]``, where ``in`` is the number of channels of its input and
``out`` is passed to ``forward``. Every subnet therefore uses the *first* channels of each layer: narrower
subnets share (and train) a prefix of the wider ones' filters.

Unlike once-for-all, no layer stores an "active" width: the width is an argument of ``forward``, and the
only state saying which subnet runs is ``SRSupernet.active_subnet`` (or the ``subnet`` argument of its
``forward``). :meth:`DynamicConv2d.export` copies the active slice into an ordinary ``nn.Conv2d``.

Re-parameterisable convolutions (``supernet.reparam: ecb``)
-----------------------------------------------------------
The head, the tail and every ``conv`` cell can train as ECBSR's edge-oriented convolution block:
:class:`srnas.models.ecbsr.ECB`, the same implementation the ECBSR baseline and fine-tuning use, elastic by slicing
like :class:`DynamicConv2d` (its ``forward(x, out_channels)`` builds the collapsed kernel of the active widths and
runs one conv; ``export`` copies it into an ordinary ``nn.Conv2d``). Why its branches carry no biases here, and the
measurements behind it: :mod:`srnas.models.ecbsr`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from srnas.arch.space import CellConfig
from srnas.models.ecbsr import ECB, export_conv

__all__ = ["DynamicConv2d", "DynamicECB", "DynamicWDSR", "DynamicCell"]

# The supernet's re-parameterisable conv: one ECB implementation for every trainer (see the module docstring).
DynamicECB = ECB


class DynamicConv2d(nn.Module):
    """A ``k x k`` convolution (stride 1, same padding) whose input and output widths are sliced per call."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.max_in, self.max_out, self.kernel_size = max_in, max_out, kernel_size
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(max_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialisation, with the fan-in of the full-size weight."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.max_in * self.kernel_size * self.kernel_size)
        nn.init.uniform_(self.bias, -bound, bound)

    def _check(self, in_channels: int, out_channels: int) -> None:
        if not (1 <= in_channels <= self.max_in and 1 <= out_channels <= self.max_out):
            raise ValueError(f"{in_channels} -> {out_channels} channels do not fit a {self.max_in} -> {self.max_out} dynamic conv")

    def kernel(self, in_channels: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[:out, :in]`` slice: ``(weight, bias)`` (views of the parameters)."""
        self._check(in_channels, out_channels)
        return self.weight[:out_channels, :in_channels], self.bias[:out_channels]

    def forward(self, x: torch.Tensor, out_channels: int) -> torch.Tensor:
        in_channels = x.shape[1]
        self._check(in_channels, out_channels)
        return F.conv2d(x, self.weight[:out_channels, :in_channels], self.bias[:out_channels], padding=self.padding)

    def export(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        """An ordinary ``nn.Conv2d`` holding a copy (fp32, NCHW-contiguous) of the ``[:out, :in]`` slice."""
        return export_conv(*self.kernel(in_channels, out_channels))

    def extra_repr(self) -> str:
        return f"max_in={self.max_in}, max_out={self.max_out}, kernel_size={self.kernel_size}"


class DynamicWDSR(nn.Module):
    """WDSR-B residual block with elastic width and expansion: ``x + conv3x3(reduce1x1(ReLU(expand1x1(x))))``."""

    def __init__(self, max_width: int, max_expand: int) -> None:
        super().__init__()
        self.expand = DynamicConv2d(max_width, max_width * max_expand, 1)
        self.reduce = DynamicConv2d(max_width * max_expand, max_width, 1)
        self.conv = DynamicConv2d(max_width, max_width, 3)

    def forward(self, x: torch.Tensor, expand: int) -> torch.Tensor:
        width = x.shape[1]
        h = F.relu(self.expand(x, expand * width))
        return x + self.conv(self.reduce(h, width), width)


class DynamicCell(nn.Module):
    """One cell of the supernet: separate weights per block type (``conv``, ``wdsr``), ``skip`` has none.

    The ``conv`` block deploys as one plain ``conv3x3 + ReLU`` and trains in a re-parameterisable form, chosen by
    ``reparam``:

    - ``identity``: ``ReLU(x + conv3x3(x))`` (RepVGG-style): the identity branch is a 3x3 kernel with a 1 at the
      centre of channel ``i -> i``, so the deployed kernel is ``W + I`` -- the same function at the same cost;
    - ``ecb``: ``ReLU(ECB(x))``, a :class:`DynamicECB` with its identity branch (ECBSR's edge-oriented block).

    In a weight-sharing supernet the identity branch matters: a conv cell that is not (yet) well trained for the
    subnet at hand passes its input on instead of scrambling it, like ``skip`` and ``wdsr`` (residual already).
    :meth:`conv_kernel` gives the deployed kernel either way.
    """

    def __init__(self, max_width: int, max_expand: int, blocks: tuple[str, ...], reparam: str = "identity") -> None:
        super().__init__()
        if reparam not in ("identity", "ecb"):
            raise ValueError(f"reparam must be identity or ecb, got {reparam!r}")
        self.blocks, self.reparam = blocks, reparam
        self.conv: DynamicConv2d | DynamicECB | None = None
        if "conv" in blocks:
            self.conv = DynamicECB(max_width, max_width, identity=True) if reparam == "ecb" else DynamicConv2d(max_width, max_width, 3)
        self.wdsr = DynamicWDSR(max_width, max_expand) if "wdsr" in blocks else None

    def conv_kernel(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``conv`` block's deployed 3x3 ``(weight, bias)`` at ``width``, identity branch included (fp32)."""
        if self.conv is None:
            raise ValueError(f"block 'conv' is not in this cell's choices {self.blocks}")
        weight, bias = self.conv.kernel(width, width)
        if isinstance(self.conv, DynamicConv2d):  # fold the identity branch of ReLU(x + conv(x)) into the kernel
            weight = weight.float() + F.pad(torch.eye(width, device=weight.device)[:, :, None, None], (1, 1, 1, 1))
        return weight, bias

    def forward(self, x: torch.Tensor, cell: CellConfig) -> torch.Tensor:
        if cell.block == "skip":
            return x
        if cell.block == "conv" and self.conv is not None:
            if isinstance(self.conv, DynamicECB):  # the identity is one of its branches
                return F.relu(self.conv(x, x.shape[1]))
            return F.relu(x + self.conv(x, x.shape[1]))  # the identity branch that conv_kernel folds in
        if cell.block == "wdsr" and self.wdsr is not None:
            return self.wdsr(x, cell.expand)
        raise ValueError(f"block {cell.block!r} is not in this cell's choices {self.blocks}")
