# Shared helpers: config validation, the CLI invocation, and the parent MLflow run.
import glob
import json
import os
import shlex

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

def config_json():
    """The merged config (params.yaml plus --configfile/--config overrides) for the CLI."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def scales():
    return config["data"]["scales"]


def baseline_models():
    return config["baselines"]["models"]


def package_files(*relative):
    """Package source files a stage runs, so code changes rerun it (DVC lists the same deps)."""
    files = []
    for rel in relative:
        path = os.path.join("src", "srnas", rel)
        files.extend(sorted(glob.glob(os.path.join(path, "*.py"))) if os.path.isdir(path) else [path])
    return files


onstart:
    shell(f"srnas pipeline start --runner snakemake --config-json {shlex.quote(config_json())}")


onsuccess:
    shell(f"srnas pipeline end --status FINISHED --config-json {shlex.quote(config_json())}")


onerror:
    shell(f"srnas pipeline end --status FAILED --config-json {shlex.quote(config_json())}")
