"""Run an SR network on uint8 images: the one conversion every stage shares (eval, export parity, upscale)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``1 x 3 x H x W`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """``1 x 3 x H x W`` float in [0, 1] -> ``H x W x 3`` uint8, rounded like the protocol."""
    array = tensor.detach().float().squeeze(0).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return array.permute(1, 2, 0).contiguous().numpy()


def torch_upscaler(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """An ``LR uint8 -> SR uint8`` function running ``model`` in fp32 eval mode."""
    model.eval()

    def upscale(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return to_uint8(model(to_tensor(lr)))

    return upscale
