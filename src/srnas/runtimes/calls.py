"""One inference of a model on a runtime, as a zero-argument call that the timers repeat.

Torch runtimes take a ``torch.nn.Module``; ONNX Runtime and ExecuTorch take the path of the exported file
(exporting is :mod:`srnas.export`'s job: :func:`srnas.profiling.profile_module` exports a module first).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srnas.config import PROFILE_RUNTIMES
from srnas.runtimes.executorch import program_call
from srnas.runtimes.ort import ort_session

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "runtime_call"]

# The names of an exported SR network's input and output (:func:`srnas.export.export_onnx` writes them).
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"


def _as_module(model: Any, runtime: str) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{runtime} runs a torch.nn.Module, got {type(model).__name__}")
    return model


def _as_path(model: Any, runtime: str) -> Path:
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"{runtime} runs an exported file (export the module first), got {type(model).__name__}")
    return Path(model)


def _torch_call(model: Any, runtime: str, x: torch.Tensor) -> Callable[[], Any]:
    module = _as_module(model, runtime)
    if runtime == "torch_fp32":
        module = module if not module.training else copy.deepcopy(module).eval()

        def call() -> Any:
            return module(x)

        return call
    if runtime == "torch_bf16":
        module = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def call_bf16() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(x_cl)

        return call_bf16
    # torch_cuda
    module = copy.deepcopy(module).eval().cuda()
    x_gpu = x.cuda()

    def call_cuda() -> Any:
        out = module(x_gpu)
        torch.cuda.synchronize()
        return out

    return call_cuda


def _onnxruntime_call(onnx_path: Path, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    session = ort_session(onnx_path, threads)
    feeds = {INPUT_NAME: np.ascontiguousarray(x.numpy())}

    def call() -> Any:
        return session.run([OUTPUT_NAME], feeds)

    return call


def runtime_call(model: torch.nn.Module | str | os.PathLike[str], runtime: str, x: torch.Tensor,
                 threads: int) -> Callable[[], Any]:
    """One inference of ``model`` on ``runtime`` for the input ``x``, as a call.

    ``model``: a module for the torch runtimes, the exported file for ``onnxruntime_fp32`` (``.onnx``) and
    ``executorch_xnnpack_fp32`` (``.pte``). Call it with ``threads`` torch threads set and under
    ``torch.inference_mode()``, as :func:`srnas.profiling.profile_module` does.
    """
    if runtime not in PROFILE_RUNTIMES:  # e.g. a name from before a rename: never fall through to another runtime
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(PROFILE_RUNTIMES)}")
    if runtime == "onnxruntime_fp32":
        return _onnxruntime_call(_as_path(model, runtime), x, threads)
    if runtime == "executorch_xnnpack_fp32":
        return program_call(_as_path(model, runtime), [x.contiguous()], threads)
    return _torch_call(model, runtime, x)


