"""The Snakemake DAG and dvc.yaml must describe the same stages, deps and outs (they cannot drift)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# DVC's stage that checks the whole configuration before any other (Snakemake runs the same check when it parses the
# workflow, so it has no rule), and its output, which only DVC's first stages list as a dep.
DVC_ONLY_STAGES = {"validate_config"}
DVC_ONLY_OUTS = {"results/config_check.json"}


def _snakemake_jobs() -> dict[frozenset[str], tuple[str, frozenset[str]]]:
    """outputs -> (rule, inputs) for every job of a forced dry run on the default config."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--forceall", "--dry-run", "all"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    jobs: dict[frozenset[str], tuple[str, frozenset[str]]] = {}
    for block in re.split(r"^rule ", proc.stdout + proc.stderr, flags=re.MULTILINE)[1:]:
        rule = block.split(":", 1)[0]
        fields = dict(re.findall(r"^    (input|output): (.*)$", block, flags=re.MULTILINE))
        if rule == "all":
            continue
        split = lambda text: frozenset(p.strip() for p in text.split(",") if p.strip())
        jobs[split(fields["output"])] = (rule, split(fields.get("input", "")))
    assert jobs, proc.stdout
    return jobs


def _expand(path: str, all_outs: set[str]) -> set[str]:
    """A DVC directory dep means every file Snakemake would name: outs of other stages under it, every file of the raw
    images folder (data.root), or source files."""
    if path in all_outs:
        return {path}
    under = {out for out in all_outs if out.startswith(path.rstrip("/") + "/")}
    if under:
        return under
    full = ROOT / path
    if full.is_dir() and path == _data_root():  # the raw images: Snakemake lists every file under data.root
        return {str(p.relative_to(ROOT)) for p in sorted(full.rglob("*")) if p.is_file()}
    if full.is_dir():
        return {str(p.relative_to(ROOT)) for p in sorted(full.glob("*.py"))}
    return {path}


def _data_root() -> str:
    import yaml

    return os.path.normpath(yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["root"])


def _dvc_stages() -> dict[frozenset[str], tuple[str, frozenset[str]]]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = list(repo.index.stages)
        rel = lambda p: os.path.relpath(str(p.fs_path), ROOT)
        all_outs = {rel(out) for stage in stages for out in stage.outs}
        result = {}
        for stage in stages:
            if stage.name in DVC_ONLY_STAGES:
                continue
            deps: set[str] = set()
            for dep in stage.deps:
                if not isinstance(dep, ParamsDependency):
                    deps |= _expand(rel(dep), all_outs)
            result[frozenset(rel(out) for out in stage.outs)] = (stage.name.split("@")[0], frozenset(deps - DVC_ONLY_OUTS))
        return result


@pytest.mark.skipif(shutil.which("git") is None, reason="DVC needs git")
def test_snakemake_and_dvc_describe_the_same_dag() -> None:
    snakemake = _snakemake_jobs()
    dvc = _dvc_stages()
    assert set(snakemake) == set(dvc), f"outputs differ:\nsnakemake only {set(snakemake) - set(dvc)}\ndvc only {set(dvc) - set(snakemake)}"
    for outs, (rule, inputs) in snakemake.items():
        stage, deps = dvc[outs]
        assert rule == stage, f"{sorted(outs)}: snakemake rule {rule!r} vs dvc stage {stage!r}"
        assert inputs == deps, f"{stage}: deps differ\nsnakemake only {sorted(inputs - deps)}\ndvc only {sorted(deps - inputs)}"


@pytest.mark.skipif(shutil.which("git") is None, reason="DVC needs git")
def test_every_dvc_output_is_cached_or_git_tracked() -> None:
    """``dvc push`` carries DVC's cache and git the files it tracks: an output that is neither (``cache: false`` and
    git-ignored) would be missing from a fresh clone after ``dvc pull``, and its stage would rerun there."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        uncached = sorted({os.path.relpath(str(out.fs_path), ROOT) for stage in repo.index.stages for out in stage.outs
                           if not out.use_cache})
    assert "results/metrics.json" in uncached  # git-tracked, so that `dvc exp run` commits it with each experiment
    proc = subprocess.run(["git", "check-ignore", "--no-index", *uncached], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.split() == [], f"cache: false, yet git-ignored (neither pushed nor committed): {proc.stdout}"


@pytest.mark.skipif(shutil.which("git") is None, reason="DVC needs git")
def test_dvc_hashes_no_resume_checkpoint_and_no_snakemake_timestamp() -> None:
    """A directory's DVC hash leaves out what is not its content (.dvcignore): a training's resume checkpoint (never
    pushed, so a fresh clone would see ``results/train_baseline``, a dependency, changed) and the file that
    ``snakemake --touch`` (``make checkout``) leaves in a directory output (``results/report`` would change)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        for rel in ("results/train_baseline/plain16_x2/last.ckpt", "results/report/.snakemake_timestamp",
                    "results/prepare_data/.snakemake_timestamp"):
            assert repo.dvcignore.is_ignored_file(str(ROOT / rel)), rel
        assert not repo.dvcignore.is_ignored_file(str(ROOT / "results/train_baseline/plain16_x2/model.pt"))


def test_every_dvc_param_is_in_params_yaml() -> None:
    """`dvc repro` fails on a stage whose params key is missing from params.yaml (a dataclass default is not enough)."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in str(key).split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: {key}")
                    break
                node = node[part]
    assert not missing, f"dvc.yaml params missing from params.yaml: {missing}"


def _rule_config_keys() -> dict[str, set[str]]:
    """rule name -> the keys its ``config_json(...)`` passes, read from workflow/rules/*.smk."""
    keys: dict[str, set[str]] = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", path.read_text(), flags=re.MULTILINE)[1:]:
            call = re.search(r"config=config_json\(([^)]*)\)", block)
            if call:
                keys[block.split(":", 1)[0]] = set(re.findall(r'"([^"]+)"', call.group(1)))
    return keys


def test_rules_pass_what_their_dvc_stage_lists_as_params() -> None:
    """A rule reruns when what it passes the CLI changes, a DVC stage when its params do: the same keys, so both runners
    rerun a stage for the same changes (``data`` is passed to every rule; ``tracking`` never triggers a rerun)."""
    import yaml

    stages = {name: stage for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()
              if name not in DVC_ONLY_STAGES}
    rules = _rule_config_keys()
    assert set(rules) == set(stages)
    for name, stage in stages.items():
        assert rules[name] - {"data"} == set(stage.get("params", [])) - {"data"}, name
    assert rules["check_budget"] >= {"budget"} and not any(k.startswith("search_arch") for k in rules["check_budget"])


def test_the_searches_rerun_for_every_search_arch_key_but_where_the_study_lives() -> None:
    """Both runners rerun the two searches for every ``search_arch`` key (listed one by one, so a new key must be
    added) except ``storage``: where the trials are stored changes no result (Snakemake hands it to the job in the
    environment, DVC's stage reads it from params.yaml)."""
    import dataclasses

    import yaml

    from srnas.config import SearchArchConfig

    wanted = {f"search_arch.{f.name}" for f in dataclasses.fields(SearchArchConfig)} - {"search_arch.storage"}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    rules = _rule_config_keys()
    for name in ("search_arch", "search_ratio"):
        for keys in (set(stages[name]["params"]), rules[name]):
            assert {k for k in keys if k.startswith("search_arch")} == wanted, name
