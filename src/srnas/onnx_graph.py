"""Hand-built ONNX graphs and static int8 quantization: the one module that does ONNX graph surgery.

:mod:`srnas.export` owns the exporter (PyTorch -> ONNX) and ONNX Runtime sessions; this module builds small
graphs node by node (the latency table times one layer in its network context), reads which nodes of such a graph,
once ONNX Runtime optimised it, run the layer (:func:`layer_nodes`), and rewrites graphs to int8 QDQ with
``onnxruntime.quantization``. Callers pass plain arrays and names; nothing here knows about search spaces.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CONTEXT_PREFIX", "CONVERTER_OPS", "EPILOGUES", "LAYER_PREFIX", "OPSET", "layer_nodes", "quantize_int8",
           "write_layer_graph"]

OPSET = 17
IMAGE_CHANNELS = 3
# What follows the conv inside a network: an activation, a residual addition (input ``res``), the SR tail
# (global residual: the image repeated s^2 times, then DepthToSpace), or nothing.
EPILOGUES = ("relu", "add", "tail", "none")


CONTEXT_PREFIX = "context_"
LAYER_PREFIX = "layer_"


def _producer(name: str, source: str, cin: int, channels: int, weight_seed: int) -> tuple[list[Any], list[Any]]:
    """A conv1x1 (``source`` with ``cin`` channels -> ``channels``) writing tensor ``name``: context that feeds a layer."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(weight_seed)
    w = (rng.standard_normal((channels, cin, 1, 1)) * 0.3 / np.sqrt(cin)).astype(np.float32)
    b = np.zeros(channels, dtype=np.float32)
    inits = [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    node = helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name], name=name, kernel_shape=[1, 1],
                            pads=[0] * 4, strides=[1, 1], dilations=[1, 1], group=1)
    return [node], inits


def write_layer_graph(path: Path, weight: np.ndarray, bias: np.ndarray, *, epilogue: str, reads_image: bool,
                      scale: int) -> Path:
    """Write the ONNX graph of one conv layer as the exporter writes it inside a network, and return ``path``.

    The graph's only input is the image ``img`` (1x3xHxW, dynamic H and W). Unless the layer ``reads_image``
    (a head conv), its input is produced inside the graph by conv1x1 *context* nodes, so it comes in the layout
    (NCHWc blocks, reordered to NCHW where the layer needs it) and, once quantized, the precision it has inside a
    network. A residual layer (``epilogue="add"``) adds a tensor its own input was computed from, as a cell adds
    its input to its output: ONNX Runtime fuses that addition into the conv only when both come from one tensor.
    Context nodes and tensors are named ``context_*``, the layer's ``layer_*``: :func:`layer_nodes` tells them
    apart in the optimised graph.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    cout, cin, kernel, _ = weight.shape
    h, w = "height", "width"
    inputs = [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, IMAGE_CHANNELS, h, w])]
    nodes: list[Any] = []
    inits: list[Any] = []
    x_name = "img"
    res = f"{CONTEXT_PREFIX}res"
    if epilogue == "add":
        nodes, inits = _producer(res, "img", IMAGE_CHANNELS, cout, 2)
    if not reads_image:
        x_name = f"{CONTEXT_PREFIX}x"
        source, width = (res, cout) if epilogue == "add" else ("img", IMAGE_CHANNELS)
        n, i = _producer(x_name, source, width, cin, 1)
        nodes += n
        inits += i
    inits += [numpy_helper.from_array(weight.astype(np.float32), f"{LAYER_PREFIX}w"),
              numpy_helper.from_array(bias.astype(np.float32), f"{LAYER_PREFIX}b")]
    pad = kernel // 2
    out = f"{LAYER_PREFIX}conv"
    nodes.append(helper.make_node("Conv", [x_name, f"{LAYER_PREFIX}w", f"{LAYER_PREFIX}b"], [out], name=out,
                                  kernel_shape=[kernel] * 2, pads=[pad] * 4, strides=[1, 1], dilations=[1, 1], group=1))
    out_shape: list[Any] = [1, cout, h, w]

    def then(op: str, inputs: list[str], suffix: str, **attrs: Any) -> str:
        name = f"{LAYER_PREFIX}{suffix}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    if epilogue == "relu":
        out = then("Relu", [out], "relu")
    elif epilogue == "add":
        out = then("Add", [res, out], "add")
    elif epilogue == "tail":
        s2 = scale * scale
        inits += [numpy_helper.from_array(np.array([2], dtype=np.int64), f"{LAYER_PREFIX}axes"),
                  numpy_helper.from_array(np.array([1, 1, s2, 1, 1], dtype=np.int64), f"{LAYER_PREFIX}expand_shape"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), f"{LAYER_PREFIX}one"),
                  numpy_helper.from_array(np.array([IMAGE_CHANNELS * s2], dtype=np.int64), f"{LAYER_PREFIX}channels")]
        unsq = then("Unsqueeze", ["img", f"{LAYER_PREFIX}axes"], "unsqueeze")
        expanded = then("Expand", [unsq, f"{LAYER_PREFIX}expand_shape"], "expand")
        hw = then("Shape", ["img"], "hw", start=2)
        shape = then("Concat", [f"{LAYER_PREFIX}one", f"{LAYER_PREFIX}channels", hw], "repeat_shape", axis=0)
        repeat = then("Reshape", [expanded, shape], "repeat")
        total = then("Add", [out, repeat], "sum")
        out = then("DepthToSpace", [total], "sr", blocksize=scale, mode="CRD")
        out_shape = [1, IMAGE_CHANNELS, "out_height", "out_width"]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)]
    graph = helper.make_graph(nodes, f"layer_{epilogue}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="srnas.latency")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


# Ops that only convert a tensor's layout or precision: at a graph's output they hand the layer's result back
# as NCHW fp32, which inside a network the next layer's input conversion does instead.
CONVERTER_OPS = ("ReorderOutput", "Transpose", "DequantizeLinear")


def layer_nodes(optimized_path: Path, *, keeps_output: bool) -> frozenset[str]:
    """Names of the nodes of an optimised layer graph (:func:`write_layer_graph`, then ONNX Runtime) that run the layer.

    Not the layer's: the context (nodes named ``context_*`` and every node whose results only the context uses,
    such as a reorder feeding a context conv) and, unless ``keeps_output`` (the SR tail, whose output is the
    network's), the chain of :data:`CONVERTER_OPS` that hands the result back as a graph output. Everything else
    is: the conv with what ONNX Runtime fused into it, the reorder of its input when its kernel reads NCHW,
    the epilogue's nodes.
    """
    import onnx

    graph = onnx.load(str(optimized_path), load_external_data=False).graph
    graph_outputs = {value.name for value in graph.output}
    consumers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    context: set[str] = set()
    for node in reversed(graph.node):  # saved in topological order: consumers are decided first
        users = [c for out in node.output for c in consumers.get(out, [])]
        only_context = bool(users) and all(c.name in context for c in users) and not graph_outputs & set(node.output)
        if node.name.startswith(CONTEXT_PREFIX) or only_context:
            context.add(node.name)
    converters: set[str] = set()
    if not keeps_output:
        for name in graph_outputs:
            node = producer.get(name)
            while node is not None and node.op_type in CONVERTER_OPS and node.name not in context:
                converters.add(node.name)
                source = node.input[0] if node.input else ""
                node = producer.get(source) if len(consumers.get(source, [])) == 1 else None
    return frozenset(n.name for n in graph.node if n.name not in context and n.name not in converters)


def _random_feeds(model_path: Path, count: int = 4) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for ``quantize_static``: a few random feeds of the model's inputs at 32x32."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(count):
        feed = {}
        for value in proto.graph.input:
            dims = [d.dim_value if d.dim_value else 32 for d in value.type.tensor_type.shape.dim]
            dims[0] = 1
            feed[value.name] = rng.random(dims, dtype=np.float32)
        feeds.append(feed)
    return feeds


def _given_feeds(model_path: Path, arrays: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for ``quantize_static``: the given arrays, one feed each, for the model's one input."""
    import onnx

    inputs = [value.name for value in onnx.load(str(model_path), load_external_data=False).graph.input]
    if len(inputs) != 1:
        raise ValueError(f"{model_path}: calibration arrays feed a model of one input, this one has {inputs}")
    if not arrays:
        raise ValueError(f"{model_path}: int8 calibration needs at least one input")
    return [{inputs[0]: np.ascontiguousarray(a, dtype=np.float32)} for a in arrays]


class _DropMessages(logging.Filter):
    """Drop log records containing ``text`` (the quantizer's advice to pre-process, logged on every call)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quantize_int8(model_path: Path, out_path: Path, calibration: Sequence[np.ndarray] | None = None,
                  metadata: Mapping[str, str] | None = None) -> Path:
    """Static int8 QDQ quantization (uint8 activations, int8 per-channel weights) with ``onnxruntime.quantization``.

    Activation ranges (MinMax) are observed on ``calibration`` (inputs of a one-input model, e.g. real LR patches as
    ``1 x 3 x h x w`` float32 arrays), else on a few random 32x32 feeds (enough to time it, not to score it). The
    source's metadata (``metadata_props``) is kept, ``metadata`` added on top."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = _random_feeds(model_path) if calibration is None else _given_feeds(model_path, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = iter(feeds)

    root = logging.getLogger()
    quiet = _DropMessages("pre-process")
    root.addFilter(quiet)
    try:
        quantize_static(str(model_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(quiet)
    _stamp_metadata(model_path, out_path, metadata or {})
    return out_path


def _stamp_metadata(source: Path, target: Path, extra: Mapping[str, str]) -> None:
    """``target``'s metadata: ``source``'s, then ``extra``, sorted by key."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if not meta and not extra:
        return
    proto = onnx.load(str(target))
    meta |= {p.key: p.value for p in proto.metadata_props} | dict(extra)
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(target))
