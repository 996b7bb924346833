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


UPSCALE_PRECISIONS = ("fp32", "bf16")


def torch_upscaler(model: torch.nn.Module, precision: str = "fp32") -> Callable[[np.ndarray], np.ndarray]:
    """An ``LR uint8 -> SR uint8`` function running ``model`` in eval mode, in ``precision``: ``fp32``, or ``bf16``
    as the ``torch_bf16`` runtime deploys it (bf16 autocast, channels-last), so that a latency measured in bf16 is
    paired with the quality of the same arithmetic."""
    if precision not in UPSCALE_PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {', '.join(UPSCALE_PRECISIONS)}")
    model.eval()
    bf16 = precision == "bf16"
    if bf16:
        model = model.to(memory_format=torch.channels_last)

    def upscale(lr: np.ndarray) -> np.ndarray:
        x = to_tensor(lr)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return to_uint8(model(x.contiguous(memory_format=torch.channels_last) if bf16 else x))

    return upscale
