"""ECBSR: edge-oriented convolution blocks (Zhang et al., ACM MM 2021, "Edge-oriented Convolution Block for
Real-time Super Resolution on Mobile Devices"), trained multi-branch and deployed as a plain conv net.

One implementation serves three trainers: the ECBSR baseline (:class:`ECBSR`), the supernet's ``reparam: ecb`` form
(:mod:`srnas.supernet.layers` slices an :class:`ECB` per subnet) and fine-tuning's ``reparam: ecb``
(:func:`with_ecb_training_form` swaps every 3x3 conv of a network for an :class:`ECB` equal to it,
:func:`collapse_ecbs` swaps back).

An :class:`ECB` is a 3x3 convolution trained as the edge-oriented convolution block of ECBSR (Zhang et al.,
ACM MM 2021): the sum of four linear branches,

    (a) conv3x3 (with the block's bias)
    (b) conv1x1 expanding to ``multiplier`` x out channels, then conv3x3 back to out
    (c) for each of the fixed filters Sobel-x, Sobel-y and Laplacian: conv1x1 (in -> out), then that filter applied
        depthwise, times a learned per-channel scale
    (d) the identity (only where in == out: the cells, not the head and the tail)

Every branch is linear, so their sum is *one* 3x3 convolution whose kernel and bias are computed from the branch
parameters (:meth:`ECB.kernel`); :meth:`ECB.forward` builds that kernel for the active widths and runs
one ``F.conv2d`` (gradients flow through the construction into every branch), which costs barely more than a plain
conv, and :meth:`ECB.export` copies it into an ordinary ``nn.Conv2d``, so the deployed subnet is the plain
one whatever the training form. :meth:`ECB.forward_branches` computes the same function branch by branch:
the reference the collapsed form is tested against. Elastic widths slice every branch like the supernet's
dynamic convs do: in channels ``[:in]``, out channels ``[:out]``, branch (b)'s middle channels ``[:multiplier * out]``.

Branch biases. ECBSR also gives the 1x1 and 3x3 of (b) and each edge filter of (c) a bias (``branch_biases=True``
here). They add nothing to what the block can compute -- each only shifts the one output bias -- but with Adam they
change how it trains: every one of them moves by about the learning rate per step, and the 3x3 of (b) turns its
1x1's bias into a bias shift summed over all its middle channels and taps, so the block's bias moves several times
faster than a plain conv's and pushes ReLU channels dead. Measured in a sandwich supernet (default space, T91,
batch 16, 300 steps, one run each): with ECBSR's biases and initialisation 97 % of the head's channels were dead
after 20 steps and, at batch 32, every subnet ended with the same output (Set5 30.8 dB, the nearest-neighbour
residual alone); with the branch biases zero-initialised and the 1x1s at a tenth of ``nn.Conv2d``'s scale up to 34 %
of a conv cell's channels were dead at step 300; without branch biases at most 9 % (the identity form: 6 %), with
the lowest losses of the variants tried. So every trainer here uses ``branch_biases=False`` (ECBSR's PReLU would keep channels alive; this project
uses ReLU, which fuses into convolutions on every runtime profiled). Borders, when
branch biases are on: a 3x3 conv applied to a 1x1 conv's output with zero padding is *not* a 3x3 conv of the input
at the image border, because the padded ring of the 1x1 output should hold the 1x1's bias (the 1x1 of a zero-padded
input is its bias); ``forward_branches`` pads it with that bias (ECBSR's convention) and then equals the collapsed
conv everywhere, borders included. Without branch biases the ring is zero either way.

:class:`ECBSR` ``(scale, width, blocks)``: head ECB (3 -> width) + ReLU, ``blocks`` x [ECB (width -> width, with
the identity branch) + ReLU], tail ECB (width -> 3*s^2), the global residual and PixelShuffle of
:class:`srnas.models.plain.PlainNet`. :meth:`ECBSR.collapse` / :meth:`ECBSR.deploy` return that
``PlainNet(scale, width, blocks + 2)`` with the collapsed weights: the form every stage after training uses
(:func:`srnas.loading.load_trained`) and the one the complexity counters count. Registered as the family
``ecbsr_m<M>c<C>`` (M = ``blocks``, C = ``width``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from srnas.models.plain import PlainNet
from srnas.models.registry import register_family

__all__ = ["ECB", "ECBSR", "EDGE_FILTERS", "collapse_ecbs", "export_conv", "with_ecb_training_form"]


def export_conv(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """An ordinary ``nn.Conv2d`` (same padding) holding an fp32, NCHW-contiguous copy of ``weight`` and ``bias``."""
    out_channels, in_channels, kernel_size, _ = weight.shape
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    conv.to(device=weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight.detach().float().contiguous())
        conv.bias.copy_(bias.detach().float())
    return conv


# The fixed 3x3 filters of ECB branch (c), as cross-correlation weights (F.conv2d): horizontal and vertical
# gradients and the 4-neighbour Laplacian. Each sums to zero (so branch (c)'s 1x1 has no use for a bias).
EDGE_FILTERS = {
    "sobel_x": ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0)),
    "sobel_y": ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0)),
    "laplacian": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
}


def _pad_with(t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, H, W) with a one-pixel ring around it holding ``values[c]`` in channel ``c``."""
    n, c, h, w = t.shape
    out = values.to(t.dtype).view(1, c, 1, 1).expand(n, c, h + 2, w + 2).clone()
    out[:, :, 1:-1, 1:-1] = t
    return out


def _uniform_fan_in(tensor: torch.Tensor, fan_in: int, gain: float = 1.0) -> None:
    """``nn.Conv2d``'s initialisation (times ``gain``) of a weight or bias whose layer has ``fan_in`` inputs per output."""
    bound = gain / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class ECB(nn.Module):
    """A 3x3 convolution (stride 1, same padding) trained in ECBSR's edge-oriented form, elastic by slicing like the
    supernet's dynamic layers (``forward(x, out_channels)``; by default the full ``max_in -> max_out``); see the module
    docstring.

    Parameters (max-size, sliced per call): ``weight`` / ``bias`` -- branch (a) and the block's bias, the names of
    :class:`DynamicConv2d`'s; ``expand_weight`` (``multiplier * max_out x max_in``) and ``conv_weight``
    (``max_out x multiplier * max_out x 3 x 3``) -- branch (b); ``edge_weight`` (``3 x max_out x max_in``, one 1x1
    per fixed filter) and ``edge_scale`` (``3 x max_out``) -- branch (c), filters in :data:`EDGE_FILTERS` order;
    ``identity`` -- branch (d) on or off. With ``branch_biases`` also ECBSR's ``expand_bias`` (``multiplier *
    max_out``), ``conv_bias`` (``max_out``) and ``edge_bias`` (``3 x max_out``).
    """

    kernel_size = 3
    padding = 1

    def __init__(self, max_in: int, max_out: int, *, identity: bool, multiplier: int = 2, branch_biases: bool = False) -> None:
        super().__init__()
        if identity and max_in != max_out:
            raise ValueError(f"an identity branch needs as many inputs as outputs, got {max_in} -> {max_out}")
        if multiplier < 1:
            raise ValueError(f"multiplier must be positive, got {multiplier}")
        self.max_in, self.max_out, self.identity, self.multiplier = max_in, max_out, identity, multiplier
        self.branch_biases = branch_biases
        mid, edges = multiplier * max_out, len(EDGE_FILTERS)
        self.weight = nn.Parameter(torch.empty(max_out, max_in, 3, 3))
        self.bias = nn.Parameter(torch.empty(max_out))
        self.expand_weight = nn.Parameter(torch.empty(mid, max_in))
        self.conv_weight = nn.Parameter(torch.empty(max_out, mid, 3, 3))
        self.edge_weight = nn.Parameter(torch.empty(edges, max_out, max_in))
        self.edge_scale = nn.Parameter(torch.empty(edges, max_out))
        self.expand_bias: nn.Parameter | None = None
        self.conv_bias: nn.Parameter | None = None
        self.edge_bias: nn.Parameter | None = None
        if branch_biases:
            self.expand_bias = nn.Parameter(torch.empty(mid))
            self.conv_bias = nn.Parameter(torch.empty(max_out))
            self.edge_bias = nn.Parameter(torch.empty(edges, max_out))
        # fixed, derived from constants: not saved with the weights
        self.register_buffer("edge_filters", torch.tensor(list(EDGE_FILTERS.values())), persistent=False)
        self.identity_kernel: torch.Tensor | None
        if identity:  # branch (d) as a 3x3 kernel: a 1 at the centre of channel c -> c
            self.register_buffer("identity_kernel", F.pad(torch.eye(max_out)[:, :, None, None], (1, 1, 1, 1)), persistent=False)
        else:
            self.identity_kernel = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Branch (a) and (b)'s 3x3 like ``nn.Conv2d`` (fan-in of the full-size weight); the 1x1s of (b) and (c) at a
        tenth of ``nn.Conv2d``'s scale (the 3x3 after a 1x1 sums the 1x1's Adam steps over every middle channel,
        weighted by its weights: small 1x1s keep the collapsed kernel's steps near a plain conv's); the edge scales,
        as ECBSR's, ~ N(0, 1e-3), so branch (c) grows in as training finds it useful; branch biases at zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        _uniform_fan_in(self.bias, self.max_in * 9)
        _uniform_fan_in(self.expand_weight, self.max_in, 0.1)  # kaiming_uniform(a=sqrt(5)) of a 1x1: bound 1/sqrt(fan_in)
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        _uniform_fan_in(self.edge_weight, self.max_in, 0.1)
        nn.init.normal_(self.edge_scale, std=1e-3)
        for bias in (self.expand_bias, self.conv_bias, self.edge_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def _check(self, in_channels: int, out_channels: int) -> None:
        if not (1 <= in_channels <= self.max_in and 1 <= out_channels <= self.max_out):
            raise ValueError(f"{in_channels} -> {out_channels} channels do not fit a {self.max_in} -> {self.max_out} dynamic ECB")
        if self.identity and in_channels != out_channels:
            raise ValueError(f"{in_channels} -> {out_channels} channels: an ECB with an identity branch maps a width to itself")

    def kernel(self, in_channels: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The collapsed ``(weight, bias)`` (``out x in x 3 x 3``, ``out``) of the four branches at these widths, in
        fp32, differentiable with respect to every branch parameter.

        For a 1x1 ``(A, a)`` followed by a 3x3 ``(B, b)`` whose input ring holds ``a``: weight ``sum_m B[o, m] A[m, i]``,
        bias ``b[o] + sum_m a[m] sum_hw B[o, m]``. Branch (c) is the same with ``B[o, m] = scale[o] F`` for ``m = o``
        only and ``a = 0`` (its 1x1 has no bias even with ``branch_biases``: each fixed filter sums to zero, so a
        constant map -- a bias with its ring -- filters to zero and such a bias could never learn anything).
        """
        self._check(in_channels, out_channels)
        o, i, m = out_channels, in_channels, self.multiplier * out_channels
        # (matmuls rather than einsum: this runs for every layer of every subnet of every step, and they dispatch faster)
        with torch.autocast(self.weight.device.type, enabled=False):  # built in fp32 whatever the caller's autocast
            conv_weight = self.conv_weight[:o, :m]
            # (b): B[o, m, h, w] A[m, i] summed over m, as (o, h, w, m) @ (m, i)
            through = (conv_weight.permute(0, 2, 3, 1) @ self.expand_weight[:m, :i]).permute(0, 3, 1, 2)
            # (c): scale[e, o] W[e, o, i] F[e, h, w] summed over e, as (o, i, e) @ (e, h * w)
            scaled = self.edge_weight[:, :o, :i] * self.edge_scale[:, :o, None]
            edges = (scaled.permute(1, 2, 0) @ self.edge_filters.reshape(len(EDGE_FILTERS), 9)).view(o, i, 3, 3)
            weight = self.weight[:o, :i] + through + edges
            bias = self.bias[:o]
            if self.expand_bias is not None and self.conv_bias is not None and self.edge_bias is not None:
                through_bias = conv_weight.sum(dim=(2, 3)) @ self.expand_bias[:m]
                bias = bias + self.conv_bias[:o] + through_bias + self.edge_bias[:, :o].sum(dim=0)
            if self.identity_kernel is not None:
                weight = weight + self.identity_kernel[:o, :o]
        return weight, bias

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        """One convolution with the collapsed kernel of the active widths (the training form); ``out_channels``
        defaults to ``max_out``."""
        weight, bias = self.kernel(x.shape[1], self.max_out if out_channels is None else out_channels)
        return F.conv2d(x, weight, bias, padding=1)

    def collapse(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-width collapsed ``(weight, bias)``: :meth:`kernel` at ``max_in -> max_out``."""
        return self.kernel(self.max_in, self.max_out)

    def to_conv(self) -> nn.Conv2d:
        """The full-width block as an ordinary ``nn.Conv2d`` (fp32)."""
        return export_conv(*self.collapse())

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d) -> ECB:
        """An ECB equal to ``conv`` (3x3, stride 1, padding 1, ungrouped, with bias; identity branch when square):
        branch (a) holds the kernel less the identity, branch (b)'s 3x3 and the edge scales start at zero, so the
        other branches start silent and grow from their gradients (their 1x1s keep their random initialisation)."""
        if not _is_plain_conv3x3(conv):
            raise ValueError(f"ECB.from_conv: expected a 3x3 stride-1 padding-1 ungrouped conv with bias, got {conv}")
        block = cls(conv.in_channels, conv.out_channels, identity=conv.in_channels == conv.out_channels)
        block.to(conv.weight.device)
        block.conv_weight.zero_()
        block.edge_scale.zero_()
        identity = block.identity_kernel if block.identity_kernel is not None else 0.0
        block.weight.copy_(conv.weight - identity)
        assert conv.bias is not None
        block.bias.copy_(conv.bias)
        return block

    def forward_branches(self, x: torch.Tensor, out_channels: int | None = None, *, bias_padding: bool = True) -> torch.Tensor:
        """The same function computed branch by branch (the reference :meth:`forward` is tested against).

        With branch biases, ``bias_padding`` pads branch (b)'s 1x1 output with its bias before the 3x3 that follows
        (ECBSR's convention, equal to :meth:`forward` everywhere); ``False`` pads it with zeros, which differs along the
        image border. (Without branch biases, and in branch (c), the 1x1 outputs' ring is zero either way.)
        """
        i, o = x.shape[1], self.max_out if out_channels is None else out_channels
        self._check(i, o)
        m = self.multiplier * o
        expand_bias = None if self.expand_bias is None else self.expand_bias[:m]
        conv_bias = None if self.conv_bias is None else self.conv_bias[:o]
        out = F.conv2d(x, self.weight[:o, :i], self.bias[:o], padding=1)
        inner = F.conv2d(x, self.expand_weight[:m, :i, None, None], expand_bias)
        inner = _pad_with(inner, expand_bias) if bias_padding and expand_bias is not None else F.pad(inner, (1, 1, 1, 1))
        out = out + F.conv2d(inner, self.conv_weight[:o, :m], conv_bias)
        for e in range(len(EDGE_FILTERS)):
            inner = F.pad(F.conv2d(x, self.edge_weight[e, :o, :i, None, None]), (1, 1, 1, 1))
            depthwise = self.edge_scale[e, :o, None, None, None] * self.edge_filters[e]  # o x 1 x 3 x 3
            out = out + F.conv2d(inner, depthwise, None if self.edge_bias is None else self.edge_bias[e, :o], groups=o)
        if self.identity:
            out = out + x
        return out

    def export(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        """An ordinary ``nn.Conv2d`` holding the collapsed kernel (fp32, NCHW-contiguous)."""
        return export_conv(*self.kernel(in_channels, out_channels))

    def extra_repr(self) -> str:
        return (f"max_in={self.max_in}, max_out={self.max_out}, identity={self.identity}, multiplier={self.multiplier}, "
                f"branch_biases={self.branch_biases}, edges={','.join(EDGE_FILTERS)}")


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


def with_ecb_training_form(model: nn.Module) -> nn.Module:
    """``model`` (changed in place and returned) with every plain 3x3 conv replaced by an equal :class:`ECB`
    (:meth:`ECB.from_conv`): the network computes the same function, but trains with ECBSR's extra branches;
    :func:`collapse_ecbs` turns it back into plain convs."""
    _replace_children(model, lambda m: ECB.from_conv(m) if _is_plain_conv3x3(m) else None)
    return model


def collapse_ecbs(model: nn.Module) -> nn.Module:
    """``model`` (changed in place and returned) with every :class:`ECB` collapsed into its ``nn.Conv2d``."""
    _replace_children(model, lambda m: m.to_conv() if isinstance(m, ECB) else None)
    return model


class ECBSR(nn.Module):
    """ECBSR with ReLU: head ECB, ``blocks`` ECBs, tail ECB, global residual, PixelShuffle; deploys as PlainNet."""

    has_weights = True
    trainable = True

    def __init__(self, scale: int, width: int, blocks: int, channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"ECBSR width must be positive, got {width}")
        if blocks < 0:
            raise ValueError(f"ECBSR blocks (body ECBs between head and tail) must be >= 0, got {blocks}")
        self.scale, self.width, self.blocks, self.channels = scale, width, blocks, channels
        layers: list[nn.Module] = [ECB(channels, width, identity=False), nn.ReLU(inplace=True)]
        for _ in range(blocks):
            layers += [ECB(width, width, identity=True), nn.ReLU(inplace=True)]
        layers.append(ECB(width, channels * scale * scale, identity=False))
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
        return net.to(self.body[0].weight.device).float().eval()

    def deploy(self) -> PlainNet:
        """The deployed form (the :class:`srnas.models.registry.Deployable` protocol): :meth:`collapse`."""
        return self.collapse()


@register_family("ecbsr", examples=("ecbsr_m4c16", "ecbsr_m4c32", "ecbsr_m0c8"),
                 description="ECBSR, {blocks} ECBs + head + tail, {channels} channels, ReLU; deploys as plain_m{blocks}c{channels}",
                 reference="Zhang et al., ACM MM 2021 (ECBSR)")
def ecbsr_family(scale: int, blocks: int, channels: int) -> ECBSR:
    """ECBSR: ``blocks`` edge-oriented conv blocks between head and tail, ``channels`` wide; deploys as PlainNet."""
    return ECBSR(scale, width=channels, blocks=blocks)
