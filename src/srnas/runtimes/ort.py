"""ONNX Runtime, the one module that imports it: CPU sessions configured as deployed, and its profiler's output.

(Static int8 quantization, an ONNX graph rewrite, lives with the other graph surgery in :mod:`srnas.onnx_graph`.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunProfile", "onnxruntime_available", "ort_session", "read_ort_profile"]


def onnxruntime_available() -> bool:
    """True when ONNX Runtime imports and offers its CPU execution provider."""
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a required dependency
        return False
    return "CPUExecutionProvider" in onnxruntime.get_available_providers()


# Idle worker threads sleep instead of spin-waiting. Each session owns its thread pool, and the paired protocol keeps
# two sessions alive (the measured one and the reference): with spinning on, the idle session's workers spin on the
# cores the timed one needs. Measured on 2 cores (conv 16->16 at LR 24x40, 2 threads, 5 processes): a layer with
# half its weights zero -- the same work -- timed 0.66x to 1.60x the dense one with spinning, 1.01x to 1.05x
# without. Recorded in every fingerprint through srnas.fingerprint.MEASUREMENT_PROTOCOL.
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def ort_session(path: str | os.PathLike[str], threads: int | None = None, *,
                profile_prefix: str | os.PathLike[str] | None = None,
                optimized_path: str | os.PathLike[str] | None = None) -> Any:
    """An ONNX Runtime CPU session configured as deployed: all graph optimisations, fixed threads, and worker
    threads that sleep when idle (:data:`SESSION_CONFIG`).

    ``profile_prefix``: ONNX Runtime's profiler on (every run's node kernel times, written to
    ``<prefix>_<date>.json`` by ``session.end_profiling()``, read by :func:`read_ort_profile`).
    ``optimized_path``: where to save the graph as optimised for this machine (names the profiled nodes).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class RunProfile:
    """One ``session.run`` in ONNX Runtime's profile: its duration and each node's kernel time (microseconds)."""

    run_us: float
    node_us: dict[str, float]


def read_ort_profile(path: str | os.PathLike[str]) -> list[RunProfile]:
    """The runs of a profile written by ``session.end_profiling()``, in order, each with its nodes' kernel times."""
    events = json.loads(Path(path).read_text(encoding="utf-8"))
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    kernels = sorted((e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
                     key=lambda e: e["ts"])
    out: list[RunProfile] = []
    k = 0
    for run in runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        nodes: dict[str, float] = {}
        while k < len(kernels) and kernels[k]["ts"] < start:
            k += 1
        while k < len(kernels) and kernels[k]["ts"] <= end:
            name = kernels[k]["name"][: -len("_kernel_time")]
            nodes[name] = nodes.get(name, 0.0) + float(kernels[k]["dur"])
            k += 1
        out.append(RunProfile(float(run["dur"]), nodes))
    return out
