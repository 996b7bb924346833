"""A bad configuration stops a run before any job, under Snakemake and DVC, and no configuration value runs as a shell
command; a stage ends the MLflow runs a killed process left RUNNING. (docs/failures-config.md lists the guarantees.)"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import kill_when

from srnas import tracking
from srnas.cli import main
from srnas.config import TrackingConfig
from srnas.errors import ConfigError
from srnas.models import list_models
from srnas.models.fitted import FIT_FAMILIES, FIT_SUFFIX
from srnas.models.registry import MODEL_NAME_PATTERN
from srnas.preflight import check_mapping, load_checked
from srnas.settings import deep_merge, default_mapping

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARAMS = ROOT / "params.yaml"
SMOKE = ROOT / "config" / "smoke.yaml"
PROJECT_FILES = ("Snakefile", "workflow", "profiles", "dvc.yaml", "params.yaml", "config", "src", ".dvcignore", "data")


def _injection(marker: Path) -> str:
    """A model name that, spliced unquoted into a shell command, writes ``marker``."""
    return f"plain16 --help; echo INJECTED > {marker}; true"


def _overlay(tmp_path: Path, overlay: dict, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    return path


def _copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRNAS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _assert_nothing_ran(project: Path, marker: Path) -> None:
    assert not marker.exists(), "a configuration value ran as a shell command"
    assert not (project / "results").exists() or not any((project / "results").iterdir())
    assert not (project / "logs").exists()
    assert not (project / "mlflow.db").exists()  # not even the start hook ran


# ------------------------------------------------------------------ the configuration check (srnas.preflight)


def test_model_names_must_be_in_the_registry(tmp_path: Path) -> None:
    marker = tmp_path / "FILE"
    overlay = _overlay(tmp_path, {"baselines": {"models": ["bicubic", _injection(marker)]}})
    with pytest.raises(ConfigError) as caught:
        load_checked(PARAMS, (SMOKE, overlay))
    message = str(caught.value)
    assert message.startswith(f"{PARAMS}+{SMOKE}+{overlay}:baselines.models[1]: unknown model 'plain16 --help; ")
    assert "known models: bicubic," in message and "plain_m<M>c<C>" in message and "budget-fitted: plain_fit, ecbsr_fit" in message
    assert "\n" not in message
    # registry models, family members and the budget-fitted baselines pass; a family name out of bounds does not
    good = ["bicubic", "plain16", "plain_m4c16", "ecbsr_m2c32", "plain_fit", "ecbsr_fit"]
    settings = load_checked(PARAMS, (_overlay(tmp_path, {"baselines": {"models": good}}, "good.yaml"),))
    assert settings.baselines.models == tuple(good)
    for bad in ("plain_m99c16", "PLAIN16", "plain16 ", "resnet"):
        with pytest.raises(ConfigError, match=r":baselines.models\[0\]: unknown model"):
            check_mapping(deep_merge(default_mapping(), {"baselines": {"models": [bad]}}), "config")
    with pytest.raises(ConfigError, match=r"^config:train.steps_by_model: unknown model 'fsrnn'"):
        check_mapping(deep_merge(default_mapping(), {"train": {"steps_by_model": {"fsrnn": 10}}}), "config")


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"budget": {"target": "phone"}}, r"budget.target: no target named 'phone' in latency.targets \(cpu_auto\)"),
        ({"supernet": {"scale": 3}}, r"supernet.scale: x3 is not prepared \(data.scales is \[2\]\)"),
        ({"search_arch": {"val_set": "Set5"}}, r"search_arch.val_set: 'Set5' is not a prepared set \(val\)"),
        ({"budget": {"latency_ms": -1}}, r"budget.latency_ms: must be positive, got -1.0"),
    ],
)
def test_names_and_values_across_sections_are_checked(overlay: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"^config:{expected}"):
        check_mapping(deep_merge(default_mapping(), overlay), "config")


def test_every_model_name_is_a_safe_shell_word() -> None:
    """What the Snakefile constrains its {model} wildcard to holds every name the registry lists and the fitted ones."""
    names = [*list_models(), *(f"{family}{FIT_SUFFIX}" for family in FIT_FAMILIES)]
    assert all(re.fullmatch(MODEL_NAME_PATTERN, name) for name in names), names
    assert not re.fullmatch(MODEL_NAME_PATTERN, "plain16;true") and not re.fullmatch(MODEL_NAME_PATTERN, "a b")


def test_config_check_writes_its_marker_only_for_a_valid_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "config_check.json"
    assert main(["config", "check", "--params", str(PARAMS), "--overlay", str(SMOKE), "--out", str(marker)]) == 0
    written = marker.read_bytes()
    assert json.loads(written) == {"format": "srnas-config-check/1", "valid": True}
    # the same bytes for another valid configuration: DVC's stages after validate_config do not rerun for it
    assert main(["config", "check", "--params", str(PARAMS), "--out", str(marker)]) == 0
    assert marker.read_bytes() == written
    capsys.readouterr()
    bad = _overlay(tmp_path, {"budget": {"target": "phone"}})
    assert main(["config", "check", "--params", str(PARAMS), "--overlay", str(bad), "--out", str(marker)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"srnas: error: {PARAMS}+{bad}:budget.target: no target named 'phone' in latency.targets (cpu_auto)"]
    assert not marker.exists()  # a failed check leaves no marker behind


def test_dvc_args_refuses_an_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    for key, expected in (
        ("data.rot", "--set:data.rot: unknown key; known: source, root,"),
        ("bogus", "--set:bogus: unknown key; known: tracking, data,"),
        ("data.root.deeper", "--set:data.root: has no key 'deeper' (not a section)"),
    ):
        assert main(["config", "dvc-args", str(SMOKE), "--set", f"{key}=1"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"srnas: error: {expected}"), lines
    # a key of a mapping (a model's step budget) may be any name; a known key passes
    assert main(["config", "dvc-args", str(SMOKE), "--set", "train.steps_by_model.fsrcnn=40", "--set", "data.root=/d"]) == 0
    assert "-S ++train.steps_by_model.fsrcnn=40 -S ++data.root=/d" in capsys.readouterr().out



def test_dvc_args_stacks_profiles_in_order_and_names_the_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xnnpack = SMOKE.parent / "smoke_xnnpack.yaml"
    assert main(["config", "dvc-args", str(SMOKE), str(xnnpack)]) == 0
    out = capsys.readouterr().out
    assert "-S ++tracking.experiment=srnas-smoke" in out  # from the first profile
    targets = [arg for arg in out.split(" -S ") if "latency.targets=" in arg]
    assert len(targets) == 1 and "executorch_xnnpack_fp32" in targets[0] and "cpu_auto" not in targets[0], targets
    bad = tmp_path / "bad.yaml"
    bad.write_text("latency:\n  warmpu: 1\n")
    assert main(["config", "dvc-args", str(SMOKE), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"srnas: error: {bad}:latency.warmpu: unknown key"), captured.err

# ------------------------------------------------------------------ no configuration value runs as a shell command


def _shell_commands() -> dict[str, str]:
    """rule name -> its shell command (the string literals after ``shell:``), from workflow/rules/*.smk."""
    commands = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", path.read_text(), flags=re.MULTILINE)[1:]:
            name = block.split(":", 1)[0]
            assert re.search(r"^    (run|script|notebook|wrapper):", block, flags=re.MULTILINE) is None, name
            shell = re.search(r"^    shell:\n((?:        .*\n?)+)", block, flags=re.MULTILINE)
            assert shell is not None, f"rule {name} has no shell command"
            commands[name] = ast.literal_eval("(" + shell.group(1) + ")")
    return commands


def test_every_shell_command_quotes_what_it_substitutes() -> None:
    commands = _shell_commands()
    assert {"train_baseline", "export", "profile_model", "evaluate", "report"} <= set(commands)
    for rule, command in commands.items():
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(command) if name is not None]
        assert fields, rule
        unquoted = [name for name, spec in fields if spec != "q"]
        assert not unquoted, f"rule {rule}: {{{unquoted[0]}}} is not quoted (write {{{unquoted[0]}:q}})"
    assert "{wildcards.model:q}" in commands["train_baseline"]


def test_dvc_cmds_interpolate_only_checked_values() -> None:
    """dvc.yaml cannot quote: its commands interpolate only model names (checked against the registry by
    validate_config, which every other stage descends from) and integer scales."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        used = set(re.findall(r"\$\{([^}]*)\}", stage["cmd"]))
        assert used <= {"item.model", "item.scale", "supernet.scale"}, name
        if "matrix" in stage:
            assert stage["matrix"] == {"model": "${baselines.models}", "scale": "${data.scales}"}, name


def test_every_dvc_stage_descends_from_validate_config() -> None:
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        stages = {stage.name: stage for stage in graph.nodes}
        assert len(stages) > 20
        orphans = [name for name, stage in stages.items()
                   if name != "validate_config" and stages["validate_config"] not in nx.descendants(graph, stage)]
    assert not orphans, f"stages that would run before the configuration check: {orphans}"


# ------------------------------------------------------------------ the runners refuse before any job


@pytest.mark.slow
def test_snakemake_refuses_a_bad_configuration_before_any_job(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    marker = tmp_path / "FILE"
    injection = _overlay(tmp_path, {"baselines": {"models": [_injection(marker)]}}, "injection.yaml")

    # a real run (no --dry-run): the overlay names a model as a shell command
    proc = _run([str(BIN / "snakemake"), "--cores", "1", "--configfile", "config/smoke.yaml", str(injection)], project)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"config/smoke.yaml+{injection}:baselines.models[0]: unknown model 'plain16 --help; echo INJECTED" in output
    _assert_nothing_ran(project, marker)

    # a bad value given with --config (no file to name): the merged configuration is checked too, before any job
    proc = _run([str(BIN / "snakemake"), "--cores", "1", "--configfile", "config/smoke.yaml",
                 "--config", 'search_arch={"strategy": "bogus"}'], project)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert ("config (params.yaml, --configfile and --config merged):search_arch.strategy: unknown strategy 'bogus'; "
            "choose from tpe, gp, random") in output
    _assert_nothing_ran(project, marker)

    # the {model} wildcard only matches a safe model name: no rule makes a file named otherwise
    proc = _run([str(BIN / "snakemake"), "results/evaluate/plain16;true_x2.json", "--dry-run",
                 "--configfile", "config/smoke.yaml"], project)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No rule to produce results/evaluate/plain16;true_x2.json" in output, output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="DVC needs git")
def test_dvc_repro_refuses_a_bad_configuration_before_any_stage(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    marker = tmp_path / "FILE"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["baselines"]["models"] = [_injection(marker)]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    init = _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], project)
    assert init.returncode == 0, init.stderr

    proc = _run([str(BIN / "dvc"), "repro"], project)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "srnas: error: params.yaml:baselines.models[0]: unknown model 'plain16 --help; echo INJECTED" in output
    assert "failed to reproduce 'validate_config'" in output
    assert re.findall(r"Running stage '([^']+)'", output) == ["validate_config"]
    _assert_nothing_ran(project, marker)


# ------------------------------------------------------------------ MLflow runs of killed stages


def _stage_tags(stage: str, process: str | None, **tags: str) -> dict[str, str]:
    base = {tracking.KIND_TAG: "stage", tracking.STAGE_TAG: stage, **tags}
    return base if process is None else {**base, tracking.PROCESS_TAG: process}


def _file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrackingConfig:
    """A tracking configuration on an MLflow file store in ``tmp_path`` (tests/test_tracking.py covers SQLite, where
    every stage start runs the same search for stale runs)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.PIPELINE_RUN_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow keeps its file store for those who opt in
    return TrackingConfig(uri=(tmp_path / "mlruns").as_uri(), experiment="killed", artifact_location="")


def test_a_stage_ends_the_runs_a_killed_process_left_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    cfg = _file_store(tmp_path, monkeypatch)
    client = MlflowClient(tracking_uri=cfg.uri)
    experiment = client.create_experiment(cfg.experiment)

    # a process that is gone: killed with SIGKILL, so it could not end anything
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    gone = f"{host} {child.pid} {tracking._process_start(child.pid)}"
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    alive = tracking._this_process()
    same = {"srnas.model": "plain16", "srnas.scale": "2"}

    def create(tags: dict[str, str], name: str = "train_baseline:plain16") -> str:
        return client.create_run(experiment, tags=tags, run_name=name).info.run_id

    stale = create(_stage_tags("train_baseline", gone, **same))
    candidate = create({tracking.KIND_TAG: "candidate", tracking.PARENT_TAG: stale}, "candidate")
    untagged = create(_stage_tags("train_baseline", None, **same))  # written before runs recorded their process
    live = create(_stage_tags("train_baseline", alive, **same))
    other_host = create(_stage_tags("train_baseline", f"not-{host} 1 1", **same))
    other_scale = create(_stage_tags("train_baseline", gone, **{**same, "srnas.scale": "3"}))
    other_stage = create(_stage_tags("export", gone, **same), "export:plain16")
    finished = create(_stage_tags("train_baseline", gone, **same))
    client.set_terminated(finished, status="FINISHED")

    with tracking.stage_run(cfg, "train_baseline", {"steps": 1}, same) as run:
        status = {name: client.get_run(run_id).info.status for name, run_id in (
            ("stale", stale), ("candidate", candidate), ("untagged", untagged), ("live", live), ("other_host", other_host),
            ("other_scale", other_scale), ("other_stage", other_stage), ("finished", finished))}
        assert status == {"stale": "KILLED", "candidate": "KILLED", "untagged": "KILLED", "live": "RUNNING",
                          "other_host": "RUNNING", "other_scale": "RUNNING", "other_stage": "RUNNING",
                          "finished": "FINISHED"}
        assert client.get_run(stale).info.end_time is not None
        assert client.get_run(run.run_id).data.tags[tracking.PROCESS_TAG] == alive
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_killed_stage_process_leaves_a_run_the_next_start_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole story with a real process: it starts the stage, is SIGKILLed inside it, and the rerun ends its run."""
    from mlflow import MlflowClient

    cfg = _file_store(tmp_path, monkeypatch)
    started = tmp_path / "started"
    code = (f"import os, time; from srnas import tracking; from srnas.config import TrackingConfig\n"
            f"cfg = TrackingConfig(uri={cfg.uri!r}, experiment='killed', artifact_location='')\n"
            f"with tracking.stage_run(cfg, 'search_arch', {{}}, {{'srnas.scale': '2'}}) as run:\n"
            f"    open('started.tmp', 'w').write(run.run_id)\n"
            f"    os.replace('started.tmp', {str(started)!r})  # appears whole\n"
            f"    time.sleep(120)\n")
    kill_when([sys.executable, "-c", code], started.exists, "stage run", timeout_s=120)
    killed_id = started.read_text()
    client = MlflowClient(tracking_uri=cfg.uri)
    assert client.get_run(killed_id).info.status == "RUNNING"  # nobody could end it

    with tracking.stage_run(cfg, "search_arch", {}, {"srnas.scale": "2"}) as rerun:
        assert client.get_run(killed_id).info.status == "KILLED"
    assert client.get_run(rerun.run_id).info.status == "FINISHED"
