"""End-to-end latency of an SR model on the runtimes of the target, measured like an engineer.

Runtimes (:data:`RUNTIMES`); :func:`available_runtimes` lists those this machine can run:

- ``torch_fp32``: eager PyTorch, NCHW, fp32.
- ``torch_bf16``: eager PyTorch, bf16 autocast and channels-last; only on CPUs with native bf16
  (``avx512_bf16`` or AMX), where it is a real deployment option rather than an emulation.
- ``onnxruntime_fp32``: ONNX Runtime CPUExecutionProvider, all graph optimisations.
- ``executorch_xnnpack``: ExecuTorch with the XNNPACK delegate, when executorch is installed.
- ``torch_cuda``: eager PyTorch fp32 on the GPU, when CUDA is available.

Every measurement warms up, pins the thread count, runs under ``torch.inference_mode()`` with the
garbage collector paused, and reports median / p90 / mean over ``runs`` calls of one
``1 x 3 x H x W`` input, plus the minor page faults per call.

The glibc malloc pitfall
------------------------
glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB, adapted up to 32 MiB) with fresh
``mmap``s and returns freed heap tops above ``M_TRIM_THRESHOLD`` to the OS. Eager PyTorch allocates
its multi-MB activations on every call, so every forward touches new pages: measured here,
~50k (16-ch plain net) to ~216k (48-ch) minor page faults per 640x360 forward, which can double
the latency. Two fixes, both measured to bring that to ~0 (``bench/bench_runtimes.py``):

- ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment (:func:`malloc_env`),
  which glibc reads only at process start, so the CLI re-executes itself with them;
- ``mallopt(M_MMAP_THRESHOLD)`` / ``mallopt(M_TRIM_THRESHOLD)`` through ctypes, in-process, which
  :func:`apply_malloc_fix` does before the first measurement (glibc only).

The profilers apply the in-process fix when the variables are not set, and warn once only when
neither is in effect. The page faults per call are part of every :class:`LatencyResult`, and a
torch measurement that still faults heavily logs a warning.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import gc
import logging
import math
import os
import platform
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srnas.config import PROFILE_RUNTIMES
from srnas.errors import SrnasError
from srnas.fingerprint import fingerprint_id, has_cpu_flag, target_fingerprint, usable_cpus

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = PROFILE_RUNTIMES
RUNTIME_PRECISION = {
    "torch_fp32": "fp32",
    "torch_bf16": "bf16",
    "onnxruntime_fp32": "fp32",
    "executorch_xnnpack": "fp32",
    "torch_cuda": "fp32",
}

# glibc reads these at start-up. 1 GiB keeps every activation of our nets (a 48-channel 720p
# feature map is 44 MB; glibc's own dynamic ceiling of 32 MiB is too low for it) on the heap.
MALLOC_MMAP_THRESHOLD = 1 << 30
MALLOC_TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt's int argument takes
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Minor page faults per call above which a torch measurement is reported as allocator-bound.
FAULTS_PER_RUN_WARNING = 1000


class RuntimeUnavailableError(SrnasError):
    """The requested runtime cannot run on this machine (library missing, CPU without bf16, no GPU)."""


# ------------------------------------------------------------------------------------ input size


def lr_size_for_720p(scale: int) -> tuple[int, int]:
    """LR (height, width) whose x``scale`` output covers 1280x720: x2 360x640, x3 240x427, x4 180x320."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return math.ceil(720 / scale), math.ceil(1280 / scale)


# ------------------------------------------------------------------------------------- allocator


def malloc_env() -> dict[str, str]:
    """Environment variables that stop glibc malloc from mapping and unmapping activations per call.

    They only take effect in a process started with them (``os.execve`` / ``subprocess`` ``env=``).
    """
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD),
    }


def malloc_env_set(environ: Any = None) -> bool:
    """True when every variable of :func:`malloc_env` is set (to any value) in ``environ``."""
    environ = os.environ if environ is None else environ
    return all(key in environ for key in malloc_env())


def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Call glibc ``mallopt`` for both thresholds; False where that is not possible (not glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    return ok_mmap and ok_trim


@functools.lru_cache(maxsize=1)
def apply_malloc_fix() -> bool:
    """The in-process fix: raise glibc's mmap and trim thresholds with ``mallopt`` (once per process).

    Returns True when glibc accepted both. It affects every later allocation of the process,
    which then keeps freed memory for reuse instead of returning it to the OS.
    """
    return set_malloc_thresholds(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD)


@functools.lru_cache(maxsize=1)
def _prepare_allocator() -> str:
    """Make sure one of the two fixes is in effect; warn once if neither can be. Returns which."""
    if malloc_env_set():
        return "environment"
    if apply_malloc_fix():
        log.info("glibc malloc thresholds raised in-process with mallopt (MALLOC_*_THRESHOLD_ not set in the environment)")
        return "mallopt"
    message = (
        "latency may be inflated by page faults: glibc malloc thresholds could not be raised in-process "
        f"and {', '.join(malloc_env())} are not set. Start the process with "
        + " ".join(f"{k}={v}" for k, v in malloc_env().items())
        + " (the srnas CLI does this), or use a caching allocator such as jemalloc or tcmalloc."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)
    return "none"


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage(RUSAGE_SELF).ru_minflt``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# -------------------------------------------------------------------------------------- runtimes


def bf16_supported() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16) and oneDNN can use it."""
    if not (has_cpu_flag("avx512_bf16") or has_cpu_flag("amx_bf16")):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch built without oneDNN
        return False


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a required dependency
        return False
    return "CPUExecutionProvider" in onnxruntime.get_available_providers()


def runtime_available(runtime: str) -> bool:
    """Whether ``runtime`` (one of :data:`RUNTIMES`) can run on this machine."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "torch_fp32":
        return True
    if runtime == "torch_bf16":
        return bf16_supported()
    if runtime == "onnxruntime_fp32":
        return _onnxruntime_available()
    if runtime == "executorch_xnnpack":
        from srnas.export import executorch_available

        return executorch_available()
    return torch.cuda.is_available()


def available_runtimes() -> list[str]:
    """Every runtime of :data:`RUNTIMES` this machine can run, in that order."""
    return [runtime for runtime in RUNTIMES if runtime_available(runtime)]


# ------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model on one runtime for one input shape, in milliseconds per call."""

    runtime: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    input_shape: tuple[int, ...]
    fingerprint: dict[str, Any] = field(repr=False)
    minor_faults_per_run: float = math.nan

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field plus ``fingerprint_id``."""
        return {
            "runtime": self.runtime,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "runs": self.runs,
            "input_shape": list(self.input_shape),
            "minor_faults_per_run": self.minor_faults_per_run,
            "fingerprint_id": self.fingerprint_id,
            "fingerprint": self.fingerprint,
        }


@contextlib.contextmanager
def gc_paused(collect: bool = True) -> Iterator[None]:
    """Python's garbage collector off while timing (a collection inside a timed call is not the model's); run once
    before when ``collect`` (a full collection costs ~0.1 s in a process with torch loaded)."""
    was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def call_times(call: Callable[[], Any], runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls (no warm-up, no collector handling: see :func:`gc_paused`)."""
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def _time_calls(call: Callable[[], Any], warmup: int, runs: int) -> tuple[list[float], float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` calls, and minor faults per call."""
    for _ in range(warmup):
        call()
    with gc_paused():
        faults_before = minor_faults()
        times = call_times(call, runs)
        faults = (minor_faults() - faults_before) / runs
    return times, faults


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_module(model: Any, runtime: str) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{runtime} profiles a torch.nn.Module, got {type(model).__name__}")
    return model


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


def _onnxruntime_call(model: Any, onnx_path: Path | None, x: torch.Tensor, threads: int, stack: contextlib.ExitStack) -> Callable[[], Any]:
    from srnas.export import INPUT_NAME, OUTPUT_NAME, export_onnx, ort_session

    if onnx_path is None:
        if isinstance(model, (str, os.PathLike)):
            onnx_path = Path(model)
        else:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-profile-"))
            onnx_path = export_onnx(_as_module(model, "onnxruntime_fp32"), Path(tmpdir) / "model.onnx", sample_hw=(32, 32))
    session = ort_session(onnx_path, threads)
    feeds = {INPUT_NAME: np.ascontiguousarray(x.numpy())}

    def call() -> Any:
        return session.run([OUTPUT_NAME], feeds)

    return call


def _executorch_call(model: Any, pte_path: Path | None, x: torch.Tensor, threads: int, stack: contextlib.ExitStack) -> Callable[[], Any]:
    from srnas.export import executorch_method, export_pte

    if pte_path is None:
        if isinstance(model, (str, os.PathLike)):
            pte_path = Path(model)
        else:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-profile-"))
            max_hw = (max(x.shape[2], 64), max(x.shape[3], 64))
            pte_path = export_pte(_as_module(model, "executorch_xnnpack"), Path(tmpdir) / "model.pte", sample_hw=(32, 32), max_hw=max_hw)
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is not None:
        reset(int(threads))
    else:  # pragma: no cover - depends on the executorch build
        log.warning("this executorch build cannot set its thread count; executorch_xnnpack uses its default")
    method = executorch_method(pte_path)
    inputs = [x.contiguous()]

    def call() -> Any:
        return method.execute(inputs)

    return call


def runtime_call(model: Any, runtime: str, x: torch.Tensor, threads: int, stack: contextlib.ExitStack, *,
                 onnx_path: str | os.PathLike[str] | None = None, pte_path: str | os.PathLike[str] | None = None) -> Callable[[], Any]:
    """One inference of ``model`` on ``runtime`` for the input ``x``, as a call (sessions and exports live in ``stack``).

    Call it with ``threads`` torch threads set and under ``torch.inference_mode()``, as :func:`profile_module` does.
    """
    if runtime == "onnxruntime_fp32":
        return _onnxruntime_call(model, None if onnx_path is None else Path(onnx_path), x, threads, stack)
    if runtime == "executorch_xnnpack":
        return _executorch_call(model, None if pte_path is None else Path(pte_path), x, threads, stack)
    return _torch_call(model, runtime, x)


def profile_module(
    model: torch.nn.Module | str | os.PathLike[str],
    runtime: str,
    input_hw: Sequence[int],
    *,
    threads: int,
    warmup: int = 3,
    runs: int = 20,
    onnx_path: str | os.PathLike[str] | None = None,
    pte_path: str | os.PathLike[str] | None = None,
) -> LatencyResult:
    """Latency of ``model`` on ``runtime`` for a ``1 x 3 x H x W`` input, ``threads`` threads.

    ``model`` is a ``torch.nn.Module``; for ``onnxruntime_fp32`` / ``executorch_xnnpack`` it may
    instead be the path of the exported file, or pass ``onnx_path`` / ``pte_path`` (otherwise the
    module is exported to a temporary file first). No timing is asserted: this only measures.
    Raises :class:`RuntimeUnavailableError` when the runtime cannot run here.
    """
    if not runtime_available(runtime):
        raise RuntimeUnavailableError(f"runtime {runtime!r} is not available on this machine (available: {', '.join(available_runtimes())})")
    if len(input_hw) != 2 or any(int(s) < 1 for s in input_hw):
        raise ValueError(f"input_hw must be (height, width), got {tuple(input_hw)}")
    if threads < 1 or warmup < 0 or runs < 1:
        raise ValueError(f"need threads >= 1, warmup >= 0, runs >= 1; got threads={threads}, warmup={warmup}, runs={runs}")
    allocator = _prepare_allocator()
    shape = (1, 3, int(input_hw[0]), int(input_hw[1]))
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with contextlib.ExitStack() as stack, _torch_threads(threads), torch.inference_mode():
        call = runtime_call(model, runtime, x, threads, stack, onnx_path=onnx_path, pte_path=pte_path)
        times, faults = _time_calls(call, warmup, runs)
    if runtime.startswith("torch_") and runtime != "torch_cuda" and faults > FAULTS_PER_RUN_WARNING:
        log.warning(
            "%s: %.0f minor page faults per call (allocator fix: %s); this latency includes the cost of the OS mapping fresh pages",
            runtime,
            faults,
            allocator,
        )
    return LatencyResult(
        runtime=runtime,
        median_ms=float(statistics.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        mean_ms=float(statistics.fmean(times)),
        runs=runs,
        input_shape=shape,
        fingerprint=target_fingerprint(runtime, RUNTIME_PRECISION[runtime], threads),
        minor_faults_per_run=float(faults),
    )


def resolve_threads(threads: int) -> int:
    """``threads``, or every CPU this process may use when it is 0 (as ``ProfileConfig`` allows)."""
    return usable_cpus() if threads == 0 else threads


def profile_all(
    model: torch.nn.Module,
    onnx_path: str | os.PathLike[str] | None,
    input_hw: Sequence[int],
    threads: int,
    *,
    warmup: int = 3,
    runs: int = 20,
    runtimes: Sequence[str] | None = None,
    pte_path: str | os.PathLike[str] | None = None,
) -> list[LatencyResult]:
    """:func:`profile_module` on every available runtime (or on ``runtimes``, each of which must be available).

    ``onnx_path`` / ``pte_path``: the artifacts to time on ONNX Runtime / ExecuTorch (the ones the
    export stage checked); when None the model is exported to a temporary file first.
    """
    threads = resolve_threads(threads)
    chosen = list(runtimes) if runtimes else available_runtimes()
    results = []
    for runtime in chosen:
        result = profile_module(model, runtime, input_hw, threads=threads, warmup=warmup, runs=runs, onnx_path=onnx_path, pte_path=pte_path)
        log.info("%s %dx%d: median %.2f ms, p90 %.2f ms", runtime, input_hw[0], input_hw[1], result.median_ms, result.p90_ms)
        results.append(result)
    return results
