"""What a device agent does with a request: decode it (:mod:`srnas.latency.wire`), run this project's own measurement
on this machine (:mod:`srnas.latency.measure`: the same timing protocols, warm-up and threads pinned), and return
the figure with the spread of the samples behind it: :func:`srnas.runtimes.timing.spread`, the robust coefficient of
variation (1.4826 x median absolute deviation / median, the spread measure that matches a median figure), and the
plain coefficient of variation beside it.

Every timing warms up first (at least :data:`MIN_WARMUP` calls, whatever the request asks) with the request's threads
pinned (:func:`srnas.runtimes.timing.pinned_threads`, inside the measurement functions). A figure whose (robust)
spread over at least :data:`MIN_SPREAD_SAMPLES` samples is above :attr:`AgentConfig.max_spread` is not reported
(:class:`SpreadTooHigh`): a device that was not steady enough gives no number rather than a wrong one. Scheme comparisons (``compare_layers``,
``compare_networks``) return their rounds as they are, spread included: the decision that reads them
(:func:`srnas.latency.schemes.decide`) weighs the spread itself and leaves disturbed rounds out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from srnas import __version__
from srnas.arch.network import build_network
from srnas.config import AUTO_RUNTIME, LATENCY_PRECISIONS, LATENCY_RUNTIMES, TargetConfig
from srnas.errors import ConfigError, SrnasError
from srnas.fingerprint import target_fingerprint
from srnas.latency import measure, wire
from srnas.latency.targets import resolve_target
from srnas.profiling import profile_module, resolve_threads
from srnas.runtimes.availability import runtime_available
from srnas.runtimes.executorch import executorch_installed
from srnas.runtimes.remote import PROTOCOL_VERSION
from srnas.runtimes.timing import coefficient_of_variation, recorded_samples, spread

__all__ = ["KINDS", "MIN_SPREAD_SAMPLES", "MIN_WARMUP", "AgentConfig", "SpreadTooHigh", "agent_info", "handle"]

MIN_SPREAD_SAMPLES = 3  # fewer samples say nothing about a spread: reported, not held to the limit
MIN_WARMUP = 1  # warm-up calls before any timing, whatever the request asks (a cold first call is not the model's)


@dataclass(frozen=True)
class AgentConfig:
    """How an agent serves: its working folder (everything it writes stays inside), the largest spread it reports,
    the largest request it reads, and how long a request waits while another measurement runs."""

    workdir: Path
    max_spread: float = 0.25
    max_request_bytes: int = 64 * 2**20
    wait_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.max_spread > 0:
            raise ConfigError(f"--max-spread: must be positive, got {self.max_spread}")
        if self.max_request_bytes < 1024:
            raise ConfigError(f"--max-request-mb: must allow at least 1 KiB, got {self.max_request_bytes} bytes")
        if self.wait_s < 0:
            raise ConfigError(f"--wait-s: must be 0 or more, got {self.wait_s}")

    @property
    def cache_dir(self) -> Path:
        """Where ``runtime: auto`` keeps its choice on this machine."""
        return self.workdir / "cache"


class SpreadTooHigh(SrnasError):
    """A measurement whose samples varied more than the agent reports."""


def _offered(runtime: str) -> bool:
    """Whether this machine offers ``runtime``. ExecuTorch: when it is installed -- importing it to be sure takes
    seconds, which every agent start and its first ``/v1/info`` would wait for; a broken install fails the first
    measurement on it instead, saying why (:class:`srnas.runtimes.executorch.ExecuTorchUnavailableError`)."""
    return executorch_installed() if runtime.startswith("executorch_") else runtime_available(runtime)


def _available_runtimes() -> dict[str, list[str]]:
    return {rt: list(LATENCY_PRECISIONS[rt]) for rt in LATENCY_RUNTIMES if rt != AUTO_RUNTIME and _offered(rt)}


def agent_info(cfg: AgentConfig) -> dict[str, Any]:
    """What ``GET /v1/info`` answers: versions, this machine's fingerprint, its runtimes and the agent's limits."""
    return {"srnas": __version__, "protocol": PROTOCOL_VERSION, "fingerprint": target_fingerprint(AUTO_RUNTIME, AUTO_RUNTIME, 0),
            "runtimes": _available_runtimes(), "max_spread": cfg.max_spread, "max_request_bytes": cfg.max_request_bytes}


def _int(request: Mapping[str, Any], key: str) -> int:
    try:
        return int(request[key])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"request: {key} must be an integer, got {request.get(key)!r}") from None


def _timing(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request's timing, with at least :data:`MIN_WARMUP` warm-up calls: the agent never times a cold call."""
    return {"warmup": max(_int(request, "warmup"), MIN_WARMUP), "runs": _int(request, "runs"),
            "rounds": _int(request, "rounds")}


def _reference_ms(request: Mapping[str, Any]) -> float | None:
    value = request.get("reference_ms")
    return None if value is None else float(value)


def _fingerprint(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    return target_fingerprint(str(request["runtime"]), str(request["precision"]), _int(request, "threads"))


def _resolve(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    hw = [int(v) for v in request["input_hw"]]
    target_cfg = TargetConfig("device", wire.AGENT_DEVICE, str(request["runtime"]), str(request["precision"]),
                              _int(request, "threads"), tuple(hw))
    resolved = resolve_target(target_cfg, _int(request, "scale"), str(cfg.cache_dir))
    target = resolved.target
    return {"runtime": target.runtime, "precision": target.precision, "threads": target.threads,
            "choice": resolved.choice.to_dict() if resolved.choice else None}


def _reference(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    return measure.measure_reference(wire.target_from_wire(request["target"]), **_timing(request))


def _layer(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    return measure.measure_layer(wire.target_from_wire(request["target"]), wire.layer_from_wire(request["layer"]),
                                 **_timing(request), reference_ms=_reference_ms(request))


def _compare_layers(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    return measure.compare_layers(wire.target_from_wire(request["target"]), wire.layer_from_wire(request["base"]),
                                  wire.layer_from_wire(request["other"]), **_timing(request))


def _compare_networks(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    return measure.compare_networks(wire.target_from_wire(request["target"]), wire.network_from_wire(request["network"]),
                                    base_precision=str(request["base_precision"]), precision=str(request["precision"]),
                                    **_timing(request))


def _network(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    precision = request.get("precision")
    timing = measure.time_network(wire.target_from_wire(request["target"]), wire.network_from_wire(request["network"]),
                                  **_timing(request), precision=None if precision is None else str(precision),
                                  sparsity=float(request.get("sparsity", 0.0)), reference_ms=_reference_ms(request))
    return {"wall_clock_ms": timing.wall_clock_ms, "normalised_ms": timing.normalised_ms}


def _profile(request: Mapping[str, Any], cfg: AgentConfig) -> Any:
    """:func:`srnas.profiling.profile_module` of a network on one runtime of this machine (``profile`` with
    ``profile.device`` set): median, p90 and this machine's fingerprint."""
    hw = [int(v) for v in request["input_hw"]]
    network = wire.network_from_wire(request["network"])
    model = network if isinstance(network, nn.Module) else build_network(network, _int(request, "scale"))
    return profile_module(model.eval(), str(request["runtime"]), hw, threads=resolve_threads(_int(request, "threads")),
                          warmup=max(_int(request, "warmup"), MIN_WARMUP), runs=_int(request, "runs")).to_dict()


Handler = Callable[[Mapping[str, Any], AgentConfig], Any]
# kind -> (handler, whether its figure is held to the spread limit)
KINDS: dict[str, tuple[Handler, bool]] = {
    "fingerprint": (_fingerprint, False),
    "resolve": (_resolve, False),
    "reference": (_reference, True),
    "layer": (_layer, True),
    "network": (_network, True),
    "compare_layers": (_compare_layers, False),
    "compare_networks": (_compare_networks, False),
    "profile": (_profile, True),
}


def _json_safe(value: Any) -> Any:
    """NaN (a disturbed comparison round) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def handle(kind: str, request: Mapping[str, Any], cfg: AgentConfig) -> dict[str, Any]:
    """The reply to one request: ``{"value", "spread", "cv", "samples"}``. ConfigError for a request that does not fit
    (unknown kind, missing or malformed fields), SpreadTooHigh for a figure too unsteady to report."""
    if kind not in KINDS:
        raise ConfigError(f"unknown request {kind!r}; known: {', '.join(KINDS)}")
    handler, checked = KINDS[kind]
    try:
        with recorded_samples() as samples:
            value = handler(request, cfg)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"request {kind}: missing or malformed {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"request {kind}: {exc}") from None
    if kind.startswith("compare_"):
        samples = [v for v in value if not math.isnan(v)]
    cv = spread(samples)
    if checked and len(samples) >= MIN_SPREAD_SAMPLES and cv > cfg.max_spread:
        raise SpreadTooHigh(f"spread {100 * cv:.0f}% over {len(samples)} samples is above this agent's limit "
                            f"{100 * cfg.max_spread:.0f}% (--max-spread): the device was not steady; no figure reported")
    return {"value": _json_safe(value), "spread": cv, "cv": coefficient_of_variation(samples), "samples": len(samples)}
