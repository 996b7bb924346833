"""Configuration: typed sections, key-naming errors, the generated schema, and the profiles."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from srnas.commands.config_cmd import dvc_overrides
from srnas.config import BudgetConfig, TrainConfig, from_mapping
from srnas.errors import ConfigError
from srnas.schema import settings_schema
from srnas.settings import Settings, deep_merge, default_mapping, load_settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _params_without(tmp_path: Path, dotted: str) -> Path:
    """A copy of params.yaml with the key ``dotted`` deleted."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    *parents, leaf = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    del node[leaf]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_default_params_load() -> None:
    settings = load_settings(ROOT / "params.yaml")
    assert settings.data.source == "skimage"
    assert settings.data.scales == (2,)
    assert settings.tracking.uri.startswith("sqlite:///")


@pytest.mark.parametrize("profile", ["smoke", "benchmark", "xnnpack"])
def test_profiles_overlay_params(profile: str) -> None:
    settings = load_settings(ROOT / "params.yaml", (ROOT / "config" / f"{profile}.yaml",))
    assert settings.tracking.experiment == f"srnas-{profile}"
    if profile == "benchmark":
        assert settings.data.source == "folder"
        assert settings.data.eval_set_names == ("Set5", "Set14", "B100")
    if profile == "xnnpack":  # the ExecuTorch latency targets replace the default one: fp32 and int8, one thread, 720p
        assert [(t.name, t.runtime, t.precision, t.threads, t.input_size) for t in settings.latency.targets] == [
            ("cpu_xnnpack_fp32", "executorch_xnnpack_fp32", "fp32", 1, ()),
            ("cpu_xnnpack_int8", "executorch_xnnpack_fp32", "int8", 1, ())]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("data: {scales: [5]}", "data.scales: scale 5 is not supported"),
        ("data: {source: ftp}", "data.source: unknown source 'ftp'"),
        ("data: {sauce: skimage}", "data.sauce: unknown key"),
        ("data: {scales: 2}", "data.scales: expected a list"),
        ("data: {val_images: two}", "data.val_images: expected an integer"),
        ("data: {source: folder, root: ''}", "data.root: the folder source needs a root folder"),
        ("nonsense: 1", "nonsense: unknown key"),
        ("- a list", "expected a mapping"),
    ],
)
def test_bad_overlays_name_the_file_and_the_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "params.yaml", (overlay,))
    assert expected in str(info.value)
    assert str(overlay) in str(info.value)


def test_dataclass_defaults_are_params_yaml() -> None:
    """One set of values: params.yaml sets every key, and the dataclasses' defaults (what library callers and tests
    get without a file) are exactly params.yaml's values -- a default changed in one place only fails here."""
    assert default_mapping() == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert load_settings(ROOT / "params.yaml") == Settings()


@pytest.mark.parametrize("dotted", ["budget.latency_ms", "budget.slack", "budget.verify_candidates", "search_ratio.enabled",
                                    "search_arch.trials", "latency.targets", "data.div2k.cache_dir",
                                    "supernet.train.steps", "finetune"])
def test_a_missing_key_is_an_error_naming_it(tmp_path: Path, dotted: str) -> None:
    params = _params_without(tmp_path, dotted)
    with pytest.raises(ConfigError, match=rf"^{params}:{dotted}: missing key"):
        load_settings(params)


def test_an_unknown_key_in_params_is_an_error_naming_it(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["search_arch"]["budget_ms"] = 33.0  # where the budget used to live
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}:search_arch.budget_ms: unknown key; known: strategy,"):
        load_settings(path)


def test_an_unknown_key_in_an_overlay_is_one_line_naming_the_overlay(tmp_path: Path, capsys) -> None:
    from srnas.cli import main

    overlay = tmp_path / "smoke.yaml"
    overlay.write_text((ROOT / "config" / "smoke.yaml").read_text().replace("  trials: 8", "  trails: 8"), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{overlay}:search_arch.trails: unknown key"):
        load_settings(ROOT / "params.yaml", (overlay,))
    for command in (["config", "check", "--params", str(ROOT / "params.yaml"), "--overlay", str(overlay)],
                    ["config", "dvc-args", str(overlay)]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.splitlines() == [(f"srnas: error: {overlay}:search_arch.trails: unknown key; known: "
                                              "strategy, mode, trials, n_workers, seed, prune_keep, val_set, val_crops, crop_size, "
                                              "recovery_steps, recovery_per_width, plain_seeds, storage")]
    # a list replaces the one it overlays: its items must be complete
    partial = tmp_path / "target.yaml"
    partial.write_text("latency: {targets: [{name: t, runtime: torch_fp32, precision: fp32}]}", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{partial}:latency.targets\[0\].device: missing key"):
        load_settings(ROOT / "params.yaml", (partial,))


@pytest.mark.slow
def test_snakemake_stops_on_an_overlay_typo_naming_the_overlay(tmp_path: Path) -> None:
    overlay = tmp_path / "smoke.yaml"
    overlay.write_text((ROOT / "config" / "smoke.yaml").read_text().replace("  trials: 8", "  trails: 8"), encoding="utf-8")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "--dry-run", "--configfile", str(overlay)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert f"{overlay}:search_arch.trails: unknown key" in proc.stdout + proc.stderr


def _snakemake_config_json(config: dict):
    """``config_json`` of workflow/rules/common.smk, run on ``config`` outside Snakemake."""
    source = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    tree = ast.parse(source[source.index("ALWAYS_PASSED = "):source.index("def scales():")])

    class WorkflowError(Exception):
        pass

    namespace = {"config": config, "json": json, "WorkflowError": WorkflowError}
    exec(compile(tree, "common.smk", "exec"), namespace)  # noqa: S102 -- the workflow's own code, as Snakemake runs it
    return namespace["config_json"], WorkflowError


def test_snakemake_config_json_fails_on_a_missing_key() -> None:
    config = default_mapping()
    config_json, WorkflowError = _snakemake_config_json(config)
    picked = json.loads(config_json("budget", "latency.targets"))
    assert set(picked) == {"data", "budget", "latency"} and set(picked["latency"]) == {"targets"}
    whole = json.loads(config_json())  # the pipeline hooks': where things are stored comes in the environment
    assert "tracking" not in whole and whole["search_arch"]["storage"] == "" and set(whole) == set(config) - {"tracking"}
    del config["search_ratio"]["importance"]
    with pytest.raises(WorkflowError, match=r"no key search_ratio.importance \(a rule passes search_ratio.importance\)"):
        config_json("budget", "search_ratio.importance")
    with pytest.raises(WorkflowError, match=r"no key nonsense \(a rule passes nonsense.deep\)"):
        config_json("nonsense.deep")


def test_config_json_passes_what_the_rule_names_over_the_defaults() -> None:
    passed = {"tracking": {"enabled": False},
              "budget": {"target": "", "latency_ms": 5.0, "slack": 0.0, "verify_candidates": 2, "verify_runs": 1}}
    settings = load_settings(config_json=json.dumps(passed))
    assert settings.budget == BudgetConfig("", 5.0, 0.0, 2, 1) and not settings.tracking.enabled
    assert settings.search_arch == Settings().search_arch  # not passed: params.yaml's values, never read by the stage
    with pytest.raises(ConfigError, match=r"^--config-json:budget.budget_ms: unknown key"):
        load_settings(config_json=json.dumps({"budget": {"budget_ms": 5.0}}))


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params.yaml: configuration file not found"):
        load_settings(tmp_path / "params.yaml")


def test_committed_schema_is_current() -> None:
    committed = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert committed == settings_schema(), "run: srnas config schema > workflow/schemas/config.schema.yaml"


def test_schema_accepts_profiles_and_rejects_typos_and_missing_keys() -> None:
    import jsonschema

    schema = settings_schema()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    jsonschema.validate(params, schema)
    for name in ("config/smoke.yaml", "config/benchmark.yaml", "config/xnnpack.yaml"):  # params.yaml + the overlay
        jsonschema.validate(deep_merge(params, yaml.safe_load((ROOT / name).read_text())), schema)
    with pytest.raises(jsonschema.ValidationError, match="scalez"):
        jsonschema.validate(deep_merge(params, {"data": {"scalez": [2]}}), schema)
    del params["budget"]["latency_ms"]
    with pytest.raises(jsonschema.ValidationError, match="latency_ms"):
        jsonschema.validate(params, schema)
    assert '"default":' not in json.dumps(schema)  # the values live in params.yaml alone


def test_dvc_overrides_flatten_a_profile() -> None:
    args = dvc_overrides({"data": {"source": "folder", "eval_sets": ["Set5", "B100"], "root": "../shared/data"}}, ["data.root=/d"])
    assert args == ["-S ++data.source=folder", "-S ++data.eval_sets=[Set5,B100]", "-S ++data.root=/d"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        dvc_overrides({}, ["novalue"])


def test_steps_by_model_overrides_the_step_budget_per_model() -> None:
    defaults = dataclasses.asdict(TrainConfig())
    train = from_mapping(TrainConfig, defaults | {"steps": 100, "steps_by_model": {"fsrcnn": 40}}, "params.yaml:train")
    assert train.for_model("fsrcnn").steps == 40 and train.for_model("fsrcnn").steps_by_model == {}
    assert train.for_model("plain32").steps == 100
    with pytest.raises(ConfigError, match=r"params.yaml:train.steps_by_model.fsrcnn: must be at least 1"):
        from_mapping(TrainConfig, defaults | {"steps_by_model": {"fsrcnn": 0}}, "params.yaml:train")
    with pytest.raises(ConfigError, match=r"params.yaml:train.steps_by_model.fsrcnn: expected an integer"):
        from_mapping(TrainConfig, defaults | {"steps_by_model": {"fsrcnn": "many"}}, "params.yaml:train")


def test_config_json_reads_the_tracking_section_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snakemake passes ``tracking`` in SRNAS_TRACKING_JSON, outside every rule's params: a rule's --config-json has
    none, and where MLflow writes comes from the environment (a tracking section in --config-json still wins)."""
    from srnas.settings import TRACKING_ENV

    monkeypatch.setenv(TRACKING_ENV, json.dumps({"uri": "http://mlflow:5000", "experiment": "srnas-other"}))
    settings = load_settings(config_json=json.dumps({"budget": {"latency_ms": 5.0}}))
    assert (settings.tracking.uri, settings.tracking.experiment) == ("http://mlflow:5000", "srnas-other")
    assert settings.tracking.enabled and settings.budget.latency_ms == 5.0
    assert not load_settings(config_json=json.dumps({"tracking": {"enabled": False}})).tracking.enabled
    monkeypatch.setenv(TRACKING_ENV, json.dumps({"urii": "x"}))
    with pytest.raises(ConfigError, match=rf"^{TRACKING_ENV}:tracking.urii: unknown key"):
        load_settings(config_json="{}")
    monkeypatch.setenv(TRACKING_ENV, "[")
    with pytest.raises(ConfigError, match=rf"^{TRACKING_ENV}: not valid JSON"):
        load_settings(config_json="{}")


def test_config_json_reads_the_search_storage_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snakemake passes ``search_arch.storage`` in SRNAS_SEARCH_STORAGE, outside the rules' params (where the study
    lives changes no result): a rule's --config-json names the other search_arch keys, the URL comes from there."""
    from srnas.settings import STORAGE_ENV

    url = "postgresql://srnas@db.lab/srnas"
    passed = json.dumps({"search_arch": {"trials": 7}})
    assert load_settings(config_json=passed).search_arch.storage == ""
    monkeypatch.setenv(STORAGE_ENV, url)
    settings = load_settings(config_json=passed)
    assert (settings.search_arch.storage, settings.search_arch.trials) == (url, 7)
    assert load_settings(config_json="{}").search_arch.storage == url
    assert load_settings(config_json=json.dumps({"search_arch": {"storage": ""}})).search_arch.storage == ""  # wins
    monkeypatch.setenv(STORAGE_ENV, "db.lab/srnas")
    with pytest.raises(ConfigError, match=r"^--config-json:search_arch.storage: expected empty"):
        load_settings(config_json=passed)
