"""Bicubic upsampling as a module: the no-weights baseline.

This is torch's bicubic (``F.interpolate``, a = -0.75, ``align_corners=False``), clamped to [0, 1]. It is
*not* the evaluation protocol's MATLAB bicubic (a = -0.5, see :mod:`srnas.imresize`): the evaluate stage
scores ``bicubic`` with ``srnas.imresize.bicubic_upscale``; this module exists so that bicubic goes
through export and profiling like every other model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srnas.models.registry import register_model

__all__ = ["Bicubic"]


class Bicubic(nn.Module):
    has_weights = False
    trainable = False

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


@register_model("bicubic", reference="torch bicubic interpolation (a = -0.75)", has_weights=False)
def bicubic(scale: int) -> Bicubic:
    """Bicubic upsampling, no weights (evaluation uses MATLAB bicubic instead)."""
    return Bicubic(scale)
