"""The glibc malloc fix every latency measurement needs, and the page-fault counter that shows it worked.

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
neither is in effect. The page faults per call are part of every :class:`srnas.profiling.LatencyResult`, and a
torch measurement that still faults heavily logs a warning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import resource
import warnings
from typing import Any

__all__ = ["FAULTS_PER_RUN_WARNING", "MALLOC_MMAP_THRESHOLD", "MALLOC_TRIM_THRESHOLD", "apply_malloc_fix", "malloc_env",
           "malloc_env_set", "minor_faults", "prepare_allocator", "set_malloc_thresholds"]

log = logging.getLogger(__name__)

# glibc reads these at start-up. 1 GiB keeps every activation of our nets (a 48-channel 720p
# feature map is 44 MB; glibc's own dynamic ceiling of 32 MiB is too low for it) on the heap.
MALLOC_MMAP_THRESHOLD = 1 << 30
MALLOC_TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt's int argument takes
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Minor page faults per call above which a torch measurement is reported as allocator-bound.
FAULTS_PER_RUN_WARNING = 1000


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
def prepare_allocator() -> str:
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
