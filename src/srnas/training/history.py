"""The training curve: ``train_log.csv``, one row per reported step (``dvc plots`` and the Snakemake report read it).

Columns: ``step``, the mean of each loss over the last ``log_every`` steps, ``lr``, and each validation figure on the
rows of the steps it was computed at (empty elsewhere). No wall-clock figure, so the same training writes the same
bytes. The rows live in ``last.ckpt`` too (:meth:`TrainHistory.state`), so a killed and resumed run drops the rows the
killed run wrote after its last checkpoint and writes the file an uninterrupted run writes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from srnas.atomic import write_text
from srnas.checkpoint import CheckpointError

__all__ = ["HISTORY_FILE", "TrainHistory"]

HISTORY_FILE = "train_log.csv"


class TrainHistory:
    """The rows of ``train_log.csv`` by step; ``columns`` after ``step`` in file order."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.columns = columns
        self._rows: dict[int, dict[str, float]] = {}

    def record(self, step: int, figures: dict[str, float]) -> None:
        """Add ``figures`` (those named by ``columns``; others are ignored) to the row of ``step``."""
        row = self._rows.setdefault(step, {})
        row.update({name: float(value) for name, value in figures.items() if name in self.columns})

    def has(self, step: int) -> bool:
        """Whether ``step`` has a row."""
        return step in self._rows

    def state(self) -> list[dict[str, float]]:
        """The rows as plain data for ``last.ckpt``: rows up to its step only, so a resume rewinds them too."""
        return [{"step": float(step), **row} for step, row in sorted(self._rows.items())]

    def restore(self, path: Path, saved: Any) -> None:
        """Replace the rows with a checkpoint's (``saved``: :meth:`state`; None for a checkpoint written before the
        history was kept, which leaves it empty). CheckpointError naming ``path`` when they cannot be read."""
        self._rows = {}
        try:
            for row in saved or ():
                self._rows[int(row["step"])] = {k: float(v) for k, v in row.items() if k != "step"}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{path}: cannot restore the training history: {exc}") from None

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("step", *self.columns))
        for step, row in sorted(self._rows.items()):
            writer.writerow((step, *(repr(row[name]) if name in row else "" for name in self.columns)))
        return out.getvalue()

    def write(self, path: Path) -> None:
        """Write the file atomically (a reader sees the previous rows or the new ones, never a half-written file)."""
        write_text(path, self.to_csv())
