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
    for name in (PIPELINE_RUN_ENV, tracking.URI_ENV, tracking.EXPERIMENT_ENV):
        monkeypatch.delenv(name, raising=False)
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


# --------------------------------------------------------------------------------- models, datasets, the environment


def _tiny_sr(tmp_path: Path):
    """A 2x SR network (conv + PixelShuffle) and its ONNX file (dynamic height and width)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    onnx_file = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(onnx_file), input_names=["lr"], output_names=["sr"],
                      dynamic_axes={"lr": {2: "h", 3: "w"}, "sr": {2: "h2", 3: "w2"}}, dynamo=False)
    return model, onnx_file


def test_logged_models_load_back_and_the_final_model_is_registered_with_its_tags(
        cfg: TrackingConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import mlflow.onnx
    import torch

    model, onnx_file = _tiny_sr(tmp_path)
    example = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    with tracking.stage_run(cfg, "export", {}, {"srnas.model": "final", "srnas.scale": "2"}) as export:
        uris = export.log_models("final_x2", model, onnx_file, example, {"srnas.model": "final"})
    assert os.environ.get(tracking.URI_ENV) is None and os.environ.get("MLFLOW_EXPERIMENT_ID") is None  # put back
    name = tracking.registered_model_name(cfg, 2)
    assert name == "srnas-test-x2"
    with tracking.stage_run(cfg, "report", {}) as report:
        version = report.register_model(name, onnx_file, {"target": "cpu_auto", "budget_ms": 5.0, "latency_ms": "4.2",
                                                          "scale": 2, "psnr_set5_x2": "33.1"})
        with pytest.raises(TrackingError, match="no ONNX model logged with this file's SHA-256"):
            report.register_model(name, tmp_path / "mlflow.db", {})

    monkeypatch.setenv(tracking.URI_ENV, f"sqlite:///{Path('mlflow.db').resolve()}")  # where load_model looks
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).numpy()
    for flavor in ("pytorch", "onnx"):
        loaded = mlflow.pyfunc.load_model(uris[flavor])
        assert list(loaded.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, -1, -1]
        assert loaded.metadata.saved_input_example_info is not None
        out = loaded.predict(example)
        out = next(iter(out.values())) if isinstance(out, dict) else out
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    proto = mlflow.onnx.load_model(uris["onnx"])
    assert [i.name for i in proto.graph.input] == ["lr"]

    c = client(cfg)
    mv = c.get_model_version(name, version)
    assert mv.tags == {"target": "cpu_auto", "budget_ms": "5.0", "latency_ms": "4.2", "scale": "2", "psnr_set5_x2": "33.1"}
    assert mv.run_id == export.run_id and mv.source == uris["onnx"], mv.source
    assert str(c.get_model_version_by_alias(name, "latest-pipeline").version) == version == "1"


def test_dataset_inputs_and_metric_names(cfg: TrackingConfig, tmp_path: Path) -> None:
    from srnas.commands.common import log_data_input

    data = tmp_path / "prepared"
    data.mkdir()
    manifest = {"source": "folder", "sets": ["train", "val"], "scales": [2], "counts": {"train": {"2": 3}},
                "config": {"root": str(tmp_path / "raw")}, "files": {}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    with tracking.stage_run(cfg, "train_baseline", {}) as stage:
        log_data_input(stage, data, "training")
        log_data_input(stage, tmp_path / "nowhere", "training")  # no manifest: nothing logged
        stage.log_metrics({"val_psnr": 30.0, "train_loss": 0.1, "best_psnr": 29.0, "psnr_set5_x2": 31.0})
    run = client(cfg).get_run(stage.run_id)
    assert set(run.data.metrics) == {"psnr_val", "train_loss", "psnr_proxy", "psnr_set5_x2"}
    (found,) = run.inputs.dataset_inputs
    assert found.dataset.name == "folder" and found.dataset.source_type == "local"
    assert json.loads(found.dataset.source) == {"uri": str(tmp_path / "raw")}
    assert found.dataset.digest == __import__("hashlib").sha256((data / "manifest.json").read_bytes()).hexdigest()[:36]
    assert {t.key: t.value for t in found.tags} == {"mlflow.data.context": "training"}


def test_report_logs_the_pipeline_summary_and_renders_in_mlflow(cfg: TrackingConfig, tmp_path: Path) -> None:
    from srnas.commands.report import _log_report

    (tmp_path / "results" / "report").mkdir(parents=True)
    (tmp_path / "results" / "search_arch").mkdir()
    for image in ("report/pareto_x2.png", "search_arch/pareto.png"):
        (tmp_path / "results" / image).write_bytes(b"\x89PNG")
    markdown = "# r\n![p](report/pareto_x2.png)\n![s](search_arch/pareto.png)\n![x](https://e.org/a.png)\n![m](report/gone.png)\n"
    report_file = tmp_path / "results" / "report.md"
    report_file.write_text(markdown)
    with tracking.stage_run(cfg, "report", {}) as stage:
        pipeline = stage.pipeline()
        pipeline.log_params({"scale": 2, "target": "cpu_auto"})
        pipeline.log_metrics({"psnr_set5_x2": 33.0, "latency_ms": 4.0})
        _log_report(pipeline, report_file, markdown)
    c = client(cfg)
    parent = c.get_run(tracking.current_pipeline(cfg))
    assert parent.data.tags[tracking.KIND_TAG] == "pipeline"
    assert parent.data.params == {"scale": "2", "target": "cpu_auto"}
    assert parent.data.metrics == {"psnr_set5_x2": 33.0, "latency_ms": 4.0}
    listed = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert listed == {"report.md", "report", "search_arch"}
    assert [a.path for a in c.list_artifacts(parent.info.run_id, "report")] == ["report/pareto_x2.png"]


def test_environment_overrides_tracking_settings_and_servers_place_artifacts(
        cfg: TrackingConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.db"
    shutil.copy(tmp_path / "mlflow.db", other)
    monkeypatch.setenv(tracking.URI_ENV, f"sqlite:///{other}")
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, "from-env")
    assert tracking.effective(cfg) == dataclasses.replace(cfg, uri=f"sqlite:///{other}", experiment="from-env")
    with tracking.stage_run(cfg, "prepare_data", {}) as stage:
        stage.log_metrics({"images": 1.0})
    from mlflow import MlflowClient

    env_store = MlflowClient(tracking_uri=f"sqlite:///{other}")
    assert env_store.get_run(stage.run_id).info.experiment_id == env_store.get_experiment_by_name("from-env").experiment_id
    assert client(cfg).get_experiment_by_name("test") is None  # tracking.uri / tracking.experiment not used
    monkeypatch.setenv(tracking.URI_ENV, "")
    assert tracking.effective(cfg) == dataclasses.replace(cfg, experiment="from-env")  # empty: not set

    assert tracking._artifact_uri("http://mlflow:5000", "mlartifacts") is None  # the server decides
    assert tracking._artifact_uri("https://mlflow", "s3://bucket/a") == "s3://bucket/a"  # unless a URI is given
    assert tracking._artifact_uri("sqlite:///mlflow.db", "mlartifacts") == (tmp_path / "mlartifacts").as_uri()
