"""Model size and cost: parameter count and convolution multiply-accumulates (MACs).

MACs are counted by forward hooks on ``Conv2d`` / ``ConvTranspose2d`` for one ``1 x 3 x H x W`` input;
bias additions, activations, PixelShuffle and the global residual are not counted (they are
memory-bound and small next to the convolutions), as in the SR papers' tables.

A model with a deployed form other than its training form (:class:`srnas.models.registry.Deployable`, e.g. ECBSR)
is counted in its deployed form: :func:`conv_macs` / :func:`gmacs` run ``model.deploy()``, the network that is
exported and timed. :func:`count_params` counts the module it is given (for ECBSR: the training form's branch
parameters); pass ``deployed_form(model)`` for the deployed count.
"""

from __future__ import annotations

import torch
from torch import nn

from srnas.models.registry import deployed_form

__all__ = ["count_params", "conv_macs", "gmacs"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements), optionally only those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_macs(model: nn.Module, in_h: int, in_w: int) -> int:
    """Multiply-accumulates of every Conv2d / ConvTranspose2d for one RGB input of ``in_h x in_w``, in the model's
    deployed form (``model.deploy()`` when it has one)."""
    if in_h < 1 or in_w < 1:
        raise ValueError(f"input size must be positive, got {in_h}x{in_w}")
    model = deployed_form(model)
    total = 0

    def conv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        # every output element sums (in_channels / groups) * kh * kw products
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def deconv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.ConvTranspose2d)
        kh, kw = module.kernel_size
        # every input element scatters into (out_channels / groups) * kh * kw outputs
        total += inputs[0][0].numel() * (module.out_channels // module.groups) * kh * kw

    handles = []
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            handles.append(module.register_forward_hook(deconv_hook))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            model(torch.zeros(1, 3, in_h, in_w, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def gmacs(model: nn.Module, in_h: int, in_w: int) -> float:
    """Convolution GMACs (1e9 multiply-accumulates) for one RGB input of ``in_h x in_w`` (deployed form)."""
    return conv_macs(model, in_h, in_w) / 1e9
