"""End-to-end latency of an SR model on the runtimes of the target, measured like an engineer.

Runtimes are :mod:`srnas.runtimes.availability`'s; a module is exported to a temporary ONNX / ``.pte`` file
for the runtimes that run exported files, unless the caller passes the artifact the export stage checked.

Every measurement warms up, pins the thread count, runs under ``torch.inference_mode()`` with the
garbage collector paused (:mod:`srnas.runtimes.timing`), with glibc malloc's thresholds raised
(:mod:`srnas.runtimes.allocator`), and reports median / p90 / mean over ``runs`` calls of one
``1 x 3 x H x W`` input, plus the minor page faults per call.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srnas.export import ExportError, artifact_form, export_onnx, export_pte
from srnas.fingerprint import fingerprint_id, target_fingerprint, usable_cpus
from srnas.runtimes.allocator import FAULTS_PER_RUN_WARNING, prepare_allocator
from srnas.runtimes.availability import (
    RUNTIME_PRECISION,
    RuntimeUnavailableError,
    available_runtimes,
    runtime_available,
    runtime_label,
)
from srnas.runtimes.calls import runtime_call
from srnas.runtimes.timing import QUIET_LIMIT, others_busy, pinned_threads, time_calls

__all__ = ["LatencyResult", "lr_size_for_720p", "profile_all", "profile_module", "pte_max_hw", "resolve_threads"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ input size


def lr_size_for_720p(scale: int) -> tuple[int, int]:
    """LR (height, width) whose x``scale`` output covers 1280x720: x2 360x640, x3 240x427, x4 180x320."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return math.ceil(720 / scale), math.ceil(1280 / scale)


# ------------------------------------------------------------------------------------- measuring

# The input size a module is traced at when it is exported for timing (height and width stay dynamic).
EXPORT_SAMPLE_HW = (32, 32)


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
    busy_cores: float = 0.0  # cores other processes kept busy on average while the calls were timed
    precision: str = ""  # what the runtime ran: "" is the runtime's own (RUNTIME_PRECISION), e.g. int8 for a QDQ file

    def __post_init__(self) -> None:
        if not self.precision:
            object.__setattr__(self, "precision", RUNTIME_PRECISION.get(self.runtime, "fp32"))

    @property
    def label(self) -> str:
        """Runtime and precision in one name (:func:`srnas.runtimes.availability.runtime_label`): ``onnxruntime_fp32``,
        ``onnxruntime_int8``, ``executorch_xnnpack_int8``, ...; what metrics and the report call this figure."""
        return runtime_label(self.runtime, self.precision)

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    @property
    def disturbed(self) -> bool:
        """Whether other processes kept the machine busy while this was measured (more than the quiet guard's
        :data:`~srnas.runtimes.timing.QUIET_LIMIT` cores): the figure is likely inflated, the report flags it."""
        return self.busy_cores > QUIET_LIMIT

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        """What :meth:`to_dict` wrote (a device agent's reply); ValueError naming what is missing."""
        try:
            return cls(str(data["runtime"]), float(data["median_ms"]), float(data["p90_ms"]), float(data["mean_ms"]),
                       int(data["runs"]), tuple(int(v) for v in data["input_shape"]), dict(data["fingerprint"]),
                       float(data.get("minor_faults_per_run", math.nan)), float(data.get("busy_cores", 0.0)),
                       str(data.get("precision", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"latency result: missing or malformed {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field plus ``fingerprint_id``."""
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "label": self.label,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "runs": self.runs,
            "input_shape": list(self.input_shape),
            "minor_faults_per_run": self.minor_faults_per_run,
            "busy_cores": self.busy_cores,
            "disturbed": self.disturbed,
            "fingerprint_id": self.fingerprint_id,
            "fingerprint": self.fingerprint,
        }


def _exported_artifact(model: torch.nn.Module | str | os.PathLike[str], runtime: str, x: torch.Tensor,
                       artifact: str | os.PathLike[str] | None, stack: contextlib.ExitStack) -> Any:
    """What ``runtime`` runs: the module itself (torch runtimes), else ``artifact``, the path ``model`` names, or
    ``model`` exported to a temporary file that lives in ``stack``."""
    if runtime not in ("onnxruntime_fp32", "executorch_xnnpack_fp32"):
        return model
    if artifact is not None:
        return Path(artifact)
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="srnas-profile-")))
    if runtime == "onnxruntime_fp32":
        return export_onnx(model, tmpdir / "model.onnx", sample_hw=EXPORT_SAMPLE_HW)
    return export_pte(model, tmpdir / "model.pte", sample_hw=EXPORT_SAMPLE_HW, max_hw=pte_max_hw(x.shape[2:])).path


def pte_max_hw(input_hw: Sequence[int]) -> tuple[int, int]:
    """The size bound of a ``.pte`` exported to time ``input_hw`` inputs (ExecuTorch plans memory for the bound;
    at least :data:`EXPORT_SAMPLE_HW` times two, so the traced sample lies within it)."""
    return max(int(input_hw[0]), 2 * EXPORT_SAMPLE_HW[0]), max(int(input_hw[1]), 2 * EXPORT_SAMPLE_HW[1])


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
    precision: str = "",
) -> LatencyResult:
    """Latency of ``model`` on ``runtime`` for a ``1 x 3 x H x W`` input, ``threads`` threads.

    ``model`` is a ``torch.nn.Module``; for ``onnxruntime_fp32`` / ``executorch_xnnpack_fp32`` it may
    instead be the path of the exported file, or pass ``onnx_path`` / ``pte_path`` (otherwise the
    module is exported to a temporary file first). ``precision``: what that file computes in, when not the runtime's
    own (``int8`` for a quantized file): the result and its fingerprint say so. No timing is asserted: this only
    measures. Raises :class:`RuntimeUnavailableError` when the runtime cannot run here.
    """
    if not runtime_available(runtime):
        raise RuntimeUnavailableError(f"runtime {runtime!r} is not available on this machine (available: {', '.join(available_runtimes())})")
    if len(input_hw) != 2 or any(int(s) < 1 for s in input_hw):
        raise ValueError(f"input_hw must be (height, width), got {tuple(input_hw)}")
    if threads < 1 or warmup < 0 or runs < 1:
        raise ValueError(f"need threads >= 1, warmup >= 0, runs >= 1; got threads={threads}, warmup={warmup}, runs={runs}")
    allocator = prepare_allocator()
    shape = (1, 3, int(input_hw[0]), int(input_hw[1]))
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    artifact = onnx_path if runtime == "onnxruntime_fp32" else pte_path
    with contextlib.ExitStack() as stack, pinned_threads(threads), torch.inference_mode():
        call = runtime_call(_exported_artifact(model, runtime, x, artifact, stack), runtime, x, threads)
        (times, faults), busy = others_busy(lambda: time_calls(call, warmup, runs))
    if busy > QUIET_LIMIT:  # debug: a caller under the quiet guard measures again; profile_model warns
        log.debug("%s: timed while other processes kept %.2f cores busy (disturbed)", runtime, busy)
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
        fingerprint=target_fingerprint(runtime, precision or RUNTIME_PRECISION[runtime], threads),
        minor_faults_per_run=float(faults),
        busy_cores=float(busy),
        precision=precision,
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
    artifacts: Sequence[str | os.PathLike[str]] = (),
) -> list[LatencyResult]:
    """:func:`profile_module` on every available runtime (or on ``runtimes``, each of which must be available).

    ``onnx_path`` / ``pte_path``: the artifacts to time on ONNX Runtime / ExecuTorch (the ones the
    export stage checked); when None the model is exported to a temporary file first. ``artifacts``: exported files
    (:func:`srnas.export.artifact_form` tells their runtime and precision from the name: ``model.int8.pte`` is
    ExecuTorch in int8): a runtime that runs files times every one of them for it, each result labelled with its
    precision, instead of ``onnx_path`` / ``pte_path`` or a temporary export; every file is timed, its runtime added
    to ``runtimes`` when they leave it out. Without ``runtimes``, a
    runtime the model cannot be exported to is left out with a warning (the bicubic baseline has no ``.pte``:
    :mod:`srnas.export`); a runtime asked for by name fails instead.
    """
    threads = resolve_threads(threads)
    forms = [(Path(a), artifact_form(a)) for a in artifacts]
    chosen = list(runtimes) if runtimes else available_runtimes()
    chosen += [r for r in dict.fromkeys(form.runtime for _, form in forms) if r not in chosen]  # a file is always timed
    results = []
    for runtime in chosen:
        files = [(path, form.precision) for path, form in forms if form.runtime == runtime]
        for file, precision in files or [(None, "")]:
            try:
                result = profile_module(model if file is None else file, runtime, input_hw, threads=threads,
                                        warmup=warmup, runs=runs, onnx_path=onnx_path if file is None else None,
                                        pte_path=pte_path if file is None else None, precision=precision)
            except ExportError as exc:
                if runtimes:
                    raise
                log.warning("%s: left out, the model cannot be exported for it: %s", runtime, exc)
                continue
            log.info("%s %dx%d: median %.2f ms, p90 %.2f ms", result.label, input_hw[0], input_hw[1], result.median_ms,
                     result.p90_ms)
            results.append(result)
    return results
