"""Latency targets: where and how a model is deployed (device, runtime, precision, threads, input size).

A target comes from ``params.yaml`` (:class:`srnas.config.TargetConfig`, section ``latency.targets``) and is
resolved here against this machine: ``threads: 0`` becomes every usable CPU, an empty ``input_size``
the LR size whose output is 1280x720 at the search space's scale, and ``runtime: auto`` the fastest runtime this
machine really has (:mod:`srnas.latency.auto`: measured once per machine, cached in ``latency.cache_dir``). Its fingerprint
(:func:`srnas.fingerprint.target_fingerprint`: CPU model and flags, runtime, precision, threads, library
versions) keys the latency table: a table is only reused under the same fingerprint.

A target whose ``device`` is a URL (``http://HOST:PORT``) lives on another machine, measured by the device agent
listening there (``srnas device serve``, :mod:`srnas.agent`): threads, input size and ``runtime: auto`` are resolved
*there*, its fingerprint is the agent's machine's, and every measurement goes through :mod:`srnas.runtimes.remote`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from srnas.config import AUTO_RUNTIME, BudgetConfig, LatencyConfig, TargetConfig
from srnas.errors import ConfigError
from srnas.fingerprint import fingerprint_id, target_fingerprint
from srnas.latency.auto import RuntimeChoice, choose_runtime
from srnas.profiling import lr_size_for_720p, resolve_threads
from srnas.runtimes.remote import agent_client, is_device_url

__all__ = ["ResolvedTarget", "Target", "budget_target_name", "resolve_target", "resolve_targets", "select_targets"]

logger = logging.getLogger(__name__)


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

    @property
    def remote(self) -> bool:
        """Whether a device agent measures this target (``device`` is its URL)."""
        return is_device_url(self.device)

    def fingerprint(self) -> dict[str, Any]:
        """:func:`srnas.fingerprint.target_fingerprint` of this runtime, precision and thread count, on the machine
        that runs the target (a device agent's, asked once per process, for a remote target)."""
        if self.remote:
            return dict(_device_fingerprint(self.device, self.runtime, self.precision, self.threads))
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


@dataclass(frozen=True)
class ResolvedTarget:
    """A target and, for ``runtime: auto``, the measured choice that made its runtime concrete (else None)."""

    target: Target
    choice: RuntimeChoice | None


@functools.cache
def _device_fingerprint(url: str, runtime: str, precision: str, threads: int) -> dict[str, Any]:
    reply = agent_client(url).call("fingerprint", {"runtime": runtime, "precision": precision, "threads": threads})
    if not isinstance(reply.value, dict):
        raise ConfigError(f"device {url}: the agent's fingerprint is not a JSON object")
    return reply.value


def _resolve_on_device(cfg: TargetConfig, input_hw: tuple[int, int], scale: int) -> ResolvedTarget:
    """:func:`resolve_target` by the device agent at ``cfg.device``: threads and ``auto`` are the device's own."""
    reply = agent_client(cfg.device).call("resolve", {"runtime": cfg.runtime, "precision": cfg.precision,
                                                      "threads": cfg.threads, "input_hw": list(input_hw), "scale": scale})
    value = reply.value
    try:
        target = Target(cfg.name, cfg.device, str(value["runtime"]), str(value["precision"]), int(value["threads"]),
                        input_hw, scale)
        choice = RuntimeChoice.from_dict(value["choice"]) if value.get("choice") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"device {cfg.device}: malformed resolve reply ({exc})") from None
    return ResolvedTarget(target, choice)


def resolve_target(cfg: TargetConfig, scale: int, cache_dir: str) -> ResolvedTarget:
    """``cfg`` with threads, input size and (for ``runtime: auto``) runtime and precision made concrete for this
    machine -- or the device agent's, for a URL device -- and ``scale``; ``cache_dir`` keeps the auto choice
    (``latency.cache_dir``; the agent keeps its own)."""
    hw = tuple(cfg.input_size) if cfg.input_size else lr_size_for_720p(scale)
    input_hw = (int(hw[0]), int(hw[1]))
    if is_device_url(cfg.device):
        return _resolve_on_device(cfg, input_hw, scale)
    threads = resolve_threads(cfg.threads)
    choice = choose_runtime(threads, input_hw, scale, cache_dir) if cfg.runtime == AUTO_RUNTIME else None
    runtime, precision = (choice.runtime, choice.precision) if choice else (cfg.runtime, cfg.precision)
    return ResolvedTarget(Target(cfg.name, cfg.device, runtime, precision, threads, input_hw, scale), choice)


def resolve_targets(cfg: LatencyConfig, scale: int) -> list[ResolvedTarget]:
    resolved = [resolve_target(t, scale, cfg.cache_dir) for t in cfg.targets]
    for item in resolved:
        if item.choice is not None:
            logger.info("%s: runtime auto -> %s (%s): %s", item.target.name, item.target.runtime, item.target.precision,
                        item.choice.reason)
    return resolved


def select_targets(cfg: LatencyConfig, scale: int, names: Sequence[str] | None) -> list[ResolvedTarget]:
    """The targets named in ``names`` (all when empty/None); ConfigError naming an unknown one."""
    known = [t.name for t in cfg.targets]
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ConfigError(f"latency.targets: no target named {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [t for t in cfg.targets if not names or t.name in names]
    resolved = resolve_targets(dataclasses.replace(cfg, targets=tuple(chosen)), scale)
    by_name = {r.target.name: r for r in resolved}
    return [by_name[n] for n in (names or known)]


def budget_target_name(budget: BudgetConfig, latency: LatencyConfig) -> str:
    """``budget.target``, or the first of ``latency.targets``; ConfigError naming an unknown one."""
    names = [t.name for t in latency.targets]
    if not budget.target:
        return names[0]
    if budget.target not in names:
        raise ConfigError(f"budget.target: no target named {budget.target!r} in latency.targets ({', '.join(names)})")
    return budget.target
