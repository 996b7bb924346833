"""ExecuTorch's Python runtime (an optional extra, ``srnas[mobile]``): whether it imports, and loading a ``.pte``.

Lowering a model to a ``.pte`` is :func:`srnas.export.export_pte`; this module only runs programs.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from srnas.errors import SrnasError

log = logging.getLogger(__name__)

__all__ = ["ExecuTorchUnavailableError", "executorch_available", "executorch_method", "require_executorch", "set_executorch_threads"]


class ExecuTorchUnavailableError(SrnasError):
    """ExecuTorch (the optional ``mobile`` extra) is not installed or cannot be imported."""


@functools.lru_cache(maxsize=1)
def _executorch_import_error() -> str | None:
    if importlib.util.find_spec("executorch") is None:
        return "executorch is not installed (pip install 'srnas[mobile]', i.e. executorch==1.5.1)"
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"executorch is installed but cannot be imported ({type(exc).__name__}: {exc})"
    return None


def executorch_available() -> bool:
    """True when ExecuTorch with the XNNPACK partitioner and the Python runtime can be imported."""
    return _executorch_import_error() is None


def require_executorch(what: str) -> None:
    """ExecuTorchUnavailableError naming ``what`` unless ExecuTorch imports."""
    error = _executorch_import_error()
    if error is not None:
        raise ExecuTorchUnavailableError(f"{what}: {error}")


def executorch_method(path: str | os.PathLike[str]) -> Any:
    """Load the ``forward`` method of a ``.pte`` with the ExecuTorch Python runtime."""
    require_executorch(str(path))
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    return program.load_method("forward")


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK thread pool (where the build allows it; otherwise it keeps its default, logged)."""
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is not None:
        reset(int(threads))
    else:  # pragma: no cover - depends on the executorch build
        log.warning("this executorch build cannot set its thread count; executorch_xnnpack uses its default")
