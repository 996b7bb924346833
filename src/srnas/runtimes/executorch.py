"""ExecuTorch's Python runtime (the ``mobile`` extra, ``srnas[mobile]``, which ``make setup`` installs): whether it
imports, loading a ``.pte`` and sizing its thread pool.

Lowering a model to a ``.pte`` is :func:`srnas.export.export_pte`; this module only runs programs. Importing
executorch pulls in torchao, which logs a warning for each of its CUDA-only libraries a CPU build cannot load, and
torch's pytree logs a deprecation for one of torchao's enums: both are silenced while executorch is first imported
(nothing of them is used here).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from srnas.errors import SrnasError

log = logging.getLogger(__name__)

__all__ = ["ExecuTorchUnavailableError", "executorch_available", "executorch_installed", "executorch_method",
           "executorch_threads", "program_call", "require_executorch", "set_executorch_threads"]


class ExecuTorchUnavailableError(SrnasError):
    """ExecuTorch (the optional ``mobile`` extra) is not installed or cannot be imported."""


# Loggers that chatter while executorch is imported (see the module docstring).
_IMPORT_CHATTER = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _IMPORT_CHATTER]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def executorch_installed() -> bool:
    """Whether executorch is installed, without importing it (which takes seconds): :func:`executorch_available`
    also checks that it imports."""
    return importlib.util.find_spec("executorch") is not None


@functools.lru_cache(maxsize=1)
def _executorch_import_error() -> str | None:
    if not executorch_installed():
        return "executorch is not installed (pip install -c constraints.txt '.[mobile]'; make setup installs it)"
    try:
        with _quiet_import():
            _import_executorch()
    except Exception as exc:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"executorch is installed but cannot be imported ({type(exc).__name__}: {exc})"
    return None


def _import_executorch() -> None:
    import executorch.exir  # noqa: F401
    import executorch.runtime  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401


def executorch_available() -> bool:
    """True when ExecuTorch with the XNNPACK partitioner and the Python runtime can be imported."""
    return _executorch_import_error() is None


def require_executorch(what: str) -> None:
    """ExecuTorchUnavailableError naming ``what`` unless ExecuTorch imports."""
    error = _executorch_import_error()
    if error is not None:
        raise ExecuTorchUnavailableError(f"{what}: {error}")


def executorch_method(path: str | os.PathLike[str]) -> Any:
    """Load the ``forward`` method of a ``.pte`` with the ExecuTorch Python runtime: ``execute([tensor])`` runs it,
    ``metadata`` describes its inputs and outputs (a dynamic size as its upper bound)."""
    require_executorch(str(path))
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    return program.load_method("forward")


def program_call(path: str | os.PathLike[str], inputs: Sequence[Any], threads: int) -> Callable[[], Any]:
    """One run of a ``.pte``'s ``forward`` on ``inputs`` (tensors, in the memory format the program was lowered for)
    on ``threads`` XNNPACK threads, as a call that the timers repeat."""
    set_executorch_threads(threads)
    method = executorch_method(path)
    feeds = list(inputs)

    def call() -> Any:
        return method.execute(feeds)

    return call


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK thread pool, one pool for the whole process (where the build allows it; otherwise
    it keeps its default, logged)."""
    require_executorch("set_executorch_threads")
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    count = getattr(portable_lib, "_threadpool_get_thread_count", None)
    if reset is None or count is None:  # pragma: no cover - depends on the executorch build
        log.warning("this executorch build cannot set its thread count; executorch_xnnpack_fp32 uses its default")
        return
    if count() != threads:  # a reset rebuilds the pool: only when it changes
        reset(int(threads))
    if count() != threads:  # pragma: no cover - depends on the executorch build
        log.warning("executorch kept %d threads when asked for %d", count(), threads)


def executorch_threads() -> int:
    """The size of ExecuTorch's thread pool now."""
    require_executorch("executorch_threads")
    from executorch.extension.pybindings import portable_lib

    return int(portable_lib._threadpool_get_thread_count())
