"""Time one layer, or one whole network, on a target's runtime, the way the deployed network runs it.

The only module of :mod:`srnas.latency` that runs anything: sessions, calls and timing primitives come from
:mod:`srnas.runtimes`, layer graphs and int8 QDQ rewrites from :mod:`srnas.onnx_graph` (the graph-surgery owner),
ExecuTorch programs from :mod:`srnas.export` (the lowering owner), whole networks are exported with
:func:`srnas.export.export_onnx` / :func:`srnas.export.export_pte` and timed by
:func:`srnas.profiling.profile_module`, exactly like the ``profile_model`` stage does.

Context matters more than the op: a layer is timed at the target's input size with its inputs already in
the layout and precision they have inside the network:

- ``torch_fp32``: NCHW fp32 tensors, eager module, ``torch.inference_mode``;
- ``torch_bf16``: channels-last tensors, bf16 between layers (fp32 only for the image), bf16 autocast -- what
  ``profile_module`` does to the whole network;
- ``onnxruntime_fp32``: an ONNX graph of the layer *with* its activation / residual addition / PixelShuffle (the
  runtime fuses Conv+ReLU and Conv+Add) after context nodes that produce its input in the layout it has inside a
  network, all graph optimisations on; the layer's time is the kernel time of the nodes it owns in ONNX Runtime's
  own profile (:class:`_ProfiledLayer`). Precision ``int8`` quantizes that graph statically to QDQ (uint8
  activations, int8 per-channel weights) with ``onnxruntime.quantization``, as the whole network would be;
- ``executorch_xnnpack_fp32``: the layer *with* its activation / residual addition / PixelShuffle lowered to an
  ExecuTorch program with the XNNPACK delegate (:func:`srnas.export.lower_pte`, height and width dynamic like a
  network's ``.pte``), its inputs in the layout XNNPACK keeps inside a network (NHWC: channels-last tensors; the
  image NCHW, as the network gets it; the tail NCHW, see :func:`_program_inputs`), timed call by call. Precision
  ``int8`` quantizes the layer by PT2E with the XNNPACK quantizer first, as the whole network would be. What a
  layer program pays and the network does not (copying its input in and its output out of the program, converting
  to and from int8) grows with the channels handed over between layers: the overhead model fits it
  (:mod:`srnas.latency.predictor`). Lowering costs 1-3 s, so each program is lowered once per process
  (:func:`_layer_program`).

How each runtime runs a layer, its reference and a network is one :class:`_Runner` (:data:`_RUNNERS`); the
timing protocols are shared.

Each timing follows one of the protocols of :mod:`srnas.runtimes.timing`: absolute (the median of ``runs`` calls
after ``warmup``) or paired (rounds of the item between rounds of the reference layer, the median ratio times the
reference's latency), with the glibc malloc fix of :mod:`srnas.runtimes.allocator` in effect and the target's thread
count pinned.

A target whose device is an agent's URL is measured there: every public function here sends its request
(:mod:`srnas.latency.wire`) to the agent (:mod:`srnas.runtimes.remote`), which runs the same function on its machine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from srnas.arch.network import build_network
from srnas.arch.pruned import IMAGE_CHANNELS, PrunedSubnet
from srnas.arch.space import SubnetConfig
from srnas.export import export_onnx, export_pte, lower_pte
from srnas.latency import wire
from srnas.latency.layers import LayerKey
from srnas.latency.targets import Target
from srnas.onnx_graph import layer_nodes, quantize_int8, write_layer_graph
from srnas.profiling import EXPORT_SAMPLE_HW, LatencyResult, profile_module, pte_max_hw
from srnas.runtimes.allocator import prepare_allocator
from srnas.runtimes.availability import RuntimeUnavailableError, runtime_available
from srnas.runtimes.calls import runtime_call
from srnas.runtimes.executorch import program_call
from srnas.runtimes.ort import ort_session, read_ort_profile
from srnas.runtimes.remote import agent_client
from srnas.runtimes.timing import (
    call_times,
    gc_paused,
    lowest_ms,
    median_ms,
    paired_ratios,
    paired_rounds,
    paired_value,
    pinned_threads,
    quiet,
    quiet_or_disturbed,
    record_samples,
    warm,
)

__all__ = ["REFERENCE_LAYER", "LayerModule", "NetworkTiming", "compare_layers", "compare_networks", "device_runtimes",
           "measure_layer", "measure_network", "measure_reference", "profile_on_device", "sparsify_", "scheme_precision",
           "scheme_sparsity", "target_available", "time_network"]

log = logging.getLogger(__name__)

_RELU_OPS = ("head", "conv", "expand")
# The paired protocol's reference call: a mid-sized dense conv3x3 of the search space, in the target's precision
# and runtime (fp32 on ONNX Runtime and ExecuTorch, whatever the scheme measured).
REFERENCE_LAYER = LayerKey("conv", 16, 16)


def scheme_precision(target: Target, scheme: str) -> str:
    """The precision a layer of ``scheme`` runs in on ``target`` (``bf16`` / ``int8`` schemes override it)."""
    return scheme if scheme in ("bf16", "int8", "fp32") else target.precision


def scheme_sparsity(scheme: str) -> float:
    """Share of zero weights of a ``sparseNN`` scheme (``sparse50`` -> 0.5), else 0."""
    if scheme.startswith("sparse") and scheme[6:].isdigit():
        return int(scheme[6:]) / 100.0
    return 0.0


def target_available(target: Target) -> bool:
    """Whether ``target``'s runtime runs where the target is (this machine, or its device agent's)."""
    if target.remote:
        return target.runtime in device_runtimes(target.device)
    return runtime_available(target.runtime)


def device_runtimes(device: str) -> list[str]:
    """The runtimes the device agent at ``device`` (its URL) offers."""
    return list(agent_client(device).info().get("runtimes", {}))


def _ask(device: str, what: str, kind: str, request: dict[str, Any]) -> Any:
    """The figure of one request of ``kind`` to the device agent at ``device`` (the same function, run there)."""
    reply = agent_client(device).call(kind, request)
    log.debug("%s: %s measured by %s: %s (spread %.1f%% over %d samples)", what, kind, device, reply.value,
              100 * reply.spread, reply.samples)
    return reply.value


def profile_on_device(device: str, model: nn.Module, runtime: str, input_hw: tuple[int, int], *, scale: int, threads: int,
                      warmup: int, runs: int) -> LatencyResult:
    """:func:`srnas.profiling.profile_module` of ``model`` (a searched network or a registered model read from its
    model.pt) on ``runtime`` of the device agent at ``device`` (its URL; ``threads`` 0: all of the device's CPUs)."""
    return LatencyResult.from_dict(_ask(device, runtime, "profile", {
        "network": wire.network_to_wire(model), "runtime": runtime, "input_hw": list(input_hw), "scale": scale,
        "threads": threads, "warmup": warmup, "runs": runs}))


def _on_device(target: Target, kind: str, **request: Any) -> Any:
    """The figure of one measurement of ``kind`` by ``target``'s device agent."""
    return _ask(target.device, target.name, kind, {"target": wire.target_to_wire(target), **request})


def sparsify_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Zero a random ``sparsity`` share of every conv weight in place (unstructured pruning, dense storage)."""
    if sparsity <= 0:
        return module
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d):
                keep = torch.rand(sub.weight.shape, generator=generator) >= sparsity
                sub.weight.mul_(keep)
    return module


# ------------------------------------------------------------------------------------------ torch


class LayerModule(nn.Module):
    """One :class:`LayerKey` as the network runs it: ``forward(x, res, img)`` (unused inputs may be None)."""

    def __init__(self, layer: LayerKey, scale: int) -> None:
        super().__init__()
        self.op = layer.op
        self.scale = scale
        cin = IMAGE_CHANNELS if layer.op == "head" else layer.cin
        self.conv = nn.Conv2d(cin, layer.cout, layer.kernel, padding=layer.kernel // 2)
        self.act = nn.ReLU(inplace=True) if layer.op in _RELU_OPS else nn.Identity()
        self.upsample = nn.PixelShuffle(scale) if layer.op == "tail" else nn.Identity()

    def forward(self, x: torch.Tensor, res: torch.Tensor | None = None, img: torch.Tensor | None = None) -> torch.Tensor:
        if self.op == "tail":
            assert img is not None
            residual = torch.repeat_interleave(img, self.scale * self.scale, dim=1)
            return self.upsample(self.conv(x) + residual)
        y = self.act(self.conv(x))
        if self.op == "wdsr_conv":
            assert res is not None
            return res + y
        return y


def _layer_inputs(layer: LayerKey, hw: tuple[int, int], dtype: torch.dtype, channels_last: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def tensor(channels: int, kind: torch.dtype) -> torch.Tensor:
        return torch.rand(1, channels, *hw, generator=generator).to(kind).contiguous(memory_format=fmt)

    img = tensor(IMAGE_CHANNELS, torch.float32)
    inputs = {"x": img if layer.op == "head" else tensor(layer.cin, dtype)}
    if layer.op == "wdsr_conv":
        inputs["res"] = tensor(layer.cout, dtype)
    if layer.op == "tail":
        inputs["img"] = img
    return inputs


def _torch_layer_call(layer: LayerKey, target: Target, precision: str, sparsity: float) -> Callable[[], Any]:
    torch.manual_seed(0)
    module = sparsify_(LayerModule(layer, target.scale).eval(), sparsity)
    if precision == "bf16":
        module = module.to(memory_format=torch.channels_last)
        inputs = _layer_inputs(layer, target.input_hw, torch.bfloat16, True)

        def call_bf16() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(**inputs)

        return call_bf16
    inputs = _layer_inputs(layer, target.input_hw, torch.float32, False)

    def call() -> Any:
        return module(**inputs)

    return call


# ------------------------------------------------------------------------------------ ONNX Runtime


def _ort_layer_graph(layer: LayerKey, target: Target, precision: str, sparsity: float, folder: Path) -> Path:
    """The layer's ONNX graph in its context (:func:`srnas.onnx_graph.write_layer_graph`), quantized for int8."""
    torch.manual_seed(0)
    conv = sparsify_(LayerModule(layer, target.scale), sparsity).conv
    epilogue = "relu" if layer.op in _RELU_OPS else {"wdsr_conv": "add", "tail": "tail"}.get(layer.op, "none")
    path = write_layer_graph(folder / "layer.onnx", conv.weight.detach().numpy(), conv.bias.detach().numpy(),
                             epilogue=epilogue, reads_image=layer.op == "head", scale=target.scale)
    return quantize_int8(path, folder / "layer.int8.onnx") if precision == "int8" else path


def _image_feeds(target: Target) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    return {"img": np.ascontiguousarray(torch.rand(1, IMAGE_CHANNELS, *target.input_hw, generator=generator).numpy())}


def _ort_call(layer: LayerKey, target: Target, precision: str, sparsity: float,
              stack: contextlib.ExitStack) -> Callable[[], Any]:
    """One run of the layer's graph, context included (what the paired protocol's reference times)."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-layer-")))
    session = ort_session(_ort_layer_graph(layer, target, precision, sparsity, folder), target.threads)
    feeds = _image_feeds(target)

    def call() -> Any:
        return session.run(None, feeds)

    return call


class _ProfiledLayer:
    """A session of the layer's graph with ONNX Runtime's profiler on: :meth:`layer_ms` is, per run, the kernel
    time of the nodes that run the layer (:func:`srnas.onnx_graph.layer_nodes`) -- not its context, not the
    conversion of its result into a graph output. The head, the network's first layer, also carries what a run
    costs outside any node (``session.run`` itself), so a network's layers add up to its end-to-end call.
    ONNX Runtime writes a profile once, at the end: every measurement opens a session of its own."""

    def __init__(self, layer: LayerKey, target: Target, graph: Path, stack: contextlib.ExitStack) -> None:
        self.folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-profile-")))
        self.first = layer.op == "head"
        self.session = ort_session(graph, target.threads, profile_prefix=self.folder / "profile",
                                   optimized_path=self.folder / "optimized.onnx")
        self.nodes = layer_nodes(self.folder / "optimized.onnx", keeps_output=layer.op == "tail")
        self.feeds = _image_feeds(target)

    def __call__(self) -> Any:
        return self.session.run(None, self.feeds)

    def layer_ms(self, skip: int) -> list[float]:
        """Milliseconds of the layer in every run after the first ``skip`` (ends the profile)."""
        runs = read_ort_profile(self.session.end_profiling())[skip:]
        if self.first:
            return [(r.run_us - sum(us for n, us in r.node_us.items() if n not in self.nodes)) / 1000 for r in runs]
        return [sum(us for n, us in r.node_us.items() if n in self.nodes) / 1000 for r in runs]


# ---------------------------------------------------------------------------------- ExecuTorch


class _LayerProgram(nn.Module):
    """A :class:`LayerModule` with positional inputs, as lowered to an ExecuTorch program: ``x``, then the residual
    (``wdsr_conv``) or the image (``tail``)."""

    def __init__(self, layer: LayerModule) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if self.layer.op == "wdsr_conv":
            return self.layer(x, res=other)
        return self.layer(x, img=other)


def _program_inputs(layer: LayerKey, hw: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    """A layer program's inputs at ``hw``, in the layout they have inside a network's delegate: channels-last (XNNPACK
    computes in NHWC and hands tensors on in it), except the image (the network's NCHW input) and the tail's input:
    a channels-last tensor reshaped by PixelShuffle outside the delegate comes out permuted in executorch 1.5.1, and
    in a network the tail's result leaves the delegate in NCHW anyway."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(channels: int, channels_last: bool) -> torch.Tensor:
        x = torch.rand(1, channels, *hw, generator=generator)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    if layer.op == "head":
        return [tensor(IMAGE_CHANNELS, False)]
    if layer.op == "tail":
        return [tensor(layer.cin, False), tensor(IMAGE_CHANNELS, False)]
    inputs = [tensor(layer.cin, True)]
    return inputs + [tensor(layer.cout, True)] if layer.op == "wdsr_conv" else inputs


# The int8 calibration: a few random inputs at the traced size, as ONNX Runtime's int8 path calibrates
# (srnas.onnx_graph.quantize_int8). The activation ranges they give set the quantization scales, which do not change
# what the kernels cost.
CALIBRATION_INPUTS = 4

_PROGRAMS: dict[tuple[Any, ...], Path] = {}


def _layer_program(layer: LayerKey, target: Target, precision: str, sparsity: float) -> Path:
    """The layer's ExecuTorch program (int8: quantized first), lowered once per process: a table build, its scheme
    comparisons and the reference meet the same layer again and again, and a lowering costs 1-3 s. No parity check:
    the lowering is the one :func:`srnas.export.export_pte` uses, whose output is checked there."""
    key = (layer.op, layer.cin, layer.cout, precision, sparsity, target.scale, pte_max_hw(target.input_hw))
    if key in _PROGRAMS and _PROGRAMS[key].is_file():
        return _PROGRAMS[key]
    path = _scratch() / f"layer{len(_PROGRAMS)}.pte"
    with torch.inference_mode(False):  # the callers time under inference mode; torch.export refuses its tensors
        torch.manual_seed(0)
        module = _LayerProgram(sparsify_(LayerModule(layer, target.scale).eval(), sparsity))
        calibration = ([_program_inputs(layer, EXPORT_SAMPLE_HW, seed) for seed in range(1, CALIBRATION_INPUTS + 1)]
                       if precision == "int8" else None)
        _PROGRAMS[key] = lower_pte(module, _program_inputs(layer, EXPORT_SAMPLE_HW), path,
                                   max_hw=pte_max_hw(target.input_hw), calibration=calibration).path
    log.debug("%s (%s): lowered to %s", layer.id, precision, path)
    return _PROGRAMS[key]


def _xnnpack_layer_call(layer: LayerKey, target: Target, precision: str, sparsity: float) -> Callable[[], Any]:
    return program_call(_layer_program(layer, target, precision, sparsity), _program_inputs(layer, target.input_hw),
                        target.threads)


# ----------------------------------------------------------------------------------- networks

_EXPORTS: dict[tuple[Any, ...], Path] = {}
_SCRATCH: tempfile.TemporaryDirectory[str] | None = None


def _scratch() -> Path:
    """This process's folder for exported networks and lowered layer programs (removed at exit)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="srnas-nets-")
    return Path(_SCRATCH.name)


def _exported(target: Target, model: nn.Module, net: Any, precision: str, sparsity: float,
              export: Callable[[nn.Module, Path, str], Path]) -> Path:
    """``export(model, folder, precision)``'s file; a (pruned) subnet is exported once per process, so measuring it
    again (another round) does not pay the export again."""
    key = ((target.runtime, net.name, precision, sparsity, target.input_hw)
           if isinstance(net, (PrunedSubnet, SubnetConfig)) else None)
    if key is not None and key in _EXPORTS and _EXPORTS[key].is_file():
        return _EXPORTS[key]
    path = export(model, Path(tempfile.mkdtemp(dir=_scratch())), precision)
    if key is not None:
        _EXPORTS[key] = path
    return path


def _onnx_file(model: nn.Module, folder: Path, precision: str) -> Path:
    """``model`` exported with :func:`srnas.export.export_onnx`, quantized (static QDQ) for int8."""
    path = export_onnx(model, folder / "net.onnx", sample_hw=EXPORT_SAMPLE_HW)
    return quantize_int8(path, folder / "net.int8.onnx") if precision == "int8" else path


def _calibration_images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(1, IMAGE_CHANNELS, *EXPORT_SAMPLE_HW, generator=generator) for _ in range(CALIBRATION_INPUTS)]


# ------------------------------------------------------------------------------------ runners


class _Runner:
    """How this module runs one latency runtime: a layer as a call, the paired protocol's reference, a whole network.

    Layers are timed on the wall clock (:func:`_timed`) and compared call against call (:func:`_compared_calls`)
    unless a runner says otherwise (ONNX Runtime: its profiler, sessions of their own per round)."""

    precisions: tuple[str, ...] = ("fp32",)
    fresh_network_rounds = False  # every comparison round of two networks runs in sessions of its own

    def checked(self, target: Target, precision: str) -> str:
        """``precision``; ValueError when this runtime does not run it."""
        if precision not in self.precisions:
            raise ValueError(f"{target.runtime} runs {' or '.join(self.precisions)}, not {precision}")
        return precision

    def precision(self, target: Target, scheme: str) -> str:
        """The precision a layer of ``scheme`` runs in on ``target`` (:meth:`checked`)."""
        return self.checked(target, scheme_precision(target, scheme))

    def layer_call(self, layer: LayerKey, target: Target, precision: str, sparsity: float,
                   stack: contextlib.ExitStack) -> Callable[[], Any]:
        raise NotImplementedError

    def reference_call(self, target: Target, stack: contextlib.ExitStack) -> Callable[[], Any]:
        """:data:`REFERENCE_LAYER` dense, fp32."""
        return self.layer_call(REFERENCE_LAYER, target, "fp32", 0.0, stack)

    def network(self, target: Target, model: nn.Module, net: Any, precision: str, sparsity: float) -> tuple[str, Any]:
        """The profiling runtime that runs ``model`` in ``precision``, and what it runs (the module, or its file)."""
        raise NotImplementedError

    def time_layer(self, target: Target, layer: LayerKey, stack: contextlib.ExitStack, **timing: Any) -> float:
        call = self.layer_call(layer, target, self.precision(target, layer.scheme), scheme_sparsity(layer.scheme), stack)
        return _timed(target, layer.id, call, stack=stack, **timing)

    def compare_layers(self, target: Target, base: LayerKey, other: LayerKey, stack: contextlib.ExitStack, *,
                       warmup: int, runs: int, rounds: int) -> list[float]:
        calls = [self.layer_call(layer, target, self.precision(target, layer.scheme), scheme_sparsity(layer.scheme), stack)
                 for layer in (base, other)]
        return _compared_calls(f"{other.id} vs {base.id}", calls[0], calls[1], warmup=warmup, runs=runs, rounds=rounds)


class _Torch(_Runner):
    """Eager PyTorch: fp32, or bf16 (autocast, channels-last); the reference in the target's precision."""

    precisions = ("fp32", "bf16")

    def layer_call(self, layer: LayerKey, target: Target, precision: str, sparsity: float,
                   stack: contextlib.ExitStack) -> Callable[[], Any]:
        return _torch_layer_call(layer, target, precision, sparsity)

    def reference_call(self, target: Target, stack: contextlib.ExitStack) -> Callable[[], Any]:
        return _torch_layer_call(REFERENCE_LAYER, target, target.precision, 0.0)

    def network(self, target: Target, model: nn.Module, net: Any, precision: str, sparsity: float) -> tuple[str, Any]:
        return ("torch_bf16" if precision == "bf16" else "torch_fp32"), model


class _OnnxRuntime(_Runner):
    """ONNX Runtime: fp32 or static QDQ int8 graphs; a layer's time from the profiler (:class:`_ProfiledLayer`)."""

    precisions = ("fp32", "int8")
    fresh_network_rounds = True  # see compare_layers

    def layer_call(self, layer: LayerKey, target: Target, precision: str, sparsity: float,
                   stack: contextlib.ExitStack) -> Callable[[], Any]:
        return _ort_call(layer, target, precision, sparsity, stack)

    def network(self, target: Target, model: nn.Module, net: Any, precision: str, sparsity: float) -> tuple[str, Any]:
        return "onnxruntime_fp32", _exported(target, model, net, precision, sparsity, _onnx_file)

    def time_layer(self, target: Target, layer: LayerKey, stack: contextlib.ExitStack, **timing: Any) -> float:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-layer-")))
        graph = _ort_layer_graph(layer, target, self.precision(target, layer.scheme), scheme_sparsity(layer.scheme), folder)
        return _timed_profiled(target, layer, graph, stack=stack, **timing)

    def compare_layers(self, target: Target, base: LayerKey, other: LayerKey, stack: contextlib.ExitStack, *,
                       warmup: int, runs: int, rounds: int) -> list[float]:
        graphs = []
        for layer in (base, other):
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-layer-")))
            graphs.append(_ort_layer_graph(layer, target, self.precision(target, layer.scheme), scheme_sparsity(layer.scheme),
                                           folder))
        skip = max(warmup, 1)  # a fresh session's first run allocates

        def one_round() -> float:
            with contextlib.ExitStack() as sessions:
                profiled = [_ProfiledLayer(layer, target, graph, sessions) for layer, graph in zip((base, other), graphs)]
                warm(skip, *profiled)
                with gc_paused(collect=False):
                    paired_rounds(lambda: call_times(profiled[1], runs), lambda: call_times(profiled[0], runs), 1)
                base_ms, other_ms = (p.layer_ms(skip=skip) for p in profiled)
            return _speedups([min(base_ms[:runs]), min(base_ms[runs:])], [min(other_ms)])[0]

        return [_undisturbed(one_round, f"{other.id} vs {base.id}") for _ in range(rounds)]


class _ExecuTorch(_Runner):
    """ExecuTorch with the XNNPACK delegate: fp32, or int8 by PT2E quantization; one thread pool per process."""

    precisions = ("fp32", "int8")

    def layer_call(self, layer: LayerKey, target: Target, precision: str, sparsity: float,
                   stack: contextlib.ExitStack) -> Callable[[], Any]:
        return _xnnpack_layer_call(layer, target, precision, sparsity)

    def network(self, target: Target, model: nn.Module, net: Any, precision: str, sparsity: float) -> tuple[str, Any]:
        def pte(module: nn.Module, folder: Path, precision: str) -> Path:
            return export_pte(module, folder / "net.pte", sample_hw=EXPORT_SAMPLE_HW, max_hw=pte_max_hw(target.input_hw),
                              calibration=_calibration_images() if precision == "int8" else None).path

        return "executorch_xnnpack_fp32", _exported(target, model, net, precision, sparsity, pte)


# The latency runtimes (srnas.config.LATENCY_RUNTIMES but auto, which a target resolves first): a runtime is added here.
_RUNNERS: dict[str, _Runner] = {"torch_fp32": _Torch(), "torch_bf16": _Torch(), "onnxruntime_fp32": _OnnxRuntime(),
                                "executorch_xnnpack_fp32": _ExecuTorch()}


def _runner(target: Target) -> _Runner:
    if target.runtime not in _RUNNERS:
        raise ValueError(f"target {target.name}: {target.runtime!r} is not a latency runtime; choose from {', '.join(_RUNNERS)}")
    return _RUNNERS[target.runtime]


# --------------------------------------------------------------------------------------- timing

def _check_target(target: Target) -> None:
    if not runtime_available(target.runtime):
        raise RuntimeUnavailableError(f"target {target.name}: runtime {target.runtime!r} is not available on this machine")


def _reference_call(target: Target, stack: contextlib.ExitStack) -> Callable[[], Any]:
    """The paired protocol's reference: :data:`REFERENCE_LAYER` dense, in the target's runtime (:meth:`_Runner.reference_call`)."""
    return _runner(target).reference_call(target, stack)


def _timed(target: Target, what: str, call: Callable[[], Any], *, warmup: int, runs: int, rounds: int,
           reference_ms: float | None, stack: contextlib.ExitStack) -> float:
    """Wall-clock milliseconds of ``call`` under the quiet guard: absolute, the median of ``runs`` calls; paired
    (``reference_ms`` given, see :mod:`srnas.runtimes.timing`), ``rounds`` rounds of ``runs`` calls between rounds
    of the reference (:func:`_paired_rounds`)."""
    if reference_ms is None:
        warm(warmup, call)
        return quiet(lambda: median_ms(call, 0, runs), what)
    return paired_value(*_paired_rounds(target, what, call, warmup=warmup, runs=runs, rounds=rounds, stack=stack),
                        reference_ms)


def _paired_rounds(target: Target, what: str, call: Callable[[], Any], *, warmup: int, runs: int, rounds: int,
                   stack: contextlib.ExitStack) -> tuple[list[float], list[float]]:
    """The paired protocol's raw rounds under the quiet guard: ``rounds`` rounds of ``call`` between rounds of the
    target's reference, each round its lowest of ``runs`` calls (interference only ever slows a call down: the lowest
    of a round is its least disturbed one); :func:`srnas.runtimes.timing.paired_value` turns them into milliseconds."""
    reference = _reference_call(target, stack)
    warm(warmup, call, reference)
    with gc_paused(collect=False):
        return quiet(lambda: paired_rounds(lambda: lowest_ms(call, 0, runs), lambda: lowest_ms(reference, 0, runs), rounds),
                     what)


def _timed_profiled(target: Target, layer: LayerKey, graph: Path, *, warmup: int, runs: int, rounds: int,
                    reference_ms: float | None, stack: contextlib.ExitStack) -> float:
    """:func:`_timed` for an ONNX Runtime layer, whose time per run comes from the profiler (:class:`_ProfiledLayer`)
    instead of the wall clock: same protocols, same statistics; the reference stays wall-clock."""
    reference = None if reference_ms is None else _reference_call(target, stack)

    def once() -> float:
        with contextlib.ExitStack() as session_stack:
            profiled = _ProfiledLayer(layer, target, graph, session_stack)
            warm(warmup, profiled, *([] if reference is None else [reference]))
            with gc_paused(collect=False):
                if reference is None or reference_ms is None:
                    call_times(profiled, runs)
                    per_run = profiled.layer_ms(skip=warmup)
                    record_samples(per_run)
                    return float(statistics.median(per_run))
                _, refs = paired_rounds(lambda: call_times(profiled, runs), lambda: lowest_ms(reference, 0, runs), rounds)
            per_run = profiled.layer_ms(skip=warmup)
            return paired_value([min(per_run[i * runs:(i + 1) * runs]) for i in range(rounds)], refs, reference_ms)

    return quiet(once, layer.id)


def measure_reference(target: Target, *, warmup: int, runs: int, rounds: int) -> float:
    """Milliseconds of the reference call alone (:data:`REFERENCE_LAYER`): its lowest call over ``rounds`` rounds
    of ``runs`` calls, i.e. the target's speed when undisturbed; the unit of every paired measurement."""
    if target.remote:
        return float(_on_device(target, "reference", warmup=warmup, runs=runs, rounds=rounds))
    _check_target(target)
    prepare_allocator()
    with contextlib.ExitStack() as stack, pinned_threads(target.threads), torch.inference_mode():
        reference = _reference_call(target, stack)
        warm(warmup, reference)
        with gc_paused():
            lowest = [quiet(lambda: lowest_ms(reference, 0, runs), "reference") for _ in range(rounds)]
    record_samples(lowest)
    return min(lowest)


def measure_layer(target: Target, layer: LayerKey, *, warmup: int, runs: int, rounds: int = 1,
                  reference_ms: float | None = None) -> float:
    """Milliseconds ``layer`` adds to a network on ``target`` (scheme ``bf16``/``int8``/``sparseNN`` applied).

    ``reference_ms`` given: the paired protocol, ``rounds`` rounds of ``runs`` calls each bracketed by the
    reference; otherwise one median of ``runs`` calls (the caller sweeps the rounds).

    Torch: the layer module called on inputs already in the network's layout and precision. ONNX Runtime: the
    layer's graph in its context, its nodes' kernel times from ONNX Runtime's profiler (:class:`_ProfiledLayer`):
    inside ONNX Runtime a layer's cost depends on its neighbours (NCHWc blocks, reorders where a kernel reads
    NCHW, Conv+Add fusion), so the graph reproduces them and the profile keeps the nodes the layer owns.
    ExecuTorch: the layer's program (:func:`_layer_program`), one call per run, on inputs in the delegate's layout.
    """
    if target.remote:
        return float(_on_device(target, "layer", layer=wire.layer_to_wire(layer), warmup=warmup, runs=runs, rounds=rounds,
                                reference_ms=reference_ms))
    _check_target(target)
    prepare_allocator()
    timing = {"warmup": warmup, "runs": runs, "rounds": rounds, "reference_ms": reference_ms}
    with contextlib.ExitStack() as stack, pinned_threads(target.threads), torch.inference_mode():
        return _runner(target).time_layer(target, layer, stack, **timing)


def _speedups(base_rounds: list[float], other_rounds: list[float]) -> list[float]:
    """Per round, how many times faster ``other`` ran than the ``base`` rounds around it (the paired protocol with the
    base as the reference)."""
    return [1.0 / ratio if ratio > 0 else float("nan") for ratio in paired_ratios(other_rounds, base_rounds)]


def compare_layers(target: Target, base: LayerKey, other: LayerKey, *, warmup: int, runs: int, rounds: int) -> list[float]:
    """How many times faster ``other`` runs than ``base`` on ``target``, per round: ``rounds`` paired rounds
    ``base, other, base, ..., base`` (each round the lowest of ``runs`` calls; the paired protocol of
    :mod:`srnas.runtimes.timing` with ``base`` as the reference), the ratio of each ``other`` round to the ``base``
    rounds around it. A slowdown of the host longer than a round slows both alike and cancels; what remains varies
    from round to round, which a decision reads from the spread (:func:`srnas.latency.schemes.decide`).

    Layers run as :func:`measure_layer` runs them (torch module; ONNX Runtime graph in context, kernel times from
    its profiler; ExecuTorch program). On ONNX Runtime every round runs in sessions of its own: a session's thread
    pool keeps, for its lifetime, the cores the OS first gave its workers, and where one of those cores is busy (a
    neighbour's process) one session of the pair runs steadily slower. Rounds sharing two sessions agree on that bias, so the interval
    cannot show it: a layer with half its weights zero -- the same work -- measured 0.70x to 1.36x the dense one in
    five processes, each steady over its 5 rounds, with a busy loop on one of the two cores. Fresh sessions per round
    turn the placement into round-to-round spread, which the decision reads (:func:`srnas.latency.schemes.decide`)."""
    if target.remote:
        return _floats(_on_device(target, "compare_layers", base=wire.layer_to_wire(base), other=wire.layer_to_wire(other),
                                  warmup=warmup, runs=runs, rounds=rounds))
    _check_target(target)
    prepare_allocator()
    with contextlib.ExitStack() as stack, pinned_threads(target.threads), torch.inference_mode():
        return _runner(target).compare_layers(target, base, other, stack, warmup=warmup, runs=runs, rounds=rounds)


def _floats(values: Any) -> list[float]:
    """A list of figures from JSON (NaN travels as null: a disturbed round)."""
    return [math.nan if v is None else float(v) for v in values]


def _undisturbed(one_round: Callable[[], float], what: str) -> float:
    """A comparison round under the quiet guard; NaN when the machine never became quiet for it: a disturbed round
    is no evidence, and a decision leaves it out (:func:`srnas.latency.schemes.decide`: too few rounds left decide
    nothing, so a busy machine keeps a scheme out instead of letting a neighbour's load accept it)."""
    value, disturbed = quiet_or_disturbed(one_round, what)
    return math.nan if disturbed else value


def _compared_calls(what: str, base: Callable[[], Any], other: Callable[[], Any], *, warmup: int, runs: int,
                    rounds: int) -> list[float]:
    warm(warmup, base, other)
    with gc_paused(collect=False):
        (others, bases), disturbed = quiet_or_disturbed(
            lambda: paired_rounds(lambda: lowest_ms(other, 0, runs), lambda: lowest_ms(base, 0, runs), rounds), what)
    return [math.nan] * rounds if disturbed else _speedups(bases, others)


def compare_networks(target: Target, net: PrunedSubnet | SubnetConfig, *, base_precision: str, precision: str, warmup: int,
                     runs: int, rounds: int) -> list[float]:
    """:func:`compare_layers` for a whole network run in ``precision`` against the same network in ``base_precision``,
    both as :func:`time_network` runs them (a torch target in torch, ONNX Runtime and ExecuTorch on the exported --
    and for int8 quantized -- file)."""
    if target.remote:
        return _floats(_on_device(target, "compare_networks", network=wire.network_to_wire(net),
                                  base_precision=base_precision, precision=precision, warmup=warmup, runs=runs, rounds=rounds))
    _check_target(target)
    prepare_allocator()
    runner = _runner(target)
    model = build_network(net, target.scale)
    deployed = [runner.network(target, model, net, runner.checked(target, p), 0.0) for p in (base_precision, precision)]
    x = torch.rand(1, IMAGE_CHANNELS, *target.input_hw, generator=torch.Generator().manual_seed(0))
    what = f"{net.name} {precision} vs {base_precision}"
    with pinned_threads(target.threads), torch.inference_mode():
        if runner.fresh_network_rounds:  # sessions of their own every round (see compare_layers)

            def one_round() -> float:
                calls = [runtime_call(file, runtime, x, target.threads) for runtime, file in deployed]
                return _compared_calls(what, calls[0], calls[1], warmup=max(warmup, 1), runs=runs, rounds=1)[0]

            return [one_round() for _ in range(rounds)]
        calls = [runtime_call(model_or_file, runtime, x, target.threads) for runtime, model_or_file in deployed]
        return _compared_calls(what, calls[0], calls[1], warmup=warmup, runs=runs, rounds=rounds)


@dataclass(frozen=True)
class NetworkTiming:
    """One timing of a whole network on a target, both ways a figure can be read.

    ``wall_clock_ms``: what a call took on this machine, now -- absolute protocol: the median of the calls; paired:
    the median over rounds of each round's lowest call. ``normalised_ms`` (paired protocol only, else None): the
    same rounds expressed at the latency table's reference speed (``reference_ms`` times the median ratio to the
    reference rounds around them, :func:`srnas.runtimes.timing.paired_value`): what the table's predictions are
    compared with, insensitive to a host whose speed drifts."""

    wall_clock_ms: float
    normalised_ms: float | None = None
    disturbed: int = 0  # measurements of it the quiet guard saw disturbed (set by the verdicts' time_model)

    @property
    def verdict_ms(self) -> float:
        """The figure a budget verdict compares: the normalised one when measured (paired), else the wall clock."""
        return self.wall_clock_ms if self.normalised_ms is None else self.normalised_ms


def measure_network(target: Target, net: PrunedSubnet | SubnetConfig | nn.Module, *, warmup: int, runs: int,
                    precision: str | None = None, sparsity: float = 0.0, rounds: int = 1,
                    reference_ms: float | None = None) -> float:
    """Milliseconds of one end-to-end call of a whole network on ``target``, as deployed: :func:`time_network`'s
    normalised figure under the paired protocol (``reference_ms`` given), its wall-clock median otherwise."""
    timing = time_network(target, net, warmup=warmup, runs=runs, precision=precision, sparsity=sparsity, rounds=rounds,
                          reference_ms=reference_ms)
    return timing.wall_clock_ms if timing.normalised_ms is None else timing.normalised_ms


def time_network(target: Target, net: PrunedSubnet | SubnetConfig | nn.Module, *, warmup: int, runs: int,
                 precision: str | None = None, sparsity: float = 0.0, rounds: int = 1,
                 reference_ms: float | None = None) -> NetworkTiming:
    """One end-to-end timing of a whole network on ``target``, as deployed (:class:`NetworkTiming`).

    ``net``: a (pruned) subnet, built physically with :func:`srnas.arch.network.build_network` (fresh weights), or any
    SR module, timed with its own weights (a trained model). Torch targets, ONNX Runtime and ExecuTorch fp32 run it
    like :func:`srnas.profiling.profile_module` (exported with :func:`srnas.export.export_onnx` /
    :func:`srnas.export.export_pte`); int8 on ONNX Runtime exports, quantizes (static QDQ) and times the quantized
    file, on ExecuTorch quantizes (PT2E, XNNPACK quantizer, calibrated on random images like ONNX Runtime's) and
    lowers. ``precision`` overrides the target's (``bf16`` on a torch
    target runs it as ``torch_bf16`` does). ``reference_ms`` given: the paired protocol (``rounds`` rounds of ``runs``
    calls, see :func:`measure_layer`); otherwise the median of ``runs`` calls after ``warmup``.
    """
    if target.remote:
        value = _on_device(target, "network", network=wire.network_to_wire(net), warmup=warmup, runs=runs,
                           precision=precision, sparsity=sparsity, rounds=rounds, reference_ms=reference_ms)
        normalised = value.get("normalised_ms")
        return NetworkTiming(float(value["wall_clock_ms"]), None if normalised is None else float(normalised))
    _check_target(target)
    model = net if isinstance(net, nn.Module) else build_network(net, target.scale)
    sparsify_(model, sparsity)
    runner = _runner(target)
    precision = runner.checked(target, precision or target.precision)
    name = getattr(net, "name", "network")
    runtime, model = runner.network(target, model, net, precision, sparsity)
    if reference_ms is None:
        return NetworkTiming(quiet(lambda: profile_module(model, runtime, target.input_hw, threads=target.threads,
                                                          warmup=warmup, runs=runs).median_ms, name))
    prepare_allocator()
    x = torch.rand(1, IMAGE_CHANNELS, *target.input_hw, generator=torch.Generator().manual_seed(0))
    with contextlib.ExitStack() as stack, pinned_threads(target.threads), torch.inference_mode():
        call = runtime_call(model, runtime, x, target.threads)
        items, refs = _paired_rounds(target, name, call, warmup=warmup, runs=runs, rounds=rounds, stack=stack)
    return NetworkTiming(float(statistics.median(items)), paired_value(items, refs, reference_ms))
