"""The saved-file format every stage shares: checkpoints (``last.ckpt``: everything needed to resume), trained weights
(``model.pt``), and the payload reader/writer (:func:`save_payload`, :func:`load_payload`) the supernet and the
searched networks store themselves with. A bottom-layer module: it knows formats, not models (reading any saved
model back is :func:`srnas.loading.load_trained`).

All are written atomically (temporary sibling, fsync, rename) and read with ``weights_only=True``:
a checkpoint holds only tensors, numbers, strings, lists and dicts, never pickled code.
A missing key, a truncated or corrupt file, another kind of file (an ONNX model) or a file carrying Python code or
objects raises :class:`CheckpointError` naming the file (the last is refused, never loaded "if you trust it").

The same payload gives the same bytes: :func:`save_payload` writes through a file handle, so the archive's inner
folder is always ``archive/`` (not the temporary file's name), and torch's ``.data/serialization_id`` record is a
digest of the records' names and CRC-32s, not a random id. Weight files therefore carry nothing that varies between
two identical trainings -- no wall clock (timings live in ``train_metrics.json``: see
:data:`srnas.training.loop.RUN_FIGURES`) -- and hash the same. ``last.ckpt`` is resume state, not a weight file: it
keeps the seconds trained so far (``elapsed_s``) for the resumed run's figures.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srnas.atomic import atomic_path
from srnas.errors import SrnasError

__all__ = ["CheckpointError", "CKPT_FORMAT", "MODEL_FORMAT", "TRAINING_STATE", "load_checkpoint", "load_payload",
           "restore_training_state", "save_checkpoint", "save_payload", "save_trained"]

CKPT_FORMAT = "srnas-train-checkpoint/1"
MODEL_FORMAT = "srnas-model/1"


class CheckpointError(SrnasError):
    """A checkpoint or model file cannot be used. The message names the file and what is wrong."""


def save_payload(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts; its ``format`` tag included) to ``path`` atomically:
    a temporary sibling, fsync, rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_payload(path: Path, expected_format: str | tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    """The payload at ``path`` (read with ``weights_only=True``), checked for one of the ``expected_format`` tags and the
    ``required`` keys; CheckpointError naming the file otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not ours (or is cut short)
        if path.suffix.lower() == ".onnx":
            raise CheckpointError(f"{path}: an ONNX model, not a PyTorch checkpoint (pass the trained model.pt)")
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): not a PyTorch zip archive")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(exc)}") from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused: it carries Python code or objects{what}, and srnas loads only plain "
                              "data (tensors, numbers, strings, lists, dicts)") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors...
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(exc)}") from None
    expected = (expected_format,) if isinstance(expected_format, str) else expected_format
    if not isinstance(payload, dict) or payload.get("format") not in expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        wanted = " or ".join(repr(f) for f in expected)
        raise CheckpointError(f"{path}: expected a {wanted} file, found {found!r}")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)}")
    return payload


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (``payload`` gets the format tag)."""
    save_payload(Path(path), {"format": CKPT_FORMAT, **payload})


def load_checkpoint(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_checkpoint`; CheckpointError if unusable."""
    return load_payload(Path(path), CKPT_FORMAT, required)


TRAINING_STATE = ("identity", "step", "model", "optimizer", "scheduler", "rng", "losses", "elapsed_s")


def restore_training_state(path: Path, ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any) -> tuple[int, float]:
    """Load a ``last.ckpt``'s weights, optimizer, schedule and torch RNG; return (step, seconds trained so far)."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot restore training state: {exc}") from None
    return int(ckpt["step"]), float(ckpt["elapsed_s"])


def save_trained(path: str | os.PathLike[str], model: nn.Module, model_name: str, scale: int, config: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
    """Write final weights: fp32 contiguous ``state_dict`` plus model name, scale and training config."""
    state = {k: v.detach().float().contiguous().clone() if v.is_floating_point() else v.detach().clone()
             for k, v in model.state_dict().items()}
    save_payload(Path(path), {"format": MODEL_FORMAT, "model_name": model_name, "scale": scale, "config": config,
                       "state_dict": state, **(extra or {})})
