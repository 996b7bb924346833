"""The smoke DAG through DVC's front door: ``dvc exp run`` with the smoke profile on an ExecuTorch (XNNPACK) target,
a second experiment, the metrics and plots compared, and ``dvc push`` / ``dvc pull`` through a remote into a fresh
clone (the Snakemake runs, on the default target: test_pipeline.py)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from test_pipeline import BIN, ROOT, _copy_project, _run, _stage_runs

pytestmark = pytest.mark.slow

SMOKE_OVERLAYS = ("config/smoke.yaml", "config/smoke_xnnpack.yaml")
XNNPACK_TARGET = "cpu_xnnpack"


@dataclass(frozen=True)
class DvcProject:
    path: Path
    first: str  # the name of the experiment that ran the smoke DAG


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> DvcProject:
    """A git + DVC project in which ``dvc exp run`` ran the smoke DAG once, shared by the DVC tests of this module; its
    latency target is ExecuTorch with the XNNPACK delegate (config/smoke_xnnpack.yaml stacked on the smoke profile)."""
    project = _copy_project(tmp_path_factory.mktemp("dvc"))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "ci@example.invalid"],
        ["git", "config", "user.name", "ci"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "project"],
    ):
        _run(cmd, project)
    overrides = _run([str(BIN / "srnas"), "config", "dvc-args", *SMOKE_OVERLAYS], project).stdout.split()
    return DvcProject(project, _experiment(_run([str(BIN / "dvc"), "exp", "run", *overrides], project)))


def test_dvc_exp_run_selects_the_smoke_profile(dvc_project: DvcProject) -> None:
    project, first = dvc_project.path, dvc_project.first
    assert (project / "results" / "report.md").exists()
    assert (project / "dvc.lock").exists()
    assert "srnas-smoke" in (project / "params.yaml").read_text()
    # every stage that prices or times a network worked on the ExecuTorch target
    results = project / "results"
    table = json.loads((results / "profile_device" / XNNPACK_TARGET / "table.json").read_text())
    assert table["target"]["runtime"] == "executorch_xnnpack_fp32" and table["target"]["threads"] == 1
    for rel in ("search_arch/arch.json", "search_ratio/ratio.json"):
        assert XNNPACK_TARGET in (results / rel).read_text(), rel
    verdict = json.loads((results / "check_budget.json").read_text())
    assert verdict["target"] == XNNPACK_TARGET and verdict["within_budget"]
    # the budget's verdicts cover the baselines XNNPACK can run; bicubic has no .pte (srnas.export), so it has none
    assert sorted(b["model"] for b in verdict["baselines"]) == ["ecbsr_fit", "plain16"]

    again = _run([str(BIN / "dvc"), "repro"], project)
    assert "Running stage" not in again.stdout, again.stdout
    shown = json.loads(_run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout)
    assert _metric_files(shown) == {"results/metrics.json"}, "one curated metrics file: the headline figures"
    runs = _stage_runs(project)
    assert {"prepare_data", "evaluate", "search_arch", "report"} <= {run["stage"] for run in runs}
    assert len({run["pipeline_run_id"] for run in runs}) == 1

    # A second experiment with one param changed: only profiling and the report rerun, and the two compare.
    second_run = _run([str(BIN / "dvc"), "exp", "run", "-S", "profile.runs=4"], project)
    second = _experiment(second_run)
    ran = set(re.findall(r"Running stage '([^'@]+)", second_run.stdout))
    assert ran == {"validate_config", "profile_model", "profile_final", "profile_deployed", "report"}, second_run.stdout
    table = json.loads(_run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    headline = {name: data for name, data in _experiment_metrics(table).items() if name in (first, second)}
    assert set(headline) == {first, second}, table
    for data in headline.values():  # real values in both experiments' commits, not "!"
        assert data["final"]["psnr_val"] > 20.0 and data["best_baseline"]["verdict_ms"] > 0.0
    diff = json.loads(_run([str(BIN / "dvc"), "metrics", "diff", first, second, "--all", "--json"], project).stdout)
    assert diff["results/metrics.json"]["final.psnr_val"]["diff"] == 0.0  # profiling reran; the weights did not change
    exp_diff = json.loads(_run([str(BIN / "dvc"), "exp", "diff", first, second, "--json"], project).stdout)
    assert exp_diff["params"]["params.yaml"]["profile.runs"] == {"old": 3, "new": 4, "diff": 1}
    _run([str(BIN / "dvc"), "plots", "diff", first, second, "-o", "plots"], project)
    page = (project / "plots" / "index.html").read_text()
    titles = ("Training loss: plain16 x2", "Training loss: supernet", "Training loss: fine-tuning", "Stage-2 trials",
              "Stage-2 Pareto front", "PSNR versus latency of every model")
    for title in titles:
        assert f'"text": "{title}' in page, title
    assert page.count(f'"{first}"') >= len(titles) and page.count(f'"{second}"') >= len(titles), "both experiments' data"


# The commands of README's "A DVC remote", which the test below runs (its remote a local folder, not an SSH server).
REMOTE_COMMANDS = ("dvc remote add -d store",
                   "git add .dvc/config dvc.lock params.yaml results/metrics.json results/models.csv",
                   "dvc push", "dvc pull && make checkout", "dvc status", "snakemake -n")
# What a fresh clone gets back from the remote: prepared data, checkpoints, the latency table, and the stage outputs
# neither git nor DVC kept before they were cached (stage JSONs, the report).
RESTORED = ("prepare_data/manifest.json", "train_supernet/supernet.pt", f"profile_device/{XNNPACK_TARGET}/table.json",
            "finetune/model.pt", "train_baseline/plain16_x2/model.pt", "check_budget.json", "report.md")


def test_dvc_push_then_pull_into_a_fresh_clone_leaves_nothing_to_rerun(dvc_project: DvcProject, tmp_path: Path) -> None:
    """``dvc push`` after a run to a remote (a local folder here, an SSH server on a cluster), then in a fresh clone
    ``dvc pull && make checkout``: every output is back, byte for byte, and neither ``dvc status`` nor ``snakemake -n``
    has anything to do. ``make checkout`` touches the outputs without Snakemake's hooks (no MLflow run is opened)."""
    section = re.search(r"^### A DVC remote$(.*?)^##", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert section, "README.md: no '### A DVC remote' section"
    for command in REMOTE_COMMANDS:
        assert command in section.group(1), f"README's 'A DVC remote' does not show {command!r}"
    project, dvc, store = dvc_project.path, str(BIN / "dvc"), tmp_path / "srnas-store"
    for cmd in (
        [dvc, "remote", "add", "-d", "store", str(store)],
        ["git", "add", ".dvc/config", "dvc.lock", "params.yaml", "results/metrics.json", "results/models.csv"],
        ["git", "commit", "-q", "-m", "the smoke run and its DVC remote"],
        [dvc, "push"],
    ):
        _run(cmd, project)

    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "results" / "prepare_data").exists(), "git carries none of the outputs"
    _run([dvc, "pull"], clone)
    # `make checkout`, with this test's environment instead of a new one in the clone (-o: no `make setup`)
    _run(["make", "-o", ".venv/.srnas-installed", f"BIN={BIN}", "checkout"], clone)
    for rel in RESTORED:
        assert (clone / "results" / rel).read_bytes() == (project / "results" / rel).read_bytes(), rel
    assert json.loads(_run([dvc, "status", "--json"], clone).stdout) == {}
    dry = _run([str(BIN / "snakemake"), "-n"], clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert not (clone / "mlflow.db").exists() and not (clone / ".srnas").exists(), "make checkout opened an MLflow run"


def _experiment(proc: subprocess.CompletedProcess[str]) -> str:
    """The name of the experiment ``dvc exp run`` just ran."""
    found = re.search(r"Ran experiment\(s\): (\S+)", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    return found.group(1)


def _metric_files(shown: dict[str, Any]) -> set[str]:
    """Every metrics file in ``dvc metrics show --json`` (``{rev: {"data": {file: {"data": ...}}}}``)."""
    return {name for rev in shown.values() for name in rev.get("data", {})}


def _experiment_metrics(node: Any) -> dict[str, dict]:
    """Experiment name -> the data of results/metrics.json, from ``dvc exp show --json``."""
    found: dict[str, dict] = {}
    if isinstance(node, dict):
        data = node.get("data")
        if node.get("name") and isinstance(data, dict):
            metrics = (data.get("metrics") or {}).get("results/metrics.json", {}).get("data")
            if metrics:
                found[node["name"]] = metrics
        for value in node.values():
            found |= _experiment_metrics(value)
    elif isinstance(node, list):
        for value in node:
            found |= _experiment_metrics(value)
    return found
