"""``runtime: auto``: the fastest runtime and precision this machine really has, measured rather than assumed.

The candidates are the latency runtimes this machine can run (:func:`srnas.runtimes.availability.runtime_available`:
``torch_bf16`` only with native bf16, ONNX Runtime when it imports), each in the precision it deploys. Each runs
the same probe networks, a 16- and a 32-channel plain net of the search space's kind (head, four conv cells, tail,
PixelShuffle; on AMX-class CPUs bf16 makes the wider one as cheap as the narrower one in fp32, so both widths count)
at the target's input size and thread count; the score is the geometric mean of their median latencies, the lowest
wins. The choice is written once per machine (its fingerprint with the runtime left open, the threads, the input
size and the scale) to ``<latency.cache_dir>/auto/<id>.json`` and read back by every later stage, so one pipeline
never mixes two choices, and the log and the report say which runtime it chose and why.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from srnas import atomic
from srnas.arch.network import build_network
from srnas.arch.space import CellConfig, SubnetConfig
from srnas.config import AUTO_RUNTIME
from srnas.errors import SrnasError
from srnas.fingerprint import fingerprint_id, target_fingerprint
from srnas.profiling import profile_module
from srnas.runtimes.availability import RUNTIME_PRECISION, runtime_available

__all__ = ["CANDIDATES", "PROBE_WIDTHS", "RuntimeChoice", "choose_runtime", "probe_networks"]

log = logging.getLogger(__name__)

# Latency runtimes ``auto`` chooses from, each with the precision it deploys.
CANDIDATES = ("torch_bf16", "torch_fp32", "onnxruntime_fp32")
PROBE_WIDTHS = (16, 32)
PROBE_CELLS = 4
CHOICE_FORMAT = "srnas-runtime-choice/1"

# ``measure(runtime, width) -> ms``: the median latency of the probe network of ``width`` on ``runtime``.
ProbeTimer = Callable[[str, int], float]


@dataclass(frozen=True)
class RuntimeChoice:
    """What ``runtime: auto`` resolved to on this machine, with the measurements that decided it."""

    runtime: str
    precision: str
    scores_ms: dict[str, float]  # runtime -> geometric mean of the probes' median latencies
    probes_ms: dict[str, dict[str, float]]  # runtime -> probe width -> median ms
    unavailable: tuple[str, ...]
    threads: int
    input_hw: tuple[int, int]
    scale: int
    machine_id: str

    @property
    def reason(self) -> str:
        """One line: the winner and every candidate's score, plus what was not available here."""
        ranked = ", ".join(f"{rt} {ms:.1f} ms" for rt, ms in sorted(self.scores_ms.items(), key=lambda kv: kv[1]))
        missing = f"; not available here: {', '.join(self.unavailable)}" if self.unavailable else ""
        widths = "/".join(str(w) for w in PROBE_WIDTHS)
        return (f"fastest on plain {widths}-channel probe nets at LR {self.input_hw[0]}x{self.input_hw[1]}, "
                f"{self.threads} thread(s) (geometric mean of medians): {ranked}{missing}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": CHOICE_FORMAT, **asdict(self), "input_hw": list(self.input_hw), "unavailable": list(self.unavailable),
                "reason": self.reason}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RuntimeChoice:
        return cls(str(payload["runtime"]), str(payload["precision"]), dict(payload["scores_ms"]),
                   {k: dict(v) for k, v in payload["probes_ms"].items()}, tuple(payload["unavailable"]),
                   int(payload["threads"]), (int(payload["input_hw"][0]), int(payload["input_hw"][1])),
                   int(payload["scale"]), str(payload["machine_id"]))


def probe_networks() -> dict[int, SubnetConfig]:
    """The plain probe nets, by width: head, :data:`PROBE_CELLS` conv cells, tail."""
    return {w: SubnetConfig(w, tuple(CellConfig("conv") for _ in range(PROBE_CELLS))) for w in PROBE_WIDTHS}


def _profile_probe(threads: int, input_hw: tuple[int, int], scale: int) -> ProbeTimer:
    nets = probe_networks()

    def measure(runtime: str, width: int) -> float:
        model = build_network(nets[width], scale)
        return profile_module(model, runtime, input_hw, threads=threads, warmup=2, runs=7).median_ms

    return measure


def _machine_id(threads: int, input_hw: tuple[int, int], scale: int) -> str:
    return fingerprint_id({"machine": target_fingerprint(AUTO_RUNTIME, AUTO_RUNTIME, threads),
                           "input_hw": list(input_hw), "scale": scale, "probe": [list(PROBE_WIDTHS), PROBE_CELLS]})


def _read_choice(path: Path) -> RuntimeChoice | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != CHOICE_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
        return RuntimeChoice.from_dict(payload)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable runtime choice (%s); measuring again", path, exc)
        return None


def choose_runtime(threads: int, input_hw: tuple[int, int], scale: int, cache_dir: str | Path,
                   measure: ProbeTimer | None = None) -> RuntimeChoice:
    """The fastest of :data:`CANDIDATES` on this machine (see the module docstring): read from ``cache_dir`` when this
    machine chose before, else measured with ``measure`` (default: :func:`srnas.profiling.profile_module` on the
    probe nets) and written there atomically."""
    machine_id = _machine_id(threads, input_hw, scale)
    path = Path(cache_dir) / "auto" / f"{machine_id}.json"
    if path.is_file():
        cached = _read_choice(path)
        if cached is not None:
            return cached
    available = [rt for rt in CANDIDATES if runtime_available(rt)]
    if not available:
        raise SrnasError("runtime auto: none of " + ", ".join(CANDIDATES) + " runs on this machine")
    timer = measure or _profile_probe(threads, input_hw, scale)
    probes = {rt: {str(w): float(timer(rt, w)) for w in PROBE_WIDTHS} for rt in available}
    scores = {rt: math.exp(sum(math.log(ms) for ms in by_width.values()) / len(by_width)) for rt, by_width in probes.items()}
    best = min(scores, key=lambda rt: scores[rt])
    choice = RuntimeChoice(best, RUNTIME_PRECISION[best], scores, probes,
                           tuple(rt for rt in CANDIDATES if rt not in available), threads, input_hw, scale, machine_id)
    atomic.write_json(path, choice.to_dict())
    log.debug("%s: runtime choice measured and kept (the caller logs it)", path)
    return choice
