"""Rules rerun when their code changes: each stage's code dependencies are its subcommand's transitive imports inside
srnas (srnas.stage_code), and dvc.yaml and the Snakefile list exactly those."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from srnas.stage_code import module_imports, stage_code, stage_code_files, stage_modules

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
BIN = Path(sys.executable).parent

# Each DVC stage / Snakemake rule and the subcommand its command line runs.
STAGE_COMMANDS = {"prepare_data": "prepare_data", "fit_baselines": "fit", "train_baseline": "train", "export": "export", "profile_model": "profile",
                  "evaluate": "evaluate", "train_supernet": "supernet", "profile_device": "latency",
                  "search_arch": "search", "search_ratio": "search", "finetune": "finetune", "export_final": "export",
                  "profile_final": "profile", "evaluate_final": "evaluate", "check_budget": "search", "report": "report",
                  "validate_config": "config_cmd", "export_deployed": "export", "profile_deployed": "profile",
                  "evaluate_deployed": "evaluate"}
DVC_ONLY_STAGES = {"validate_config"}  # Snakemake checks the configuration when it parses the workflow: no rule
SUBCOMMAND_MODULES = {"prepare-data": "prepare_data", "fit-baselines": "fit", "train": "train", "export": "export", "profile": "profile",
                      "evaluate": "evaluate", "train-supernet": "supernet", "profile-device": "latency",
                      "search-arch": "search", "search-ratio": "search", "finetune": "finetune", "check-budget": "search",
                      "report": "report", "config": "config_cmd"}


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _dvc_code(stage: dict) -> list[str]:
    return sorted(d for d in stage["deps"] if d.startswith("src/"))


def test_every_stage_is_mapped_to_the_subcommand_it_runs() -> None:
    stages = _dvc_stages()
    assert set(stages) == set(STAGE_COMMANDS)
    for name, stage in stages.items():
        subcommand = stage["cmd"].split()[1]
        assert SUBCOMMAND_MODULES[subcommand] == STAGE_COMMANDS[name], name


@pytest.mark.parametrize("stage", sorted(STAGE_COMMANDS))
def test_dvc_lists_the_code_each_stage_imports(stage: str) -> None:
    expected = [os.path.relpath(u, ROOT) for u in stage_code(SRC, STAGE_COMMANDS[stage])]
    listed = _dvc_code(_dvc_stages()[stage])
    assert listed == sorted(expected), (f"dvc.yaml {stage}: code deps differ from its imports; missing "
                                        f"{sorted(set(expected) - set(listed))}, not imported {sorted(set(listed) - set(expected))}")


def test_the_transitive_imports_follow_lazy_and_submodule_imports() -> None:
    """Known chains: the search command imports the search package lazily, search.run imports the latency model,
    which times with srnas.runtimes; ``from srnas.latency import measure`` is the submodule."""
    assert "srnas.search.run" in module_imports(SRC, "srnas.commands.search")
    assert "srnas.latency.measure" in module_imports(SRC, "srnas.latency.table")
    modules = stage_modules(SRC, "search")
    assert {"srnas.search.run", "srnas.latency.predictor", "srnas.runtimes.timing", "srnas.arch.network",
            "srnas.pruning", "srnas.checkpoint"} <= modules
    assert "srnas.report" not in modules and "srnas.commands.train" not in modules
    files = stage_code_files(SRC, "latency")
    assert str(SRC / "srnas" / "latency" / "predictor.py") in files and str(SRC / "srnas" / "onnx_graph.py") in files


def test_snakemake_rules_list_the_same_code_as_dvc() -> None:
    """A forced dry run shows each rule's inputs: its code inputs are the files of dvc.yaml's units."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "--forceall", "--dry-run", "all"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    seen = set()
    for block in re.split(r"^rule ", proc.stdout + proc.stderr, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0]
        if rule not in STAGE_COMMANDS:
            continue
        inputs = dict(re.findall(r"^    (input): (.*)$", block, flags=re.MULTILINE)).get("input", "")
        code = sorted(p.strip() for p in inputs.split(",") if p.strip().startswith("src/"))
        expected = sorted(os.path.relpath(f, ROOT) for f in stage_code_files(SRC, STAGE_COMMANDS[rule]))
        assert code == expected, f"rule {rule}: code inputs differ from its imports"
        seen.add(rule)
    assert seen == set(STAGE_COMMANDS) - DVC_ONLY_STAGES
