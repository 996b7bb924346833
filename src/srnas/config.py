"""Typed, frozen configuration for every stage, built from plain mappings with clear errors.

``params.yaml`` (or a Snakemake config) is read by the CLI only; library code receives these
dataclasses. Every error names the key path (``params.yaml:data.scales``) and what is wrong.

:func:`from_mapping` requires every field: ``params.yaml`` sets every key, and a missing one is an error, never a
silent default. The defaults below exist for library callers and tests; they equal ``params.yaml``'s values exactly
(``tests/test_config.py`` holds them so), so there is one set of values. :func:`check_keys` checks an overlay,
:func:`check_key_path` one dotted key.
"""

from __future__ import annotations

import dataclasses
import re
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
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, key_type, f"{where} key {k!r}"): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
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


def key_path(where: str, key: object) -> str:
    """The dotted path of ``key`` inside ``where``: ``params.yaml:`` + ``data`` -> ``params.yaml:data``,
    ``params.yaml:data`` + ``scales`` -> ``params.yaml:data.scales`` (a path ending in ``:`` is a file's top level)."""
    return f"{where}{key}" if where.endswith(":") else f"{where}.{key}"


def _fields_of(cls: type, mapping: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields, type hints) of dataclass ``cls``, after checking that ``mapping`` is a mapping without unknown keys."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where.rstrip(':')}: expected a mapping of keys, got {type(mapping).__name__} {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(map(str, set(mapping) - set(fields)))
    if unknown:
        others = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise ConfigError(f"{key_path(where, unknown[0])}: unknown key{others}; known: {', '.join(fields)}")
    return fields, typing.get_type_hints(cls)


def from_mapping(cls: type[T], mapping: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``mapping``, which must set every field: no value is ever filled in behind the
    user's back (params.yaml lists every key; a test holds the dataclass defaults equal to it). Unknown keys, missing
    keys and bad types raise ConfigError naming the key's path in ``where`` (``params.yaml:search_arch``)."""
    fields, hints = _fields_of(cls, mapping, where)
    kwargs = {name: _coerce(mapping[name], hints[name], key_path(where, name)) for name in fields if name in mapping}
    missing = [name for name in fields if name not in mapping]
    if missing:
        others = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"{key_path(where, missing[0])}: missing key{others}; every key must be set")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where.rstrip(':')}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(key_path(where, str(exc))) from None


def check_keys(cls: type, mapping: Any, where: str) -> None:
    """Check a partial mapping for ``cls`` -- an overlay of ``params.yaml`` -- without building it: every key it sets
    must exist and have the right type, nested sections are checked the same way, and an item of a list of sections
    (``latency.targets``) must be complete, since a list replaces the one it overlays. Errors name ``where``."""
    _, hints = _fields_of(cls, mapping, where)
    for name, value in mapping.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
            check_keys(annotation, value, key_path(where, name))  # type: ignore[arg-type]
        else:
            _coerce(value, annotation, key_path(where, name))


def check_key_path(cls: type, dotted: str, where: str) -> None:
    """ConfigError naming ``where`` and the key when ``dotted`` (``data.root``, ``train.steps_by_model.fsrcnn``: a key
    of a mapping field may be any name) is not a key of dataclass ``cls``; its value is not checked."""
    parts = dotted.split(".")
    current: Any = cls
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(current):
            if typing.get_origin(current) is dict and depth == len(parts) - 1 and part:
                return
            raise ConfigError(f"{key_path(where, '.'.join(parts[:depth]))}: has no key {part!r} (not a section)")
        _, hints = _fields_of(current, {part: None}, where if depth == 0 else key_path(where, ".".join(parts[:depth])))
        current = hints[part]


def _check(condition: bool, key: str, message: str) -> None:
    """Validation inside ``__post_init__``: ``from_mapping`` prefixes the section path to ``key``."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


@dataclass(frozen=True)
class Div2kConfig:
    """Where DIV2K comes from (the ``data.div2k`` section). Archives are SHA-256 checked before extraction.

    The default hashes are those of the official archives (also listed in TensorFlow Datasets'
    ``div2k/checksums.tsv``): ``DIV2K_train_HR.zip`` 3,530,603,713 bytes, ``DIV2K_valid_HR.zip`` 448,993,893 bytes.
    An empty hash makes the div2k source refuse to run (a download is never used unverified).
    """

    base_url: str = "https://data.vision.ee.ethz.ch/cvl/DIV2K"
    train_archive: str = "DIV2K_train_HR.zip"
    train_sha256: str = "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"
    valid_archive: str = "DIV2K_valid_HR.zip"
    valid_sha256: str = "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"
    cache_dir: str = ".srnas/downloads"
    max_train_images: int = 0
    max_val_images: int = 0

    def __post_init__(self) -> None:
        _check(self.base_url.startswith(("http://", "https://")), "base_url", f"expected an http(s) URL, got {self.base_url!r}")
        for key in ("train_archive", "valid_archive"):
            name = getattr(self, key)
            _check(name not in ("", ".", "..") and "/" not in name and "\\" not in name, key, f"{name!r} is not a plain file name")
        for key in ("train_sha256", "valid_sha256"):
            value = getattr(self, key)
            _check(value == "" or _is_sha256(value), key, f"expected 64 hexadecimal digits (or empty), got {value!r}")
        _check(bool(self.cache_dir), "cache_dir", "must name a folder")
        _check(self.max_train_images >= 0, "max_train_images", "must be 0 (all) or a positive count")
        _check(self.max_val_images >= 0, "max_val_images", "must be 0 (all) or a positive count")


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: which images, which scales, how strict.

    Splits by source:
    - ``skimage``: the 8 colour photographs in scikit-image's wheel; the last ``val_images`` of the fixed
      list in ``srnas.data.sources.SKIMAGE_PHOTOS`` are held out as set ``val``, the rest is ``train``.
    - ``folder``: ``train`` from ``root/train_set``; one eval set per name in ``eval_sets`` from
      ``root/<name>``. With ``eval_sets`` empty, the last ``val_images`` images of the train folder
      (sorted by file name) are held out as set ``val``.
    - ``div2k``: ``train`` from the train archive, ``val`` from the valid archive
      (``div2k.max_train_images`` / ``div2k.max_val_images`` keep the first N; ``val_images`` is unused).

    ``min_size`` (the training patch size) is the smallest allowed side of an HR image after cropping
    to a multiple of the scale; ``skip_bad_images`` skips unreadable or too-small images with a warning
    instead of stopping.
    """

    source: str = "skimage"
    root: str = "data"
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
        _check(self.train_set not in ("", ".", "..") and "/" not in self.train_set and "\\" not in self.train_set,
               "train_set", f"{self.train_set!r} is not a plain folder name")
        for name in self.eval_sets:
            _check(name not in ("", ".", "..") and "/" not in name and "\\" not in name,
                   "eval_sets", f"{name!r} is not a plain folder name")
        _check("train" not in self.eval_sets, "eval_sets", "'train' is reserved for the training split")
        _check(len(set(self.eval_sets)) == len(self.eval_sets), "eval_sets", f"duplicate names in {list(self.eval_sets)}")

    @property
    def eval_set_names(self) -> tuple[str, ...]:
        """Evaluation sets produced by prepare_data: the named folders for ``folder`` with ``eval_sets``,
        else the held-out set ``val`` (skimage, div2k, or ``val_images`` taken from the folder train set)."""
        if self.source == "folder" and self.eval_sets:
            return self.eval_sets
        return ("val",)


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking`` section: where MLflow writes. The default is a local SQLite file, no server.

    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME`` in the environment take precedence over ``uri`` /
    ``experiment``; ``uri`` may be an MLflow server (``http://host:5000``; README "An MLflow tracking server");
    ``artifact_location`` applies to local stores only (a server decides where artifacts go: ``mlflow-artifacts:/``,
    uploaded through it) unless it is a URI; ``registered_model`` is the model registry name of the final model ("":
    ``srnas-<experiment>-x<scale>``).
    """

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "srnas-default"
    artifact_location: str = "mlartifacts"
    enabled: bool = True
    registered_model: str = ""


@dataclass(frozen=True)
class BaselinesConfig:
    """The ``baselines`` section: hand-designed models that go through train, export, profile and evaluate.

    ``models`` are registry names, or ``plain_fit`` / ``ecbsr_fit``: the plain or ECBSR network with the most
    computation whose latency on the budget's target fits the budget, picked by ``srnas fit-baselines`` from the grid
    ``fit_widths`` x 1..``fit_max_blocks`` body blocks (:mod:`srnas.search.fit`).
    """

    models: tuple[str, ...] = ("bicubic", "espcn", "fsrcnn", "plain16", "plain32", "plain_fit", "ecbsr_fit")
    fit_widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    fit_max_blocks: int = 12

    def __post_init__(self) -> None:
        _check(len(self.models) > 0, "models", "list at least one model (bicubic needs no training)")
        _check(len(set(self.models)) == len(self.models), "models", f"duplicate models in {list(self.models)}")
        _check(len(self.fit_widths) > 0 and all(w >= 1 for w in self.fit_widths), "fit_widths",
               f"list at least one positive width, got {list(self.fit_widths)}")
        _check(all(a < b for a, b in zip(self.fit_widths, self.fit_widths[1:])), "fit_widths",
               f"must be strictly increasing, got {list(self.fit_widths)}")
        _check(1 <= self.fit_max_blocks <= 32, "fit_max_blocks", f"must be between 1 and 32, got {self.fit_max_blocks}")


BF16_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class TrainConfig:
    """How a baseline is trained (``srnas.training.train``): L1 loss, Adam, cosine schedule over ``steps``.

    Defaults train fast on a 2-core CPU: LR patches of 24 (HR 48 at x2; the paper uses 48 LR on DIV2K),
    batch 32, 3000 steps. ``steps_by_model`` overrides ``steps`` per model name (a model that runs fewer
    steps per second gets fewer steps, so every model fits the same wall-clock budget on the reference machine).
    ``bf16``: ``auto`` uses bfloat16 autocast when the CPU has native bf16 (avx512_bf16 or AMX) and oneDNN
    supports it; ``on`` forces it, ``off`` trains in fp32.
    ``checkpoint_every`` 0 writes ``last.ckpt`` only at the end; ``val_every`` 0 validates only at the end.
    Weights, losses and the sampled patches are a pure function of (``seed``, config, data), so a run resumed
    from ``last.ckpt`` ends with the same weights as an uninterrupted one; ``checkpoint_every``,
    ``log_every`` and ``val_every`` do not change the result.
    """

    steps: int = 3000
    steps_by_model: dict[str, int] = field(default_factory=dict, hash=False)
    batch_size: int = 32
    lr_patch_size: int = 24
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    bf16: str = "auto"
    channels_last: bool = True
    augment: bool = True
    val_every: int = 0

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", f"must be at least 1, got {self.steps}")
        for name, steps in self.steps_by_model.items():
            _check(steps >= 1, f"steps_by_model.{name}", f"must be at least 1, got {steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.lr_patch_size >= 4, "lr_patch_size", f"must be at least 4 (LR pixels), got {self.lr_patch_size}")
        _check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, "min_lr", f"must be between 0 and lr ({self.lr}), got {self.min_lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be 0 or positive, got {self.weight_decay}")
        _check(self.seed >= 0, "seed", f"must be 0 or positive, got {self.seed}")
        _check(self.checkpoint_every >= 0, "checkpoint_every", f"must be 0 (only at the end) or positive, got {self.checkpoint_every}")
        _check(self.log_every >= 1, "log_every", f"must be at least 1, got {self.log_every}")
        _check(self.bf16 in BF16_MODES, "bf16", f"expected one of {', '.join(BF16_MODES)}, got {self.bf16!r}")
        _check(self.val_every >= 0, "val_every", f"must be 0 (only at the end) or positive, got {self.val_every}")

    def for_model(self, model: str) -> TrainConfig:
        """This config with ``steps`` resolved for ``model`` (and no per-model table left)."""
        return dataclasses.replace(self, steps=self.steps_by_model.get(model, self.steps), steps_by_model={})


PROFILE_RUNTIMES = ("torch_fp32", "torch_bf16", "onnxruntime_fp32", "executorch_xnnpack_fp32", "torch_cuda")


@dataclass(frozen=True)
class ExportConfig:
    """The ``export`` section: ONNX (always) and ExecuTorch ``.pte`` (optional), each checked for parity.

    ``sample_size`` is the LR (height, width) used to trace the model; height and width stay dynamic.
    ``atol`` bounds the max abs difference of outputs in [0, 1]; ``psnr_tol`` the PSNR difference in dB.
    ``executorch`` also writes ``model.pte`` (XNNPACK delegate); it needs the ``mobile`` extra installed.
    ``calibration_patches`` LR patches of ``calibration_size`` pixels, cut from the training set with
    ``calibration_seed``, calibrate the int8 forms ``srnas export --deploy`` writes (the final model's).
    """

    opset: int = 17
    sample_size: tuple[int, ...] = (64, 64)
    atol: float = 1e-4
    psnr_tol: float = 0.01
    executorch: bool = False
    calibration_patches: int = 32
    calibration_size: int = 48
    calibration_seed: int = 0

    def __post_init__(self) -> None:
        _check(13 <= self.opset <= 23, "opset", f"must be between 13 and 23, got {self.opset}")
        _check(len(self.sample_size) == 2, "sample_size", f"expected [height, width], got {list(self.sample_size)}")
        _check(all(s >= 8 for s in self.sample_size), "sample_size", f"both sides must be at least 8, got {list(self.sample_size)}")
        _check(self.atol > 0, "atol", f"must be positive, got {self.atol}")
        _check(self.psnr_tol >= 0, "psnr_tol", f"must be 0 or positive, got {self.psnr_tol}")
        _check(self.calibration_patches >= 1, "calibration_patches", f"must be at least 1, got {self.calibration_patches}")
        _check(self.calibration_size >= 8, "calibration_size", f"must be at least 8, got {self.calibration_size}")
        _check(self.calibration_seed >= 0, "calibration_seed", f"must be 0 or positive, got {self.calibration_seed}")


@dataclass(frozen=True)
class ProfileConfig:
    """The ``profile_model`` section: how latency is measured.

    ``runtimes`` empty means every runtime available on this machine (see ``srnas.profiling``).
    ``input_size`` is the LR (height, width); empty means the size whose output is 720p for the scale
    (x2: 360x640, x3: 240x427, x4: 180x320). ``threads`` 0 means every CPU this process may use.
    ``device`` empty: models are profiled on this machine; ``http://HOST:PORT``: on the device agent listening there
    (``srnas device serve``; every runtime it offers, or ``runtimes``; threads 0 there means all of its CPUs).
    """

    runtimes: tuple[str, ...] = ()
    threads: int = 0
    warmup: int = 3
    runs: int = 20
    input_size: tuple[int, ...] = ()
    device: str = ""

    def __post_init__(self) -> None:
        for runtime in self.runtimes:
            _check(runtime in PROFILE_RUNTIMES, "runtimes", f"unknown runtime {runtime!r}; choose from {', '.join(PROFILE_RUNTIMES)}")
        _check(len(set(self.runtimes)) == len(self.runtimes), "runtimes", f"duplicate runtimes in {list(self.runtimes)}")
        _check(self.threads >= 0, "threads", f"must be 0 (all CPUs) or positive, got {self.threads}")
        _check(self.warmup >= 0, "warmup", f"must be 0 or positive, got {self.warmup}")
        _check(self.runs >= 1, "runs", f"must be at least 1, got {self.runs}")
        _check(len(self.input_size) in (0, 2), "input_size", f"expected [] or [height, width], got {list(self.input_size)}")
        _check(all(s >= 1 for s in self.input_size), "input_size", f"sides must be positive, got {list(self.input_size)}")
        _check(self.device == "" or self.device.startswith(("http://", "https://")), "device",
               f"expected empty (this machine) or a device agent's http://HOST:PORT, got {self.device!r}")


# ------------------------------------------------------------------------------- supernet (stage 1)

BLOCK_TYPES = ("conv", "wdsr", "skip")
DEVICES = ("auto", "cpu", "cuda")
# How the supernet trains its 3x3 convs (srnas.supernet.layers); a subnet deploys as plain convs either way.
SUPERNET_REPARAMS = ("ecb", "identity")


@dataclass(frozen=True)
class SearchSpaceConfig:
    """The ``supernet.space`` section: what the weight-sharing supernet holds (see :mod:`srnas.arch.space`).

    A subnet is head conv 3x3 (3 -> width), ``num_cells`` cells each one of ``blocks`` (``conv``: 3x3 conv + ReLU;
    ``wdsr``: WDSR-B residual block, 1x1 expand by one of ``expansions``, ReLU, 1x1 reduce, 3x3; ``skip``: identity,
    which makes depth elastic), tail conv 3x3 (width -> 3*s^2), global residual, PixelShuffle. The width is one
    of ``widths`` for the whole subnet (a global width; why: :mod:`srnas.arch.space`). Widths and expansions
    are listed in increasing order.
    """

    num_cells: int = 6
    widths: tuple[int, ...] = (8, 16, 24, 32)
    blocks: tuple[str, ...] = ("conv", "wdsr", "skip")
    expansions: tuple[int, ...] = (2, 4)

    def __post_init__(self) -> None:
        _check(1 <= self.num_cells <= 64, "num_cells", f"must be between 1 and 64, got {self.num_cells}")
        _check(len(self.widths) > 0, "widths", "list at least one width")
        _check(all(w >= 1 for w in self.widths), "widths", f"must be positive, got {list(self.widths)}")
        _check(all(a < b for a, b in zip(self.widths, self.widths[1:])), "widths",
               f"must be strictly increasing, got {list(self.widths)}")
        _check(len(self.blocks) > 0, "blocks", f"list at least one of {', '.join(BLOCK_TYPES)}")
        for block in self.blocks:
            _check(block in BLOCK_TYPES, "blocks", f"unknown block {block!r}; choose from {', '.join(BLOCK_TYPES)}")
        _check(len(set(self.blocks)) == len(self.blocks), "blocks", f"duplicate blocks in {list(self.blocks)}")
        _check(len(self.expansions) > 0, "expansions", "list at least one expansion ratio (used by wdsr blocks)")
        _check(all(e >= 1 for e in self.expansions), "expansions", f"must be positive, got {list(self.expansions)}")
        _check(all(a < b for a, b in zip(self.expansions, self.expansions[1:])), "expansions",
               f"must be strictly increasing, got {list(self.expansions)}")


@dataclass(frozen=True)
class SupernetTrainConfig(TrainConfig):
    """The ``supernet.train`` section: every :class:`TrainConfig` key plus the sandwich rule and the device.

    Each step trains the largest subnet, the smallest and ``num_random`` random subnets on one batch: the
    largest against HR (L1); the others against ``(1 - distill) * L1(HR) + distill * L1(largest's detached
    output)`` (in-place distillation), each weighted by ``child_weight``; one backward of the sum, then one
    optimizer step (why these defaults: :mod:`srnas.supernet.train`).
    ``batch_size`` is the global batch: under ``torchrun`` each of the N processes takes ``batch_size / N``
    patches (it must divide). ``device``: ``auto`` is CUDA when available, else CPU.
    """

    steps: int = 1500
    checkpoint_every: int = 250
    num_random: int = 2
    distill: float = 0.5
    child_weight: float = 0.5
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(not self.steps_by_model, "steps_by_model", "the supernet is one model: set `steps`")
        _check(self.num_random >= 0, "num_random", f"must be 0 or positive, got {self.num_random}")
        _check(0.0 <= self.distill <= 1.0, "distill", f"must be between 0 and 1, got {self.distill}")
        _check(self.child_weight > 0.0, "child_weight", f"must be positive, got {self.child_weight}")
        _check(self.device in DEVICES, "device", f"expected one of {', '.join(DEVICES)}, got {self.device!r}")


@dataclass(frozen=True)
class SupernetConfig:
    """The ``supernet`` section: the search space, the scale the supernet is trained for, and how it is trained.

    ``reparam``: the re-parameterisable form the supernet trains its 3x3 convs in -- ``ecb``: the head, the tail and
    every ``conv`` cell as ECBSR's edge-oriented block (conv3x3 + conv1x1-conv3x3 + conv1x1 then fixed Sobel-x /
    Sobel-y / Laplacian filters with learned scales + identity in the cells); ``identity``: a ``conv`` cell as
    ``ReLU(x + conv3x3(x))``, head and tail plain. Subnets deploy as the same plain 3x3 convs either way (the branches
    collapse into one kernel), so latency tables, pruning and export do not depend on it (:mod:`srnas.supernet.layers`).
    """

    scale: int = 2
    reparam: str = "ecb"
    space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    train: SupernetTrainConfig = field(default_factory=SupernetTrainConfig)

    def __post_init__(self) -> None:
        _check(self.scale in SUPPORTED_SCALES, "scale", f"scale {self.scale} is not supported; choose from {SUPPORTED_SCALES}")
        _check(self.reparam in SUPERNET_REPARAMS, "reparam",
               f"expected one of {', '.join(SUPERNET_REPARAMS)}, got {self.reparam!r}")


# ------------------------------------------------------------------------- latency model (profile_device)

# ``auto``: the fastest of the others that this machine really runs, measured (srnas.latency.auto).
AUTO_RUNTIME = "auto"
LATENCY_RUNTIMES = (AUTO_RUNTIME, "torch_fp32", "torch_bf16", "onnxruntime_fp32", "executorch_xnnpack_fp32")
# The precisions each latency runtime deploys: ONNX Runtime runs fp32 graphs or static int8 (QDQ) ones, ExecuTorch
# (XNNPACK delegate) fp32 programs or int8 ones (PT2E, XNNPACK quantizer): a runtime is named as `srnas profile` names
# it, by the precision it runs a model it is given in; ``auto`` takes the precision of the runtime it resolves to.
LATENCY_PRECISIONS = {AUTO_RUNTIME: (AUTO_RUNTIME,), "torch_fp32": ("fp32",), "torch_bf16": ("bf16",),
                      "onnxruntime_fp32": ("fp32", "int8"), "executorch_xnnpack_fp32": ("fp32", "int8")}


@dataclass(frozen=True)
class TargetConfig:
    """One item of ``latency.targets``: a device and the runtime a model is deployed with there.

    ``name`` names the output folder (``results/profile_device/<name>``) and metrics (``latency_ms_<name>``);
    ``device`` is a label for this machine (e.g. ``this-cpu``), or ``http://HOST:PORT``: the device agent listening
    there measures the target (``srnas device serve``; token in ``$SRNAS_DEVICE_TOKEN``); ``runtime`` one of ``torch_fp32``, ``torch_bf16``, ``onnxruntime_fp32``,
    ``executorch_xnnpack_fp32`` (ExecuTorch with the XNNPACK delegate; the ``mobile`` extra), or ``auto`` (the
    fastest of the first three this machine runs, measured once per machine and cached; ``precision: auto``);
    ``precision`` ``fp32`` / ``bf16`` / ``int8`` (int8: ONNX Runtime static QDQ, or ExecuTorch PT2E quantization with
    the XNNPACK quantizer; see ``LATENCY_PRECISIONS``); ``threads`` 0 means every CPU
    this process may use; ``input_size`` the LR [height, width], empty for the size whose output is 1280x720.
    """

    name: str
    device: str
    runtime: str
    precision: str
    threads: int
    input_size: tuple[int, ...]

    def __post_init__(self) -> None:
        _check(bool(self.name) and all(c.isalnum() or c in "_-." for c in self.name) and self.name not in (".", ".."),
               "name", f"{self.name!r} is not a plain name (letters, digits, _ - .)")
        _check(self.runtime in LATENCY_RUNTIMES, "runtime", f"unknown runtime {self.runtime!r}; choose from {', '.join(LATENCY_RUNTIMES)}")
        allowed = LATENCY_PRECISIONS.get(self.runtime, ())
        _check(self.precision in allowed, "precision", f"{self.runtime} runs {' or '.join(allowed)}, not {self.precision!r}")
        _check(self.threads >= 0, "threads", f"must be 0 (all CPUs) or positive, got {self.threads}")
        _check(len(self.input_size) in (0, 2), "input_size", f"expected [] or [height, width], got {list(self.input_size)}")
        _check(all(s >= 1 for s in self.input_size), "input_size", f"sides must be positive, got {list(self.input_size)}")


def _default_targets() -> tuple[TargetConfig, ...]:
    """params.yaml's ``latency.targets``: the fastest runtime of this CPU (``auto``), every core, the 720p-output LR size."""
    return (TargetConfig("cpu_auto", "this-cpu", AUTO_RUNTIME, AUTO_RUNTIME, 0, ()),)


LATENCY_PROTOCOLS = ("paired", "absolute")  # srnas.runtimes.timing


@dataclass(frozen=True)
class LatencyConfig:
    """The ``latency`` section: the targets and how the latency table, the schemes and the validation are measured.

    ``protocol`` (:mod:`srnas.runtimes.timing`): ``paired`` times every round of a layer or network between rounds
    of a fixed reference call and keeps the median ratio, times the reference's latency (measured once per
    fingerprint: its lowest call over ``reference_rounds`` rounds of ``reference_runs`` calls), so a host whose speed
    drifts does not move the figures; ``absolute`` keeps the lowest of the rounds' medians. A round is
    ``runs`` calls of a layer (``net_runs`` of a network) after ``warmup`` (``net_warmup``) calls; a table entry
    takes ``rounds`` rounds, a network ``net_rounds``. Paired measurements are repeated in ``passes``
    (``net_passes``) sweeps over the whole list and the median kept (absolute ones sweep ``rounds`` times and keep
    the lowest). A scheme decision compares a layer (network) with and without the scheme in ``scheme_rounds``
    paired rounds, interleaved, each giving a speedup; the scheme is kept only when the ``scheme_confidence``
    interval of the median speedup lies at or above ``min_speedup`` (across it: within the noise, not kept;
    5 rounds are the fewest that bound a median at 90%, where every round must clear the threshold; 9 rounds
    tolerate one disturbed round on either side).
    Filter pruning is offered at channel granularities ``granularities``; the table is measured on the grid of the
    finest accelerated one, but never finer than ``min_table_granularity`` (off-grid counts are interpolated).
    Schemes are measured at ``prune_ratios`` / ``sparsities`` on layers of widths ``scheme_widths`` (empty: the
    space's widths of at least 16) and kept only when at least ``min_speedup`` times faster (see above).
    ``calibration_subnets`` measured subnets fit the overhead model; ``validation_subnets`` others (a share
    ``pruned_share`` of them pruned) validate it. ``cache_dir`` keeps measured tables by target fingerprint.
    """

    targets: tuple[TargetConfig, ...] = field(default_factory=_default_targets)
    protocol: str = "paired"
    warmup: int = 2
    runs: int = 5
    net_warmup: int = 2
    net_runs: int = 5
    rounds: int = 5
    net_rounds: int = 3
    scheme_rounds: int = 9
    passes: int = 1
    net_passes: int = 3
    reference_runs: int = 20
    reference_rounds: int = 5
    granularities: tuple[int, ...] = (16, 8, 4, 1)
    min_table_granularity: int = 4
    prune_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    sparsities: tuple[float, ...] = (0.5, 0.9)
    scheme_widths: tuple[int, ...] = ()
    min_speedup: float = 1.05
    scheme_confidence: float = 0.9
    calibration_subnets: int = 24
    validation_subnets: int = 50
    pruned_share: float = 0.5
    seed: int = 0
    cache_dir: str = ".srnas/latency"

    def __post_init__(self) -> None:
        _check(len(self.targets) > 0, "targets", "list at least one target")
        names = [t.name for t in self.targets]
        _check(len(set(names)) == len(names), "targets", f"duplicate target names in {names}")
        _check(self.protocol in LATENCY_PROTOCOLS, "protocol", f"choose from {', '.join(LATENCY_PROTOCOLS)}, got {self.protocol!r}")
        for key in ("runs", "net_runs", "rounds", "net_rounds", "scheme_rounds", "passes", "net_passes", "reference_runs",
                    "reference_rounds"):
            _check(getattr(self, key) >= 1, key, f"must be at least 1, got {getattr(self, key)}")
        for key in ("warmup", "net_warmup"):
            _check(getattr(self, key) >= 0, key, f"must be 0 or positive, got {getattr(self, key)}")
        _check(len(self.granularities) > 0 and all(g >= 1 for g in self.granularities), "granularities",
               f"list positive channel granularities, got {list(self.granularities)}")
        _check(len(set(self.granularities)) == len(self.granularities), "granularities", f"duplicates in {list(self.granularities)}")
        _check(self.min_table_granularity >= 1, "min_table_granularity", f"must be positive, got {self.min_table_granularity}")
        _check(all(0.0 < r < 1.0 for r in self.prune_ratios), "prune_ratios", f"must lie in (0, 1), got {list(self.prune_ratios)}")
        _check(all(0.0 < s < 1.0 for s in self.sparsities), "sparsities", f"must lie in (0, 1), got {list(self.sparsities)}")
        _check(all(w >= 1 for w in self.scheme_widths), "scheme_widths", f"must be positive, got {list(self.scheme_widths)}")
        _check(self.min_speedup >= 1.0, "min_speedup", f"must be at least 1, got {self.min_speedup}")
        _check(0.5 <= self.scheme_confidence < 1.0, "scheme_confidence", f"must lie in [0.5, 1), got {self.scheme_confidence}")
        _check(1 - 2 * 0.5**self.scheme_rounds >= self.scheme_confidence, "scheme_rounds",
               f"{self.scheme_rounds} paired rounds cannot bound a median at scheme_confidence {self.scheme_confidence:g} "
               "(5 rounds are needed for 0.9); raise scheme_rounds")
        _check(self.calibration_subnets >= 3, "calibration_subnets", f"must be at least 3, got {self.calibration_subnets}")
        _check(self.validation_subnets >= 1, "validation_subnets", f"must be at least 1, got {self.validation_subnets}")
        _check(0.0 <= self.pruned_share <= 1.0, "pruned_share", f"must lie in [0, 1], got {self.pruned_share}")
        _check(self.seed >= 0, "seed", f"must be 0 or positive, got {self.seed}")
        _check(bool(self.cache_dir), "cache_dir", "must name a folder")

    def layer_timing(self, rounds: int | None = None) -> dict[str, int]:
        """How a layer is timed (``warmup``, ``runs``, ``rounds``, ``passes``), for the table's and the schemes' sweeps."""
        return {"warmup": self.warmup, "runs": self.runs, "rounds": self.rounds if rounds is None else rounds,
                "passes": self.passes}

    def net_timing(self, runs: int | None = None, min_rounds: int = 1) -> dict[str, int]:
        """How a whole network is timed (``warmup``, ``runs``, ``rounds``, ``passes``): calibration, validation, schemes
        and the searches' verdicts (which ask for more calls per round and at least ``min_rounds`` rounds)."""
        return {"warmup": self.net_warmup, "runs": self.net_runs if runs is None else runs,
                "rounds": max(self.net_rounds, min_rounds), "passes": self.net_passes}


# ------------------------------------------------------------------------ the deployment budget (budget)


@dataclass(frozen=True)
class BudgetConfig:
    """The ``budget`` section: the latency the final model must meet, where, and how it is checked.

    ``latency_ms`` per frame at ``target``'s input size (a name of ``latency.targets``; empty: the first). Both
    searches admit candidates whose *predicted* latency is at most ``latency_ms`` plus ``slack`` of it
    (:attr:`admit_ms`: the latency model may over-predict a candidate that fits), then close the loop on the target:
    up to ``verify_candidates`` of the best admitted candidates are measured, best PSNR first, and the first whose
    *measured* latency fits the whole ``latency_ms`` is chosen (:mod:`srnas.search.verify`). ``check_budget`` measures
    the fine-tuned model against the whole ``latency_ms`` too. A measurement -- a candidate of either search, the
    unpruned parent of stage 3, the final check -- times ``verify_runs`` calls per round (0: the searches measure
    nothing and choose the best candidate *predicted* within ``latency_ms``; ``check_budget`` always measures, at
    least one call per round).

    Its own section, so that the stages which need the budget rerun when it changes and only then: changing the
    number of stage-2 trials does not invalidate the budget check.
    """

    target: str = ""
    latency_ms: float = 33.0
    slack: float = 0.10
    verify_candidates: int = 8
    verify_runs: int = 10

    def __post_init__(self) -> None:
        _check(self.latency_ms > 0, "latency_ms", f"must be positive, got {self.latency_ms}")
        _check(self.slack >= 0.0, "slack", f"must be 0 or positive, got {self.slack}")
        _check(self.verify_candidates >= 1, "verify_candidates", f"must be at least 1, got {self.verify_candidates}")
        _check(self.verify_runs >= 0, "verify_runs", f"must be 0 (no measurement) or positive, got {self.verify_runs}")

    @property
    def admit_ms(self) -> float:
        """What the searches admit as a candidate's *predicted* latency: ``latency_ms`` plus the slack."""
        return self.latency_ms * (1.0 + self.slack)


# ------------------------------------------------------------------ stage 2: architecture search (search_arch)

SEARCH_STRATEGIES = ("tpe", "gp", "random")
SEARCH_MODES = ("single", "pareto")
PRUNING_CRITERIA = ("l1", "l2", "leading")


# A database URL in SQLAlchemy's form: dialect[+driver]://[user[:password]@][host][:port]/[database][?options]; no
# whitespace (what the driver then makes of it, a server that is not there, is the storage's error to report).
DATABASE_URL = re.compile(r"[a-z][a-z0-9]*(\+[a-z0-9_]+)?://\S*")
# The password of a URL (``//user:password@``), what :func:`redact_url` masks.
_URL_PASSWORD = re.compile(r"(//[^/:@\s]*:)([^@\s]*)(@)")


def redact_url(url: str) -> str:
    """``url`` with its password masked (``postgresql://user:***@host/db``): how a storage URL is logged, shown in an
    error or recorded; a URL without a password is unchanged."""
    return _URL_PASSWORD.sub(r"\1***\3", url)


@dataclass(frozen=True)
class SearchArchConfig:
    """The ``search_arch`` section: compiler-aware architecture and pruning-scheme search (stage 2).

    Each trial picks a global width, one block per cell and, for the head and each cell, a pruning scheme among
    ``dense`` and the filter schemes the latency model marks as accelerated on the budget's target
    (:class:`BudgetConfig`). A filter-scheme layer keeps ``prune_keep`` of its filters (chosen by
    ``search_ratio.importance``, the criterion stage 3 prunes with) rounded to the scheme's granularity: stage 3
    searches the real ratios. Objective: validation PSNR with inherited supernet weights on ``val_crops`` LR crops of
    ``crop_size`` pixels from ``val_set`` (empty: the prepared ``val`` set, else the first evaluation set by name), in
    the target's precision. Constraint: predicted latency at most :attr:`BudgetConfig.admit_ms`; the candidates near the
    budget are then measured and the best that fits is chosen (:class:`BudgetConfig`). ``strategy`` ``tpe``
    / ``gp`` (Bayesian optimization) or ``random`` (the baseline); ``mode`` ``single`` (one best point) or ``pareto``
    (PSNR and latency, the front). ``trials`` completed trials in all, shared by ``n_workers`` processes through one
    persisted study.

    ``recovery_steps`` above 0: before the choice, the ``recovery_per_width`` best admitted candidates of each width
    (by inherited PSNR) are each trained that many steps of the fine-tuning recipe from their inherited weights and
    scored again (:mod:`srnas.search.recovery`); the choice is made among them, by that score. Inherited PSNR
    under-rates width near the budget (weight sharing trains the first channels of every layer in every subnet).
    ``plain_seeds`` true: a fresh study's first trials are the space's plain networks (each width, 1 to ``num_cells``
    conv cells, dense), the family the hand-designed baselines come from, so the search always sees them (a sampler
    led by inherited PSNR otherwise rarely visits the wide ones).

    ``storage``: where the study lives. Empty: the SQLite file ``study.db`` in the stage's output folder. A database
    URL (SQLAlchemy's form, what Optuna's RDB storage takes: ``postgresql://user@host/db``, ``sqlite:///path``):
    workers on several hosts (``srnas search-arch --worker K``, a SLURM array) share one study there. Where the
    trials are stored changes no result, so it is passed outside the stage's params (``srnas.settings.STORAGE_ENV``) and a
    change reruns nothing; a password in it is masked wherever it is shown (:func:`redact_url`).
    """

    strategy: str = "tpe"
    mode: str = "single"
    trials: int = 200
    n_workers: int = 1
    seed: int = 0
    prune_keep: float = 0.5
    val_set: str = ""
    val_crops: int = 32
    crop_size: int = 64
    recovery_steps: int = 0
    recovery_per_width: int = 4
    plain_seeds: bool = False
    storage: str = ""

    def __post_init__(self) -> None:
        _check(not self.storage or DATABASE_URL.fullmatch(self.storage) is not None, "storage",
               f"expected empty (the SQLite file in the stage's output folder) or a database URL like "
               f"postgresql://user@host/db or sqlite:///path, got {redact_url(self.storage)!r}")
        _check(self.strategy in SEARCH_STRATEGIES, "strategy", f"unknown strategy {self.strategy!r}; choose from {', '.join(SEARCH_STRATEGIES)}")
        _check(self.mode in SEARCH_MODES, "mode", f"unknown mode {self.mode!r}; choose from {', '.join(SEARCH_MODES)}")
        _check(self.trials >= 1, "trials", f"must be at least 1, got {self.trials}")
        _check(self.n_workers >= 1, "n_workers", f"must be at least 1, got {self.n_workers}")
        _check(self.seed >= 0, "seed", f"must be 0 or positive, got {self.seed}")
        _check(0.0 < self.prune_keep < 1.0, "prune_keep", f"must lie in (0, 1), got {self.prune_keep}")
        _check(self.val_crops >= 1, "val_crops", f"must be at least 1, got {self.val_crops}")
        _check(self.crop_size >= 8, "crop_size", f"must be at least 8 LR pixels, got {self.crop_size}")
        _check(self.recovery_steps >= 0, "recovery_steps", f"must be 0 or positive, got {self.recovery_steps}")
        _check(self.recovery_per_width >= 1, "recovery_per_width", f"must be at least 1, got {self.recovery_per_width}")


# ------------------------------------------------- stage 3: pruning-ratio search and fine-tuning (search_ratio, finetune)


@dataclass(frozen=True)
class RatioSearchConfig:
    """The ``search_ratio`` section: per-layer pruning ratios for the stage-2 architecture (stage 3), and the pruning
    criterion.

    Every layer stage 2 gave a filter scheme keeps a share of its filters in [``min_keep``, 1] (suggested in steps of
    ``keep_step``), rounded to that scheme's granularity and removed physically; ``importance`` (``leading``: the
    filters weight sharing trains as the narrower widths; ``l1`` / ``l2``: the largest norms) chooses which filters
    stay -- also when stage 2 scores its candidates at ``search_arch.prune_keep``, so both stages prune alike.
    ``dense`` layers stay whole. Bayesian optimization (``strategy``: ``tpe`` / ``gp`` / ``random``) over ``trials``
    trials maximizes the proxy -- validation PSNR right after pruning the stage-2 subnet's inherited weights, on the
    search's crops -- under the predicted-latency limit :attr:`BudgetConfig.admit_ms` on the budget's target; the best
    trials are then measured like stage 2's candidates and the best that fits the budget is written with its weights
    for ``finetune``.

    ``recovery_steps`` above 0 changes the score: each trial's pruned network first trains that many steps of the
    fine-tuning recipe (``finetune``'s optimiser, batch, patch, bf16 and seed, its schedule compressed to these steps;
    no teacher), then is scored on the crops (:mod:`srnas.search.recovery`); 0 scores right after pruning.

    ``enabled`` false makes the stage step aside: it writes the same outputs for stage 2's choice pruned at
    ``search_arch.prune_keep`` (as stage 2 priced and measured it), with inherited weights, and searches nothing.
    """

    enabled: bool = True
    strategy: str = "tpe"
    trials: int = 60
    seed: int = 0
    min_keep: float = 0.25
    keep_step: float = 0.05
    importance: str = "leading"
    recovery_steps: int = 0

    def __post_init__(self) -> None:
        _check(self.strategy in SEARCH_STRATEGIES, "strategy", f"unknown strategy {self.strategy!r}; choose from {', '.join(SEARCH_STRATEGIES)}")
        _check(self.trials >= 1, "trials", f"must be at least 1, got {self.trials}")
        _check(self.seed >= 0, "seed", f"must be 0 or positive, got {self.seed}")
        _check(0.0 < self.min_keep <= 1.0, "min_keep", f"must lie in (0, 1], got {self.min_keep}")
        _check(0.0 < self.keep_step <= 1.0 - self.min_keep or self.min_keep == 1.0, "keep_step",
               f"must lie in (0, 1 - min_keep], got {self.keep_step}")
        _check(self.importance in PRUNING_CRITERIA, "importance",
               f"unknown criterion {self.importance!r}; choose from {', '.join(PRUNING_CRITERIA)}")
        _check(self.recovery_steps >= 0, "recovery_steps", f"must be 0 or positive, got {self.recovery_steps}")


FINETUNE_REPARAMS = ("ecb", "none")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """The ``finetune`` section: every :class:`TrainConfig` key, plus distillation from the supernet's largest subnet.

    The pruned network is trained against ``(1 - distill) * L1(HR) + distill * L1(teacher's output)``, the teacher
    being the supernet's largest subnet (frozen, inherited weights). ``reparam``: ``ecb`` trains every 3x3 conv of
    the pruned network as an edge-oriented convolution block (ECBSR's branches, starting equal to the conv) and
    collapses it back before saving, so the deployed network is unchanged; ``none`` trains the plain convs.
    """

    distill: float = 0.5
    reparam: str = "ecb"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(not self.steps_by_model, "steps_by_model", "fine-tuning trains one model: set `steps`")
        _check(0.0 <= self.distill <= 1.0, "distill", f"must be between 0 and 1, got {self.distill}")
        _check(self.reparam in FINETUNE_REPARAMS, "reparam",
               f"unknown form {self.reparam!r}; choose from {', '.join(FINETUNE_REPARAMS)}")
