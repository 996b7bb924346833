"""ECBSR: edge-oriented convolution blocks (Zhang et al., ACM MM 2021, "Edge-oriented Convolution Block for
Real-time Super Resolution on Mobile Devices"), trained multi-branch and deployed as a plain conv net.

An :class:`ECB` maps ``cin -> cout`` with a 3x3 receptive field as the sum of linear branches:

(a) conv3x3;
(b) conv1x1 expanding to ``expand * cout`` channels (ECBSR: 2), then conv3x3 (no padding) to ``cout``;
(c) three edge branches: conv1x1 ``cin -> cout``, then a fixed depthwise 3x3 filter (Sobel-x, Sobel-y,
    Laplacian) times a learned per-channel scale, plus a learned per-channel bias;
(d) the identity, when ``cin == cout``.

Borders, the ECBSR way: a 3x3 conv on a 1x1 conv's zero-padded output is not a 3x3 conv on the zero-padded input,
because the 1x1's bias is missing from the padding. Here the 1x1 output is padded with the 1x1's bias (what the
1x1 gives for a zero input pixel), and the 3x3 that follows runs unpadded, so every branch equals a single 3x3 conv
on the zero-padded input, borders included, and the block collapses exactly (:meth:`ECB.collapse`). The edge
branches' 1x1 convs have no bias: padded with it, a bias under a zero-sum filter (all three filters sum to 0)
contributes nothing, so it would be a parameter whose gradient is always zero.

Training speed: every branch is linear, so :meth:`ECB.forward` builds the collapsed kernel from the branch
parameters on every call (in fp32, outside autocast) and runs ONE conv3x3; gradients reach the branch parameters
through the kernel construction, and a training step costs about what a plain conv net's does.
:meth:`ECB.forward_branches` is the explicit multi-branch sum, kept as the independent reference the tests compare
against.

:class:`ECBSR` ``(scale, width, blocks)``: head ECB (3 -> width) + ReLU, ``blocks`` x [ECB (width -> width) +
ReLU], tail ECB (width -> 3*s^2), the global residual and PixelShuffle of :class:`srnas.models.plain.PlainNet`
(ReLU, not ECBSR's PReLU, as there). :meth:`ECBSR.collapse` / :meth:`ECBSR.deploy` return that
``PlainNet(scale, width, blocks + 2)`` with the collapsed weights: the form every stage after training uses
(:func:`srnas.loading.load_trained`) and the one the complexity counters count. Registered as the family
``ecbsr_m<M>c<C>`` (M = ``blocks``, C = ``width``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from srnas.models.plain import PlainNet
from srnas.models.registry import register_family

__all__ = ["ECB", "ECBSR", "EDGE_FILTERS", "collapse_ecbs", "with_ecb_training_form"]

# The fixed depthwise filters of the edge branches (each sums to zero).
EDGE_FILTERS: dict[str, tuple[tuple[float, ...], ...]] = {
    "sobel_x": ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    "sobel_y": ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
    "laplacian": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
}


def _pad_with(y: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``y`` (N, C, H, W) with a one-pixel border whose channel ``c`` holds ``value[c]`` (differentiable in both)."""
    n, c, h, w = y.shape
    out = value.to(y.dtype).view(1, c, 1, 1).expand(n, c, h + 2, w + 2).clone()
    out[:, :, 1:-1, 1:-1] = y
    return out


class ECB(nn.Module):
    """Edge-oriented convolution block ``cin -> cout`` (see the module docstring); ``forward`` runs the collapsed
    3x3 conv, ``forward_branches`` the multi-branch sum, ``collapse()`` gives the kernel and bias.

    The three edge branches are stored stacked (fewer tensors for the optimizer to walk): ``edge_1x1`` is the three
    1x1 convs ``cin -> cout`` as one ``cin -> 3*cout`` conv (branch ``b`` is output channels ``b*cout ..``),
    ``edge_scale`` and ``edge_bias`` are (3, cout), the fixed filters ``edge_filters`` (3, 3, 3), in the order of
    :data:`EDGE_FILTERS`.
    """

    def __init__(self, cin: int, cout: int, expand: int = 2) -> None:
        super().__init__()
        if cin < 1 or cout < 1 or expand < 1:
            raise ValueError(f"ECB needs positive channels and expansion, got cin={cin}, cout={cout}, expand={expand}")
        self.cin, self.cout = cin, cout
        self.conv3x3 = nn.Conv2d(cin, cout, 3, padding=1)
        self.expand_1x1 = nn.Conv2d(cin, expand * cout, 1)
        self.expand_3x3 = nn.Conv2d(expand * cout, cout, 3)  # unpadded: its input is padded with expand_1x1's bias
        branches = len(EDGE_FILTERS)
        self.edge_1x1 = nn.Conv2d(cin, branches * cout, 1, bias=False)
        # ECBSR's initialisation: small random scales and biases, so the edge branches start close to silent
        self.edge_scale = nn.Parameter(torch.randn(branches, cout) * 1e-3)
        self.edge_bias = nn.Parameter(torch.randn(branches, cout) * 1e-3)
        self.register_buffer("edge_filters", torch.tensor(tuple(EDGE_FILTERS.values())), persistent=False)
        self.with_identity = cin == cout
        identity = torch.zeros(cout, cin, 3, 3)
        if self.with_identity:
            identity[torch.arange(cout), torch.arange(cin), 1, 1] = 1.0
        self.register_buffer("identity", identity, persistent=False)

    def _edge_depthwise(self) -> torch.Tensor:
        """The edge branches' depthwise kernels ``scale[b, c] * filter[b]``, shape (3, cout, 3, 3)."""
        return self.edge_scale[:, :, None, None] * self.edge_filters[:, None]

    def collapse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single conv3x3 (weight (cout, cin, 3, 3), bias (cout,), padding 1) equal to the block, computed in the
        parameters' dtype outside autocast; differentiable in the branch parameters."""
        with torch.autocast(self.conv3x3.weight.device.type, enabled=False):
            cout, cin = self.cout, self.cin
            # (b): sum over the expanded channels; the 1x1 bias reaches every output through all 9 taps
            k0 = self.expand_1x1.weight.flatten(1)  # (mid, cin)
            k1 = self.expand_3x3.weight  # (cout, mid, 3, 3)
            # one (cout*9, mid) @ (mid, cin) matmul (an einsum here becomes a batched bmm that is far slower on CPU)
            taps = k1.permute(0, 2, 3, 1).reshape(cout * 9, k1.shape[1])
            weight = self.conv3x3.weight + (taps @ k0).view(cout, 3, 3, cin).permute(0, 3, 1, 2)
            bias = self.conv3x3.bias + self.expand_3x3.bias + k1.sum(dim=(2, 3)) @ self.expand_1x1.bias
            # (c): branch b's depthwise kernel of output channel o applied to its 1x1's output o
            k = self.edge_1x1.weight.view(-1, cout, cin, 1, 1)  # (3, cout, cin, 1, 1)
            weight = weight + (k * self._edge_depthwise()[:, :, None]).sum(dim=0)
            bias = bias + self.edge_bias.sum(dim=0)
            # (d)
            if self.with_identity:
                weight = weight + self.identity.to(weight.dtype)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.collapse()
        return F.conv2d(x, weight, bias, padding=1)

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, expand: int = 2) -> ECB:
        """An ECB equal to ``conv`` (a 3x3, stride 1, padding 1, ungrouped conv): its conv3x3 branch holds the kernel
        (less the identity), the expand branch's 3x3 and the edge scales and biases start at zero, so the other
        branches start silent and grow from their gradients (the 1x1s keep their random initialisation)."""
        if not _is_plain_conv3x3(conv):
            raise ValueError(f"ECB.from_conv: expected a 3x3 stride-1 padding-1 ungrouped conv with bias, got {conv}")
        block = cls(conv.in_channels, conv.out_channels, expand).to(conv.weight.device)
        for param in (block.expand_3x3.weight, block.expand_3x3.bias, block.edge_scale, block.edge_bias):
            param.zero_()
        block.conv3x3.weight.copy_(conv.weight - block.identity)
        assert conv.bias is not None
        block.conv3x3.bias.copy_(conv.bias - block.expand_3x3.bias - block.expand_3x3.weight.sum(dim=(2, 3)) @ block.expand_1x1.bias)
        return block

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """The collapsed block as an ordinary ``nn.Conv2d`` (fp32)."""
        weight, bias = self.collapse()
        conv = nn.Conv2d(self.cin, self.cout, 3, padding=1).to(weight.device)
        conv.weight.copy_(weight.float())
        conv.bias.copy_(bias.float())
        return conv

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """The explicit multi-branch sum (the reference the collapse is tested against)."""
        out = self.conv3x3(x)
        mid = self.expand_1x1(x)
        out = out + self.expand_3x3(_pad_with(mid, self.expand_1x1.bias))
        # the edge 1x1s have no bias, so conv2d's zero padding is the bias padding
        edges = self.edge_1x1(x)
        depthwise = self._edge_depthwise().flatten(0, 1).unsqueeze(1)  # (3*cout, 1, 3, 3)
        edges = F.conv2d(edges, depthwise, self.edge_bias.flatten(), padding=1, groups=edges.shape[1])
        for branch in edges.split(self.cout, dim=1):
            out = out + branch
        if self.with_identity:
            out = out + x
        return out


def _is_plain_conv3x3(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (1, 1) and module.dilation == (1, 1) and module.groups == 1 and module.bias is not None)


def _replace_children(module: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> int:
    count = 0
    for name, child in module.named_children():
        new = swap(child)
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += _replace_children(child, swap)
    return count


def with_ecb_training_form(model: nn.Module, expand: int = 2) -> nn.Module:
    """``model`` (changed in place and returned) with every plain 3x3 conv replaced by an equal :class:`ECB`
    (:meth:`ECB.from_conv`): the network computes the same function, but trains with ECBSR's extra branches;
    :func:`collapse_ecbs` turns it back into plain convs."""
    _replace_children(model, lambda m: ECB.from_conv(m, expand) if _is_plain_conv3x3(m) else None)
    return model


def collapse_ecbs(model: nn.Module) -> nn.Module:
    """``model`` (changed in place and returned) with every :class:`ECB` collapsed into its ``nn.Conv2d``."""
    _replace_children(model, lambda m: m.to_conv() if isinstance(m, ECB) else None)
    return model


class ECBSR(nn.Module):
    """ECBSR with ReLU: head ECB, ``blocks`` ECBs, tail ECB, global residual, PixelShuffle; deploys as PlainNet."""

    has_weights = True
    trainable = True

    def __init__(self, scale: int, width: int, blocks: int, channels: int = 3, expand: int = 2) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"ECBSR width must be positive, got {width}")
        if blocks < 0:
            raise ValueError(f"ECBSR blocks (body ECBs between head and tail) must be >= 0, got {blocks}")
        self.scale, self.width, self.blocks, self.channels = scale, width, blocks, channels
        layers: list[nn.Module] = [ECB(channels, width, expand), nn.ReLU(inplace=True)]
        for _ in range(blocks):
            layers += [ECB(width, width, expand), nn.ReLU(inplace=True)]
        layers.append(ECB(width, channels * scale * scale, expand))
        self.body = nn.Sequential(*layers)
        self.upsample = nn.PixelShuffle(scale)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(x, self.scale * self.scale, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.body(x) + self._residual(x))

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """The same network through every ECB's multi-branch sum (the reference for :meth:`collapse`)."""
        y = x
        for layer in self.body:
            y = layer.forward_branches(y) if isinstance(layer, ECB) else layer(y)
        return self.upsample(y + self._residual(x))

    @torch.no_grad()
    def collapse(self) -> PlainNet:
        """``PlainNet(scale, width, blocks + 2)`` with every ECB collapsed into its conv3x3: fp32, eval mode, on the
        parameters' device; equal to this network up to float rounding, borders included."""
        net = PlainNet(self.scale, self.width, self.blocks + 2, self.channels)
        convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
        ecbs = [m for m in self.body if isinstance(m, ECB)]
        assert len(convs) == len(ecbs)
        for conv, ecb in zip(convs, ecbs, strict=True):
            weight, bias = ecb.collapse()
            conv.weight.copy_(weight.float())
            assert conv.bias is not None
            conv.bias.copy_(bias.float())
        return net.to(self.body[0].conv3x3.weight.device).float().eval()

    def deploy(self) -> PlainNet:
        """The deployed form (the :class:`srnas.models.registry.Deployable` protocol): :meth:`collapse`."""
        return self.collapse()


@register_family("ecbsr", examples=("ecbsr_m4c16", "ecbsr_m4c32", "ecbsr_m0c8"),
                 description="ECBSR, {blocks} ECBs + head + tail, {channels} channels, ReLU; deploys as plain_m{blocks}c{channels}",
                 reference="Zhang et al., ACM MM 2021 (ECBSR)")
def ecbsr_family(scale: int, blocks: int, channels: int) -> ECBSR:
    """ECBSR: ``blocks`` edge-oriented conv blocks between head and tail, ``channels`` wide; deploys as PlainNet."""
    return ECBSR(scale, width=channels, blocks=blocks)
