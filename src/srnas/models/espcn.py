"""ESPCN (Shi et al., CVPR 2016), on RGB: 5x5 64, 3x3 32, 3x3 to 3*s^2, PixelShuffle.

Activation: ReLU, not the paper's tanh. ReLU fuses into the convolution in every runtime this project
profiles (ONNX Runtime, XNNPACK, oneDNN), so the baseline's measured latency is not inflated by an
activation that deployments would swap anyway, and it trains at least as well here with Adam.
"""

from __future__ import annotations

import torch
from torch import nn

from srnas.models.registry import register_model

__all__ = ["ESPCN"]


class ESPCN(nn.Module):
    has_weights = True
    trainable = True

    def __init__(self, scale: int, channels: int = 3, feat1: int = 64, feat2: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(channels, feat1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(feat1, feat2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(feat2, channels * scale * scale, 3, padding=1),
        )
        self.upsample = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.body(x))


@register_model("espcn", reference="Shi et al., CVPR 2016 (arXiv 1609.05158)")
def espcn(scale: int) -> ESPCN:
    """ESPCN on RGB with ReLU: 5x5x64, 3x3x32, 3x3 to 3*s^2 channels, PixelShuffle."""
    return ESPCN(scale)
