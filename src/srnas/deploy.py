"""A model's deployable forms: ONNX and ExecuTorch ``.pte``, each in fp32 and in int8, each checked.

:data:`srnas.export.DEPLOYED_FORMS` names them (``model.onnx``, ``model.int8.onnx``, ``model.pte``,
``model.int8.pte``). The fp32 forms are :mod:`srnas.export`'s (parity within ``atol`` / ``psnr_tol`` or the file is
deleted). The int8 forms are quantized statically, their activation ranges observed on real LR patches of the
training set (:func:`srnas.data.prepare.calibration_patches`: seeded, deterministic), never on random inputs (fine to
time a network, wrong to score it):

- ONNX: the fp32 file rewritten to QDQ by ``onnxruntime.quantization`` (:func:`srnas.onnx_graph.quantize_int8`:
  uint8 activations, int8 weights per output channel, MinMax ranges);
- ExecuTorch: PT2E with the XNNPACK quantizer (:func:`srnas.export.export_pte` with ``calibration``: int8 weights per
  output channel, static int8 activations), lowered to the XNNPACK delegate.

Each int8 artifact is compared with the same fp32 PyTorch model on random inputs and the validation images: the PSNR
it loses is recorded (``psnr_loss`` in its :class:`srnas.export.ParityReport`), not bounded; it fails only when it is
broken. Sibling of :mod:`srnas.profiling` (which times these files) and :mod:`srnas.evaluation` (which scores them).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srnas.atomic import atomic_path
from srnas.export import (
    DEPLOYED_FORMS,
    PTE_MAX_HW,
    Delegation,
    DeployedForm,
    ParityReport,
    check_parity,
    check_pte_parity,
    export_onnx,
    export_pte,
)
from srnas.inference import to_tensor
from srnas.onnx_graph import quantize_int8

__all__ = ["DeployedArtifact", "calibration_digest", "export_forms"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployedArtifact:
    """A written, checked deployable file: its form, path, parity report and (``.pte``) what the delegate took."""

    form: DeployedForm
    path: Path
    parity: ParityReport
    delegation: Delegation | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path.name, "runtime": self.form.runtime, "precision": self.form.precision,
                "label": self.form.label, "parity": self.parity.to_dict(),
                **({"delegation": self.delegation.to_dict()} if self.delegation is not None else {})}


def calibration_digest(patches: Sequence[np.ndarray]) -> str:
    """SHA-256 of the calibration patches (their shapes and pixels, in order): the same digest, the same int8 files."""
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(repr(patch.shape).encode())
        digest.update(np.ascontiguousarray(patch).tobytes())
    return digest.hexdigest()


def export_forms(
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    forms: Sequence[DeployedForm] = DEPLOYED_FORMS,
    *,
    name: str,
    scale: int,
    val_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    calibration: Sequence[np.ndarray] = (),
    opset: int = 17,
    sample_hw: tuple[int, int] = (64, 64),
    atol: float = 1e-4,
    psnr_tol: float = 0.01,
    max_hw: tuple[int, int] = PTE_MAX_HW,
) -> list[DeployedArtifact]:
    """Write ``forms`` of ``model`` into ``out_dir`` (each under its ``filename``), in order, each checked against the
    fp32 model on ``val_pairs`` (``(lr, hr)`` uint8 images) before the next is written.

    ``calibration``: uint8 LR patches (``h x w x 3``) the int8 forms observe their activation ranges on; needed
    (ValueError) when an int8 form is asked for. The int8 ONNX is quantized from the fp32 one, which must come
    first. ``.pte`` programs take LR up to ``max_hw``. A failed check raises :class:`srnas.export.ParityError` and
    leaves no file of that form (the ones before it stay, checked)."""
    out = Path(out_dir)
    if any(form.precision == "int8" for form in forms) and not calibration:
        raise ValueError(f"{out}: the int8 forms need calibration patches")
    tensors = [to_tensor(patch) for patch in calibration]
    digest = calibration_digest(calibration) if calibration else ""
    written: list[DeployedArtifact] = []
    onnx_fp32: Path | None = None
    for form in forms:
        path = out / form.filename
        delegation = None
        if form.runtime == "onnxruntime_fp32" and form.precision == "fp32":
            onnx_fp32 = export_onnx(model, path, opset=opset, sample_hw=sample_hw, name=name)
            report = check_parity(model, path, val_pairs, scale, atol=atol, psnr_tol=psnr_tol, precision=form.precision)
        elif form.runtime == "onnxruntime_fp32" and form.precision == "int8":
            if onnx_fp32 is None:
                raise ValueError(f"{path}: the int8 ONNX is quantized from the fp32 one: ask for that form first")
            with atomic_path(path, suffix=".onnx") as tmp:
                quantize_int8(onnx_fp32, tmp, [t.numpy() for t in tensors],
                              metadata={"srnas.precision": "int8", "srnas.calibration_sha256": digest})
            report = check_parity(model, path, val_pairs, scale, atol=atol, psnr_tol=psnr_tol, precision=form.precision)
        elif form.runtime == "executorch_xnnpack_fp32":
            pte = export_pte(model, path, sample_hw=sample_hw, max_hw=max_hw,
                             calibration=tensors if form.precision == "int8" else None)
            delegation = pte.delegation
            report = check_pte_parity(model, path, val_pairs, scale, atol=atol, psnr_tol=psnr_tol,
                                      precision=form.precision)
        else:
            raise ValueError(f"{path}: no way to write {form.runtime} in {form.precision}")
        log.info("%s (%s): %s", path, form.label, report.describe())
        written.append(DeployedArtifact(form, path, report, delegation))
    return written
