"""Deployable artifacts: ONNX (always) and ExecuTorch ``.pte`` with the XNNPACK delegate (optional).

Every artifact is checked against the PyTorch model it came from (:func:`check_parity`,
:func:`check_pte_parity`); one that fails is deleted and :class:`ParityError` says by how much.

Which ONNX exporter, and why
----------------------------
torch 2.13 offers two. Both produce the same graph (Conv, PRelu, ConvTranspose, DepthToSpace,
Resize-cubic) for the layers our SR models use, and both match PyTorch to ~3e-7 on random inputs
at sizes other than the traced one. We use the **default (dynamo, ``torch.export``-based)
exporter** because the TorchScript exporter is deprecated (torch 2.13 warns that it "will be
removed") and the dynamo one is where fixes land. Its pitfalls, handled here:

- it writes weights to a separate ``<file>.data`` next to the model by default; with the atomic
  temp-file-then-rename that file would point at a temp name, so we serialise one self-contained
  ``.onnx`` (``external_data=False``; SR models are far below the 2 GB protobuf limit);
- its lowest native opset is 18; for ``opset=17`` it exports 18 and down-converts with the ONNX
  C API version converter, which works for these ops (the final opset is checked and logged);
- it needs ``onnxscript`` and takes ~1-3 s per model instead of ~0.1 s;
- dynamic batch, height and width must be given as ``torch.export.Dim`` (``dynamic_shapes``); a model whose
  forward specialises on the input size makes it fail loudly instead of exporting a fixed size. The sample is
  traced with a batch of 2: ``torch.export`` specialises a dimension traced at size 1 to a constant.

What a consumer needs to feed the file is in its metadata (``metadata_props``, :data:`INPUT_CONVENTION` plus the
scale, the model's name and the srnas version; :func:`onnx_metadata` reads them back): float32 RGB in [0, 1], NCHW,
any batch, height and width; the output ``scale`` times the input, same convention (clip to [0, 1] before
converting to 8 bits).

When the dynamo exporter raises (an operator without an ONNX translation, untraceable Python
control flow, onnxscript missing) we fall back to ``dynamo=False`` with ``dynamic_axes`` and log
why. The exporter used is stored in the model's metadata (``srnas.exporter``).

ExecuTorch
----------
:func:`export_pte` lowers with ``torch.export`` (batch 1, height and width dynamic up to ``max_hw``) and
``to_edge_transform_and_lower`` with the XNNPACK partitioner, and says which operators the delegate took
(:class:`Delegation`). With dynamic sizes XNNPACK leaves out the reshapes of PixelShuffle (``view_copy``) and of the
residual's ``repeat_interleave`` (``unsqueeze_copy``, ``expand_copy``, ``view_copy``), which splits a network that
ends in PixelShuffle into several delegate calls run by ExecuTorch's portable kernels in between (docs/pipeline.md,
"ExecuTorch", has the measured cost). ``torch.export`` of the bicubic baseline's dynamic-size resize leaves symbolic
``trunc`` / ``sym_float`` that the edge dialect refuses: it has no ``.pte``.

:func:`lower_pte` is that lowering for any module of 4-D inputs, in the layout they are given (the latency table's
layer programs, :mod:`srnas.latency.measure`); given calibration inputs, both quantize to int8 first by PT2E with
ExecuTorch's XNNPACK quantizer (torchao's ``prepare_pt2e`` / ``convert_pt2e``: int8 weights per output channel,
static int8 activations), which makes this module torchao's one importer too.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import operator
import os
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srnas import __version__
from srnas.atomic import atomic_path, write_bytes
from srnas.config import SUPPORTED_SCALES
from srnas.errors import DataError, SrnasError
from srnas.inference import to_tensor, to_uint8
from srnas.metrics import calculate_psnr
from srnas.runtimes.calls import INPUT_NAME, OUTPUT_NAME
from srnas.runtimes.availability import runtime_label
from srnas.runtimes.executorch import executorch_method, require_executorch, set_executorch_threads
from srnas.runtimes.ort import ort_session

log = logging.getLogger(__name__)

# LR (height, width) sizes the random-input parity check runs on: odd, unequal, and different from
# the traced sample, so a graph that silently kept the sample's size or mixed up H and W fails.
RANDOM_PARITY_SIZES = ((48, 40), (33, 57))
# Largest LR input a .pte accepts (ExecuTorch plans memory for the upper bound): 720p in, which
# covers every 720p-output profiling size. Larger images are centre-cropped for the parity check.
PTE_MAX_HW = (720, 1280)
# The input (and output) convention of every exported model, stamped into its ONNX metadata.
INPUT_CONVENTION = {"srnas.input_range": "[0, 1]", "srnas.input_dtype": "float32", "srnas.colour_order": "RGB",
                    "srnas.layout": "NCHW"}
TRACE_BATCH = 2  # the traced sample's batch (see the module docstring)


class ExportError(SrnasError):
    """A model cannot be exported. The message names the file and the exporter's complaint."""


class ParityError(SrnasError):
    """An exported artifact does not reproduce the PyTorch model. The artifact has been deleted."""


@dataclass(frozen=True)
class DeployedForm:
    """One deployable form of a model: the runtime that runs it, its precision and its file name in an export folder.

    ``label`` (:func:`srnas.runtimes.availability.runtime_label`) names its measurements everywhere: parity, scores,
    latency, the report's rows."""

    runtime: str
    precision: str
    filename: str

    @property
    def label(self) -> str:
        return runtime_label(self.runtime, self.precision)


# Every form `srnas export --deploy` writes, in the order it writes them (the int8 ONNX is quantized from the fp32 one).
DEPLOYED_FORMS = (
    DeployedForm("onnxruntime_fp32", "fp32", "model.onnx"),
    DeployedForm("onnxruntime_fp32", "int8", "model.int8.onnx"),
    DeployedForm("executorch_xnnpack_fp32", "fp32", "model.pte"),
    DeployedForm("executorch_xnnpack_fp32", "int8", "model.int8.pte"),
)


def artifact_form(path: str | os.PathLike[str]) -> DeployedForm:
    """The form of an exported file from its name (``model.onnx``, ``model.int8.onnx``, ``model.pte``,
    ``model.int8.pte``, or any stem with those suffixes): what runs it and in which precision. ExportError naming the
    file for any other suffix."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    runtime = {".onnx": "onnxruntime_fp32", ".pte": "executorch_xnnpack_fp32"}.get(suffixes[-1] if suffixes else "")
    if runtime is None:
        raise ExportError(f"{path}: not an exported model (expected a .onnx or .pte file)")
    precision = "int8" if len(suffixes) >= 2 and suffixes[-2] == ".int8" else "fp32"
    return DeployedForm(runtime, precision, path.name)


# --------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode and give it back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' expected chatter (opset up-conversion notes, deprecation notices)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _remove_artifact(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.data").unlink(missing_ok=True)


def _check_hw(hw: Sequence[int], what: str) -> tuple[int, int]:
    if len(hw) != 2 or any(int(s) < 2 for s in hw):
        raise ValueError(f"{what} must be (height, width) with both at least 2, got {tuple(hw)}")
    return int(hw[0]), int(hw[1])


# ------------------------------------------------------------------------------------------ ONNX


def _export_dynamo(model: torch.nn.Module, sample: torch.Tensor, tmp: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1)
    height = torch.export.Dim("height", min=2)
    width = torch.export.Dim("width", min=2)
    program = torch.onnx.export(
        model,
        (sample,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=({0: batch, 2: height, 3: width},),
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(tmp, external_data=False)


def _export_torchscript(model: torch.nn.Module, sample: torch.Tensor, tmp: Path, opset: int) -> None:
    torch.onnx.export(
        model,
        (sample,),
        tmp,
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                      OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
    )


def _finish_onnx(tmp: Path, path: Path, exporter: str, opset: int, stamp: dict[str, str]) -> None:
    """Check the written model, stamp provenance and ``stamp`` (its convention, scale and name) into its metadata,
    keep it one self-contained file."""
    import onnx

    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(f"{path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, got {inputs} -> {outputs}")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not (dims[0].dim_param and dims[2].dim_param and dims[3].dim_param):
        raise ExportError(f"{path}: exported input shape is not (dynamic N, C, dynamic H, dynamic W): "
                          f"{[d.dim_param or d.dim_value for d in dims]}")
    actual_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual_opset != opset:
        log.warning("%s: asked for ONNX opset %d, the %s exporter wrote opset %s", path, opset, exporter, actual_opset)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update({"srnas.exporter": exporter, "srnas.torch": torch.__version__, "srnas.version": __version__, **stamp})
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(tmp))


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    sample_hw: tuple[int, int] = (64, 64),
    name: str = "",
) -> Path:
    """Export ``model`` (RGB NCHW float in [0, 1] -> SR) to one self-contained ONNX file, atomically.

    Input ``lr`` is ``batch x 3 x height x width``, all three dynamic; output ``sr``. The metadata says so
    (:data:`INPUT_CONVENTION`), with the scale (the traced sample's output over its input), ``name`` (the model's name,
    when given) and the srnas version: :func:`onnx_metadata`. ``sample_hw`` is the traced input size. Tries the default (dynamo) exporter and falls back
    to ``dynamo=False`` only when it raises; see the module docstring. The model is traced in eval
    mode and handed back in the mode it came in. Raises :class:`ExportError` if both fail. What an export killed
    mid-write left beside ``path`` is removed first (by :func:`srnas.atomic.atomic_path`).
    """
    path = Path(path)
    sample_hw = _check_hw(sample_hw, "sample_hw")
    device = _model_device(model)
    sample = torch.rand(TRACE_BATCH, 3, *sample_hw, generator=torch.Generator().manual_seed(0)).to(device)
    with _eval_mode(model), torch.inference_mode():
        out_hw = tuple(model(sample).shape[2:])
    scale = out_hw[0] // sample_hw[0]
    if scale < 1 or out_hw != (scale * sample_hw[0], scale * sample_hw[1]):
        raise ExportError(f"{path}: not a super-resolution model: a {sample_hw[0]}x{sample_hw[1]} input gives a "
                          f"{out_hw[0]}x{out_hw[1]} output, not a whole multiple of it")
    stamp = {**INPUT_CONVENTION, "srnas.scale": str(scale), **({"srnas.model": name} if name else {})}
    with _eval_mode(model), atomic_path(path, suffix=".onnx") as tmp:
        exporter = "dynamo"
        try:
            with _quiet_exporter():
                _export_dynamo(model, sample, tmp, opset)
        except Exception as dynamo_error:  # noqa: BLE001 - any failure means: try the other exporter
            first_line = (str(dynamo_error).strip().splitlines() or [type(dynamo_error).__name__])[0]
            log.warning("%s: the dynamo ONNX exporter failed (%s: %s); retrying with dynamo=False", path, type(dynamo_error).__name__, first_line)
            exporter = "torchscript"
            _remove_artifact(tmp)
            try:
                with _quiet_exporter():
                    _export_torchscript(model, sample, tmp, opset)
            except Exception as ts_error:  # noqa: BLE001
                raise ExportError(
                    f"{path}: ONNX export failed with both exporters: dynamo: {type(dynamo_error).__name__}: {first_line}; "
                    f"dynamo=False: {type(ts_error).__name__}: {ts_error}"
                ) from ts_error
        finally:
            Path(f"{tmp}.data").unlink(missing_ok=True)
        _finish_onnx(tmp, path, exporter, opset, stamp)
    log.info("%s: exported with the %s ONNX exporter (opset %d)", path, exporter, opset)
    return path


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata :func:`export_onnx` stamped into ``path`` (``metadata_props``: ``srnas.scale``,
    ``srnas.input_range``, ``srnas.colour_order``, ``srnas.layout``, ``srnas.exporter``, ...)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def onnx_exporter(path: str | os.PathLike[str]) -> str | None:
    """Which exporter wrote ``path`` (``dynamo`` or ``torchscript``), from its metadata."""
    return onnx_metadata(path).get("srnas.exporter")


# ------------------------------------------------------------------------------------ ExecuTorch

_DELEGATE_CALL = "executorch_call_delegate"


@dataclass(frozen=True)
class Delegation:
    """Which operators of a lowered ExecuTorch program the XNNPACK delegate runs, and which fall out of it.

    ``delegated``: operator -> count inside the delegate's ``subgraphs`` (one ``executorch_call_delegate`` each);
    ``portable``: tensor operators left between them to ExecuTorch's portable CPU kernels; ``shape``: integer
    arithmetic on the dynamic height and width (``sym_size.int``, ``mul``), no tensor work. Names are the edge
    dialect's (``aten.convolution.default``); the delegate calls and the ``getitem`` that unpack their outputs are
    not counted.
    """

    subgraphs: int
    delegated: Mapping[str, int]
    portable: Mapping[str, int]
    shape: Mapping[str, int]

    @property
    def fully_delegated(self) -> bool:
        return self.subgraphs == 1 and not self.portable

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "XnnpackBackend", "subgraphs": self.subgraphs,
                "delegated_ops": sum(self.delegated.values()), "non_delegated_ops": sum(self.portable.values()),
                "shape_ops": sum(self.shape.values()), "delegated": dict(self.delegated),
                "non_delegated": dict(self.portable), "shape": dict(self.shape)}

    def describe(self) -> str:
        outside = ", ".join(f"{op} x{n}" for op, n in self.portable.items()) or "none"
        return (f"{sum(self.delegated.values())} op(s) in {self.subgraphs} XNNPACK subgraph(s); "
                f"{sum(self.portable.values())} outside the delegate: {outside}")


def _op_name(target: Any) -> str:
    return str(getattr(target, "__name__", target))


def _counted(nodes: Any) -> Counter[str]:
    return Counter(_op_name(n.target) for n in nodes if n.op == "call_function" and n.target is not operator.getitem)


def delegation(graph_module: torch.fx.GraphModule) -> Delegation:
    """What the delegate took from a lowered edge program (``to_edge_transform_and_lower(...).exported_program()
    .graph_module``): :class:`Delegation`. Each lowered module keeps the graph it replaced (``original_module``)."""
    delegated: Counter[str] = Counter()
    portable: Counter[str] = Counter()
    shape: Counter[str] = Counter()
    subgraphs = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if _op_name(node.target) == _DELEGATE_CALL:
            subgraphs += 1
            lowered = getattr(graph_module, node.args[0].target)
            delegated += _counted(lowered.original_module.graph.nodes)
        elif isinstance(node.meta.get("val"), torch.Tensor):
            portable[_op_name(node.target)] += 1
        else:
            shape[_op_name(node.target)] += 1
    return Delegation(subgraphs, dict(sorted(delegated.items())), dict(sorted(portable.items())), dict(sorted(shape.items())))


@dataclass(frozen=True)
class PteExport:
    """A written ``.pte`` and what the XNNPACK delegate took of it."""

    path: Path
    delegation: Delegation


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` on one line; for a bare ``assert`` (no message), where it failed."""
    text = _one_line(exc)
    if not text and exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"raised in {frame.name} ({Path(frame.filename).parent.name}/{Path(frame.filename).name}:{frame.lineno})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def export_pte(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    sample_hw: tuple[int, int] = (64, 64),
    max_hw: tuple[int, int] = PTE_MAX_HW,
    calibration: Sequence[torch.Tensor] | None = None,
) -> PteExport:
    """Export ``model`` to an ExecuTorch program with the XNNPACK delegate (``.pte``), atomically; its path and
    :class:`Delegation` (which operators the delegate runs, which fall out of it).

    The input is ``1 x 3 x height x width`` float32 RGB in [0, 1] (the ONNX convention, batch 1), height and width
    dynamic from 2 up to ``max_hw`` (ExecuTorch plans memory for the upper bound, which the program's metadata
    keeps). ``calibration`` (``1 x 3 x h x w`` inputs, e.g. training patches) quantizes it to int8 first
    (:func:`lower_pte`). Raises :class:`ExecuTorchUnavailableError` when executorch cannot be imported and
    :class:`ExportError` naming the file when lowering fails. What an export killed mid-write left beside ``path`` is
    removed first (by :func:`srnas.atomic.atomic_path`).
    """
    sample_hw = _check_hw(sample_hw, "sample_hw")
    sample = torch.rand(1, 3, *sample_hw, generator=torch.Generator().manual_seed(0))
    cpu_model = model if _model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    with _eval_mode(cpu_model):
        exported = lower_pte(cpu_model, [sample], path, max_hw=max_hw,
                             calibration=None if calibration is None else [[x] for x in calibration])
    log.info("%s: exported ExecuTorch program (XNNPACK delegate%s, LR up to %dx%d): %s", exported.path,
             ", int8" if calibration is not None else "", *max_hw, exported.delegation.describe())
    return exported


def lower_pte(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    max_hw: tuple[int, int],
    calibration: Sequence[Sequence[torch.Tensor]] | None = None,
) -> PteExport:
    """Lower ``module(*inputs)`` to an ExecuTorch program with the XNNPACK delegate, written to ``path`` atomically:
    what :func:`export_pte` does for an SR network, for any module of 4-D inputs (the latency table's layers).

    Every input keeps its memory format (a channels-last input is a channels-last input of the program: XNNPACK then
    reads it without a transpose), the height and width of all of them dynamic from 2 up to ``max_hw``, one size
    shared by every input. ``calibration`` given (a list of input tuples like ``inputs``): int8 first, by PT2E
    quantization with the XNNPACK quantizer (int8 weights symmetric per output channel, static int8 activations
    observed on those inputs), then lowered; the quantized operators are the delegate's. No parity check here (the
    callers that need one run :func:`check_pte_parity`); ExportError naming ``path`` when lowering fails.
    """
    path = Path(path)
    require_executorch(str(path))
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    max_hw = _check_hw(max_hw, "max_hw")
    height = torch.export.Dim("height", min=2, max=max_hw[0])
    width = torch.export.Dim("width", min=2, max=max_hw[1])
    dynamic = tuple({2: height, 3: width} for _ in inputs)
    with torch.inference_mode(False):  # torch.export refuses inference tensors: plain copies of them
        args = tuple(x.clone(memory_format=torch.preserve_format) for x in inputs)
        try:
            with _quiet_exporter():
                if calibration is not None:
                    module = _quantized_int8(module, args, dynamic, calibration)
                exported = torch.export.export(module, args, dynamic_shapes=dynamic)
                edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
                delegated = delegation(edge.exported_program().graph_module)
                program = edge.to_executorch()
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"{path}: ExecuTorch export failed: {_exception_text(exc)}") from exc
    write_bytes(path, program.buffer)  # atomic: temporary sibling, fsync, rename
    return PteExport(path, delegated)


def _quantized_int8(module: torch.nn.Module, args: tuple[torch.Tensor, ...], dynamic: tuple[dict[int, Any], ...],
                    calibration: Sequence[Sequence[torch.Tensor]]) -> torch.nn.Module:
    """``module`` quantized to int8 by PT2E with XNNPACK's quantizer, its activation ranges observed on
    ``calibration`` (at least one input tuple)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("int8 quantization needs at least one calibration input")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(module, args, dynamic_shapes=dynamic).module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(*(x.clone() for x in batch))
    return convert_pt2e(prepared)


# --------------------------------------------------------------------------- running exported files

# LR (height, width) of the probe input the upscalers run once to check a model scales its input
_PROBE_HW = (16, 24)  # multiples of 8 for models that downsample inside, unequal

Run = Callable[[torch.Tensor], np.ndarray]  # a 1x3xHxW float tensor in [0, 1] -> the model's output as an array


def _probe_hw(dims: Sequence[Any]) -> tuple[int, int]:
    """The probe size, with the model's own fixed height or width where its input shape has one."""
    hw = list(dims)[2:4] if len(dims) == 4 else [None, None]
    h, w = (d if isinstance(d, int) and d > 0 else probe for d, probe in zip(hw, _PROBE_HW, strict=True))
    return h, w


def _ort_run(session: Any) -> Run:
    """An ONNX Runtime session (:func:`srnas.runtimes.ort.ort_session`) as a :data:`Run`."""

    def run(x: torch.Tensor) -> np.ndarray:
        return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

    return run


def _pte_method(path: Path, threads: int | None = None) -> Any:
    if threads is not None:
        set_executorch_threads(threads)
    return executorch_method(path)


def _pte_run(method: Any) -> Run:
    """A loaded ``.pte`` method (:func:`srnas.runtimes.executorch.executorch_method`) as a :data:`Run`."""

    def run(x: torch.Tensor) -> np.ndarray:
        return method.execute([x.contiguous()])[0].float().numpy()

    return run


def _pte_max_hw(path: Path, method: Any) -> tuple[int, int]:
    """The largest LR (height, width) a ``.pte`` takes (export_pte's ``max_hw``, from its input's metadata)."""
    sizes = tuple(method.metadata.input_tensor_meta(0).sizes())
    if method.metadata.num_inputs() != 1 or len(sizes) != 4 or sizes[:2] != (1, 3):
        raise ExportError(f"{path}: expected one 1x3xHxW input (as `srnas export` writes it), found "
                          f"{method.metadata.num_inputs()} input(s), the first {'x'.join(map(str, sizes))}")
    return int(sizes[2]), int(sizes[3])


def onnx_upscaler(path: str | os.PathLike[str], threads: int | None = None, scale: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An ``LR uint8 -> SR uint8`` function running an exported model on ONNX Runtime.

    The model is checked before any image is given to it (ExportError naming the file otherwise): one input
    ``lr`` and one output ``sr`` (the names :func:`export_onnx` writes), and on a probe input an output ``s`` times
    its height and width for a scale ``s`` in 2, 3, 4 (``scale`` when given), so an identity or non-SR model is
    refused. Every later output is checked to be ``s`` times its input too."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        session = ort_session(path, threads)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({_one_line(exc)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = [i.name for i in inputs], [o.name for o in outputs]
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"{path}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r} (as `srnas export` "
                          f"writes them), found inputs {names[0]} and outputs {names[1]}")
    return _checked_upscaler(path, "ONNX Runtime", _ort_run(session), _probe_hw(inputs[0].shape), None, scale)


def pte_upscaler(path: str | os.PathLike[str], threads: int | None = None, scale: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`onnx_upscaler` for an ExecuTorch ``.pte`` (:func:`export_pte`), on ``threads`` XNNPACK threads (its
    default when None). An image larger than the program's ``max_hw`` is refused (ExportError) before it runs."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ExecuTorch program")
    require_executorch(str(path))
    try:
        method = _pte_method(path, threads)
    except Exception as exc:  # noqa: BLE001 - the pybindings raise RuntimeError with a status code
        raise ExportError(f"{path}: ExecuTorch cannot load it ({_one_line(exc)})") from None
    max_hw = _pte_max_hw(path, method)
    probe = (min(_PROBE_HW[0], max_hw[0]), min(_PROBE_HW[1], max_hw[1]))
    return _checked_upscaler(path, "ExecuTorch", _pte_run(method), probe, max_hw, scale)


def exported_upscaler(path: str | os.PathLike[str], threads: int | None = None, scale: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`pte_upscaler` for a ``.pte``, :func:`onnx_upscaler` for anything else."""
    upscaler = pte_upscaler if Path(path).suffix == ".pte" else onnx_upscaler
    return upscaler(path, threads, scale)


def _checked_upscaler(path: Path, runtime: str, run: Run, probe_hw: tuple[int, int], max_hw: tuple[int, int] | None,
                      scale: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` as an ``LR uint8 -> SR uint8`` function, its scale found on a ``probe_hw`` input and checked on every
    image (:func:`onnx_upscaler`); an image beyond ``max_hw`` is refused."""

    def run_image(lr: np.ndarray) -> np.ndarray:
        if max_hw is not None and (lr.shape[0] > max_hw[0] or lr.shape[1] > max_hw[1]):
            raise ExportError(f"{path}: a {lr.shape[0]}x{lr.shape[1]} image is larger than the {max_hw[0]}x{max_hw[1]} "
                              "the program was exported for")
        try:
            return run(to_tensor(lr))
        except Exception as exc:  # noqa: BLE001 - the runtimes raise their own exception types
            raise ExportError(f"{path}: {runtime} cannot run it on a {lr.shape[0]}x{lr.shape[1]} RGB image "
                              f"({_one_line(exc)})") from None

    h, w = probe_hw
    probe = run_image(np.zeros((h, w, 3), dtype=np.uint8))
    found = probe.shape[2] // h if probe.ndim == 4 and probe.shape[2] % h == 0 else 0
    wanted = (scale,) if scale is not None else SUPPORTED_SCALES
    if found not in wanted or probe.shape != (1, 3, found * h, found * w):
        raise ExportError(f"{path}: not an x{'/x'.join(map(str, wanted))} super-resolution model: a 1x3x{h}x{w} input "
                          f"gives a {'x'.join(map(str, probe.shape))} output")

    def upscale(lr: np.ndarray) -> np.ndarray:
        sr = run_image(lr)
        if sr.shape != (1, 3, found * lr.shape[0], found * lr.shape[1]):
            raise ExportError(f"{path}: a {lr.shape[0]}x{lr.shape[1]} image gives a {'x'.join(map(str, sr.shape))} "
                              f"output, not x{found} of it")
        return to_uint8(torch.from_numpy(sr))

    return upscale


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------- parity


@dataclass(frozen=True)
class ParityReport:
    """How closely an exported artifact reproduces the PyTorch model.

    ``max_abs_diff_*`` compare float outputs in [0, 1]; ``psnr_*`` are means over the images that
    came with an HR reference (Y channel, ``scale`` pixels cropped); ``psnr_diff`` is the largest
    per-image PSNR difference in dB. NaN where no image (or no HR) was given.

    ``precision``: the artifact's. An fp32 artifact passes within ``atol`` and ``psnr_tol``; a quantized (int8) one is
    compared with the same fp32 PyTorch model but held to no tolerance: its difference is the cost of quantization,
    recorded (``psnr_loss``: mean PSNR of PyTorch fp32 minus the artifact's), and it fails only when broken (an
    output that is not finite; one of the wrong shape, or a file that does not run, raises before a report exists).
    """

    path: str
    runtime: str
    max_abs_diff_random: float
    max_abs_diff_images: float
    psnr_torch: float
    psnr_runtime: float
    psnr_diff: float
    images: int
    atol: float
    psnr_tol: float
    precision: str = "fp32"

    @property
    def bounded(self) -> bool:
        """Whether ``atol`` and ``psnr_tol`` apply (fp32); a quantized artifact's differences are only recorded."""
        return self.precision == "fp32"

    @property
    def psnr_loss(self) -> float:
        """Mean validation PSNR of the PyTorch fp32 model minus the artifact's, in dB (NaN without HR images)."""
        return self.psnr_torch - self.psnr_runtime

    @property
    def passed(self) -> bool:
        worst = max(self.max_abs_diff_random, 0.0 if math.isnan(self.max_abs_diff_images) else self.max_abs_diff_images)
        if not self.bounded:
            return math.isfinite(worst)  # broken (NaN or infinite outputs) fails; a quality loss is recorded
        psnr_ok = math.isnan(self.psnr_diff) or self.psnr_diff <= self.psnr_tol
        return worst <= self.atol and psnr_ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bounded": self.bounded, "psnr_loss": self.psnr_loss, "passed": self.passed}

    def describe(self) -> str:
        if not self.bounded:
            return (f"{self.precision} on {self.runtime}: max abs diff to PyTorch fp32 {self.max_abs_diff_random:.3g} on "
                    f"random input and {self.max_abs_diff_images:.3g} on {self.images} image(s); PSNR torch fp32 "
                    f"{self.psnr_torch:.4f} dB vs {self.psnr_runtime:.4f} dB, {self.psnr_loss:+.4f} dB lost "
                    "(recorded, not bounded)")
        return (
            f"max abs diff {self.max_abs_diff_random:.3g} on random input and {self.max_abs_diff_images:.3g} on "
            f"{self.images} image(s) (limit {self.atol:g}); PSNR torch {self.psnr_torch:.4f} dB vs {self.runtime} "
            f"{self.psnr_runtime:.4f} dB, largest per-image difference {self.psnr_diff:.4f} dB (limit {self.psnr_tol:g})"
        )


def _split_pairs(val_images: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    pairs: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, item in enumerate(val_images):
        lr, hr = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        for name, img in (("LR", lr), ("HR", hr)):
            if img is None:
                continue
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"val_images[{i}]: {name} must be an H x W x 3 uint8 array, got {desc}")
        pairs.append((lr, hr))
    return pairs


def _crop_pair(lr: np.ndarray, hr: np.ndarray | None, scale: int, max_hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Centre-crop an LR image (and its HR partner) to fit ``max_hw``; unchanged when it fits."""
    if max_hw is None or (lr.shape[0] <= max_hw[0] and lr.shape[1] <= max_hw[1]):
        return lr, hr
    h, w = min(lr.shape[0], max_hw[0]), min(lr.shape[1], max_hw[1])
    top, left = (lr.shape[0] - h) // 2, (lr.shape[1] - w) // 2
    lr = lr[top : top + h, left : left + w]
    if hr is not None:
        hr = hr[top * scale : (top + h) * scale, left * scale : (left + w) * scale]
    return np.ascontiguousarray(lr), None if hr is None else np.ascontiguousarray(hr)


def _max_abs_diff(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference; infinite when either side has a NaN (so NaN never passes)."""
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
    return diff if math.isfinite(diff) else math.inf


def _psnr_diff(a: float, b: float) -> float:
    if a == b:  # equal, including both infinite (output identical to HR)
        return 0.0
    return abs(a - b)


def _parity(
    model: torch.nn.Module,
    path: Path,
    runtime: str,
    run: Any,
    pairs: list[tuple[np.ndarray, np.ndarray | None]],
    scale: int,
    atol: float,
    psnr_tol: float,
    max_hw: tuple[int, int] | None,
    precision: str = "fp32",
) -> ParityReport:
    generator = torch.Generator().manual_seed(0)
    device = _model_device(model)
    diff_random, diff_images = 0.0, float("nan")
    psnr_t: list[float] = []
    psnr_r: list[float] = []
    psnr_diffs: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        for hw in RANDOM_PARITY_SIZES:
            x = torch.rand(1, 3, *hw, generator=generator)
            ref = model(x.to(device)).float().cpu().numpy()
            out = run(x)
            if out.shape != ref.shape:
                raise ParityError(f"{path}: {runtime} output shape {out.shape} != torch {ref.shape} for a {hw[0]}x{hw[1]} input")
            diff_random = max(diff_random, _max_abs_diff(out, ref))
        for lr, hr in pairs:
            lr, hr = _crop_pair(lr, hr, scale, max_hw)
            x = to_tensor(lr)
            ref_t = model(x.to(device)).float().cpu()
            out = run(x)
            if out.shape != tuple(ref_t.shape):
                raise ParityError(f"{path}: {runtime} output shape {out.shape} != torch {tuple(ref_t.shape)} for a {lr.shape[0]}x{lr.shape[1]} image")
            d = _max_abs_diff(out, ref_t.numpy())
            diff_images = d if math.isnan(diff_images) else max(diff_images, d)
            if hr is None:
                continue
            sr_t, sr_r = to_uint8(ref_t), to_uint8(torch.from_numpy(out))
            if sr_t.shape != hr.shape:
                raise DataError(f"{path}: model output {sr_t.shape} does not match its HR image {hr.shape}; is scale={scale} right?")
            a = calculate_psnr(sr_t, hr, crop_border=scale, test_y_channel=True)
            b = calculate_psnr(sr_r, hr, crop_border=scale, test_y_channel=True)
            psnr_t.append(a)
            psnr_r.append(b)
            psnr_diffs.append(_psnr_diff(a, b))
    nan = float("nan")
    return ParityReport(
        path=str(path),
        runtime=runtime,
        max_abs_diff_random=diff_random,
        max_abs_diff_images=diff_images,
        psnr_torch=float(np.mean(psnr_t)) if psnr_t else nan,
        psnr_runtime=float(np.mean(psnr_r)) if psnr_r else nan,
        psnr_diff=max(psnr_diffs) if psnr_diffs else nan,
        images=len(pairs),
        atol=atol,
        psnr_tol=psnr_tol,
        precision=precision,
    )


def _checked(make_report: Any, path: Path, runtime: str) -> ParityReport:
    """Run a parity check. Whenever it does not pass, for whatever reason, the artifact is deleted:
    after this returns the file is verified, after it raises the file is gone.
    """
    try:
        report = make_report()
    except (SrnasError, ValueError):
        _remove_artifact(path)
        raise
    except Exception as exc:  # noqa: BLE001 - an artifact that does not run is as bad as a wrong one
        _remove_artifact(path)
        raise ParityError(f"{path}: could not run the parity check on {runtime} ({type(exc).__name__}: {exc}); the file was removed") from exc
    if not report.passed:
        _remove_artifact(path)
        raise ParityError(f"{path}: parity check failed against PyTorch: {report.describe()}; the file was removed")
    log.info("%s: parity ok: %s", path, report.describe())
    return report


def _check_artifact(
    model: torch.nn.Module,
    path: Path,
    what: str,
    runtime: str,
    open_run: Callable[[], tuple[Run, tuple[int, int] | None]],
    val_images: Sequence[Any],
    scale: int,
    atol: float,
    psnr_tol: float,
    precision: str = "fp32",
) -> ParityReport:
    """The parity check of an exported file, whatever runs it: ``open_run`` loads it (a :data:`Run` and the largest
    LR it takes, None for any), :func:`_parity` compares, :func:`_checked` deletes a file that fails."""
    if not path.is_file():
        raise ParityError(f"{path}: no such {what}")

    def make_report() -> ParityReport:
        pairs = _split_pairs(val_images)
        run, max_hw = open_run()
        return _parity(model, path, runtime, run, pairs, scale, atol, psnr_tol, max_hw, precision)

    return _checked(make_report, path, runtime)


def check_parity(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike[str],
    val_images: Sequence[np.ndarray | tuple[np.ndarray, np.ndarray]],
    scale: int,
    *,
    atol: float = 1e-4,
    psnr_tol: float = 0.01,
    precision: str = "fp32",
) -> ParityReport:
    """Check an ONNX file against ``model`` on ONNX Runtime (CPU, all graph optimisations).

    Compares outputs on random inputs of two sizes (so dynamic H/W is exercised) and on
    ``val_images``: each an LR ``H x W x 3`` uint8 array, or an ``(lr, hr)`` pair whose HR adds a
    PSNR comparison (``srnas.metrics.calculate_psnr``, Y channel, ``scale`` border cropped).
    Fails when the max abs difference exceeds ``atol`` or any image's PSNR differs by more than
    ``psnr_tol`` dB: the file is deleted and :class:`ParityError` names it and the numbers. The
    file is also deleted when the check cannot run at all, so a file that exists after an export
    stage has passed it. ``precision="int8"`` (a quantized file): the same comparison, recorded but not bounded
    (:class:`ParityReport`); the file is deleted only when it is broken.
    """
    path = Path(onnx_path)
    return _check_artifact(model, path, "ONNX file", "onnxruntime", lambda: (_ort_run(ort_session(path)), None),
                           val_images, scale, atol, psnr_tol, precision)


def check_pte_parity(
    model: torch.nn.Module,
    pte_path: str | os.PathLike[str],
    val_images: Sequence[np.ndarray | tuple[np.ndarray, np.ndarray]],
    scale: int,
    *,
    atol: float = 1e-4,
    psnr_tol: float = 0.01,
    max_hw: tuple[int, int] | None = None,
    precision: str = "fp32",
) -> ParityReport:
    """:func:`check_parity` for an ExecuTorch ``.pte``, run by the ExecuTorch Python runtime (the same comparison,
    the same limits; ``precision="int8"``: recorded, not bounded).

    Images larger than ``max_hw`` (default: the bound the program was exported with, from its metadata) are
    centre-cropped.
    """
    path = Path(pte_path)
    if path.is_file():
        require_executorch(str(path))

    def open_run() -> tuple[Run, tuple[int, int] | None]:
        method = executorch_method(path)
        return _pte_run(method), max_hw or _pte_max_hw(path, method)

    return _check_artifact(model, path, "ExecuTorch program", "executorch", open_run, val_images, scale, atol, psnr_tol,
                           precision)
