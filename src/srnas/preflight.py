"""The whole configuration checked before any stage runs: one line naming the key and what is wrong.

The dataclasses (:mod:`srnas.config`, built by :mod:`srnas.settings`) check every key's type and value on their own;
what they cannot check alone is checked here, the names that must exist elsewhere:

- every ``baselines.models`` entry and ``train.steps_by_model`` key is a model of the registry (:mod:`srnas.models`,
  fixed or of a family such as ``plain_m4c16``) or a budget-fitted baseline (``plain_fit``, ``ecbsr_fit``). These names
  become wildcards and words of the stages' shell commands, so a name outside the registry never reaches a runner;
- ``budget.target`` names one of ``latency.targets``;
- ``supernet.scale`` is one of ``data.scales`` (the supernet trains on prepared pairs at its scale);
- a non-empty ``search_arch.val_set`` is a set ``prepare_data`` writes.

Snakemake runs :func:`check_mapping` on its merged configuration when it parses the Snakefile (so nothing runs under a
bad value, whether it comes from ``params.yaml``, a ``--configfile`` overlay or ``--config``); ``srnas config check``
runs :func:`load_checked`, and is DVC's ``validate_config`` stage, an ancestor of every other stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srnas.config import key_path
from srnas.errors import ConfigError
from srnas.latency.targets import budget_target_name
from srnas.models.fitted import baseline_choices, is_baseline
from srnas.settings import Settings, raw_config, settings_from_mapping

__all__ = ["check_mapping", "check_settings", "load_checked"]


def check_settings(settings: Settings, where: str = "") -> None:
    """ConfigError (one line, the key's dotted path prefixed with ``where``, e.g. ``params.yaml:``) for a name that
    does not exist where it must (see the module docstring)."""
    for i, name in enumerate(settings.baselines.models):
        if not is_baseline(name):
            raise ConfigError(f"{key_path(where, 'baselines.models')}[{i}]: unknown model {name!r}; {baseline_choices()}")
    for name in settings.train.steps_by_model:
        if not is_baseline(name):
            raise ConfigError(f"{key_path(where, 'train.steps_by_model')}: unknown model {name!r}; {baseline_choices()}")
    try:
        budget_target_name(settings.budget, settings.latency)
    except ConfigError as exc:
        raise ConfigError(key_path(where, str(exc))) from None
    scales = list(settings.data.scales)
    if settings.supernet.scale not in scales:
        raise ConfigError(f"{key_path(where, 'supernet.scale')}: x{settings.supernet.scale} is not prepared "
                          f"(data.scales is {scales}); add it to data.scales")
    val_set, prepared = settings.search_arch.val_set, settings.data.eval_set_names
    if val_set and val_set not in prepared:
        raise ConfigError(f"{key_path(where, 'search_arch.val_set')}: {val_set!r} is not a prepared set "
                          f"({', '.join(prepared)}); empty chooses {prepared[0]}")


def check_mapping(mapping: Mapping[str, Any], label: str) -> Settings:
    """The whole configuration ``mapping`` (every key set, as Snakemake's merged config) typed and checked; errors
    name ``label`` and the key."""
    settings = settings_from_mapping(mapping, label)
    check_settings(settings, f"{label}:")
    return settings


def load_checked(params: Path | None = None, overlays: tuple[Path, ...] = (), config_json: str | None = None) -> Settings:
    """:func:`srnas.settings.load_settings` plus :func:`check_settings`: errors name the file (or files) and the key."""
    merged, label = raw_config(params, overlays, config_json)
    return check_mapping(merged, label)
