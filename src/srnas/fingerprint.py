"""Identify a latency target: the CPU, the software stack and how a model was run on it.

A latency is only comparable with another measured under the same fingerprint. ``fingerprint_id``
hashes everything in the fingerprint, so a new CPU, thread count or library version gives a new id
(and a latency table keyed by it is measured again rather than silently reused).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any

# CPU features that change which kernels the runtimes pick (Linux /proc/cpuinfo names).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")

# ``SRNAS_HIDE_BF16=1`` hides native bf16: the CPU is described (and every runtime decision made) as if it lacked
# these flags, as on most laptops, ARM servers and Apple silicon. A machine that has bf16 can so check that the
# default job works without it; the fingerprint changes with it, so no table is shared across the two.
HIDE_BF16_ENV = "SRNAS_HIDE_BF16"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

# How srnas runs what it times (session settings, allocator, threads); bumped when that changes, so a table
# measured the old way is measured again. 2: ONNX Runtime workers sleep when idle (srnas.runtimes.ort.SESSION_CONFIG).
MEASUREMENT_PROTOCOL = 2

# Distributions whose version changes a measured latency. executorch (and torchao, whose PT2E quantization makes its
# int8 programs) appear only when installed, and only in the fingerprint of an ExecuTorch runtime
# (:data:`RUNTIME_ONLY_PACKAGES`): installing them leaves every other table valid.
PACKAGES = ("torch", "onnxruntime", "onnx", "executorch", "torchao")
# package -> the prefix of the runtimes it runs
RUNTIME_ONLY_PACKAGES = {"executorch": "executorch_", "torchao": "executorch_"}


def _package_version(name: str) -> str | None:
    """Installed version of distribution ``name`` without importing it, or None when absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU listed in /proc/cpuinfo; best effort elsewhere."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown", flags


def bf16_hidden() -> bool:
    """True when :data:`HIDE_BF16_ENV` is set to a non-empty value other than ``0``."""
    return os.environ.get(HIDE_BF16_ENV, "") not in ("", "0")


def _visible_flags() -> frozenset[str]:
    flags = _cpuinfo()[1]
    return flags - BF16_FLAGS if bf16_hidden() else flags


def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``AMD EPYC`` or ``Intel(R) Xeon(R) Platinum 8481C``."""
    return _cpuinfo()[0]


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` this CPU reports (all False where /proc/cpuinfo is unavailable)."""
    flags = _visible_flags()
    return {flag: flag in flags for flag in CPU_FLAGS}


def has_cpu_flag(flag: str) -> bool:
    """Whether the CPU reports ``flag`` (bf16 flags read as absent while :func:`bf16_hidden`)."""
    return flag in _visible_flags()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which is what thread counts should respect."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def package_versions() -> dict[str, str]:
    """Versions of python and :data:`PACKAGES`; packages that are not installed are left out."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        version = _package_version(name)
        if version is not None:
            versions[name] = version
    return versions


def target_fingerprint(runtime: str, precision: str, threads: int) -> dict[str, Any]:
    """Everything that identifies where and how a latency was measured, as a JSON-ready dict.

    Keys: measurement_protocol (:data:`MEASUREMENT_PROTOCOL`), runtime, precision, threads, cpu_model,
    cpu_flags ({flag: bool}), logical_cpus, usable_cpus, machine, os, os_release, libc, python and one key per
    installed package of :data:`PACKAGES` (torch, onnxruntime, onnx; executorch and torchao for the ExecuTorch
    runtimes only),
    plus cuda_device / cuda for ``torch_cuda``.
    """
    libc_name, libc_version = platform.libc_ver()
    fp: dict[str, Any] = {
        "measurement_protocol": MEASUREMENT_PROTOCOL,
        "runtime": runtime,
        "precision": precision,
        "threads": int(threads),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count() or 1,
        "usable_cpus": usable_cpus(),
        "machine": platform.machine(),
        "os": platform.system(),
        "os_release": platform.release(),
        "libc": f"{libc_name} {libc_version}".strip() or "unknown",
    }
    fp.update({name: version for name, version in package_versions().items()
               if not (name in RUNTIME_ONLY_PACKAGES and not runtime.startswith(RUNTIME_ONLY_PACKAGES[name]))})
    if runtime == "torch_cuda":
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            fp["cuda_device"] = torch.cuda.get_device_name()
            fp["cuda"] = str(torch.version.cuda)
    return fp


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A stable 12-hex-digit id of ``fp``: the same dict gives the same id in any process or order."""
    payload = json.dumps(fp, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]
