"""The smoke DAG SIGKILLed at seeded moments and resumed the documented way ends like the uninterrupted run
(tests/conftest.py's ``smoke_project``). Its own file, so that pytest-xdist can run it on the other worker than the
uninterrupted run's tests (tests/conftest.py's end)."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from test_pipeline import BIN, HIDDEN_BF16, SMOKE, _copy_project, _env, _run

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------------- killed and resumed
#
# The smoke DAG SIGKILLed (its whole process group: Snakemake and the stage it runs) at seeded moments inside several
# stages, each time resumed the documented way (`snakemake --unlock`, then the same command again), must end with the
# outputs of the uninterrupted run above, bit for bit: weights, metrics, the chosen architecture and ratios, the
# report's tables. Both runs start from one latency cache (latency.cache_dir, keyed by the target's fingerprint;
# conftest's smoke_latency_cache): the measured layer table and the `runtime: auto` choice are the one input that may
# legitimately change a search, so both runs' profile_device read the same measurements instead of timing the
# machine again.

FAULT_SEED = int(os.environ.get("SRNAS_TEST_FAULT_SEED", "20261201"))  # picks the kill points (another seed: set it)
KILLS = 3
POLL_S = 0.005
RUN_TIMEOUT_S = 900


@dataclass(frozen=True)
class KillPoint:
    """A moment inside one stage. ``reached(project, since_ns)``: the file showing that the moment has come in the run
    started at ``since_ns`` (None before); ``unfinished(project, shown)``: the stage's output that must still be
    missing when the kill has landed, so the kill is known to have interrupted the stage, not followed it."""

    stage: str
    moment: str
    reached: Callable[[Path, int], Path | None]
    unfinished: Callable[[Path, Path], Path]

    def __str__(self) -> str:
        return f"{self.stage} ({self.moment})"


def _written(pattern: str, times: int = 1) -> Callable[[Path, int], Path | None]:
    """The ``times``-th write, in this run, of a file matching ``pattern`` (each write is a new mtime: files are
    replaced atomically)."""
    writes: dict[tuple[int, Path], set[int]] = {}

    def reached(project: Path, since_ns: int) -> Path | None:
        for path in project.glob(pattern):
            try:
                mtime = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if mtime >= since_ns:
                seen = writes.setdefault((since_ns, path), set())
                seen.add(mtime)
                if len(seen) >= times:
                    return path
        return None

    return reached


def _logged(log: str, pattern: str) -> Callable[[Path, int], Path | None]:
    """A line matching ``pattern`` in the stage's log written in this run (the CLI truncates its log when it starts)."""
    regex = re.compile(pattern, re.MULTILINE)

    def reached(project: Path, since_ns: int) -> Path | None:
        path = project / log
        try:
            if path.stat().st_mtime_ns < since_ns:
                return None
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        return path if regex.search(text) else None

    return reached


def _output(rel: str) -> Callable[[Path, Path], Path]:
    return lambda project, shown: project / rel


def _beside(name: str) -> Callable[[Path, Path], Path]:
    return lambda project, shown: shown.parent / name


def _kill_points(rng: random.Random) -> list[KillPoint]:
    """One moment per stage, inside the stage's work (``rng`` picks among a stage's moments): mid-write for the stages
    whose writing is the work (prepare_data's folder, export's ONNX file), after a checkpoint for the trainings.

    search_arch is killed once every trial is stored and its candidates are being measured: its study then resumes
    with nothing left to run. Killed between trials, a resumed search reopens its sampler from the seed and asks again
    for trials it already ran, so it completes a different set than an uninterrupted one: not a moment to draw until
    the study resumes its sampler too. evaluate and profile_model write their one JSON file at the end and log
    nothing before it worth aiming at."""
    model = rng.choice(("plain16", "ecbsr_fit"))
    nth = rng.choice((1, 2))
    return [
        KillPoint("prepare_data", "its first image written", _written("results/.prepare_data.*.tmp/train/x2/hr/*.png"),
                  _output("results/prepare_data")),
        KillPoint("profile_device", "the target's fingerprint logged", _logged("logs/profile_device/profile_device.log",
                                                                               r": fingerprint \w+"),
                  _output("results/profile_device/cpu_auto/table.json")),
        KillPoint("fit_baselines", "the first grid network timed", _logged("logs/fit_baselines/fit_baselines.log",
                                                                           r"m\d+c\d+: "),
                  _output("results/fit_baselines/choice.json")),
        KillPoint("train_baseline", f"{model}'s last.ckpt written {nth} time(s)",
                  _written(f"results/train_baseline/{model}_x2/last.ckpt", nth), _beside("model.pt")),
        KillPoint("export", "an ONNX file being exported", _written("results/export/*/.model.onnx.*.tmp.onnx"),
                  _beside("model.onnx")),
        KillPoint("train_supernet", "last.ckpt written", _written("results/train_supernet/last.ckpt"),
                  _beside("supernet.pt")),
        KillPoint("search_arch", "every trial done, candidates being measured",
                  _logged("logs/search_arch/search_arch.log", r"measuring up to"), _output("results/search_arch/arch.json")),
        KillPoint("search_ratio", "candidates being measured", _logged("logs/search_ratio/search_ratio.log", r"measuring up to"),
                  _output("results/search_ratio/ratio.json")),
        KillPoint("finetune", "last.ckpt written", _written("results/finetune/last.ckpt"), _beside("model.pt")),
        KillPoint("check_budget", "the first baseline timed", _logged("logs/check_budget/check_budget.log",
                                                                      r" ms \((within|over) the "),
                  _output("results/check_budget.json")),
        KillPoint("report", "the Pareto figure written", _written("results/report/pareto_x2.png"),
                  _output("results/report.md")),
    ]


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` still alive (zombies waiting to be reaped do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _run_killed(project: Path, points: list[KillPoint], extra_env: dict[str, str]) -> list[str]:
    """The smoke DAG to completion, SIGKILLed (the whole process group) at each of ``points`` as it comes, each time
    followed by ``snakemake --unlock``; returns what happened, in order."""
    cmd = [str(BIN / "snakemake"), *SMOKE]
    remaining, happened = list(points), []
    log = project / "snakemake-runs.log"
    while True:
        since = time.time_ns()
        with open(log, "ab") as out:
            child = subprocess.Popen(cmd, cwd=project, env=_env(extra_env), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        hit: tuple[KillPoint, Path] | None = None
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while hit is None and child.poll() is None:
                assert time.monotonic() < deadline, f"run {len(happened) + 1} still running after {RUN_TIMEOUT_S} s"
                hit = next(((p, shown) for p in remaining if (shown := p.reached(project, since)) is not None), None)
                if hit is None:
                    time.sleep(POLL_S)
            if hit is not None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(60)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(60)
        if hit is None:
            tail = log.read_text(errors="replace")[-4000:]
            assert child.returncode == 0, f"run {len(happened) + 1} failed (exit {child.returncode}):\n{tail}"
            assert not remaining, f"the DAG finished without reaching {', '.join(map(str, remaining))}:\n{tail}"
            return happened
        point, shown = hit
        assert child.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while (alive := _live_group_members(child.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive, f"processes {alive} of the killed run outlived SIGKILL of its group"
        unfinished = point.unfinished(project, shown)
        assert not unfinished.exists(), (f"killed at {point}, but {unfinished.relative_to(project)} was already written: "
                                         "the kill came after the stage, not inside it")
        happened.append(f"{point} in run {len(happened) + 1}, {(time.time_ns() - since) / 1e9:.0f} s in")
        print(f"killed: {happened[-1]}")  # shown when the test fails
        remaining.remove(point)
        _run([str(BIN / "snakemake"), "--unlock", *SMOKE], project, extra_env)


# Fields that measure time and legitimately differ between two runs: never compared (the reason beside each).
TIMING_KEYS = {
    "seconds": "wall-clock seconds of a training or a table build",
    "steps_per_s": "training speed",
    "search_s": "wall-clock seconds of a search",
    "mean_ms": "profile_model's latency per runtime",
    "median_ms": "profile_model's latency per runtime",
    "p90_ms": "profile_model's latency per runtime",
    "minor_faults_per_run": "page faults while profile_model times a runtime (the allocator's state)",
    "measured_ms": "a search candidate or the final model timed on the target",
    "parent_measured_ms": "search_ratio's unpruned parent timed on the target",
    "measured_speedup": "from the two measured latencies above",
    "latency_error": "(measured - predicted) / predicted",
    "error": "a measured candidate's (measured - predicted) / predicted",
    "speedup_error": "measured against predicted speedup",
    "prediction_abs_error_median_pct": "measured against predicted latency",
    "verdict_ms": "check_budget's and fit_baselines' timing",
    "wall_clock_ms": "check_budget's and fit_baselines' timing",
    "normalised_ms": "check_budget's timing at the table's reference speed",
    "headroom_ms": "the budget minus check_budget's timing",
    "busy_cores": "cores other processes kept busy while profile_model timed a runtime",
    "disturbed": "profile_model's flag: timed while the machine was busy",
    "disturbed_measurements": "check_budget's and its baselines' measurements the quiet guard saw disturbed",
    "busy": "check_budget's flag: some of its measurements were disturbed",
}
TIMING_KEY_PREFIXES = {
    "latency_ms_": "profile_model's median latency per runtime (metrics.json, MLflow)",
    "latency_p90_ms_": "profile_model's p90 latency per runtime",
}
# Fields that record how a run went rather than what it produced.
RUN_KEYS = {
    ("resumed_from_step",): "the step a training resumed from: the kill it survived",
    ("profile_device/cpu_auto/build.json", "measured"): "layers measured, not read from the latency cache: the resumed "
                                                        "run reads them all from the uninterrupted run's cache",
    ("profile_device/cpu_auto/build.json", "reused"): "layers read from the latency cache (see measured)",
    ("search_arch/arch.json", "study", "name"): "a digest of supernet.pt's bytes, which hold the training's seconds",
}
TIMING_CSV_COLUMNS = {"seconds": "a trial's wall-clock seconds", "worker": "the process id that ran a trial",
                      "fastest_ms": "models.csv: profile_model's latency of a model's fastest runtime",
                      "runtime": "models.csv: which runtime was fastest (the latencies decide)"}
# report.md tables: columns and rows (by their first cell) that hold timings.
TIMING_REPORT_COLUMNS = {"train steps (s)": "training seconds in brackets", "measured ms": "timed on the target",
                         "prediction error": "against the measured latency",
                         "latency ms": "the deployment tables: each deployed file timed (profile_final, profile_deployed)"}
TIMING_REPORT_COLUMN = re.compile(r"(torch|onnxruntime|executorch)_\w+ ms")  # profile_model's latency per runtime
TIMING_REPORT_ROWS = {"seconds": "supernet training", "measured latency": "search_arch's chosen architecture timed",
                      "speedup over the unpruned parent": "holds the measured speedup",
                      "fine-tuning": "holds the fine-tuning's seconds"}
TIMING_REPORT_ROW = re.compile(r"measured on `\w+`")  # check_budget's verdict
# Files that are not outputs but the state a stage resumes from, or Snakemake's bookkeeping.
NOT_COMPARED = {
    "last.ckpt": "a training's resume state (holds elapsed seconds)",
    "study.db": "search_arch's and search_ratio's Optuna studies (resume state; trials hold their timestamps)",
    ".snakemake_timestamp": "Snakemake's marker of a directory output",
    "pareto_x2.png": "the report's PSNR-versus-latency plot, drawn from profile_model's latencies",
    "report.html": "report.md's tables with their timings, and the Pareto plot, in one page",
}


def _excluded(rel: str, path: tuple[str, ...]) -> bool:
    key = path[-1]
    return (key in TIMING_KEYS or key.startswith(tuple(TIMING_KEY_PREFIXES)) or (key,) in RUN_KEYS
            or (rel, *path) in RUN_KEYS)


def _assert_same(rel: str, a: Any, b: Any, path: tuple[str, ...] = ()) -> None:
    """``a`` (uninterrupted) and ``b`` (killed and resumed) equal, bit for bit, but for the excluded fields."""
    import torch

    where = f"{rel}: {'.'.join(path) or 'value'}"
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max abs diff {(a.float() - b.float()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        keys = {k for k in a.keys() | b.keys() if not _excluded(rel, (*path, str(k)))}
        assert {k for k in a if k in keys} == {k for k in b if k in keys}, f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in sorted(keys, key=str):
            _assert_same(rel, a[k], b[k], (*path, str(k)))
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(rel, x, y, (*path, str(i)))
    else:
        both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        assert a == b or both_nan, f"{where}: {a!r} (uninterrupted) != {b!r} (killed and resumed)"


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_CSV_COLUMNS} for row in csv.DictReader(handle)]


def _report_tables(path: Path) -> list[list[list[str]]]:
    """report.md's tables (header row first; the separator row dropped) without their timing columns and rows."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                tables[-1].append(cells)
        previous = line
    kept = []
    for header, *rows in tables:
        columns = [i for i, h in enumerate(header) if h not in TIMING_REPORT_COLUMNS and not TIMING_REPORT_COLUMN.fullmatch(h)]
        rows = [r for r in rows if r[0] not in TIMING_REPORT_ROWS and not TIMING_REPORT_ROW.fullmatch(r[0])]
        kept.append([[row[i] for i in columns] for row in (header, *rows)])
    return kept


def _assert_same_results(reference: Path, resumed: Path) -> list[str]:
    """Every output under ``results/`` of both projects compared (see the tables above); returns what was compared."""
    import torch

    def outputs(project: Path) -> set[str]:
        root = project / "results"
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name not in NOT_COMPARED}

    names = outputs(reference)
    assert outputs(resumed) == names, (f"only uninterrupted: {sorted(names - outputs(resumed))}; "
                                       f"only killed and resumed: {sorted(outputs(resumed) - names)}")
    for rel in sorted(names):
        a, b = reference / "results" / rel, resumed / "results" / rel
        if a.suffix == ".json":
            _assert_same(rel, json.loads(a.read_text()), json.loads(b.read_text()))
        elif a.suffix == ".csv":
            _assert_same(rel, _csv_rows(a), _csv_rows(b))
        elif a.suffix in (".pt", ".ckpt"):
            _assert_same(rel, torch.load(a, weights_only=True), torch.load(b, weights_only=True))
        elif a.name == "report.md":
            _assert_same(rel, _report_tables(a), _report_tables(b))
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel}: the files differ"
    return sorted(names)


def test_smoke_pipeline_killed_and_resumed_ends_like_an_uninterrupted_run(
        smoke_project: Path, smoke_latency_cache: Path, tmp_path: Path) -> None:
    """SIGKILL of the whole Snakemake process group at KILLS seeded moments in different stages (FAULT_SEED; set
    SRNAS_TEST_FAULT_SEED to draw others), each followed by ``snakemake --unlock`` and the same command again; the outputs
    then equal the uninterrupted run's (``smoke_project``), but for the fields listed above that measure time."""
    rng = random.Random(FAULT_SEED)
    points = rng.sample(_kill_points(rng), KILLS)
    print(f"fault seed {FAULT_SEED}: killing at {', '.join(map(str, points))}")
    project = _copy_project(tmp_path, smoke_latency_cache)

    happened = _run_killed(project, points, HIDDEN_BF16)
    assert len(happened) == KILLS

    compared = _assert_same_results(smoke_project, project)
    assert {"search_arch/arch.json", "search_ratio/ratio.json", "finetune/model.pt", "train_supernet/supernet.pt",
            "report.md", "metrics.json", "evaluate/final_x2.json"} <= set(compared)
