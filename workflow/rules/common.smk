# Shared helpers: config validation, the CLI invocation, and the parent MLflow run.
import glob
import json
import os
import subprocess

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def check_config_files():
    """params.yaml and every --configfile overlay, checked by srnas before Snakemake merges them: a missing key, or a
    key an overlay sets that does not exist, stops the workflow with one line naming the file and the key."""
    overlays = [arg for path in workflow.overwrite_configfiles for arg in ("--overlay", str(path))]
    checked = subprocess.run(["srnas", "config", "check", *overlays], capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        lines = checked.stderr.strip().splitlines() or [f"srnas config check failed (exit {checked.returncode})"]
        raise WorkflowError(lines[-1])


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
