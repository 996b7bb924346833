"""The pipeline on a SLURM cluster: Snakemake's workflow profile profiles/slurm (the SLURM executor plugin), and the
smoke DAG run through it on a one-node cluster started on this machine (scripts/slurm_cluster.sh)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from services import service_missing
from test_pipeline import BIN, HIDDEN_BF16, ROOT, SMOKE, _copy_project, _env
from test_pipeline_resume import _assert_same_results

DEFAULT_PROFILE = ROOT / "profiles" / "default" / "config.yaml"
SLURM_PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
EXCLUSIVE = "'--exclusive'"
# The smoke run's threads: `--cores 2` caps every rule's threads on this machine; on SLURM, --max-threads does.
SMOKE_CORES = SMOKE[SMOKE.index("--cores") + 1]
# A one-node test cluster has no accounting database (squeue, not sacct, knows the jobs); the first status check a
# second after a submission, not the profile's 10 (the smoke DAG's jobs take seconds); keep every job's SLURM log.
TEST_CLUSTER_OPTIONS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                        "--slurm-keep-successful-logs")
RUN_TIMEOUT_S = 1800
SMOKE_TRACKING = {"uri": "sqlite:///mlflow.db", "experiment": "srnas-smoke"}  # config/smoke.yaml over params.yaml
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
COMMENT = re.compile(r"rule_(\w+?)(?:_wildcards_.*)?")  # the executor's --comment: rule_<rule>[_wildcards_<values>]


def _profile(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _whole_node_rules() -> set[str]:
    """The rules profiles/default gives the whole machine (more than one thread): training and latency measurement."""
    return {rule for rule, threads in _profile(DEFAULT_PROFILE)["set-threads"].items() if threads > 1}


def _workflow_rules() -> set[str]:
    """Every rule of the workflow that runs a command (``all`` only collects the report)."""
    return {m for smk in (ROOT / "workflow" / "rules").glob("*.smk")
            for m in re.findall(r"^rule (\w+):", smk.read_text(encoding="utf-8"), re.MULTILINE)}


def test_the_slurm_profile_keeps_the_default_profile_and_gives_training_and_timing_whole_nodes() -> None:
    """A --workflow-profile replaces profiles/default, so profiles/slurm repeats every one of its settings with the
    same values (threads, memory, rerun-incomplete ...); on top, the rules that train or time (more than one thread
    in profiles/default) and only those get --exclusive nodes. The README shows the commands, constraints.txt pins
    the plugin."""
    default, slurm = _profile(DEFAULT_PROFILE), _profile(SLURM_PROFILE)
    assert slurm["executor"] == "slurm"
    for key, value in default.items():
        if key != "set-resources":
            assert slurm.get(key) == value, f"profiles/slurm: {key} differs from profiles/default"
    assert slurm["set-resources"].keys() == default["set-resources"].keys() == _workflow_rules()
    whole = _whole_node_rules()
    assert whole == {"train_baseline", "train_supernet", "profile_device", "fit_baselines", "search_arch",
                     "search_ratio", "finetune", "profile_model", "profile_final", "profile_deployed", "check_budget"}
    for rule, resources in slurm["set-resources"].items():
        assert resources.get("mem_mb") == default["set-resources"][rule]["mem_mb"], rule
        assert (resources.get("slurm_extra") == EXCLUSIVE) == (rule in whole), rule
        assert set(resources) <= {"mem_mb", "slurm_extra"}, rule

    section = re.search(r"^### On a SLURM cluster$(.*?)^##", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert section, "README.md: no '### On a SLURM cluster' section"
    for shown in ("--workflow-profile profiles/slurm", "--max-threads", "slurm_account=", "slurm_partition=",
                  "--slurm-status-command squeue", "tests/test_slurm.py"):
        assert shown in section.group(1), f"README's 'On a SLURM cluster' does not show {shown!r}"
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^snakemake-executor-plugin-slurm==\S+$", pins, re.MULTILINE)
    assert re.search(r"^snakemake-executor-plugin-slurm-jobstep==\S+$", pins, re.MULTILINE)


def run_on_slurm(project: Path, cluster, overlay: dict | None = None) -> subprocess.CompletedProcess[str]:
    """The smoke DAG of ``project`` through profiles/slurm on ``cluster`` (a :class:`services.SlurmCluster`), with the
    smoke run's threads and without native bf16, as README's command plus :data:`TEST_CLUSTER_OPTIONS`. ``overlay``:
    a configuration overlay on top of config/smoke.yaml, e.g. ``mlflow_server.tracking("srnas-slurm")`` to send the
    runs to an MLflow server (tests/conftest.py) instead of the project's SQLite file."""
    configfiles = ["config/smoke.yaml"]
    if overlay is not None:
        (project / "overlay.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
        configfiles.append("overlay.yaml")
    cmd = [str(BIN / "snakemake"), "--workflow-profile", "profiles/slurm", "--configfile", *configfiles,
           "--max-threads", SMOKE_CORES, *TEST_CLUSTER_OPTIONS]
    proc = subprocess.run(cmd, cwd=project, env=cluster.env(_env(HIDDEN_BF16)), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, (f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n"
                                  f"slurmctld:\n{cluster.log('slurmctld')}")
    return proc


SERVER_EXPERIMENT = "srnas-smoke-slurm"  # the session's MLflow server is shared: one experiment per test


def _assert_pipeline_on_server(uri: str, parent_id: str, stages: dict[str, str]) -> None:
    """Through the server's REST API (an MlflowClient on its http URI): the pipeline run FINISHED with the headline
    metrics and the report as an artifact, every stage run its child, the searches' trial runs children of their
    stage runs, the final model registered."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SERVER_EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["srnas.kind"] == "pipeline"
    assert parent.data.metrics["psnr_val_x2"] > 20.0 and parent.data.metrics["latency_ms"] > 0.0
    assert "report.md" in {a.path for a in client.list_artifacts(parent_id)}
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert {run.info.run_id for run in children} == set(stages), "the stage runs, and only they, are the pipeline's"
    search = {run_id for run_id, stage in stages.items() if stage in ("search_arch", "search_ratio")}
    trials = [run for run in client.search_runs([experiment.experiment_id], "tags.`srnas.kind` = 'candidate'")]
    assert trials and {run.data.tags["mlflow.parentRunId"] for run in trials} <= search, "trial runs under the searches"
    assert client.search_model_versions(f"name = '{SERVER_EXPERIMENT}-x2'"), "the final model registered on the server"


def _stage_runs(project: Path, tracking: dict[str, str]) -> list[dict]:
    from srnas import tracking as srnas_tracking
    from srnas.config import TrackingConfig

    cwd = Path.cwd()
    os.chdir(project)  # a sqlite:/// URI is relative to the project
    try:
        return srnas_tracking.query_runs(TrackingConfig(**tracking))
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_smoke_dag_through_the_slurm_profile_on_a_one_node_cluster_ends_like_the_local_run(
        smoke_latency_cache: Path, slurm_cluster, mlflow_server, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``snakemake --workflow-profile profiles/slurm`` on a one-node SLURM cluster of this machine: every job of the
    DAG is a SLURM job that ran its rule (its SLURM log shows the rule executed there), the training and timing jobs
    held the node alone (--exclusive, and no other job's run overlaps theirs), the stage runs, sent to an MLflow server
    on PostgreSQL (README "An MLflow tracking server"), join one pipeline run there with the search's trial runs under
    their stages, and every output equals the local run's (``smoke_project``) but for the fields that measure time, as for
    the killed-and-resumed run (test_pipeline_resume.py). Both runs start from the same latency cache, as there: the measured
    layer table is the one measured input that may change a search. The local run is asked for only after the SLURM
    run, so that another worker builds it meanwhile (tests/conftest.py)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        service_missing("snakemake-executor-plugin-slurm", "`make setup` (the dev extras) or `pip install -e .[slurm]`")
    project = _copy_project(tmp_path, smoke_latency_cache)

    server = mlflow_server.tracking(SERVER_EXPERIMENT)
    proc = run_on_slurm(project, slurm_cluster, overlay=server)
    smoke_project: Path = request.getfixturevalue("smoke_project")

    submitted = dict(SUBMITTED.findall(proc.stdout + proc.stderr))  # SLURM job id -> its SLURM log
    jobs = {job["id"]: job for job in slurm_cluster.jobs() if job["id"] in submitted}
    assert jobs.keys() == submitted.keys(), f"submitted {sorted(submitted)}, the controller knows {sorted(jobs)}"
    assert len({job["name"] for job in jobs.values()}) == 1, "one Snakemake run's jobs (the job name is its run id)"
    assert {job["state"] for job in jobs.values()} == {"COMPLETED"}, jobs
    rules = {job_id: COMMENT.fullmatch(job["comment"]).group(1) for job_id, job in jobs.items()}
    local_jobs = sorted(p for p in (smoke_project / "benchmarks").rglob("*.tsv"))  # one per job of the local run
    assert set(rules.values()) == _workflow_rules() and len(rules) == len(local_jobs), Counter(rules.values())
    for job_id, rule in rules.items():
        slurm_log = Path(submitted[job_id]).read_text(errors="replace")
        assert f"localrule {rule}:" in slurm_log, f"SLURM job {job_id} ran no {rule}: {submitted[job_id]}"

    whole = _whole_node_rules()
    for job_id, job in jobs.items():
        assert (job["oversubscribe"] == "NO") == (rules[job_id] in whole), (rules[job_id], job)
    for job_id in (j for j in jobs if rules[j] in whole):
        alone = jobs[job_id]
        for other_id, other in jobs.items():  # ISO times to the second: truncation never makes apart jobs overlap
            if other_id != job_id:
                assert other["end"] <= alone["start"] or other["start"] >= alone["end"], (
                    f"{rules[other_id]} ({other['start']}..{other['end']}) ran beside {rules[job_id]} "
                    f"({alone['start']}..{alone['end']})")

    runs = _stage_runs(project, {"uri": mlflow_server.uri, "experiment": SERVER_EXPERIMENT})
    local_runs = _stage_runs(smoke_project, SMOKE_TRACKING)
    assert Counter(run["stage"] for run in runs) == Counter(run["stage"] for run in local_runs)
    parents = {run["pipeline_run_id"] for run in runs}
    assert len(parents) == 1 and None not in parents, "every SLURM job's stage run joins the one pipeline run"
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists(), "runs went to the server only"
    _assert_pipeline_on_server(mlflow_server.uri, parents.pop(), {run["run_id"]: run["stage"] for run in runs})

    compared = _assert_same_results(smoke_project, project)
    assert {"search_arch/arch.json", "search_ratio/ratio.json", "finetune/model.pt", "train_supernet/supernet.pt",
            "evaluate/final_x2.json", "evaluate/plain16_x2.json", "report.md", "metrics.json"} <= set(compared)
