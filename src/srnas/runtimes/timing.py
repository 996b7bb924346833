"""Timing primitives every measurement shares: calls timed with the collector paused, threads pinned, the quiet guard
against a busy host, and the two timing protocols.

How a latency is measured on a machine whose speed moves: the two timing protocols, and sweeps over many items.

``absolute``
    A *round* is ``runs`` calls (after warm-up); the result is the lowest of ``rounds`` round medians, the rounds
    sweeping the whole list of items in alternating order (a disturbance lasting seconds spoils one round of an
    item, rarely all). Right on a quiet, dedicated device; on a shared host whose speed drifts by tens of percent
    within minutes, two items measured minutes apart are not comparable.

``paired`` (default)
    Every round of an item is bracketed by rounds of a fixed *reference* call on the same runtime, each round
    represented by its lowest call (interference from outside only ever slows a call down), and the item's latency
    is ``reference_ms * median over rounds of (item round / mean of the reference rounds around it)``. A slowdown
    of the host that lasts longer than a round scales the item and its reference alike and cancels; the median
    drops the rounds a burst hit anyway. ``reference_ms`` is the reference's own lowest call, measured once when
    the table is built (the target's speed when undisturbed), so every table entry and every later network
    measurement is expressed at that one speed of the target. Each item is measured in ``passes`` passes that
    sweep the whole list, and the median of its passes is kept: a burst the reference did not cancel (it hits
    some kernels harder than others) moves one pass, rarely two.

Both protocols produce milliseconds; the table records which one made it (and the reference), and every later
measurement compared with its predictions (validation, the searches' verdicts) uses the same one.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

from srnas.config import LATENCY_PROTOCOLS
from srnas.runtimes.allocator import minor_faults

__all__ = ["ABSOLUTE", "PAIRED", "PROTOCOLS", "QUIET_ATTEMPTS", "QUIET_LIMIT", "QUIET_MIN_WINDOW_S", "QUIET_WAIT_S",
           "busy_ticks", "call_times", "coefficient_of_variation", "disturbances", "gc_paused", "lowest_ms", "median_ms", "others_busy",
           "paired_ms", "paired_ratios", "paired_rounds", "paired_value", "pinned_threads", "quiet", "quiet_or_disturbed",
           "quiet_stats", "record_samples", "recorded_samples", "spread", "sweep", "time_calls", "warm"]

log = logging.getLogger(__name__)

PAIRED, ABSOLUTE = LATENCY_PROTOCOLS
PROTOCOLS = LATENCY_PROTOCOLS

Item = TypeVar("Item", bound=Hashable)
Round = TypeVar("Round")
Value = TypeVar("Value")


# ------------------------------------------------------------------------------------------ spread

_SAMPLES: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("srnas_timing_samples", default=None)


@contextlib.contextmanager
def recorded_samples() -> Iterator[list[float]]:
    """Collect, while inside, the samples behind every figure measured: the calls of an absolute measurement, the
    per-round values of a paired one (milliseconds at the reference speed). :func:`spread` of them is how steady the
    measurement was (the device agent reports it with every figure)."""
    samples: list[float] = []
    token = _SAMPLES.set(samples)
    try:
        yield samples
    finally:
        _SAMPLES.reset(token)


def record_samples(values: Sequence[float]) -> None:
    """Add ``values`` to the samples :func:`recorded_samples` collects (nothing when none is collecting)."""
    samples = _SAMPLES.get()
    if samples is not None:
        samples.extend(float(v) for v in values)


def spread(samples: Sequence[float]) -> float:
    """How much ``samples`` vary, robustly: 1.4826 x the median absolute deviation over the median (the coefficient
    of variation for normally distributed samples; a rare outlier, which the median figure ignores, barely moves it).
    NaN left out; 0 for fewer than 2 samples."""
    kept = [float(v) for v in samples if not math.isnan(v)]
    if len(kept) < 2:
        return 0.0
    middle = statistics.median(kept)
    deviation = statistics.median(abs(v - middle) for v in kept)
    return float(1.4826 * deviation / middle) if middle > 0 else float("inf")


def coefficient_of_variation(samples: Sequence[float]) -> float:
    """Standard deviation over mean of ``samples`` (NaN left out; 0 for fewer than 2)."""
    kept = [float(v) for v in samples if not math.isnan(v)]
    if len(kept) < 2:
        return 0.0
    mean = statistics.fmean(kept)
    return float(statistics.stdev(kept) / mean) if mean > 0 else float("inf")


# ------------------------------------------------------------------------------------------ calls


@contextlib.contextmanager
def gc_paused(collect: bool = True) -> Iterator[None]:
    """Python's garbage collector off while timing (a collection inside a timed call is not the model's); run once
    before when ``collect`` (a full collection costs ~0.1 s in a process with torch loaded)."""
    was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def call_times(call: Callable[[], Any], runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls (no warm-up, no collector handling: see :func:`gc_paused`)."""
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def time_calls(call: Callable[[], Any], warmup: int, runs: int) -> tuple[list[float], float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` calls, and minor faults per call."""
    for _ in range(warmup):
        call()
    with gc_paused():
        faults_before = minor_faults()
        times = call_times(call, runs)
        faults = (minor_faults() - faults_before) / runs
    record_samples(times)
    return times, faults


def median_ms(call: Callable[[], Any], warmup: int, runs: int) -> float:
    """The median milliseconds of ``runs`` calls after ``warmup`` (collector paused)."""
    times, _ = time_calls(call, warmup, runs)
    return float(statistics.median(times))


def lowest_ms(call: Callable[[], Any], warmup: int, runs: int) -> float:
    """The lowest of ``runs`` calls after ``warmup``; the caller pauses the collector (:func:`gc_paused`) around
    all its rounds: a full collection before every short round would cost more than the rounds."""
    for _ in range(warmup):
        call()
    return float(min(call_times(call, runs)))


def warm(warmup: int, *calls: Callable[[], Any]) -> None:
    """``warmup`` rounds of every call, in turn."""
    for _ in range(warmup):
        for call in calls:
            call()


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------ quiet guard

# The quiet guard. The machine may be shared: a neighbour's process taking a core in the middle of a
# measurement inflates it (two threads on two cores: one descheduled thread stalls the other). So every
# measurement counts the CPU time the *rest of the system* used meanwhile (/proc/stat minus this process)
# and, when that exceeds QUIET_LIMIT cores on average, waits and measures again, up to QUIET_ATTEMPTS times.
# /proc/stat counts in clock ticks (10 ms), so a window of a few ms cannot see a neighbour: a window shorter than
# QUIET_MIN_WINDOW_S is observed on until it lasts that long (this process idle meanwhile; a neighbour that keeps a
# core busy shows). Without it a busy loop on one of two cores went unnoticed through a whole smoke profile.
QUIET_LIMIT = 0.15
QUIET_ATTEMPTS = 6
QUIET_WAIT_S = 2.0
QUIET_MIN_WINDOW_S = 0.05
quiet_stats = {"measurements": 0, "retries": 0, "disturbed": 0}
_machine_busy = False  # the last measurement used up its attempts (see quiet_or_disturbed)


def busy_ticks(proc_stat: str, cpus: set[int] | None) -> int | None:
    """Clock ticks the CPUs ``cpus`` (None: all) have been busy since boot, from the text of ``/proc/stat`` (all but
    idle and iowait); None when the text has no CPU lines."""
    lines = [line.split() for line in proc_stat.splitlines() if line.startswith("cpu")]
    if not lines or lines[0][0] != "cpu":
        return None
    per_cpu = [fields for fields in lines[1:] if cpus is not None and fields[0][3:].isdigit() and int(fields[0][3:]) in cpus]
    chosen = per_cpu if per_cpu and len(per_cpu) < len(lines) - 1 else lines[:1]  # every CPU: the total line
    busy = 0
    for fields in chosen:
        values = [int(v) for v in fields[1:]]
        busy += sum(values[:8]) - values[3] - (values[4] if len(values) > 4 else 0)
    return busy


def _system_busy_s() -> float | None:
    """CPU seconds the CPUs this process may run on (its affinity: every CPU unless pinned, e.g. by ``taskset``) have
    been busy since boot (None where /proc/stat is unavailable). A process pinned to its own cores -- a device agent
    next to a training -- is disturbed by what runs on those cores, not by work on the others."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            ticks = busy_ticks(handle.read(), cpus)
    except OSError:
        return None
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def others_busy(fn: Callable[[], Value]) -> tuple[Value, float]:
    """Run ``fn``; return its value and the cores the rest of the system kept busy meanwhile (0 if unknown)."""
    busy0, own0, wall0 = _system_busy_s(), _own_cpu_s(), time.perf_counter()
    value = fn()
    if busy0 is not None and (short := QUIET_MIN_WINDOW_S - (time.perf_counter() - wall0)) > 0:
        time.sleep(short)
    busy1, own1, wall1 = _system_busy_s(), _own_cpu_s(), time.perf_counter()
    if busy0 is None or busy1 is None:
        return value, 0.0
    # /proc/stat counts in clock ticks (10 ms): a window of a few ms can see a whole tick that getrusage (exact)
    # does not, so two ticks of difference are not taken as someone else's work.
    slack = 2.0 / os.sysconf("SC_CLK_TCK")
    return value, max((busy1 - busy0) - (own1 - own0) - slack, 0.0) / max(wall1 - wall0, 1e-9)


def quiet(fn: Callable[[], Value], what: str = "") -> Value:
    """``fn()`` measured while the rest of the machine stays (nearly) idle; see :data:`QUIET_LIMIT`. ``fn`` returns
    milliseconds, or whatever a measurement keeps of its calls (e.g. :func:`paired_rounds`' rounds)."""
    return quiet_or_disturbed(fn, what)[0]


def quiet_or_disturbed(fn: Callable[[], Value], what: str = "") -> tuple[Value, bool]:
    """:func:`quiet`, and whether the last attempt was still disturbed (the machine never became quiet): a decision
    may then leave the value out rather than trust it. Once a measurement has used up its attempts, the machine is
    taken as busy and later measurements make one attempt each (no waiting) until one comes out quiet: a neighbour
    that keeps a core busy for minutes would otherwise cost every measurement its retries."""
    global _machine_busy
    quiet_stats["measurements"] += 1
    value, others = others_busy(fn)
    for _ in range(0 if _machine_busy else QUIET_ATTEMPTS - 1):
        if others <= QUIET_LIMIT:
            break
        quiet_stats["retries"] += 1
        log.debug("%s: other processes kept %.2f cores busy; measuring again", what, others)
        time.sleep(QUIET_WAIT_S)
        value, others = others_busy(fn)
    disturbed = others > QUIET_LIMIT
    if disturbed:
        quiet_stats["disturbed"] += 1
        if not _machine_busy:
            log.warning("%s: measured while other processes kept %.2f cores busy (after %d attempts); until a "
                        "measurement comes out quiet, each is taken once and flagged", what, others, QUIET_ATTEMPTS)
    elif _machine_busy:
        log.info("%s: the machine is quiet again", what)
    _machine_busy = disturbed
    return value, disturbed


@contextlib.contextmanager
def disturbances() -> Iterator[dict[str, int]]:
    """Count what the quiet guard saw inside the block: ``measurements`` made under it and how many of them stayed
    ``disturbed`` (the machine never became quiet: the figure may be inflated), filled in when the block ends. What a
    stage carries into its output so that a latency measured on a busy machine is flagged, not trusted silently."""
    start = dict(quiet_stats)
    seen = {"measurements": 0, "disturbed": 0}
    try:
        yield seen
    finally:
        seen.update({k: quiet_stats[k] - start[k] for k in seen})


# -------------------------------------------------------------------------------------- protocols


def paired_rounds(item_round: Callable[[], Round], reference_round: Callable[[], float], rounds: int) -> tuple[list[Round], list[float]]:
    """Run ``ref, item, ref, item, ..., ref`` (``rounds`` item rounds); return what the item and reference rounds
    returned. :func:`paired_ms` turns them into milliseconds; an item whose rounds are only known afterwards
    (ONNX Runtime's profile, read at the end) passes its values to :func:`paired_value` itself."""
    if rounds < 1:
        raise ValueError(f"paired timing needs at least one round, got {rounds}")
    refs = [reference_round()]
    items: list[Round] = []
    for _ in range(rounds):
        items.append(item_round())
        refs.append(reference_round())
    return items, refs


def paired_ratios(items: Sequence[float], refs: Sequence[float]) -> list[float]:
    """Per round, ``items[i] / mean(refs[i], refs[i + 1])``: each item round against the reference rounds around it."""
    if len(refs) != len(items) + 1 or not items:
        raise ValueError(f"paired timing: {len(items)} item rounds need {len(items) + 1} reference rounds, got {len(refs)}")
    return [value / max((before + after) / 2, 1e-9) for value, before, after in zip(items, refs, refs[1:])]


def paired_value(items: Sequence[float], refs: Sequence[float], reference_ms: float) -> float:
    """``reference_ms`` times the median over rounds of ``items[i] / mean(refs[i], refs[i + 1])``."""
    if not reference_ms > 0:
        raise ValueError(f"reference latency must be positive, got {reference_ms}")
    ratios = paired_ratios(items, refs)
    record_samples([reference_ms * r for r in ratios])
    return reference_ms * statistics.median(ratios)


def paired_ms(item_round: Callable[[], float], reference_round: Callable[[], float], rounds: int, reference_ms: float) -> float:
    """``reference_ms`` times the median over ``rounds`` of ``item_round() / mean(reference rounds before and after)``.

    ``item_round`` / ``reference_round`` each time one round (the lowest of a few calls) and return milliseconds;
    calls alternate ``ref, item, ref, item, ..., ref``.
    """
    return paired_value(*paired_rounds(item_round, reference_round, rounds), reference_ms)


def sweep(items: Sequence[Item], measure: Callable[..., float], *, rounds: int, passes: int = 1,
          reference_ms: float | None = None,
          progress: Callable[[int, int, Item, float], None] | None = None,
          prior: Mapping[Item, Sequence[float]] | None = None) -> dict[Item, float]:
    """Milliseconds of each distinct item, measured over passes that sweep the whole list in alternating order.

    Absolute (``reference_ms`` None): ``rounds`` passes of ``measure(item)``, which times one round; the lowest value
    per item. Paired: ``passes`` passes of ``measure(item, rounds=, reference_ms=)``, which runs the item's rounds
    itself, bracketed by the reference; the median per item: a burst on the host lasting seconds moves one pass of
    an item, rarely the others, and the reference does not always cancel it (interference hits some kernels harder
    than others). ``progress(done, total, item, ms)`` after each measurement.

    ``prior``: what an interrupted sweep of the same items already measured (per item, its passes in order, as
    ``progress`` reported them); those passes are not measured again, so a rerun resumes where the sweep stopped.
    """
    todo = list(dict.fromkeys(items))
    paired = {} if reference_ms is None else {"rounds": rounds, "reference_ms": reference_ms}
    count = passes if paired else rounds
    if count < 1:
        raise ValueError(f"need at least one pass, got {count}")
    values: dict[Item, list[float]] = {item: [float(v) for v in (prior or {}).get(item, ())][:count] for item in todo}
    done = sum(len(v) for v in values.values())
    for r in range(count):
        for item in (todo if r % 2 == 0 else todo[::-1]):
            if len(values[item]) > r:
                continue
            ms = float(measure(item, **paired))
            values[item].append(ms)
            done += 1
            if progress is not None:
                progress(done, len(todo) * count, item, ms)
    combine = statistics.median if paired else min
    return {item: float(combine(v)) for item, v in values.items()}
