"""Latency targets: where and how a model is deployed (device, runtime, precision, threads, input size).

A target comes from ``params.yaml`` (:class:`srnas.config.TargetConfig`, section ``latency.targets``) and is
resolved here against this machine: ``threads: 0`` becomes every usable CPU and an empty ``input_size``
the LR size whose output is 1280x720 at the search space's scale. Its fingerprint
(:func:`srnas.fingerprint.target_fingerprint`: CPU model and flags, runtime, precision, threads, library
versions) keys the latency table: a table is only reused under the same fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from srnas.config import LatencyConfig, TargetConfig
from srnas.errors import ConfigError
from srnas.fingerprint import fingerprint_id, target_fingerprint
from srnas.profiling import lr_size_for_720p, resolve_threads

__all__ = ["Target", "resolve_target", "resolve_targets", "select_targets"]


@dataclass(frozen=True)
class Target:
    """A resolved latency target (threads and input size are concrete numbers)."""

    name: str
    device: str
    runtime: str
    precision: str
    threads: int
    input_hw: tuple[int, int]
    scale: int

    def fingerprint(self) -> dict[str, Any]:
        """:func:`srnas.fingerprint.target_fingerprint` of this runtime, precision and thread count."""
        return target_fingerprint(self.runtime, self.precision, self.threads)

    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint())

    @property
    def label(self) -> str:
        """One line for logs and reports."""
        return (f"{self.name} ({self.device}: {self.runtime} {self.precision}, {self.threads} thread(s), "
                f"LR {self.input_hw[0]}x{self.input_hw[1]} x{self.scale})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device, "runtime": self.runtime, "precision": self.precision,
                "threads": self.threads, "input_hw": list(self.input_hw), "scale": self.scale}


def resolve_target(cfg: TargetConfig, scale: int) -> Target:
    """``cfg`` with threads and input size made concrete for this machine and ``scale``."""
    hw = tuple(cfg.input_size) if cfg.input_size else lr_size_for_720p(scale)
    return Target(cfg.name, cfg.device, cfg.runtime, cfg.precision, resolve_threads(cfg.threads), (int(hw[0]), int(hw[1])), scale)


def resolve_targets(cfg: LatencyConfig, scale: int) -> list[Target]:
    return [resolve_target(t, scale) for t in cfg.targets]


def select_targets(cfg: LatencyConfig, scale: int, names: Sequence[str] | None) -> list[Target]:
    """The targets named in ``names`` (all when empty/None); ConfigError naming an unknown one."""
    targets = resolve_targets(cfg, scale)
    if not names:
        return targets
    by_name = {t.name: t for t in targets}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"latency.targets: no target named {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]
