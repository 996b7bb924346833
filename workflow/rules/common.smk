# Shared helpers: config validation, the CLI invocation, and the parent MLflow run.
import json
import subprocess

from snakemake.utils import validate

from srnas.stage_code import stage_code_files


validate(config, "../schemas/config.schema.yaml")

ALWAYS_PASSED = ("tracking", "data")


def config_json(*keys):
    """The merged config (params.yaml plus --configfile/--config overrides) for the CLI: ``tracking``, ``data`` and
    ``keys`` (sections, or dotted keys like ``supernet.space``) only, all with none named. A rule reruns when what it
    is passed changes, so it names what its DVC stage lists as params."""
    if not keys:
        return json.dumps(config, sort_keys=True, separators=(",", ":"))
    picked = {}
    for key in ALWAYS_PASSED + keys:
        *parents, leaf = key.split(".")
        source, target = config, picked
        for part in parents:
            source, target = source.get(part, {}), target.setdefault(part, {})
        if leaf in source:
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
