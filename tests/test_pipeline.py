"""The whole DAG on the smoke profile, through both front doors (Snakemake and DVC), with MLflow runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ("Snakefile", "workflow", "profiles", "dvc.yaml", "params.yaml", "config", "src", ".dvcignore")

pytestmark = pytest.mark.slow


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRNAS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env | (extra or {})


def _run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(extra_env), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _copy_project(dest: Path) -> Path:
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def _stage_runs(project: Path) -> list[dict]:
    from srnas import tracking
    from srnas.config import TrackingConfig

    cwd = Path.cwd()
    os.chdir(project)
    try:
        return tracking.query_runs(TrackingConfig(uri="sqlite:///mlflow.db", experiment="srnas-smoke"))
    finally:
        os.chdir(cwd)


def test_snakemake_smoke_pipeline_without_native_bf16(tmp_path: Path) -> None:
    """The whole DAG as on a CPU without native bf16 (most laptops, ARM servers, Apple silicon): SRNAS_HIDE_BF16 hides
    it, and the default target's ``runtime: auto`` resolves to a runtime this machine then runs. (The DVC test below
    runs the DAG with the machine as it is.)"""
    project = _copy_project(tmp_path)
    hidden = {"SRNAS_HIDE_BF16": "1"}
    _run([str(BIN / "snakemake"), "--cores", "2", "--configfile", "config/smoke.yaml"], project, hidden)

    report = (project / "results" / "report.md").read_text()
    assert "## x2" in report and "| bicubic |" in report and "| plain16 |" in report
    metrics = json.loads((project / "results" / "metrics.json").read_text())
    assert metrics["bicubic_x2"]["psnr_val_x2"] > 20.0
    assert metrics["plain16_x2"]["latency_ms_onnxruntime_fp32"] > 0.0
    for figure in ("pareto_x2.png", "comparison_x2.png"):
        assert (project / "results" / "report" / figure).stat().st_size > 1000
    parity = json.loads((project / "results" / "export" / "plain16_x2" / "parity.json").read_text())
    assert parity["onnxruntime"]["passed"] and parity["onnxruntime"]["max_abs_diff_random"] <= 1e-4
    profile = json.loads((project / "results" / "profile_model" / "plain16_x2.json").read_text())
    assert {r["runtime"] for r in profile["results"]} >= {"torch_fp32", "onnxruntime_fp32"}
    assert all("onnxruntime" in r["fingerprint"] for r in profile["results"])
    assert "## Supernet" in report and "## Latency model and pruning schemes" in report and "| filter_g16 |" in report
    supernet = json.loads((project / "results" / "train_supernet" / "train_metrics.json").read_text())
    assert supernet["steps"] == 20 and supernet["space_size"] > 1 and (project / "results" / "train_supernet" / "supernet.pt").is_file()
    table = json.loads((project / "results" / "profile_device" / "cpu_auto" / "table.json").read_text())
    build = json.loads((project / "results" / "profile_device" / "cpu_auto" / "build.json").read_text())
    choice = build["runtime_choice"]
    assert choice["runtime"] in ("torch_fp32", "onnxruntime_fp32") and "torch_bf16" not in choice["scores_ms"]
    assert table["entries"] and table["fingerprint"]["runtime"] == choice["runtime"]
    assert not table["fingerprint"]["cpu_flags"]["avx512_bf16"] and not table["fingerprint"]["cpu_flags"]["amx_bf16"]
    assert f"resolved it to `{choice['runtime']}`" in report
    arch = json.loads((project / "results" / "search_arch" / "arch.json").read_text())
    assert arch["trials"] == 8 and arch["chosen"]["predicted_ms"] <= arch["budget_ms"] and arch["chosen"]["measured_ms"] > 0
    assert "## Architecture search (stage 2)" in report and "search_arch/pareto.png" in report
    manifest = json.loads((project / "results" / "prepare_data" / "manifest.json").read_text())
    assert manifest["files"]
    assert (project / "logs" / "prepare_data" / "prepare_data.log").exists()

    runs = _stage_runs(project)
    stages = {run["stage"] for run in runs}
    assert {"prepare_data", "train_baseline", "export", "profile_model", "evaluate", "train_supernet", "profile_device",
            "search_arch", "report"} <= stages
    parents = {run["pipeline_run_id"] for run in runs}
    assert len(parents) == 1 and None not in parents, "all stages belong to one pipeline run"
    evaluate = next(run for run in runs if run["stage"] == "evaluate" and run["tags"]["srnas.model"] == "bicubic")
    assert evaluate["metrics"]["psnr_val_x2"] == pytest.approx(metrics["bicubic_x2"]["psnr_val_x2"])

    dry = _run([str(BIN / "snakemake"), "-n", "--configfile", "config/smoke.yaml"], project, hidden)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_dvc_exp_run_selects_the_smoke_profile(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
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
    overrides = _run([str(BIN / "srnas"), "config", "dvc-args", "config/smoke.yaml"], project).stdout.split()
    _run([str(BIN / "dvc"), "exp", "run", *overrides], project)
    assert (project / "results" / "report.md").exists()
    assert (project / "dvc.lock").exists()
    assert "srnas-smoke" in (project / "params.yaml").read_text()

    again = _run([str(BIN / "dvc"), "repro"], project)
    assert "Running stage" not in again.stdout, again.stdout
    shown = _run([str(BIN / "dvc"), "metrics", "show", "--json"], project)
    assert "psnr_val_x2" in shown.stdout
    assert "best_psnr" in shown.stdout  # search_arch's metrics (cache: false)
    runs = _stage_runs(project)
    assert {"prepare_data", "evaluate", "search_arch", "report"} <= {run["stage"] for run in runs}
    assert len({run["pipeline_run_id"] for run in runs}) == 1
