"""FSRCNN (Dong et al., ECCV 2016), on RGB: d=56, s=12, m=4, PReLU, 9x9 deconvolution with stride = scale.

Feature extraction 5x5 (3 -> d), shrinking 1x1 (d -> s), m mapping 3x3 (s -> s), expanding 1x1 (s -> d),
each followed by a per-channel PReLU, then a 9x9 transposed convolution (d -> 3) with stride ``scale``,
padding 4 and output padding ``scale - 1`` so the output is exactly ``scale`` times the input.
Initialisation as in the paper: He-normal for the convolutions, N(0, 0.001) for the deconvolution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from srnas.models.registry import register_model

__all__ = ["FSRCNN"]


class FSRCNN(nn.Module):
    has_weights = True
    trainable = True

    def __init__(self, scale: int, channels: int = 3, d: int = 56, s: int = 12, m: int = 4) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(channels, d, 5, padding=2), nn.PReLU(d)]
        layers += [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=4, output_padding=scale - 1)
        for module in self.body:
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.deconv.weight, 0.0, 0.001)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.body(x))


@register_model("fsrcnn", reference="Dong et al., ECCV 2016 (arXiv 1608.00367)")
def fsrcnn(scale: int) -> FSRCNN:
    """FSRCNN(56, 12, 4) on RGB with PReLU and a 9x9 stride-s deconvolution."""
    return FSRCNN(scale)
