"""The baselines fitted to the latency budget: ``plain_fit`` and ``ecbsr_fit`` stand for the registry network that
``srnas fit-baselines`` picked (:mod:`srnas.search.fit` measures the grid; this module only reads its choice, so
training a baseline does not depend on the search code)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from srnas.atomic import read_json
from srnas.errors import ConfigError, DataError
from srnas.models.registry import (
    family_info,
    is_known_model,
    list_families,
    list_models,
)

__all__ = ["CHOICE_FILE", "CHOICE_FORMAT", "FIT_FAMILIES", "FIT_SUFFIX", "baseline_choices", "family_name", "is_baseline",
           "is_fitted", "resolve_fitted", "stands_for"]

FIT_SUFFIX = "_fit"
FIT_FAMILIES = ("plain", "ecbsr")  # families whose deployed form is a plain 3x3 conv stack
CHOICE_FILE = "choice.json"
CHOICE_FORMAT = "srnas-fit-choice/1"


def is_fitted(model: str) -> bool:
    """Whether ``model`` names a budget-fitted baseline (``plain_fit``, ``ecbsr_fit``)."""
    return model.endswith(FIT_SUFFIX) and model[: -len(FIT_SUFFIX)] in FIT_FAMILIES


def stands_for(model: str, network: str) -> bool:
    """Whether a ``model.pt`` holding registry network ``network`` can be the model named ``model``: the same name, or
    for ``plain_fit`` / ``ecbsr_fit`` a member of that family (``plain_m4c24``; which one, ``choice.json`` says)."""
    if model == network:
        return True
    return is_fitted(model) and re.fullmatch(rf"{re.escape(model[: -len(FIT_SUFFIX)])}_m\d+c\d+", network) is not None


def is_baseline(name: str) -> bool:
    """Whether ``name`` may be listed in ``baselines.models`` (or ``train.steps_by_model``): a model of the registry
    (fixed or of a family) or a budget-fitted baseline."""
    return is_fitted(name) or is_known_model(name)


def baseline_choices() -> str:
    """The names :func:`is_baseline` accepts, for an error message (one line)."""
    families = ", ".join(family_info(prefix).describe() for prefix in list_families())
    fitted = ", ".join(f"{family}{FIT_SUFFIX}" for family in FIT_FAMILIES)
    return f"known models: {', '.join(list_models())}; families: {families}; budget-fitted: {fitted}"


def family_name(family: str, blocks: int, width: int) -> str:
    """The registry name of a family member: ``ecbsr_m4c16`` (4 body blocks, 16 channels)."""
    return f"{family}_m{blocks}c{width}"


def resolve_fitted(model: str, choice_path: str | os.PathLike[str] | None) -> str:
    """The registry name ``model`` stands for: itself, or for ``plain_fit`` / ``ecbsr_fit`` the configuration
    ``fit-baselines`` picked (``choice.json``); DataError/ConfigError naming the file when it cannot say."""
    if not is_fitted(model):
        return model
    if choice_path is None:
        raise ConfigError(f"model {model!r} is fitted to the budget: pass --fitted results/fit_baselines/{CHOICE_FILE}")
    path = Path(choice_path)
    payload = read_json(path, DataError, "run `srnas fit-baselines` first")
    if not isinstance(payload, dict) or payload.get("format") != CHOICE_FORMAT or not isinstance(payload.get("models"), dict):
        raise DataError(f"{path}: not a fit-baselines choice (format srnas-fit-choice/1 with a models object)")
    chosen = payload["models"].get(model)
    if not isinstance(chosen, str):
        raise DataError(f"{path}: no network of the grid fits the {payload.get('budget_ms')} ms budget on "
                        f"{payload.get('target')}, so {model!r} has nothing to train; widen baselines.fit_widths or raise the budget")
    return chosen
