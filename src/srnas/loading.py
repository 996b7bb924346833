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
import weakref
from pathlib import Path
from typing import Any

from torch import nn

from srnas.arch.network import NETWORK_FORMATS, network_from_payload
from srnas.checkpoint import MODEL_FORMAT, CheckpointError, load_payload
from srnas.errors import SrnasError
from srnas.models import create_model, deployed_form, is_known_model
from srnas.models.fitted import is_fitted, stands_for

__all__ = ["load_trained", "rebuild_registered", "registered_model", "registered_origin"]

# A registered model load_trained returned -> (its registry name, scale): how a device agent rebuilds the same network
# (srnas.latency.wire sends that and the weights, never the module itself).
_ORIGINS: weakref.WeakKeyDictionary[nn.Module, tuple[str, int]] = weakref.WeakKeyDictionary()


def _check_identity(path: Path, payload: dict[str, Any], model_name: str | None, scale: int | None) -> None:
    """CheckpointError naming ``path`` when it holds another scale or another model than the caller names."""
    if scale is not None and int(payload["scale"]) != int(scale):
        raise CheckpointError(f"{path}: holds a x{payload['scale']} model, but x{scale} was asked for (--scale {scale}); "
                              f"pass the x{scale} checkpoint")
    if model_name is None:
        return
    if payload["format"] in NETWORK_FORMATS:
        if is_known_model(model_name) or is_fitted(model_name):
            raise CheckpointError(f"{path}: holds a searched network ({payload['format']}), not the registered model "
                                  f"{model_name!r} (--model)")
        return
    stored = str(payload["model_name"])
    if not stands_for(model_name, stored):
        raise CheckpointError(f"{path}: holds model {stored!r}, not {model_name!r} (--model); pass --model {stored} or "
                              f"{model_name}'s own checkpoint")


def load_trained(model_pt_path: str | os.PathLike[str], model_name: str | None = None, scale: int | None = None) -> nn.Module:
    """The model saved in ``model.pt``, in eval mode (fp32, NCHW): a registered model rebuilt from the registry
    (``srnas-model/1``) in its deployed form (``model.deploy()`` when the model defines it, e.g. ECBSR -> PlainNet),
    or a searched network (a subnet, ``srnas-subnet/1``, or a physically pruned one, ``srnas-pruned/1``).

    ``model_name`` / ``scale``: what the caller will call it (``--model``, ``--scale``); a file holding another scale,
    another registered model (``plain_fit`` / ``ecbsr_fit`` accept their family's members), or a searched network
    under a registered model's name is refused, so nothing is ever scored or exported under a name it is not."""
    path = Path(model_pt_path)
    payload = load_payload(path, (MODEL_FORMAT, *NETWORK_FORMATS), ("scale", "state_dict"))
    if payload["format"] == MODEL_FORMAT and "model_name" not in payload:
        raise CheckpointError(f"{path}: missing key(s) model_name")
    _check_identity(path, payload, model_name, scale)
    if payload["format"] in NETWORK_FORMATS:
        return network_from_payload(path, payload)
    try:
        model = create_model(str(payload["model_name"]), int(payload["scale"]))
    except SrnasError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {payload['model_name']!r} x{payload['scale']}: {exc}") from None
    deployed = deployed_form(model).eval()
    _ORIGINS[deployed] = (str(payload["model_name"]), int(payload["scale"]))
    return deployed


def registered_origin(model: nn.Module) -> tuple[str, int] | None:
    """``(registry name, scale)`` of a registered model :func:`load_trained` returned (its deployed form), else None."""
    return _ORIGINS.get(model)


def registered_model(model_name: str, scale: int) -> nn.Module:
    """Registered model ``model_name`` freshly initialised, in its deployed form and eval mode (for timing it: latency
    does not depend on the weights), its origin kept like :func:`load_trained`'s."""
    model = deployed_form(create_model(model_name, int(scale))).eval()
    _ORIGINS[model] = (model_name, int(scale))
    return model


def rebuild_registered(model_name: str, scale: int, state_dict: dict[str, Any]) -> nn.Module:
    """Registered model ``model_name`` in its deployed form with ``state_dict`` (the deployed form's weights), in eval
    mode: what :func:`load_trained` returned where the weights came from. CheckpointError when they do not fit."""
    try:
        model = registered_model(model_name, scale)
        model.load_state_dict(state_dict, strict=True)
    except (SrnasError, RuntimeError) as exc:
        raise CheckpointError(f"model {model_name!r} x{scale}: {exc}") from None
    return model
