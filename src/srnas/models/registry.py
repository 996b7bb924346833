"""A small timm-style model registry: ``@register_model(name)`` on a typed builder ``(scale) -> nn.Module``.

Every registered model takes RGB float input in [0, 1], NCHW, and returns NCHW at ``scale`` times the
size. Models carry two class attributes the pipeline reads:

- ``has_weights``: False for models with nothing to learn (``bicubic``); training rejects them.
- ``scale``: the upscaling factor the instance was built for.

The registry drives ``tests/test_models.py`` (forward, backward, no NaN, every parameter gets a gradient,
channels-last parity), so a new model is tested by registering it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from srnas.config import SUPPORTED_SCALES
from srnas.errors import ConfigError

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info", "check_scale"]

ModelBuilder = Callable[[int], nn.Module]
B = TypeVar("B", bound=ModelBuilder)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    description: str
    reference: str
    has_weights: bool


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: ModelBuilder


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, description: str = "", reference: str = "", has_weights: bool = True) -> Callable[[B], B]:
    """Decorator registering ``builder(scale: int) -> nn.Module`` under ``name`` (unique, lower case)."""
    if not name or name != name.lower() or any(c.isspace() for c in name):
        raise ValueError(f"model names are non-empty lower-case words, got {name!r}")

    def decorate(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__qualname__})")
        doc_lines = (builder.__doc__ or "").strip().splitlines()
        text = description or (doc_lines[0] if doc_lines else "")
        _REGISTRY[name] = _Entry(ModelInfo(name, text, reference, has_weights), builder)
        return builder

    return decorate


def check_scale(scale: int, what: str = "scale") -> int:
    """``scale`` if supported, else ConfigError naming ``what``."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SUPPORTED_SCALES:
        raise ConfigError(f"{what}: scale {scale!r} is not supported; choose from {SUPPORTED_SCALES}")
    return scale


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, scale: int) -> nn.Module:
    """Build a freshly initialised model ``name`` for upscaling factor ``scale`` (uses torch's global RNG)."""
    entry = _entry(name)
    model = entry.builder(check_scale(scale, f"model {name!r}"))
    model.has_weights = entry.info.has_weights  # type: ignore[assignment]
    return model


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Description, reference and ``has_weights`` of model ``name`` (ConfigError if unknown)."""
    return _entry(name).info
