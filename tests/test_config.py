"""Configuration: typed sections, key-naming errors, the generated schema, and the profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from srnas.commands.config_cmd import dvc_overrides
from srnas.config import TrainConfig, from_mapping
from srnas.errors import ConfigError
from srnas.schema import settings_schema
from srnas.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_load() -> None:
    settings = load_settings(ROOT / "params.yaml")
    assert settings.data.source == "skimage"
    assert settings.data.scales == (2,)
    assert settings.tracking.uri.startswith("sqlite:///")


@pytest.mark.parametrize("profile", ["smoke", "benchmark"])
def test_profiles_overlay_params(profile: str) -> None:
    settings = load_settings(ROOT / "params.yaml", (ROOT / "config" / f"{profile}.yaml",))
    assert settings.tracking.experiment == f"srnas-{profile}"
    if profile == "benchmark":
        assert settings.data.source == "folder"
        assert settings.data.eval_set_names == ("Set5", "Set14", "B100")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("data: {scales: [5]}", "data.scales: scale 5 is not supported"),
        ("data: {source: ftp}", "data.source: unknown source 'ftp'"),
        ("data: {sauce: skimage}", "unknown key(s) sauce"),
        ("data: {scales: 2}", "data.scales: expected a list"),
        ("data: {val_images: two}", "data.val_images: expected an integer"),
        ("data: {source: folder}", "data.root: the folder source needs a root folder"),
        ("nonsense: 1", "unknown key(s) nonsense"),
        ("- a list", "expected a mapping"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, yaml_text: str, expected: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(params)
    assert expected in str(info.value)
    assert str(params) in str(info.value) or "expected a mapping" in expected


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params.yaml: configuration file not found"):
        load_settings(tmp_path / "params.yaml")


def test_committed_schema_is_current() -> None:
    committed = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert committed == settings_schema(), "run: srnas config schema > workflow/schemas/config.schema.yaml"


def test_schema_accepts_profiles_and_rejects_typos() -> None:
    import jsonschema

    schema = settings_schema()
    for name in ("params.yaml", "config/smoke.yaml", "config/benchmark.yaml"):
        jsonschema.validate(yaml.safe_load((ROOT / name).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"data": {"scalez": [2]}}, schema)


def test_dvc_overrides_flatten_a_profile() -> None:
    args = dvc_overrides({"data": {"source": "folder", "eval_sets": ["Set5", "B100"], "root": "../shared/data"}}, ["data.root=/d"])
    assert args == ["-S ++data.source=folder", "-S ++data.eval_sets=[Set5,B100]", "-S ++data.root=/d"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        dvc_overrides({}, ["novalue"])


def test_steps_by_model_overrides_the_step_budget_per_model() -> None:
    train = from_mapping(TrainConfig, {"steps": 100, "steps_by_model": {"fsrcnn": 40}}, "params.yaml:train")
    assert train.for_model("fsrcnn").steps == 40 and train.for_model("fsrcnn").steps_by_model == {}
    assert train.for_model("plain32").steps == 100
    with pytest.raises(ConfigError, match=r"params.yaml:train.steps_by_model.fsrcnn: must be at least 1"):
        from_mapping(TrainConfig, {"steps_by_model": {"fsrcnn": 0}}, "params.yaml:train")
    with pytest.raises(ConfigError, match=r"params.yaml:train.steps_by_model.fsrcnn: expected an integer"):
        from_mapping(TrainConfig, {"steps_by_model": {"fsrcnn": "many"}}, "params.yaml:train")
