"""srnas.tracking against an MLflow tracking server (``tracking.uri: http://host:port``): stages in separate processes
and working directories join one pipeline run, everything they log is read back through the server's REST API (a
logged model loaded back included), and a server that does not answer stops a stage within a bounded time with one
line naming the URI, its password masked.

The server is real (the ``mlflow_server`` fixture: ``mlflow server`` on 127.0.0.1 with a PostgreSQL backend store,
artifacts served through it), so these tests skip where PostgreSQL is not installed and fail instead under
SRNAS_REQUIRE_SERVICES=1 (CI). The tests of a server that is not there need none.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import params_overlay
from PIL import Image
from test_tracking import _tiny_sr

from srnas import tracking
from srnas.config import TrackingConfig

TESTS = Path(__file__).resolve().parent
PASSWORD = "tr4ck-s3cret"  # http basic auth in tracking.uri: no output may show it


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SRNAS_", "MLFLOW_"))}
    return env | extra


def _srnas(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "srnas.cli", *args], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=300, check=False)


def _images(root: Path) -> Path:
    train = root / "train"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(train / f"img{i}.png")
    return root


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- one pipeline run, several processes


CANDIDATE_STAGE = """
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from srnas import tracking
    from srnas.config import TrackingConfig
    from test_tracking import _tiny_sr

    cfg = TrackingConfig(uri={uri!r}, experiment={experiment!r})
    with tracking.stage_run(cfg, "search_arch", {{"trials": 2}}, {{"srnas.scale": "2"}}) as stage:
        with stage.candidate("trial-0", {{"blocks": [1, 2]}}) as good:
            good.log_metrics({{"psnr": 30.5}})
        try:
            with stage.candidate("trial-1", {{"blocks": [3]}}):
                raise ValueError("diverged")
        except ValueError:
            pass
        Path("trials.csv").write_text("trial,psnr\\n0,30.5\\n")
        stage.log_artifact("trials.csv", "search")
        model, onnx_file = _tiny_sr(Path("."))
        example = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
        uris = stage.log_models("final_x2", model, onnx_file, example, {{"srnas.model": "final"}})
    print(json.dumps({{"run": stage.run_id, "good": good.run_id, "uris": uris}}))
"""


@pytest.mark.slow
def test_stages_in_other_processes_and_folders_share_one_pipeline_run_through_the_server(
        mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``srnas pipeline start`` in the project folder; ``srnas prepare-data`` there too (a SLURM job on another node
    of a shared project folder finds the pipeline run in ``.srnas/pipeline_run.json``); a search stage with two trial
    runs and a logged model in another folder (another host with no shared folder: SRNAS_PIPELINE_RUN_ID); the final
    model registered from a third; ``srnas pipeline end`` in the project. Everything is read back from the server:
    the runs' nesting and statuses, params, metrics, the dataset, artifacts (stored by the server, none by a client),
    the logged model loaded back and predicting as the network does, the registered version and its tags."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    experiment = "server-pipeline"
    project, elsewhere, third = (tmp_path / name for name in ("project", "host2", "host3"))
    for folder in (project, elsewhere, third):
        folder.mkdir()
    data = {"source": "folder", "root": str(_images(tmp_path / "data")), "train_set": "train", "eval_sets": [],
            "scales": [2], "val_images": 1, "min_size": 16}
    params = params_overlay(tmp_path, {**mlflow_server.tracking(experiment), "data": data})

    started = _srnas(["pipeline", "start", *params, "--runner", "slurm"], project)
    assert started.returncode == 0, started.stderr
    parent = started.stdout.strip()
    assert len(parent) == 32, started.stdout  # the run id alone: MLflow prints no run page to stdout
    state = json.loads((project / tracking.STATE_FILE).read_text())
    assert [entry["run_id"] for entry in state.values()] == [parent]

    prepared = _srnas(["prepare-data", *params, "--out", "results/prepare_data"], project)
    assert prepared.returncode == 0, prepared.stderr
    assert f"{mlflow_server.uri}/#/experiments/" in prepared.stderr  # where to see the run

    code = textwrap.dedent(CANDIDATE_STAGE.format(tests=str(TESTS), uri=mlflow_server.uri, experiment=experiment))
    searched = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=_env(SRNAS_PIPELINE_RUN_ID=parent),
                              capture_output=True, text=True, timeout=300, check=False)
    assert searched.returncode == 0, searched.stderr
    search = json.loads(searched.stdout.strip().splitlines()[-1])

    cfg = TrackingConfig(uri=mlflow_server.uri, experiment=experiment)
    monkeypatch.chdir(third)
    monkeypatch.setenv(tracking.PIPELINE_RUN_ENV, parent)
    onnx_file = elsewhere / "model.onnx"  # what the search stage exported and logged (the report finds it by digest)
    name = tracking.registered_model_name(cfg, 2)
    with tracking.stage_run(cfg, "report", {}) as report:
        version = report.register_model(name, onnx_file, {"target": "cpu_auto", "latency_ms": "4.2"})
    monkeypatch.delenv(tracking.PIPELINE_RUN_ENV)

    ended = _srnas(["pipeline", "end", *params], project)
    assert ended.returncode == 0, ended.stderr
    assert not (project / tracking.STATE_FILE).exists()

    c = MlflowClient(mlflow_server.uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp.artifact_location == f"mlflow-artifacts:/{exp.experiment_id}"  # the server's artifact store
    assert c.get_run(parent).info.status == "FINISHED"
    assert c.get_run(parent).data.tags["srnas.runner"] == "slurm"
    stages = {r.data.tags["srnas.stage"]: r for r in c.search_runs([exp.experiment_id], "tags.`srnas.kind` = 'stage'")}
    assert set(stages) == {"prepare_data", "search_arch", "report"}
    assert {r.data.tags["mlflow.parentRunId"] for r in stages.values()} == {parent}
    assert {r.info.status for r in stages.values()} == {"FINISHED"}

    prep = stages["prepare_data"]
    assert prep.data.params["data.source"] == "folder" and prep.data.metrics["images_train_x2"] == 2.0
    (dataset,) = prep.inputs.dataset_inputs
    assert dataset.dataset.name == "folder"
    manifest = project / "results" / "prepare_data" / "manifest.json"
    fetched = Path(c.download_artifacts(prep.info.run_id, "manifest.json", str(tmp_path)))
    assert fetched.read_bytes() == manifest.read_bytes()

    trials = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{search['run']}'",
                           order_by=["attributes.run_name ASC"])
    assert [(t.info.run_name, t.info.status) for t in trials] == [("trial-0", "FINISHED"), ("trial-1", "FAILED")]
    assert trials[0].data.params == {"blocks": "[1, 2]"} and trials[0].data.metrics == {"psnr_proxy": 30.5}
    assert trials[0].data.tags["srnas.scale"] == "2"
    assert [a.path for a in c.list_artifacts(search["run"], "search")] == ["search/trials.csv"]
    stored = mlflow_server.artifacts / exp.experiment_id / search["run"] / "artifacts" / "search" / "trials.csv"
    assert stored.read_text() == "trial,psnr\n0,30.5\n"  # in the server's folder: uploaded through it
    for folder in (project, elsewhere, third):  # and no client kept a local artifact store
        assert not [p for p in folder.rglob("*") if p.name in ("mlartifacts", "mlruns", "mlflow.db")]

    monkeypatch.setenv(tracking.URI_ENV, mlflow_server.uri)  # where models:/ URIs resolve
    model, _ = _tiny_sr(third)  # the same seeded network
    example = np.random.default_rng(1).random((1, 3, 20, 12), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).numpy()
    for flavor in ("pytorch", "onnx"):
        out = mlflow.pyfunc.load_model(search["uris"][flavor]).predict(example)
        out = next(iter(out.values())) if isinstance(out, dict) else out
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)

    mv = c.get_model_version(name, version)
    assert (mv.run_id, mv.source, mv.tags) == (search["run"], search["uris"]["onnx"], {"target": "cpu_auto", "latency_ms": "4.2"})
    assert str(c.get_model_version_by_alias(name, "latest-pipeline").version) == version

    rows = tracking.query_runs(cfg, [experiment])  # `srnas compare`'s query, through the server
    assert {row["stage"] for row in rows} == set(stages) and {row["pipeline_run_id"] for row in rows} == {parent}


# ------------------------------------------------------------------------------------ a server that does not answer


def test_a_stage_without_its_server_fails_in_seconds_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """``srnas prepare-data`` pointed at a server that is not there (nothing listens on the port): exit 2 within
    seconds (srnas's probe: 3 attempts, not MLflow's 4 minutes of retries), one line on stderr naming tracking.uri
    with the password masked, no output folder, no password in the log file."""
    port = _dead_port()
    uri = f"http://srnas:{PASSWORD}@127.0.0.1:{port}"
    data = {"source": "folder", "root": str(_images(tmp_path / "data")), "train_set": "train", "eval_sets": [],
            "scales": [2], "val_images": 1, "min_size": 16}
    params = params_overlay(tmp_path, {"tracking": {"uri": uri, "experiment": "down"}, "data": data})
    log = tmp_path / "logs" / "prepare_data.log"
    start = time.monotonic()
    done = _srnas(["prepare-data", *params, "--out", "out", "--log", str(log)], tmp_path)
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert elapsed < 40, elapsed
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"srnas: error: tracking.uri http://srnas:***@127.0.0.1:{port}: the MLflow server does not "
                           f"answer (Connection refused; gave up after "), line
    assert "tracking.enabled: false" in line
    assert not (tmp_path / "out").exists() and done.stdout == ""
    assert PASSWORD not in done.stderr + log.read_text()


class _Relay:
    """A TCP relay from a port of its own to ``target``: a server that a test can make vanish (``refuse``: the port
    closes, every connection drops) or hang (``hang``: connections are accepted and never answered)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.mode = "relay"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self.unanswered = 0  # connections accepted while hanging
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._open.append(client)
            if self.mode == "hang":
                self.unanswered += 1
            if self.mode == "relay":
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self._open.append(upstream)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _drop_connections(self) -> None:
        for s in self._open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._open.clear()

    def refuse(self) -> None:
        self.mode = "refuse"
        self._listener.close()
        self._drop_connections()

    def hang(self) -> None:
        self.mode = "hang"
        self._drop_connections()


@pytest.mark.parametrize("failure", ["refuse", "hang"])
def test_a_server_lost_mid_stage_fails_it_within_the_retry_budget_and_leaves_its_run(
        mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    """The server vanishes (connection refused) or hangs (no answer) while a stage runs: the stage's next log call
    raises TrackingUnreachable, one line naming the URI (password masked), after the retries the environment sets
    (here 1 retry, 1 s per attempt: a variable set there wins over srnas's own), and nobody waits again to end the
    run: it stays RUNNING in the store (the next start of that stage on this host ends it KILLED)."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    for name in (tracking.PIPELINE_RUN_ENV, tracking.URI_ENV, tracking.EXPERIMENT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    relay = _Relay(mlflow_server.port)
    uri = f"http://srnas:{PASSWORD}@127.0.0.1:{relay.port}"  # the server has no auth: the header is ignored
    cfg = TrackingConfig(uri=uri, experiment=f"server-lost-{failure}")
    with pytest.raises(tracking.TrackingUnreachable) as error:
        with tracking.stage_run(cfg, "train_baseline", {"steps": 10}) as stage:
            stage.log_metrics({"train_loss": 0.5}, step=1)
            getattr(relay, failure)()
            start = time.monotonic()
            stage.log_metrics({"train_loss": 0.25}, step=2)
    elapsed = time.monotonic() - start
    message = str(error.value)
    reason = "Connection refused" if failure == "refuse" else "no answer within 1 s"
    assert message.startswith(f"tracking.uri http://srnas:***@127.0.0.1:{relay.port}: the MLflow server does not "
                              f"answer ({reason}; gave up after "), message
    assert "\n" not in message and PASSWORD not in message
    assert elapsed < 8, elapsed  # 2 attempts of at most 1 s each
    if failure == "hang":
        assert relay.unanswered == 2  # those 2 attempts, and none to end the run or its pipeline run
    run = MlflowClient(mlflow_server.uri).get_run(stage.run_id)
    assert run.info.status == "RUNNING" and run.data.metrics == {"train_loss": 0.5}
    assert tracking.current_pipeline(cfg) == run.data.tags["mlflow.parentRunId"]  # still recorded: a rerun joins it


def test_server_uris_keep_no_password_and_name_their_artifact_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(uri=f"http://srnas:{PASSWORD}@mlflow.lab:5000", experiment="e")
    tracking._record(cfg, "0" * 32)
    assert PASSWORD not in tracking.STATE_FILE.read_text()
    assert tracking.current_pipeline(cfg) == "0" * 32
    assert tracking._scrub(f"API request to http://srnas:{PASSWORD}@mlflow.lab:5000/api failed\n(x)", cfg.uri) == \
        "API request to http://srnas:***@mlflow.lab:5000/api failed (x)"
    assert tracking._artifact_uri(cfg.uri, "mlartifacts") is None  # the server decides: mlflow-artifacts:/<id>
    assert tracking._artifact_uri(cfg.uri, "mlflow-artifacts:/srnas") == "mlflow-artifacts:/srnas"
    assert tracking._artifact_uri("sqlite:///m.db", "C:/artifacts").startswith("file:")  # a drive letter is a path
