"""Load the whole configuration (``params.yaml`` or Snakemake's merged config) into typed sections.

Only the CLI calls :func:`load_settings`; stages receive the typed sections.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srnas.config import (
    BaselinesConfig,
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
    from_mapping,
)
from srnas.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class Settings:
    """Every top-level section of ``params.yaml``. Missing sections take their defaults."""

    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
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


def raw_config(params: Path | None = None, overlays: tuple[Path, ...] = (), config_json: str | None = None) -> tuple[dict[str, Any], str]:
    """The merged raw mapping and a label for error messages.

    ``config_json`` (what Snakemake passes) replaces the file entirely: it already is the merged config.
    """
    if config_json is not None:
        try:
            loaded = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc})") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError("--config-json: expected a JSON object of sections")
        return dict(loaded), "config"
    path = params or DEFAULT_PARAMS
    merged = read_yaml_mapping(path)
    label = str(path)
    for overlay in overlays:
        merged = deep_merge(merged, read_yaml_mapping(overlay))
        label += f"+{overlay}"
    return merged, label


def load_settings(params: Path | None = None, overlays: tuple[Path, ...] = (), config_json: str | None = None) -> Settings:
    merged, label = raw_config(params, overlays, config_json)
    return from_mapping(Settings, merged, label)
