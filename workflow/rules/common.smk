# Shared helpers: config validation, the CLI invocation, and the parent MLflow run.
import json
import subprocess
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from srnas.errors import ConfigError
from srnas.settings import load_settings
from srnas.stage_code import stage_code_files


def check_config_files():
    """params.yaml and every --configfile overlay, checked by srnas (what `srnas config check` runs) before Snakemake
    merges them: a missing key, or a key an overlay sets that does not exist, stops the workflow with one line naming
    the file and the key."""
    try:
        load_settings(Path("params.yaml"), tuple(Path(p) for p in workflow.overwrite_configfiles))
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None


check_config_files()
validate(config, "../schemas/config.schema.yaml", set_default=False)  # --config overrides too: every key, no other

ALWAYS_PASSED = ("tracking", "data")


def config_json(*keys):
    """The merged config (params.yaml plus --configfile/--config overrides) for the CLI: ``tracking``, ``data`` and
    ``keys`` (sections, or dotted keys like ``supernet.space``) only, all with none named. A rule reruns when what it
    is passed changes, so it names what its DVC stage lists as params. A key missing from the config is an error
    naming it (never skipped: the stage would run with another value than the config's)."""
    if not keys:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))
    picked = {}
    for key in ALWAYS_PASSED + keys:
        *parents, leaf = key.split(".")
        source, target = config, picked
        for depth, part in enumerate([*parents, leaf]):
            if not isinstance(source, dict) or part not in source:
                raise WorkflowError(f"config_json: the config has no key {'.'.join([*parents, leaf][:depth + 1])} "
                                    f"(a rule passes {key})")
            if depth < len(parents):
                source, target = source[part], target.setdefault(part, {})
        target[leaf] = source[leaf]
    return json.dumps(picked, sort_keys=True, separators=(",", ":"))


def scales():
    return config["data"]["scales"]


def baseline_models():
    return config["baselines"]["models"]


def per_model(pattern):
    """``pattern`` for every baseline model and scale."""
    return expand(pattern, model=baseline_models(), scale=scales())


def final_name():
    """The final model's result name: ``final_x<supernet.scale>`` (the scale the supernet and the search are for)."""
    return f"final_x{config['supernet']['scale']}"


def stage_code(command):
    """The package source files the stage's subcommand runs (its transitive imports), so a code change reruns it;
    dvc.yaml lists the same code (tests/test_stage_code.py)."""
    return stage_code_files("src", command)


def pipeline_hook(*args):
    """Open or close the parent MLflow run (``srnas pipeline ...``); a tracking failure must not hide the workflow's."""
    subprocess.run(["srnas", "pipeline", *args, "--config-json", config_json()], check=False)


onstart:
    pipeline_hook("start", "--runner", "snakemake")


onsuccess:
    pipeline_hook("end", "--status", "FINISHED")


onerror:
    pipeline_hook("end", "--status", "FAILED")
