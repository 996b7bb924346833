"""Typed, frozen configuration for every stage, built from plain mappings with clear errors.

``params.yaml`` (or a Snakemake config) is read by the CLI only; library code receives these
dataclasses. Every error names the key path (``params.yaml:data.scales``) and what is wrong.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from srnas.errors import ConfigError

T = TypeVar("T")

SUPPORTED_SCALES = (2, 3, 4)
DATA_SOURCES = ("skimage", "folder", "div2k")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} at {where}")


def from_mapping(cls: type[T], mapping: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``mapping``; unknown keys and bad types raise ConfigError naming ``where``."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(mapping).__name__} {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(fields)}")
    kwargs = {name: _coerce(mapping[name], hints[name], f"{where}.{name}") for name in fields if name in mapping}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _check(condition: bool, key: str, message: str) -> None:
    """Validation inside ``__post_init__``: ``from_mapping`` prefixes the section path to ``key``."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class Div2kConfig:
    """Where DIV2K comes from. Hashes are checked before extraction."""

    base_url: str = "https://data.vision.ee.ethz.ch/cvl/DIV2K"
    train_archive: str = "DIV2K_train_HR.zip"
    train_sha256: str = "ad2b1d2ebd8d6be8b0dc0ed4fa6e2a3a2d7a3a6b7e01ea9d9e3e1b7a1f2bfbbd"
    valid_archive: str = "DIV2K_valid_HR.zip"
    valid_sha256: str = "b1ae9e2a3cd20a1a1a1f8e8d2fdc1b4f2b6e98fd1c2b4e06dd2b8f9e0b7d7f3f"
    cache_dir: str = ".srnas/downloads"


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: which images, which scales, how strict."""

    source: str = "skimage"
    root: str = ""
    train_set: str = "T91"
    eval_sets: tuple[str, ...] = ()
    scales: tuple[int, ...] = (2,)
    val_images: int = 2
    min_size: int = 48
    skip_bad_images: bool = False
    div2k: Div2kConfig = field(default_factory=Div2kConfig)

    def __post_init__(self) -> None:
        _check(self.source in DATA_SOURCES, "source", f"unknown source {self.source!r}; choose one of {', '.join(DATA_SOURCES)}")
        _check(len(self.scales) > 0, "scales", "list at least one scale")
        for scale in self.scales:
            _check(scale in SUPPORTED_SCALES, "scales", f"scale {scale} is not supported; choose from {SUPPORTED_SCALES}")
        _check(len(set(self.scales)) == len(self.scales), "scales", f"duplicate scales in {list(self.scales)}")
        _check(self.val_images >= 1, "val_images", "must be at least 1")
        _check(self.min_size >= 1, "min_size", "must be at least 1")
        if self.source == "folder":
            _check(bool(self.root), "root", "the folder source needs a root folder (e.g. ../shared/data)")
        for name in (self.train_set, *self.eval_sets):
            _check(name not in ("", ".", "..") and "/" not in name, "eval_sets", f"{name!r} is not a plain folder name")
        _check("train" not in self.eval_sets, "eval_sets", "'train' is reserved for the training split")

    @property
    def eval_set_names(self) -> tuple[str, ...]:
        """Evaluation sets produced by prepare_data: the held-out split for skimage/div2k, else the named folders."""
        if self.source == "folder":
            return self.eval_sets or ("val",)
        return ("val",)


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking`` section: where MLflow writes. The default is a local SQLite file, no server."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "srnas"
    artifact_location: str = "mlartifacts"
    enabled: bool = True
