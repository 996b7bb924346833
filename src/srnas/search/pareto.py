"""The PSNR / latency Pareto front of a search, as CSV and as a plot."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from srnas import atomic
from srnas.search.study import TrialRecord

__all__ = ["pareto_front", "plot_front", "write_csv", "write_rows"]


def pareto_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Trials no other trial beats on both PSNR (higher) and predicted latency (lower), by latency; one per name."""
    unique: dict[str, TrialRecord] = {}
    for r in records:
        unique.setdefault(r.candidate.name, r)
    ordered = sorted(unique.values(), key=lambda r: (r.latency_ms, -r.psnr, r.number))
    front: list[TrialRecord] = []
    for r in ordered:
        if not front or r.psnr > front[-1].psnr:
            front.append(r)
    return front


def write_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """``rows`` as CSV with columns ``fields`` (floats to 4 decimals), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    atomic.write_text(path, buffer.getvalue())


def write_csv(path: str | os.PathLike[str], records: Sequence[TrialRecord]) -> None:
    """One row per trial (:meth:`TrialRecord.row`)."""
    rows = [r.row() for r in records]
    write_rows(path, rows, list(rows[0]) if rows else ["trial", "name", "psnr", "latency_ms", "feasible"])


def plot_front(path: str | os.PathLike[str], records: Sequence[TrialRecord], front: Sequence[TrialRecord],
               budget_ms: float, chosen: TrialRecord | None, title: str, *, admit_ms: float | None = None) -> None:
    """Every trial (admitted / not), the front as a step line, the budget, the admission limit (``admit_ms``: the
    budget plus the slack) and the chosen point; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for feasible, color, label in ((True, "tab:blue", "trial admitted (predicted)"), (False, "0.7", "trial not admitted")):
        pts = [r for r in records if r.feasible == feasible]
        if pts:
            ax.scatter([r.latency_ms for r in pts], [r.psnr for r in pts], s=12, color=color, alpha=0.7, label=label)
    if front:
        ax.step([r.latency_ms for r in front], [r.psnr for r in front], where="post", color="tab:orange", label="Pareto front")
    ax.axvline(budget_ms, color="tab:red", linestyle="--", linewidth=1, label=f"budget {budget_ms:g} ms")
    if admit_ms is not None and admit_ms > budget_ms:
        ax.axvline(admit_ms, color="tab:red", linestyle=":", linewidth=1, label=f"admitted up to {admit_ms:.3g} ms")
    if chosen is not None:
        ax.scatter([chosen.latency_ms], [chosen.psnr], marker="*", s=160, color="tab:green", zorder=5,
                   label=f"chosen {chosen.candidate.name}")
    ax.set_xscale("log")
    ax.set_xlabel("predicted latency (ms, log scale)")
    ax.set_ylabel("validation PSNR, inherited weights (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
