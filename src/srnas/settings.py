"""Load the whole configuration (``params.yaml`` or Snakemake's merged config) into typed sections.

Only the CLI calls :func:`load_settings`; stages receive the typed sections.

``params.yaml`` is the one place the configuration's values live: it sets every key (a missing one is an error naming
it), an overlay (``config/smoke.yaml``, ``--overlay``) may only change keys that exist (an unknown one is an error
naming the overlay file and the key's dotted path), and the dataclasses' defaults equal ``params.yaml`` (a test holds
them so). ``--config-json`` is what a Snakemake rule passes: the keys its DVC stage lists as params, picked from a
config Snakemake validated whole against the generated schema (every key required, no unknown key); the keys a rule
does not pass are not read by its stage, and stand at ``params.yaml``'s values. Where things are stored is the
exception: Snakemake passes the ``tracking`` section (:data:`TRACKING_ENV`, JSON) and ``search_arch.storage``
(:data:`STORAGE_ENV`, the URL) in the environment, outside every rule's params, so where MLflow writes or where the
search's study lives never invalidates a stage; with ``--config-json`` and no such key in it, it is read from there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srnas.config import (
    BaselinesConfig,
    BudgetConfig,
    DataConfig,
    ExportConfig,
    FinetuneConfig,
    LatencyConfig,
    ProfileConfig,
    RatioSearchConfig,
    SearchArchConfig,
    SupernetConfig,
    TrackingConfig,
    TrainConfig,
    check_keys,
    from_mapping,
)
from srnas.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
TRACKING_ENV = "SRNAS_TRACKING_JSON"  # the tracking section, as JSON, for --config-json (Snakemake sets it)
STORAGE_ENV = "SRNAS_SEARCH_STORAGE"  # search_arch.storage, for --config-json (Snakemake sets it)


@dataclass(frozen=True)
class Settings:
    """Every top-level section of ``params.yaml``. The defaults are ``params.yaml``'s values (tests/test_config.py)."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    search_arch: SearchArchConfig = field(default_factory=SearchArchConfig)
    search_ratio: RatioSearchConfig = field(default_factory=RatioSearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge, anything else replaces."""
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
    return dict(loaded)


def plain(value: Any) -> Any:
    """``value`` with dataclasses as mappings and tuples as lists: what YAML or JSON would hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def default_mapping() -> dict[str, Any]:
    """The dataclasses' defaults as a ``params.yaml`` mapping (equal to ``params.yaml``: tests/test_config.py)."""
    return plain(Settings())


def check_overlay(overlay: Mapping[str, Any], label: str) -> None:
    """ConfigError naming ``label`` (the overlay's file) and the key's dotted path when ``overlay`` sets a key that
    does not exist or a value of the wrong type (:func:`srnas.config.check_keys`)."""
    check_keys(Settings, overlay, f"{label}:")


def _from_json(config_json: str, label: str = "--config-json") -> dict[str, Any]:
    try:
        loaded = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{label}: not valid JSON ({exc})") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{label}: expected a JSON object")
    return dict(loaded)


def raw_config(params: Path | None = None, overlays: tuple[Path, ...] = (), config_json: str | None = None) -> tuple[dict[str, Any], str]:
    """The merged raw mapping and a label for error messages.

    ``config_json`` (what a Snakemake rule passes: the keys its stage reads) replaces the file: its keys are checked
    (unknown ones named) and put over :func:`default_mapping` (see the module docstring). Otherwise ``params`` is read
    and every overlay checked (errors name the overlay) and merged on top.
    """
    if config_json is not None:
        passed = _from_json(config_json)
        tracking = os.environ.get(TRACKING_ENV, "").strip()
        check_overlay(passed, "--config-json")
        if tracking and "tracking" not in passed:
            passed["tracking"] = _from_json(tracking, TRACKING_ENV)
            check_overlay({"tracking": passed["tracking"]}, TRACKING_ENV)
        storage = os.environ.get(STORAGE_ENV, "").strip()
        section = passed.get("search_arch", {})
        if storage and isinstance(section, Mapping) and "storage" not in section:
            passed["search_arch"] = {**section, "storage": storage}
        return deep_merge(default_mapping(), passed), "--config-json"
    path = params or DEFAULT_PARAMS
    merged = read_yaml_mapping(path)
    label = str(path)
    for overlay in overlays:
        layer = read_yaml_mapping(overlay)
        check_overlay(layer, str(overlay))
        merged = deep_merge(merged, layer)
        label += f"+{overlay}"
    return merged, label


def settings_from_mapping(mapping: Mapping[str, Any], label: str) -> Settings:
    """Every section of a whole configuration ``mapping``, typed; ConfigError naming ``label`` (the file, or what
    merged it) and the key's dotted path for a missing, unknown or bad key."""
    return from_mapping(Settings, mapping, f"{label}:")


def load_settings(params: Path | None = None, overlays: tuple[Path, ...] = (), config_json: str | None = None) -> Settings:
    """Every section, typed; ConfigError naming the file and the key's dotted path for a missing, unknown or bad key."""
    merged, label = raw_config(params, overlays, config_json)
    return settings_from_mapping(merged, label)
