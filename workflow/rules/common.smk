# Shared helpers: config validation, the CLI invocation, and the parent MLflow run.
import glob
import json
import os
import subprocess

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

ALWAYS_PASSED = ("tracking", "data")


def config_json(*sections):
    """The merged config (params.yaml plus --configfile/--config overrides) for the CLI: ``tracking``, ``data``
    and ``sections`` only (all with none named), so that a rule reruns when its own sections change, not others'."""
    keep = set(ALWAYS_PASSED + sections) if sections else set(config)
    return json.dumps({k: v for k, v in config.items() if k in keep}, sort_keys=True, separators=(",", ":"))


def scales():
    return config["data"]["scales"]


def baseline_models():
    return config["baselines"]["models"]


def per_model(pattern):
    """``pattern`` for every baseline model and scale."""
    return expand(pattern, model=baseline_models(), scale=scales())


def package_files(*relative):
    """Package source files a stage runs, so code changes rerun it (DVC lists the same deps)."""
    files = []
    for rel in relative:
        path = os.path.join("src", "srnas", rel)
        files.extend(sorted(glob.glob(os.path.join(path, "*.py"))) if os.path.isdir(path) else [path])
    return files


def pipeline_hook(*args):
    """Open or close the parent MLflow run (``srnas pipeline ...``); a tracking failure must not hide the workflow's."""
    subprocess.run(["srnas", "pipeline", *args, "--config-json", config_json()], check=False)


onstart:
    pipeline_hook("start", "--runner", "snakemake")


onsuccess:
    pipeline_hook("end", "--status", "FINISHED")


onerror:
    pipeline_hook("end", "--status", "FAILED")
