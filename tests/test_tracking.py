"""srnas.tracking: parent/child/candidate linkage across processes, failure marking, round trips, no-op mode."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from srnas import tracking
from srnas.config import DataConfig, TrackingConfig
from srnas.tracking import PIPELINE_RUN_ENV, STATE_FILE, TrackingError


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store; copying it saves each test the schema creation (~2 s)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking._client(TrackingConfig(uri=f"sqlite:///{path}"))
    return path


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template_db: Path) -> TrackingConfig:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PIPELINE_RUN_ENV, raising=False)
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return TrackingConfig(uri="sqlite:///mlflow.db", experiment="test", artifact_location="artifacts")


def client(cfg: TrackingConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")


def recorded() -> dict:
    return json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}


def run_in_subprocess(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != PIPELINE_RUN_ENV}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_lone_stages_in_two_processes_share_one_parent(cfg: TrackingConfig, tmp_path: Path) -> None:
    # First stage with no recorded parent (a lone `dvc repro` stage): it creates and records the parent.
    with tracking.stage_run(cfg, "prepare_data", {"data": {"scales": [2, 3]}}) as first:
        first.log_metrics({"images": 3})
    parent_id = tracking.current_pipeline(cfg)
    assert parent_id and list(recorded().values())[0]["run_id"] == parent_id

    # Second stage in another OS process finds the parent through the state file.
    result = run_in_subprocess(
        f"""
        from srnas.config import TrackingConfig
        from srnas.tracking import stage_run
        cfg = TrackingConfig(uri={cfg.uri!r}, experiment={cfg.experiment!r}, artifact_location={cfg.artifact_location!r})
        with stage_run(cfg, "train_supernet", {{"lr": 0.01}}, {{"srnas.scale": "2"}}) as run:
            run.log_metrics({{"loss": 0.25}})
            print(run.run_id)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    second_id = result.stdout.strip()
    assert "INFO" not in result.stderr, result.stderr  # mlflow/alembic chatter is silenced

    c = client(cfg)
    parent = c.get_run(parent_id)
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["srnas.pipeline"] == "true"
    for run_id, stage in ((first.run_id, "prepare_data"), (second_id, "train_supernet")):
        run = c.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["srnas.stage"] == stage
    assert c.get_run(first.run_id).data.params == {"data.scales": "[2, 3]"}
    assert c.get_run(second_id).data.metrics == {"loss": 0.25}
    assert "mlflow.source.git.commit" not in parent.data.tags  # tmp_path is no git checkout

    experiment = c.get_experiment_by_name("test")
    assert experiment.artifact_location == (tmp_path / "artifacts").resolve().as_uri()

    assert tracking.end_pipeline(cfg, "FINISHED") == parent_id
    assert c.get_run(parent_id).info.status == "FINISHED"
    assert not STATE_FILE.exists()
    assert tracking.end_pipeline(cfg) is None  # nothing left to end


def test_start_pipeline_and_env_override(cfg: TrackingConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    parent_id = tracking.start_pipeline(cfg, "smoke", {"srnas.profile": "smoke"})
    assert recorded()[f"{tracking._resolve_uri(cfg.uri)} test"]["run_id"] == parent_id
    c = client(cfg)
    assert c.get_run(parent_id).info.status == "RUNNING"
    assert c.get_run(parent_id).data.tags["srnas.profile"] == "smoke"

    with tracking.stage_run(cfg, "export", {}, {"srnas.model": "fsrcnn"}) as run:
        pass
    assert c.get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent_id
    assert c.get_run(run.run_id).info.run_name == "export:fsrcnn"

    # The env var wins over the state file.
    outer = c.create_run(c.get_experiment_by_name("test").experiment_id).info.run_id
    monkeypatch.setenv(PIPELINE_RUN_ENV, outer)
    with tracking.stage_run(cfg, "evaluate", {}) as run:
        pass
    assert c.get_run(run.run_id).data.tags["mlflow.parentRunId"] == outer
    monkeypatch.setenv(PIPELINE_RUN_ENV, "0" * 32)
    with pytest.raises(TrackingError, match=PIPELINE_RUN_ENV):
        with tracking.stage_run(cfg, "evaluate", {}):
            pass
    monkeypatch.delenv(PIPELINE_RUN_ENV)

    # A second start abandons the first (KILLED) and records the new one.
    again = tracking.start_pipeline(cfg, "smoke")
    assert again != parent_id and c.get_run(parent_id).info.status == "KILLED"
    assert tracking.end_pipeline(cfg, "FAILED") == again
    assert c.get_run(again).info.status == "FAILED"
    with pytest.raises(ValueError, match="status"):
        tracking.end_pipeline(cfg, "DONE")


def test_failing_stage_marks_child_and_parent_failed(cfg: TrackingConfig) -> None:
    parent_id = tracking.start_pipeline(cfg, "pipeline")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run(cfg, "train_baseline", {"epochs": 1}) as run:
            run.log_metrics({"loss": 1.0})
            raise RuntimeError("boom")
    c = client(cfg)
    assert c.get_run(run.run_id).info.status == "FAILED"
    assert c.get_run(parent_id).info.status == "FAILED"
    assert not STATE_FILE.exists()
    # The onerror hook finds nothing left to end and leaves FAILED alone.
    assert tracking.end_pipeline(cfg, "FINISHED") is None
    assert c.get_run(parent_id).info.status == "FAILED"
    # The next stage starts a fresh pipeline run.
    with tracking.stage_run(cfg, "train_baseline", {"epochs": 1}) as retry:
        pass
    assert c.get_run(retry.run_id).data.tags["mlflow.parentRunId"] not in ("", parent_id)


def test_metrics_round_trip_as_floats(cfg: TrackingConfig, tmp_path: Path) -> None:
    with tracking.stage_run(cfg, "evaluate", {}) as run:
        run.log_metrics(
            {"psnr_set5_x2": np.float32(33.25), "ssim_set5_x2": np.float64(0.9125), "latency_ms_cpu": 4, "skipped": None}
        )
        run.log_metrics({"loss": np.array(0.5)}, step=3)
        run.log_metrics({"loss": 0.25}, step=4)
        run.log_params({"model": {"name": "fsrcnn", "channels": (56, 12)}})
        run.set_tags({"srnas.data": "Set5"})
        (tmp_path / "report.json").write_text("{}")
        run.log_artifact(tmp_path / "report.json", "reports")
        with pytest.raises(TypeError, match="'bad'"):
            run.log_metrics({"bad": "x"})
        with pytest.raises(FileNotFoundError):
            run.log_artifact(tmp_path / "missing.txt")
    data = client(cfg).get_run(run.run_id).data
    assert data.metrics == {"psnr_set5_x2": 33.25, "ssim_set5_x2": 0.9125, "latency_ms_cpu": 4.0, "loss": 0.25}
    assert all(type(value) is float for value in data.metrics.values())
    assert [(m.step, m.value) for m in client(cfg).get_metric_history(run.run_id, "loss")] == [(3, 0.5), (4, 0.25)]
    assert data.params == {"model.name": "fsrcnn", "model.channels": "[56, 12]"}
    assert data.tags["srnas.data"] == "Set5"
    assert [a.path for a in client(cfg).list_artifacts(run.run_id, "reports")] == ["reports/report.json"]
    assert (tmp_path / "artifacts" / run.run_id / "artifacts" / "reports" / "report.json").is_file()


def test_candidates_are_nested_under_the_stage(cfg: TrackingConfig) -> None:
    with tracking.stage_run(cfg, "search_arch", {"trials": 2}, {"srnas.scale": "2"}) as stage:
        with stage.candidate("trial-0", {"blocks": [1, 2]}) as good:
            good.log_metrics({"psnr_val_x2": 30.0})
        with pytest.raises(ValueError):
            with stage.candidate("trial-1", {"blocks": [3]}) as bad:
                raise ValueError("diverged")
    c = client(cfg)
    for run_id, status in ((good.run_id, "FINISHED"), (bad.run_id, "FAILED")):
        run = c.get_run(run_id)
        assert run.info.status == status
        assert run.data.tags["mlflow.parentRunId"] == stage.run_id
        assert run.data.tags["srnas.kind"] == "candidate"
        assert run.data.tags["srnas.scale"] == "2"  # inherited from the stage
    assert c.get_run(good.run_id).data.params == {"blocks": "[1, 2]"}
    assert c.get_run(good.run_id).info.run_name == "trial-0"
    assert c.get_run(stage.run_id).info.status == "FINISHED"  # a caught candidate failure does not fail the stage
    assert [row["run_id"] for row in tracking.query_runs(cfg)] == [stage.run_id]


def test_query_runs_returns_finished_stage_runs(cfg: TrackingConfig) -> None:
    other = dataclasses.replace(cfg, experiment="other")
    tags = {"srnas.model": "fsrcnn", "srnas.scale": "2", "srnas.data": "Set5"}
    with tracking.stage_run(cfg, "evaluate", {"crop_border": 2}, tags) as a:
        a.log_metrics({"psnr_set5_x2": 36.5, "latency_ms_cpu": 3.5})
    with tracking.stage_run(other, "evaluate", {"crop_border": 2}, {"srnas.model": "espcn"}) as b:
        b.log_metrics({"psnr_set5_x2": 36.0})
    with pytest.raises(RuntimeError):
        with tracking.stage_run(cfg, "evaluate", {}):
            raise RuntimeError("not listed")

    rows = tracking.query_runs(cfg, ["test"])
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == a.run_id and row["experiment"] == "test" and row["stage"] == "evaluate"
    assert {key: row["tags"][key] for key in tags} == tags
    assert row["params"] == {"crop_border": "2"}
    assert row["metrics"] == {"psnr_set5_x2": 36.5, "latency_ms_cpu": 3.5}
    assert row["pipeline_run_id"]

    assert {(r["experiment"], r["tags"]["srnas.model"]) for r in tracking.query_runs(cfg)} == {
        ("test", "fsrcnn"),
        ("other", "espcn"),
    }
    with pytest.raises(TrackingError, match="'nope' not found.*other"):
        tracking.query_runs(cfg, ["nope"])


def test_disabled_tracking_is_a_no_op_without_mlflow(tmp_path: Path) -> None:
    result = run_in_subprocess(
        """
        import sys
        from srnas.config import TrackingConfig
        from srnas import tracking
        cfg = TrackingConfig(enabled=False)
        assert tracking.start_pipeline(cfg, "p") == ""
        with tracking.stage_run(cfg, "train", {"a": {"b": 1}}, {"srnas.model": "m"}) as run:
            run.log_metrics({"x": 1.0}, step=1)
            run.log_params({"y": 2})
            run.set_tags({"z": "3"})
            run.log_artifact("does-not-matter.txt")
            with run.candidate("c", {"w": 1}) as cand:
                cand.log_metrics({"x": 2.0})
            assert run.run_id == ""
        try:
            with tracking.stage_run(cfg, "train", {}):
                raise KeyError("propagates")
        except KeyError:
            pass
        else:
            raise AssertionError("exception swallowed")
        assert tracking.end_pipeline(cfg, "FINISHED") is None
        assert tracking.query_runs(cfg) == []
        assert tracking.end_pipeline(TrackingConfig(), "FINISHED") is None  # enabled, but nothing recorded
        assert "mlflow" not in sys.modules, "mlflow was imported"
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no state file, no artifacts


def test_flatten_params_and_limits() -> None:
    from mlflow.utils import validation

    assert tracking.MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert tracking.MAX_TAG_VAL_LENGTH == validation.MAX_TAG_VAL_LENGTH
    flat = tracking.flatten_params({"data": DataConfig(scales=(2, 4)), "long": "x" * 10_000, "empty": {}, "p": Path("a/b")})
    assert flat["data.scales"] == "[2, 4]"
    assert flat["data.div2k.cache_dir"] == ".srnas/downloads"
    assert flat["data.skip_bad_images"] == "False"
    assert len(flat["long"]) == validation.MAX_PARAM_VAL_LENGTH
    assert flat["empty"] == "{}" and flat["p"] == "a/b"
