"""Hand-built ONNX graphs and static int8 quantization: the one module that does ONNX graph surgery.

:mod:`srnas.export` owns the exporter (PyTorch -> ONNX) and ONNX Runtime sessions; this module builds small
graphs node by node (the latency table times one layer in its network context) and rewrites graphs to int8 QDQ
with ``onnxruntime.quantization``. Callers pass plain arrays and names; nothing here knows about search spaces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OPSET", "EPILOGUES", "write_layer_graph", "quantize_int8"]

OPSET = 17
IMAGE_CHANNELS = 3
# What follows the conv inside a network: an activation, a residual addition (input ``res``), the SR tail
# (global residual: the image repeated s^2 times, then DepthToSpace), or nothing.
EPILOGUES = ("relu", "add", "tail", "none")


def _producer(name: str, channels: int, weight_seed: int) -> tuple[list[Any], list[Any]]:
    """A conv1x1 (image -> ``channels``) writing tensor ``name``: the context that feeds a layer its input."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(weight_seed)
    w = (rng.standard_normal((channels, IMAGE_CHANNELS, 1, 1)) * 0.3).astype(np.float32)
    b = np.zeros(channels, dtype=np.float32)
    inits = [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    node = helper.make_node("Conv", ["img", f"{name}_w", f"{name}_b"], [name], kernel_shape=[1, 1], pads=[0] * 4,
                            strides=[1, 1], dilations=[1, 1], group=1)
    return [node], inits


def write_layer_graph(path: Path, weight: np.ndarray, bias: np.ndarray, *, epilogue: str, reads_image: bool,
                      scale: int, context_only: bool = False) -> Path:
    """Write the ONNX graph of one conv layer as the exporter writes it inside a network, and return ``path``.

    The graph's only input is the image ``img`` (1x3xHxW, dynamic H and W). Unless the layer ``reads_image``
    (a head conv), its input ``x`` (and, for ``epilogue="add"``, the residual ``res``) is produced inside the
    graph by conv1x1 producers, so it comes in the layout (NCHWc blocks) and, once quantized, the precision it
    has inside a network. ``context_only`` writes the producers alone (their time is subtracted by the caller).
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
    outputs: list[Any] = []
    x_name = "img"
    if not reads_image:
        x_name = "x"
        n, i = _producer("x", cin, 1)
        nodes += n
        inits += i
        outputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w]))
    if epilogue == "add":
        n, i = _producer("res", cout, 2)
        nodes += n
        inits += i
        outputs.append(helper.make_tensor_value_info("res", TensorProto.FLOAT, [1, cout, h, w]))
    if context_only:
        if not nodes:
            raise ValueError("a layer that reads the image has no context to subtract")
    else:
        inits += [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")]
        pad = kernel // 2
        nodes.append(helper.make_node("Conv", [x_name, "w", "b"], ["conv"], kernel_shape=[kernel] * 2,
                                      pads=[pad] * 4, strides=[1, 1], dilations=[1, 1], group=1))
        out = "conv"
        out_shape: list[Any] = [1, cout, h, w]
        if epilogue == "relu":
            nodes.append(helper.make_node("Relu", ["conv"], ["relu"]))
            out = "relu"
        elif epilogue == "add":
            nodes.append(helper.make_node("Add", ["res", "conv"], ["add"]))
            out = "add"
        elif epilogue == "tail":
            s2 = scale * scale
            inits += [numpy_helper.from_array(np.array([2], dtype=np.int64), "axes"),
                      numpy_helper.from_array(np.array([1, 1, s2, 1, 1], dtype=np.int64), "expand_shape"),
                      numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
                      numpy_helper.from_array(np.array([IMAGE_CHANNELS * s2], dtype=np.int64), "channels")]
            nodes += [
                helper.make_node("Unsqueeze", ["img", "axes"], ["unsq"]),
                helper.make_node("Expand", ["unsq", "expand_shape"], ["expanded"]),
                helper.make_node("Shape", ["img"], ["hw"], start=2),
                helper.make_node("Concat", ["one", "channels", "hw"], ["rep_shape"], axis=0),
                helper.make_node("Reshape", ["expanded", "rep_shape"], ["repeat"]),
                helper.make_node("Add", ["conv", "repeat"], ["sum"]),
                helper.make_node("DepthToSpace", ["sum"], ["sr"], blocksize=scale, mode="CRD"),
            ]
            out = "sr"
            out_shape = [1, IMAGE_CHANNELS, "out_height", "out_width"]
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)]
    part = "context" if context_only else "layer"
    graph = helper.make_graph(nodes, f"{part}_{epilogue}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="srnas.latency")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


class _RandomFeeds:
    """Calibration data for ``quantize_static``: a few random feeds of the model's inputs at 32x32."""

    def __init__(self, model_path: Path, count: int = 4) -> None:
        import onnx

        proto = onnx.load(str(model_path), load_external_data=False)
        rng = np.random.default_rng(0)
        self._feeds = []
        for _ in range(count):
            feed = {}
            for value in proto.graph.input:
                dims = [d.dim_value if d.dim_value else 32 for d in value.type.tensor_type.shape.dim]
                dims[0] = 1
                feed[value.name] = rng.random(dims, dtype=np.float32)
            self._feeds.append(feed)
        self._iter = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


class _DropMessages(logging.Filter):
    """Drop log records containing ``text`` (the quantizer's advice to pre-process, logged on every call)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quantize_int8(model_path: Path, out_path: Path) -> Path:
    """Static int8 QDQ quantization (uint8 activations, int8 per-channel weights) with ``onnxruntime.quantization``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    reader = _RandomFeeds(model_path)

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

    root = logging.getLogger()
    quiet = _DropMessages("pre-process")
    root.addFilter(quiet)
    try:
        quantize_static(str(model_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(quiet)
    return out_path
