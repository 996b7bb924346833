"""Choosing by measurement: the candidates near the budget measured on the target, best PSNR first.

Both searches (``search_arch``, ``search_ratio``) admit candidates whose *predicted* latency is within
``budget.latency_ms * (1 + budget.slack)`` (:attr:`srnas.config.BudgetConfig.admit_ms`): the latency model errs both
ways, and a blanket margin below the budget would cost exactly the candidates that win. The loop then closes on the
target (:func:`select`):

1. :func:`shortlist`: the admitted candidates' PSNR / predicted-latency front, plus the best ones predicted within
   the whole budget, ordered by PSNR (best first), at most ``budget.verify_candidates`` of them -- the best candidate
   predicted within the budget always among them, so the loop can do no worse than choosing by prediction would;
2. measure them in that order with the verdict protocol (what ``check_budget`` compares with the budget) and stop at
   the first whose *measured* latency fits the whole ``latency_ms``: every better-PSNR candidate has been measured and
   did not fit, so it is the choice;
3. none fits: :class:`SearchError` naming the closest.

Nothing can be measured (``budget.verify_runs`` 0, or the target's runtime missing here): the best candidate
*predicted* within ``latency_ms`` is chosen, and the selection says so (:data:`PREDICTED`).

Pure logic: the caller passes the measuring function, so tests drive it with fake figures.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from srnas.errors import SrnasError

__all__ = ["MEASURED", "PREDICTED", "Measurement", "Pick", "SearchError", "Selection", "ranked", "select", "shortlist"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How a selection chose (``chosen_by`` in arch.json and ratio.json).
MEASURED, PREDICTED = "measured", "predicted"


class SearchError(SrnasError):
    """The search cannot deliver (e.g. no candidate fits the budget)."""


@dataclass(frozen=True)
class Pick(Generic[T]):
    """A candidate of a search: its name (one network, one name), PSNR, predicted latency and what to measure."""

    name: str
    psnr: float
    predicted_ms: float
    item: T


@dataclass(frozen=True)
class Measurement:
    """A candidate measured on the target, and whether its measured latency fits the budget."""

    name: str
    psnr: float
    predicted_ms: float
    measured_ms: float
    fits: bool

    @property
    def error(self) -> float:
        """The latency model's relative error on it, (predicted - measured) / measured (the validation's sign)."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "psnr": self.psnr, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
                "error": self.error, "fits": self.fits}


@dataclass(frozen=True)
class Selection(Generic[T]):
    """What :func:`select` chose, how (:data:`MEASURED` or :data:`PREDICTED`, and why not measured), and every
    candidate it measured, in the order it measured them."""

    chosen: Pick[T]
    chosen_by: str
    measured: tuple[Measurement, ...]
    reason: str = ""

    @property
    def measured_ms(self) -> float | None:
        """The chosen candidate's measured latency (None when chosen by prediction)."""
        return next((m.measured_ms for m in self.measured if m.name == self.chosen.name), None)

    def metrics(self) -> dict[str, float]:
        """The latency model's error on the measured candidates: how many, the median absolute error in percent."""
        if not self.measured:
            return {"measured_candidates": 0.0}
        return {"measured_candidates": float(len(self.measured)),
                "prediction_abs_error_median_pct": 100 * float(statistics.median(abs(m.error) for m in self.measured))}

    def to_dict(self) -> dict[str, Any]:
        """``chosen_by``, why not measured (when so) and ``measured``: the fields a search result records."""
        out: dict[str, Any] = {"chosen_by": self.chosen_by, "measured": [m.to_dict() for m in self.measured]}
        if self.reason:
            out["chosen_by_reason"] = self.reason
        return out


def ranked(picks: Sequence[Pick[T]]) -> list[Pick[T]]:
    """One pick per name (the first), best first: higher PSNR, then lower predicted latency, then name."""
    unique: dict[str, Pick[T]] = {}
    for p in picks:
        unique.setdefault(p.name, p)
    return sorted(unique.values(), key=lambda p: (-p.psnr, p.predicted_ms, p.name))


def shortlist(picks: Sequence[Pick[T]], *, budget_ms: float, admit_ms: float, limit: int) -> list[Pick[T]]:
    """What the loop measures, in order (best PSNR first): the front of the picks predicted within ``admit_ms`` (no
    other admitted pick has both higher PSNR and lower predicted latency) and the ``limit`` best predicted within
    ``budget_ms``; at most ``limit`` of them. The best pick predicted within ``budget_ms`` is always included (in the
    last place when the front above the budget fills the list: still PSNR order, since every pick before it is
    better)."""
    admitted = [p for p in ranked(picks) if p.predicted_ms <= admit_ms]
    front: list[Pick[T]] = []
    for p in sorted(admitted, key=lambda p: (p.predicted_ms, -p.psnr, p.name)):
        if not front or p.psnr > front[-1].psnr:
            front.append(p)
    within = [p for p in admitted if p.predicted_ms <= budget_ms][:limit]
    pool = ranked([*front, *within])
    head = pool[:limit]
    if within and within[0].name not in {p.name for p in head}:
        head = [*pool[:limit - 1], within[0]]
    return head


def _fastest(picks: Sequence[Pick[T]]) -> str:
    fastest = min(picks, key=lambda p: (p.predicted_ms, p.name))
    return f"fastest predicted: {fastest.name}, {fastest.predicted_ms:.2f} ms"


def select(picks: Sequence[Pick[T]], *, budget_ms: float, admit_ms: float, limit: int,
           measure: Callable[[T], float] | None, where: str, reason: str = "") -> Selection[T]:
    """Choose among ``picks`` (see the module docstring): ``measure(pick.item)`` gives a candidate's measured
    milliseconds, the figure held against ``budget_ms``; ``measure`` None chooses by prediction within ``budget_ms``
    (``reason`` says why nothing is measured). Raises :class:`SearchError`, one line starting with ``where``, when no
    candidate can be chosen."""
    if not picks:
        raise SearchError(f"{where}: no completed trial to choose from")
    if measure is None:
        within = [p for p in ranked(picks) if p.predicted_ms <= budget_ms]
        if not within:
            raise SearchError(f"{where}: none of the {len(picks)} trials is predicted within the {budget_ms:g} ms budget "
                              f"and nothing is measured ({reason}; {_fastest(picks)}); raise the trials or the budget")
        log.info("%s: chosen by prediction (%s): %s, %.2f dB, %.2f ms predicted (budget %g ms)", where, reason,
                 within[0].name, within[0].psnr, within[0].predicted_ms, budget_ms)
        return Selection(within[0], PREDICTED, (), reason)
    order = shortlist(picks, budget_ms=budget_ms, admit_ms=admit_ms, limit=limit)
    if not order:
        raise SearchError(f"{where}: none of the {len(picks)} trials is predicted within {admit_ms:g} ms (budget.latency_ms "
                          f"plus budget.slack; {_fastest(picks)}); raise the trials or the budget")
    log.info("%s: measuring up to %d candidate(s), best PSNR first, against the %g ms budget", where, len(order), budget_ms)
    measured: list[Measurement] = []
    for pick in order:
        ms = float(measure(pick.item))
        m = Measurement(pick.name, pick.psnr, pick.predicted_ms, ms, ms <= budget_ms)
        measured.append(m)
        log.info("%s: %s, %.2f dB: predicted %.2f ms, measured %.2f ms (%+.1f%%): %s", where, m.name, m.psnr,
                 m.predicted_ms, m.measured_ms, 100 * m.error, "fits" if m.fits else "over the budget")
        if m.fits:
            return Selection(pick, MEASURED, tuple(measured))
    closest = min(measured, key=lambda m: (m.measured_ms, m.name))
    raise SearchError(f"{where}: none of the {len(measured)} candidates measured fits the {budget_ms:g} ms budget (closest: "
                      f"{closest.name}, {closest.measured_ms:.2f} ms measured, {closest.predicted_ms:.2f} ms predicted); "
                      "raise budget.verify_candidates or budget.latency_ms")
