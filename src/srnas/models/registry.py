"""A small timm-style model registry: fixed models and width x depth families.

- ``@register_model(name)`` on a typed builder ``(scale) -> nn.Module``: one fixed model (``espcn``, ``plain32``).
- ``@register_family(prefix, examples=...)`` on a builder ``(scale, blocks, channels) -> nn.Module``: every name
  ``<prefix>_m<M>c<C>`` (ECBSR's naming: ``M`` body blocks between head and tail, ``C`` channels; ``M`` in
  0..32, ``C`` in 1..256, decimal without leading zeros), e.g. ``ecbsr_m4c16``. ``plain_m4c16`` is the same
  network as ``plain16``.

Every registered model takes RGB float input in [0, 1], NCHW, and returns NCHW at ``scale`` times the
size. Models carry two class attributes the pipeline reads:

- ``has_weights``: False for models with nothing to learn (``bicubic``); training rejects them.
- ``scale``: the upscaling factor the instance was built for.

Training form vs deployed form: a model that trains in another form than it deploys in (ECBSR trains multi-branch
blocks and deploys one 3x3 conv per block) defines ``deploy(self) -> nn.Module`` (the :class:`Deployable`
protocol). :func:`deployed_form` applies it; :func:`srnas.loading.load_trained` returns the deployed form, and the
complexity counters (:func:`srnas.models.gmacs`) count it.

The registry drives ``tests/test_models.py`` (forward, backward, no NaN, every parameter gets a gradient,
channels-last parity) over :func:`list_models`, which holds the fixed models and each family's examples, so a new
model is tested by registering it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from torch import nn

from srnas.config import SUPPORTED_SCALES
from srnas.errors import ConfigError

__all__ = [
    "MAX_FAMILY_BLOCKS",
    "MAX_FAMILY_CHANNELS",
    "MODEL_NAME_PATTERN",
    "Deployable",
    "FamilyInfo",
    "ModelInfo",
    "check_scale",
    "create_model",
    "deployed_form",
    "family_info",
    "is_known_model",
    "list_families",
    "list_models",
    "model_info",
    "register_family",
    "register_model",
]

ModelBuilder = Callable[[int], nn.Module]
FamilyBuilder = Callable[[int, int, int], nn.Module]
B = TypeVar("B", bound=ModelBuilder)
F = TypeVar("F", bound=FamilyBuilder)

MAX_FAMILY_BLOCKS = 32
MAX_FAMILY_CHANNELS = 256
_PREFIX = re.compile(r"[a-z][a-z0-9]*")
# Every model name, fixed or of a family (and plain_fit / ecbsr_fit): lower-case letters, digits and underscores, so a
# name is a safe word in a shell command and a path (the Snakefile constrains its {model} wildcard to it)
MODEL_NAME_PATTERN = r"[a-z][a-z0-9_]*"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
# M and C: decimal, no sign, no leading zeros (so every network has exactly one name); bounds are checked after parsing
_NUMBER = r"(0|[1-9][0-9]{0,3})"


@runtime_checkable
class Deployable(Protocol):
    """A model whose deployed form differs from its training form: ``deploy()`` returns the network to export,
    profile and evaluate (same outputs, fp32, eval mode), built from the current weights."""

    def deploy(self) -> nn.Module: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it (``family``: its family's prefix, or '')."""

    name: str
    description: str
    reference: str
    has_weights: bool
    family: str = ""


@dataclass(frozen=True)
class FamilyInfo:
    """A width x depth family: names ``<prefix>_m<M>c<C>``; ``examples`` are listed by :func:`list_models`."""

    prefix: str
    description: str
    reference: str
    has_weights: bool
    examples: tuple[str, ...]
    max_blocks: int = MAX_FAMILY_BLOCKS
    max_channels: int = MAX_FAMILY_CHANNELS

    @property
    def pattern(self) -> str:
        """The names, for humans: ``ecbsr_m<M>c<C>``."""
        return f"{self.prefix}_m<M>c<C>"

    def describe(self) -> str:
        """One line: the pattern and its bounds."""
        return f"{self.pattern} (M 0..{self.max_blocks}, C 1..{self.max_channels})"


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: ModelBuilder


@dataclass(frozen=True)
class _Family:
    info: FamilyInfo
    regex: re.Pattern[str]
    builder: FamilyBuilder


_REGISTRY: dict[str, _Entry] = {}
_FAMILIES: dict[str, _Family] = {}


def _family_of(name: str) -> tuple[_Family, int, int] | None:
    """The family ``name`` belongs to with its parsed (blocks, channels), or None; ConfigError when the name has a
    family's form but its numbers are out of bounds."""
    for family in _FAMILIES.values():
        match = family.regex.fullmatch(name)
        if match is None:
            continue
        blocks, channels = int(match.group(1)), int(match.group(2))
        info = family.info
        if not 0 <= blocks <= info.max_blocks or not 1 <= channels <= info.max_channels:
            raise _unknown(name, f" ({info.pattern} needs M in 0..{info.max_blocks} and C in 1..{info.max_channels}, "
                                 f"got M={blocks}, C={channels})")
        return family, blocks, channels
    return None


def register_model(name: str, *, description: str = "", reference: str = "", has_weights: bool = True) -> Callable[[B], B]:
    """Decorator registering ``builder(scale: int) -> nn.Module`` under ``name`` (unique, :data:`MODEL_NAME_PATTERN`)."""
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"model names are lower-case words of letters, digits and underscores, got {name!r}")

    def decorate(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__qualname__})")
        clash = [f.info.pattern for f in _FAMILIES.values() if f.regex.fullmatch(name)]
        if clash:
            raise ValueError(f"model {name!r} is already a name of family {clash[0]}")
        _REGISTRY[name] = _Entry(ModelInfo(name, description or _first_line(builder), reference, has_weights), builder)
        return builder

    return decorate


def register_family(prefix: str, *, examples: tuple[str, ...], description: str = "", reference: str = "",
                    has_weights: bool = True) -> Callable[[F], F]:
    """Decorator registering ``builder(scale, blocks, channels) -> nn.Module`` for every name ``<prefix>_m<M>c<C>``.

    ``examples``: names of the family that :func:`list_models` lists (so the registry-driven tests and ``srnas
    models`` cover the family); each must parse. ``description``: one line, may use ``{blocks}`` and
    ``{channels}`` (default: the builder's first docstring line).
    """
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"family prefixes are lower-case words of letters and digits, got {prefix!r}")
    if not examples:
        raise ValueError(f"family {prefix!r}: give at least one example name")

    def decorate(builder: F) -> F:
        if prefix in _FAMILIES:
            raise ValueError(f"family {prefix!r} is already registered (by {_FAMILIES[prefix].builder.__qualname__})")
        regex = re.compile(rf"{re.escape(prefix)}_m{_NUMBER}c{_NUMBER}")
        clash = sorted(name for name in _REGISTRY if regex.fullmatch(name))
        if clash:
            raise ValueError(f"family {prefix!r} would shadow registered model(s) {', '.join(clash)}")
        info = FamilyInfo(prefix, description or _first_line(builder), reference, has_weights, tuple(examples))
        family = _Family(info, regex, builder)
        for example in examples:
            match = regex.fullmatch(example)
            if match is None or not 0 <= int(match.group(1)) <= info.max_blocks or not 1 <= int(match.group(2)) <= info.max_channels:
                raise ValueError(f"family {prefix!r}: example {example!r} is not a valid {info.describe()} name")
        _FAMILIES[prefix] = family
        return builder

    return decorate


def _first_line(builder: Callable[..., nn.Module]) -> str:
    lines = (builder.__doc__ or "").strip().splitlines()
    return lines[0] if lines else ""


def check_scale(scale: int, what: str = "scale") -> int:
    """``scale`` if supported, else ConfigError naming ``what``."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SUPPORTED_SCALES:
        raise ConfigError(f"{what}: scale {scale!r} is not supported; choose from {SUPPORTED_SCALES}")
    return scale


def _unknown(name: object, reason: str = "") -> ConfigError:
    families = "; families: " + ", ".join(_FAMILIES[p].info.describe() for p in sorted(_FAMILIES)) if _FAMILIES else ""
    return ConfigError(f"unknown model {name!r}{reason}; known models: {', '.join(list_models())}{families}")


def _resolve(name: str) -> tuple[ModelInfo, Callable[[int], nn.Module]]:
    """The model's info and a ``(scale) -> nn.Module`` builder; ConfigError for unknown or malformed names."""
    if not isinstance(name, str):
        raise _unknown(name)
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry.info, entry.builder
    found = _family_of(name)
    if found is None:
        raise _unknown(name)
    family, blocks, channels = found
    info = family.info
    text = info.description.format(blocks=blocks, channels=channels)
    return (ModelInfo(name, text, info.reference, info.has_weights, info.prefix),
            lambda scale: family.builder(scale, blocks, channels))


def create_model(name: str, scale: int) -> nn.Module:
    """Build a freshly initialised model ``name`` (fixed or of a family) for upscaling factor ``scale``, in its
    training form (uses torch's global RNG)."""
    info, builder = _resolve(name)
    model = builder(check_scale(scale, f"model {name!r}"))
    model.has_weights = info.has_weights  # type: ignore[assignment]
    return model


def list_models() -> list[str]:
    """Concrete model names, sorted: the fixed models and every family's examples."""
    return sorted({*_REGISTRY, *(e for f in _FAMILIES.values() for e in f.info.examples)})


def list_families() -> list[str]:
    """Registered family prefixes, sorted (``ecbsr``, ``plain``); see :func:`family_info`."""
    return sorted(_FAMILIES)


def family_info(prefix: str) -> FamilyInfo:
    """Description, reference, examples and bounds of family ``prefix`` (ConfigError if unknown)."""
    try:
        return _FAMILIES[prefix].info
    except KeyError:
        raise ConfigError(f"unknown model family {prefix!r}; known families: {', '.join(list_families())}") from None


def is_known_model(name: str) -> bool:
    """True if ``create_model(name, scale)`` accepts the name (fixed or a valid family name)."""
    try:
        _resolve(name)
    except ConfigError:
        return False
    return True


def model_info(name: str) -> ModelInfo:
    """Description, reference and ``has_weights`` of model ``name`` (ConfigError if unknown or malformed)."""
    return _resolve(name)[0]


def deployed_form(model: nn.Module) -> nn.Module:
    """The network ``model`` deploys as: ``model.deploy()`` in eval mode when it is :class:`Deployable`, else
    ``model`` itself (unchanged)."""
    if isinstance(model, Deployable):
        return model.deploy().eval()
    return model
