"""Which runtimes this machine can run, measured from what it has rather than assumed.

Runtimes (:data:`RUNTIMES`, the names ``params.yaml`` uses):

- ``torch_fp32``: eager PyTorch, NCHW, fp32.
- ``torch_bf16``: eager PyTorch, bf16 autocast and channels-last; only on CPUs with native bf16
  (``avx512_bf16`` or AMX), where it is a real deployment option rather than an emulation.
- ``onnxruntime_fp32``: ONNX Runtime CPUExecutionProvider, all graph optimisations.
- ``executorch_xnnpack_fp32``: ExecuTorch with the XNNPACK delegate, when executorch is installed.
- ``torch_cuda``: eager PyTorch fp32 on the GPU, when CUDA is available.

``SRNAS_HIDE_BF16=1`` in the environment hides native bf16 (:func:`srnas.fingerprint.bf16_hidden`), so a machine
that has it can check that everything still works without it.
"""

from __future__ import annotations

import torch

from srnas.config import PROFILE_RUNTIMES
from srnas.errors import SrnasError
from srnas.fingerprint import has_cpu_flag
from srnas.runtimes.executorch import executorch_available
from srnas.runtimes.ort import onnxruntime_available

__all__ = ["RUNTIMES", "RUNTIME_PRECISION", "RuntimeUnavailableError", "available_runtimes", "bf16_supported",
           "runtime_available", "runtime_label"]

RUNTIMES: tuple[str, ...] = PROFILE_RUNTIMES
RUNTIME_PRECISION = {
    "torch_fp32": "fp32",
    "torch_bf16": "bf16",
    "onnxruntime_fp32": "fp32",
    "executorch_xnnpack_fp32": "fp32",
    "torch_cuda": "fp32",
}


def runtime_label(runtime: str, precision: str) -> str:
    """The name a measurement of ``runtime`` in ``precision`` goes by (results, metrics, report columns): the runtime
    itself in its own precision (:data:`RUNTIME_PRECISION`), else the runtime with its precision in place of its own:
    ``onnxruntime_fp32`` in int8 is ``onnxruntime_int8``, ``executorch_xnnpack_fp32`` in int8
    ``executorch_xnnpack_int8``."""
    own = RUNTIME_PRECISION.get(runtime)
    if precision == own or own is None:
        return runtime
    return f"{runtime.removesuffix('_' + own)}_{precision}"


class RuntimeUnavailableError(SrnasError):
    """The requested runtime cannot run on this machine (library missing, CPU without bf16, no GPU)."""


def bf16_supported() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16, not hidden) and oneDNN can use it."""
    if not (has_cpu_flag("avx512_bf16") or has_cpu_flag("amx_bf16")):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        return False


def runtime_available(runtime: str) -> bool:
    """Whether ``runtime`` (one of :data:`RUNTIMES`) can run on this machine."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "torch_fp32":
        return True
    if runtime == "torch_bf16":
        return bf16_supported()
    if runtime == "onnxruntime_fp32":
        return onnxruntime_available()
    if runtime == "executorch_xnnpack_fp32":
        return executorch_available()
    return torch.cuda.is_available()


def available_runtimes() -> list[str]:
    """Every runtime of :data:`RUNTIMES` this machine can run, in that order."""
    return [runtime for runtime in RUNTIMES if runtime_available(runtime)]
