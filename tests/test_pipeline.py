"""The whole DAG on the smoke profile through Snakemake, with its MLflow runs (DVC's front door: test_pipeline_dvc.py;
killed and resumed at seeded moments: test_pipeline_resume.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ("Snakefile", "workflow", "profiles", "dvc.yaml", "params.yaml", "config", "src", ".dvcignore", ".gitignore",
                 "data", "Makefile")
SMOKE = ("--cores", "2", "--configfile", "config/smoke.yaml")
# The Snakemake smoke runs hide native bf16: a CPU without it (most laptops, ARM servers, Apple silicon) (see below).
HIDDEN_BF16 = {"SRNAS_HIDE_BF16": "1"}

pytestmark = pytest.mark.slow


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRNAS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env | (extra or {})


def _run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(extra_env), capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _copy_project(dest: Path, latency_cache: Path | None = None) -> Path:
    """The project's files in ``dest``; with ``latency_cache`` (conftest's smoke_latency_cache), a copy of that measured
    cache as the project's ``.srnas/latency``, so that the smoke DAG there reads those layer timings."""
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if latency_cache is not None:
        shutil.copytree(latency_cache, dest / ".srnas" / "latency")
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


def test_snakemake_smoke_pipeline_without_native_bf16(smoke_project: Path) -> None:
    """The whole DAG as on a CPU without native bf16 (most laptops, ARM servers, Apple silicon): SRNAS_HIDE_BF16 hides
    it, and the default target's ``runtime: auto`` resolves to a runtime this machine then runs. (The DVC test below
    runs the DAG with the machine as it is.)"""
    project = smoke_project

    report = (project / "results" / "report.md").read_text()
    assert "## x2" in report and "| bicubic |" in report and "| plain16 |" in report
    metrics = json.loads((project / "results" / "metrics.json").read_text())  # the headline figures (dvc exp show)
    assert metrics["final"]["psnr_val"] > 20.0 and metrics["final"]["verdict_ms"] > 0.0 and metrics["budget_ms"] > 0.0
    assert metrics["best_baseline"]["model"] in ("plain16", "ecbsr_fit") and metrics["best_baseline"]["psnr_val"] > 20.0
    with open(project / "results" / "models.csv", newline="") as handle:  # every model's PSNR and latency (dvc plots)
        models = {row["model"]: row for row in csv.DictReader(handle)}
    assert set(models) == {"bicubic", "plain16", "ecbsr_fit", "final"} and float(models["bicubic"]["psnr"]) > 20.0
    assert all(float(row["fastest_ms"]) > 0.0 for row in models.values())
    for figure in ("pareto_x2.png", "comparison_x2.png"):
        assert (project / "results" / "report" / figure).stat().st_size > 1000
    page = (project / "results" / "report" / "report.html").read_text()  # the report with its tables, images inlined
    assert "<table>" in page and "<td>bicubic</td>" in page and page.count('src="data:image/png;base64,') >= 3
    for curve in ("train_baseline/plain16_x2", "train_supernet", "finetune"):
        with open(project / "results" / curve / "train_log.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        steps = [int(row["step"]) for row in rows]
        assert steps and steps == sorted(steps) and all(float(row["train_loss"]) > 0.0 for row in rows), (curve, rows)
    assert [row["step"] for row in rows] and float(json.loads((project / "results" / "finetune" / "train_metrics.json")
                                                              .read_text())["steps"]) == steps[-1]
    parity = json.loads((project / "results" / "export" / "plain16_x2" / "parity.json").read_text())
    assert parity["onnxruntime"]["passed"] and parity["onnxruntime"]["max_abs_diff_random"] <= 1e-4
    profile = json.loads((project / "results" / "profile_model" / "plain16_x2.json").read_text())
    assert {r["runtime"] for r in profile["results"]} >= {"torch_fp32", "onnxruntime_fp32"}
    # the final model and plain16 as deployed: four checked files each, scored and timed through each (the report's
    # table per runtime x precision)
    forms = {"onnxruntime_fp32", "onnxruntime_int8", "executorch_xnnpack_fp32", "executorch_xnnpack_int8"}
    for parity_file, scores_file, latency_file in (
            ("export/final_x2/parity.json", "evaluate/final_x2.json", "profile_model/final_x2.json"),
            ("deploy/plain16_x2/parity.json", "deploy/plain16_x2/evaluate.json", "deploy/plain16_x2/profile.json")):
        deployed = json.loads((project / "results" / parity_file).read_text())["deployed"]
        assert set(deployed) == forms and all(d["parity"]["passed"] for d in deployed.values()), parity_file
        assert deployed["onnxruntime_fp32"]["parity"]["bounded"] and not deployed["executorch_xnnpack_int8"]["parity"]["bounded"]
        scores = json.loads((project / "results" / scores_file).read_text())
        assert set(scores["deployed"]) == forms and all(d["sets"]["val"]["psnr"] > 20.0 for d in scores["deployed"].values())
        assert scores["deployed"]["onnxruntime_fp32"]["sets"]["val"]["psnr"] == pytest.approx(scores["sets"]["val"]["psnr"], abs=0.01)
        latencies = json.loads((project / "results" / latency_file).read_text())["results"]
        assert {r["label"] for r in latencies} >= forms, latency_file
    assert "## As deployed: runtime x precision" in report and "### `plain16_x2` as deployed" in report
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
    assert evaluate["metrics"]["psnr_val_x2"] == pytest.approx(float(models["bicubic"]["psnr"]), abs=1e-4)

    # Nothing left to do, even with MLflow pointed elsewhere: the tracking settings are no rule's params.
    other = yaml.safe_load((project / "config" / "smoke.yaml").read_text())
    other["tracking"] = {"uri": "sqlite:///elsewhere.db", "experiment": "srnas-elsewhere"}
    (project / "other.yaml").write_text(yaml.safe_dump(other), encoding="utf-8")
    dry = _run([str(BIN / "snakemake"), "-n", "--configfile", "other.yaml"], project, HIDDEN_BF16)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # the one page a Snakemake user opens: every report() output of the rules, with its caption
    _run([str(BIN / "snakemake"), "--report", "report.html", "--configfile", "config/smoke.yaml"], project, HIDDEN_BF16)
    page = (project / "report.html").read_text()
    for item in ("pareto_x2.png", "comparison_x2.png", "report.html", "metrics.json", "models.csv", "pareto.png",
                 "Stage 2, the architecture search", "The headline figures", "srnas-smoke"):
        assert item in page, item


def test_smoke_pipeline_in_mlflow(smoke_project: Path) -> None:
    """What an MLflow user looks at after the smoke run: the pipeline run's summary and report, per-model metric keys,
    every exported model logged in both flavours, the final model registered with its tags, the prepared data as a
    dataset input. (Another tracking URI and experiment leave Snakemake nothing to do: the test above.)"""
    from mlflow import MlflowClient

    project = smoke_project
    metrics = {model: json.loads((project / "results" / "evaluate" / f"{model}.json").read_text())["metrics"]
               for model in ("final_x2", "bicubic_x2", "plain16_x2")}
    verdict = json.loads((project / "results" / "check_budget.json").read_text())
    c = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = c.get_experiment_by_name("srnas-smoke").experiment_id
    (parent,) = c.search_runs([experiment], "tags.`srnas.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    assert {"scale": "2", "target": verdict["target"], "budget_ms": str(verdict["budget_ms"])}.items() <= parent.data.params.items()
    assert parent.data.metrics["psnr_val_x2"] == pytest.approx(metrics["final_x2"]["psnr_val_x2"])
    assert parent.data.metrics["latency_ms"] == pytest.approx(verdict["verdict_ms"])
    assert {"report.md", "report"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert "report/pareto_x2.png" in {a.path for a in c.list_artifacts(parent.info.run_id, "report")}

    (report,) = c.search_runs([experiment], "tags.`srnas.stage` = 'report'")
    for model in ("final_x2", "bicubic_x2", "plain16_x2"):
        assert report.data.metrics[f"{model}.psnr_val_x2"] == pytest.approx(metrics[model]["psnr_val_x2"])

    # plain16 twice: by its export and by export_deployed (the baseline exported in every deployed form)
    for model, flavours in (("plain16", ["onnx", "onnx", "pytorch", "pytorch"]), ("final", ["onnx", "pytorch"])):
        logged = c.search_logged_models([experiment], filter_string=f"tags.`srnas.model` = '{model}'")
        assert sorted(m.tags["srnas.flavor"] for m in logged) == flavours, model
    (version,) = c.search_model_versions("name = 'srnas-smoke-x2'")
    assert {"target": verdict["target"], "scale": "2"}.items() <= version.tags.items()
    assert float(version.tags["latency_ms"]) == pytest.approx(verdict["verdict_ms"], abs=1e-3)
    assert {"budget_ms", "psnr_val_x2"} <= set(version.tags)

    train = c.search_runs([experiment], "tags.`srnas.stage` = 'train_baseline' and tags.`srnas.model` = 'plain16'")[0]
    (dataset,) = train.inputs.dataset_inputs
    assert dataset.dataset.name == "skimage" and {t.value for t in dataset.tags} == {"training"}
