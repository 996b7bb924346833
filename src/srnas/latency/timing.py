"""How a latency is measured on a machine whose speed moves: the two timing protocols, and sweeps over many items.

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

import statistics
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from srnas.config import LATENCY_PROTOCOLS
from srnas.latency.layers import LayerKey

__all__ = ["ABSOLUTE", "PAIRED", "PROTOCOLS", "REFERENCE_LAYER", "paired_ms", "paired_rounds", "paired_value", "sweep"]

PAIRED, ABSOLUTE = LATENCY_PROTOCOLS
PROTOCOLS = LATENCY_PROTOCOLS
# The paired protocol's reference call: a mid-sized dense conv3x3 of the search space, in the target's precision
# and runtime (fp32 on ONNX Runtime, whatever the scheme measured).
REFERENCE_LAYER = LayerKey("conv", 16, 16)

Item = TypeVar("Item", bound=Hashable)
Round = TypeVar("Round")


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


def paired_value(items: Sequence[float], refs: Sequence[float], reference_ms: float) -> float:
    """``reference_ms`` times the median over rounds of ``items[i] / mean(refs[i], refs[i + 1])``."""
    if not reference_ms > 0:
        raise ValueError(f"reference latency must be positive, got {reference_ms}")
    if len(refs) != len(items) + 1 or not items:
        raise ValueError(f"paired timing: {len(items)} item rounds need {len(items) + 1} reference rounds, got {len(refs)}")
    ratios = [value / max((before + after) / 2, 1e-9) for value, before, after in zip(items, refs, refs[1:])]
    return reference_ms * statistics.median(ratios)


def paired_ms(item_round: Callable[[], float], reference_round: Callable[[], float], rounds: int, reference_ms: float) -> float:
    """``reference_ms`` times the median over ``rounds`` of ``item_round() / mean(reference rounds before and after)``.

    ``item_round`` / ``reference_round`` each time one round (the lowest of a few calls) and return milliseconds;
    calls alternate ``ref, item, ref, item, ..., ref``.
    """
    return paired_value(*paired_rounds(item_round, reference_round, rounds), reference_ms)


def sweep(items: Sequence[Item], measure: Callable[..., float], *, rounds: int, passes: int = 1,
          reference_ms: float | None = None,
          progress: Callable[[int, int, Item, float], None] | None = None) -> dict[Item, float]:
    """Milliseconds of each distinct item, measured over passes that sweep the whole list in alternating order.

    Absolute (``reference_ms`` None): ``rounds`` passes of ``measure(item)``, which times one round; the lowest value
    per item. Paired: ``passes`` passes of ``measure(item, rounds=, reference_ms=)``, which runs the item's rounds
    itself, bracketed by the reference; the median per item: a burst on the host lasting seconds moves one pass of
    an item, rarely the others, and the reference does not always cancel it (interference hits some kernels harder
    than others). ``progress(done, total, item, ms)`` after each measurement.
    """
    todo = list(dict.fromkeys(items))
    paired = {} if reference_ms is None else {"rounds": rounds, "reference_ms": reference_ms}
    count = passes if paired else rounds
    if count < 1:
        raise ValueError(f"need at least one pass, got {count}")
    values: dict[Item, list[float]] = {item: [] for item in todo}
    done = 0
    for r in range(count):
        for item in (todo if r % 2 == 0 else todo[::-1]):
            ms = float(measure(item, **paired))
            values[item].append(ms)
            done += 1
            if progress is not None:
                progress(done, len(todo) * count, item, ms)
    combine = statistics.median if paired else min
    return {item: float(combine(v)) for item, v in values.items()}
