"""Read back any saved model: the one loader that knows every format a stage writes.

It sits above the model modules (the registry's baselines, the searched networks), so every stage after training
(export, profile, evaluate, check_budget, upscale) takes either kind of ``model.pt`` through :func:`load_trained`.

Training form vs deployed form: a registered model that trains in another form than it deploys in defines
``deploy()`` (:class:`srnas.models.Deployable`; ECBSR trains multi-branch blocks and deploys the collapsed
``PlainNet``). ``model.pt`` holds the training form's weights (so training can be resumed or repeated), and
:func:`load_trained` returns ``model.deploy().eval()``: every later stage sees only the deployed network.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from srnas.arch.network import NETWORK_FORMATS, network_from_payload
from srnas.checkpoint import MODEL_FORMAT, CheckpointError, load_payload
from srnas.errors import SrnasError
from srnas.models import create_model, deployed_form

__all__ = ["load_trained"]


def load_trained(model_pt_path: str | os.PathLike[str]) -> nn.Module:
    """The model saved in ``model.pt``, in eval mode (fp32, NCHW): a registered model rebuilt from the registry
    (``srnas-model/1``) in its deployed form (``model.deploy()`` when the model defines it, e.g. ECBSR -> PlainNet),
    or a searched network (a subnet, ``srnas-subnet/1``, or a physically pruned one, ``srnas-pruned/1``)."""
    path = Path(model_pt_path)
    payload = load_payload(path, (MODEL_FORMAT, *NETWORK_FORMATS), ("scale", "state_dict"))
    if payload["format"] in NETWORK_FORMATS:
        return network_from_payload(path, payload)
    if "model_name" not in payload:
        raise CheckpointError(f"{path}: missing key(s) model_name")
    try:
        model = create_model(str(payload["model_name"]), int(payload["scale"]))
    except SrnasError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {payload['model_name']!r} x{payload['scale']}: {exc}") from None
    return deployed_form(model).eval()
