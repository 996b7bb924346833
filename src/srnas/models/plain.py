"""A plain ECBSR-style network in inference form (Zhang et al., ACM MM 2021, after re-parameterisation).

``PlainNet(scale, width, depth)``: conv3x3 (3 -> width) + ReLU, ``depth - 2`` x [conv3x3 (width -> width) +
ReLU], conv3x3 (width -> 3*s^2), plus the cheap global residual -- the input with each colour channel
repeated s^2 times (``repeat_interleave``, so channel ``c*s^2 + i`` of the residual is colour ``c``, the
grouping PixelShuffle expects) added before the PixelShuffle. The network therefore learns the
difference to a nearest-neighbour upsample. ``depth`` counts every convolution (``plain16``: 6 convs).

The family ``plain_m<M>c<C>`` (ECBSR's naming: ``M`` body convs between head and tail, ``C`` channels) is
``PlainNet(scale, C, M + 2)``; ``plain_m4c16`` is the same network as ``plain16``. It is also the deployed form of
``ecbsr_m<M>c<C>`` (:mod:`srnas.models.ecbsr`).

Activation: ReLU (ECBSR uses PReLU; ReLU fuses into convolutions on every runtime profiled here).
"""

from __future__ import annotations

import torch
from torch import nn

from srnas.models.registry import register_family, register_model

__all__ = ["PlainNet"]


class PlainNet(nn.Module):
    has_weights = True
    trainable = True

    def __init__(self, scale: int, width: int, depth: int, channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"PlainNet width must be positive, got {width}")
        if depth < 2:
            raise ValueError(f"PlainNet depth counts every conv (head and tail included): at least 2, got {depth}")
        self.scale = scale
        self.width = width
        self.depth = depth
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels * scale * scale, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.upsample = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        return self.upsample(self.body(x) + residual)


def _plain(scale: int, width: int) -> PlainNet:
    return PlainNet(scale, width=width, depth=6)


@register_model("plain16", reference="ECBSR-style plain net (Zhang et al., ACM MM 2021)")
def plain16(scale: int) -> PlainNet:
    """Plain 3x3 conv net, 16 channels, 6 convs, ReLU, global residual, PixelShuffle."""
    return _plain(scale, 16)


@register_model("plain32", reference="ECBSR-style plain net (Zhang et al., ACM MM 2021)")
def plain32(scale: int) -> PlainNet:
    """Plain 3x3 conv net, 32 channels, 6 convs, ReLU, global residual, PixelShuffle."""
    return _plain(scale, 32)


@register_model("plain48", reference="ECBSR-style plain net (Zhang et al., ACM MM 2021)")
def plain48(scale: int) -> PlainNet:
    """Plain 3x3 conv net, 48 channels, 6 convs, ReLU, global residual, PixelShuffle."""
    return _plain(scale, 48)


@register_family("plain", examples=("plain_m4c16", "plain_m4c32", "plain_m0c8"),
                 description="Plain 3x3 conv net, {blocks} body convs + head + tail, {channels} channels, ReLU, global residual",
                 reference="ECBSR-style plain net (Zhang et al., ACM MM 2021)")
def plain_family(scale: int, blocks: int, channels: int) -> PlainNet:
    """Plain 3x3 conv net: head, ``blocks`` body convs, tail, ``channels`` wide (``plain_m4c16`` = ``plain16``)."""
    return PlainNet(scale, width=channels, depth=blocks + 2)
