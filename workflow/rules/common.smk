# Shared helpers: config validation, the CLI invocation, and the parent MLflow run.
import json
import os
import subprocess
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from srnas.config import SUPPORTED_SCALES
from srnas.errors import ConfigError
from srnas.models.registry import MODEL_NAME_PATTERN
from srnas.preflight import check_mapping, load_checked
from srnas.settings import STORAGE_ENV, TRACKING_ENV
from srnas.stage_code import stage_code_files


def check_config():
    """The whole configuration, checked while Snakemake parses the workflow: before any job and before the onstart
    hook, so a bad value stops the run with one line naming the key, and nothing runs. First params.yaml and every
    --configfile overlay before Snakemake merges them (what `srnas config check` runs), so the line names the file;
    then the merged config, --config overrides included: every key set with a valid value, no other key, and the
    names that must exist (model names in the registry, budget.target in latency.targets: srnas.preflight)."""
    try:
        load_checked(Path("params.yaml"), tuple(Path(p) for p in workflow.overwrite_configfiles))
        check_mapping(config, "config (params.yaml, --configfile and --config merged)")
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None


check_config()
validate(config, "../schemas/config.schema.yaml", set_default=False)  # the schema agrees: every key, no other


# Defence in depth: a wildcard only ever matches a registry-safe model name and a supported scale (the config check
# above already refuses any other name), and every value a shell command substitutes is quoted (`{...:q}`).
wildcard_constraints:
    model=MODEL_NAME_PATTERN,
    scale="|".join(str(scale) for scale in SUPPORTED_SCALES),


# Where MLflow writes (the `tracking` section) and where stage 2's study lives (search_arch.storage) reach every job
# through the environment, not a rule's params, so changing them reruns nothing: the CLI reads them from TRACKING_ENV
# and STORAGE_ENV with --config-json. No rule passes search_arch.storage, so a URL's password is on no command line.
os.environ[TRACKING_ENV] = json.dumps(config["tracking"], sort_keys=True)
os.environ[STORAGE_ENV] = config["search_arch"]["storage"]


ALWAYS_PASSED = ("data",)


def config_json(*keys):
    """The merged config (params.yaml plus --configfile/--config overrides) for the CLI: ``data`` and ``keys``
    (sections, or dotted keys like ``supernet.space``) only, all with none named (``tracking`` goes through
    TRACKING_ENV, ``search_arch.storage`` through STORAGE_ENV). A rule reruns when what it
    is passed changes, so it names what its DVC stage lists as params. A key missing from the config is an error
    naming it (never skipped: the stage would run with another value than the config's)."""
    if not keys:  # the whole config, but the storage URL (in STORAGE_ENV) and tracking (in TRACKING_ENV; its uri may
        # hold a password too): a command line is no place for a password
        whole = {**config, "search_arch": {**config["search_arch"], "storage": ""}}
        whole.pop("tracking", None)
        return json.dumps(whole, sort_keys=True, separators=(",", ":"))
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


# The baseline exported, timed and scored in every deployable form like the final model (rules export_deployed,
# profile_deployed, evaluate_deployed): int8 against fp32 of the same network for a baseline too. A fixed name, not
# the best baseline within the budget, which only check_budget knows: the DAG stays static (no checkpoint).
DEPLOYED_BASELINE = "plain16"
# The deployed forms (srnas.export.DEPLOYED_FORMS): rule keyword -> file name in the export folder.
DEPLOYED_FILES = {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx", "pte": "model.pte", "pte_int8": "model.int8.pte"}


def deployed_baseline_name():
    """The deployed baseline's result name, at the final model's scale: ``plain16_x<supernet.scale>``."""
    return f"{DEPLOYED_BASELINE}_x{config['supernet']['scale']}"


def deployed_files(folder):
    """Every deployed form's path in ``folder``, by keyword: a rule's outputs or inputs (``**deployed_files(...)``)."""
    return {key: f"{folder}/{name}" for key, name in DEPLOYED_FILES.items()}


def raw_images():
    """Every file under ``data.root`` (the raw images): adding, removing or changing one reruns prepare_data. DVC's dep
    is the folder itself (dvc.yaml: ``${data.root}``); a missing folder gives no input (the stage then names it)."""
    root = Path(config["data"]["root"])
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


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
