"""Stage 2, the architecture and pruning-scheme search: candidates, quality, the persisted study, the command.

The latency table is built with deterministic fake timers (no timing is asserted on the shared CPU); the search
itself runs for real: supernet weights, physical pruning, PSNR on crops, Optuna on SQLite, worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import kill_when, write_prepared_set
from test_latency import patch_fake_timers

from srnas.arch.pruned import as_pruned
from srnas.arch.space import SearchSpace, SubnetConfig
from srnas.config import LatencyConfig, SearchArchConfig, SearchSpaceConfig, from_mapping
from srnas.errors import ConfigError
from srnas.latency.profile import load_predictor, profile_target
from srnas.latency.targets import Target
from srnas.pruning import prunable_convs
from srnas.search import ArchCandidate, SearchInputs, search_arch
from srnas.search.pareto import pareto_front
from srnas.search.quality import QualityEvaluator
from srnas.search.run import searchable_schemes
from srnas.search.study import TrialRecord
from srnas.supernet.supernet import SRSupernet, load_supernet, save_supernet
from srnas.training.patches import load_pairs

SPACE = SearchSpace(SearchSpaceConfig(num_cells=3, widths=(8, 16), expansions=(2, 4)))
TARGET = Target("cpu_test", "test-cpu", "torch_fp32", "fp32", 1, (12, 16), 2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SearchInputs:
    """A randomly initialised supernet, a fake-timed latency table of its space, and a prepared val set."""
    root = tmp_path_factory.mktemp("search_inputs")
    torch.manual_seed(0)
    save_supernet(root / "supernet.pt", SRSupernet(SPACE, 2))
    with pytest.MonkeyPatch.context() as mp:
        patch_fake_timers(mp)
        profile_target(TARGET, SPACE, LatencyConfig(calibration_subnets=4), root / "tables" / TARGET.name,
                       cache_dir=root / "cache")
    write_prepared_set(root / "data", "val", 2, np.random.default_rng(0), size=64)
    return SearchInputs(root / "supernet.pt", root / "tables" / TARGET.name, root / "data")


def _cfg(**overrides) -> SearchArchConfig:
    base = {"budget_ms": 1e9, "trials": 10, "val_crops": 2, "crop_size": 16, "verify_runs": 0}
    return from_mapping(SearchArchConfig, base | overrides, "search_arch")


# ------------------------------------------------------------------------------------------ units


def test_candidate_round_trip_names_and_pruning() -> None:
    subnet = SubnetConfig.from_name("w16-c.w4.s")
    cand = ArchCandidate.normalized(subnet, ["filter_g8", "dense", "filter_g8", "filter_g16"], 0.5)
    assert cand.schemes == ("filter_g8", "dense", "filter_g8", "dense")  # a skip cell has nothing to prune
    # filter_g16 at keep 0.5 removes nothing from a 16-filter layer (8 rounds up to 16) but halves a 64-filter expand
    moot = ArchCandidate.normalized(subnet, ["filter_g16", "filter_g16", "filter_g16", "dense"], 0.5)
    assert moot.schemes == ("dense", "dense", "filter_g16", "dense")
    assert len(cand.conv_schemes()) == len(prunable_convs(subnet))  # head, conv cell, wdsr expand + reduce
    assert cand.conv_schemes() == ("filter_g8", "dense", "filter_g8", "filter_g8")
    assert cand.name == "w16-c.w4.s/g8.d.g8.d"
    assert ArchCandidate.from_dict(json.loads(json.dumps(cand.to_dict()))) == cand
    pruned = cand.pruned(0.5)
    # head 16 -> 8; conv cell dense (16 in, 16 out); wdsr: expand 64 -> 32, reduce 16 -> 8, last conv follows the stream
    assert pruned.channels == (8, 16, 32, 8, 16)
    assert ArchCandidate.normalized(subnet, ["dense"] * 4, 0.5).pruned(0.5).channels == (16, 16, 64, 16, 16)
    with pytest.raises(ConfigError, match="skip cell"):
        ArchCandidate(subnet, ("dense", "dense", "dense", "filter_g8"))
    with pytest.raises(ConfigError, match="filter_g"):
        ArchCandidate(subnet, ("dense", "sparse50", "dense", "dense"))


def test_pareto_front_keeps_only_undominated_points() -> None:
    def rec(n: int, psnr: float, ms: float) -> TrialRecord:
        cand = ArchCandidate.normalized(SubnetConfig.from_name(f"w{8 * (n + 1)}-c"), ["dense", "dense"], 0.5)
        return TrialRecord(n, cand, psnr, ms, True, 0.0, "0")

    records = [rec(0, 30.0, 10.0), rec(1, 31.0, 20.0), rec(2, 30.5, 25.0), rec(3, 29.0, 5.0), rec(4, 31.5, 40.0)]
    assert [r.number for r in pareto_front(records)] == [3, 0, 1, 4]


def test_quality_is_the_supernet_subnet_psnr_and_pruning_costs_quality(inputs) -> None:
    from srnas.metrics import calculate_psnr
    from srnas.supernet.supernet import load_supernet

    supernet = load_supernet(inputs.supernet)
    pairs = load_pairs(inputs.data_dir / "val" / "x2", 2)
    quality = QualityEvaluator(supernet, pairs, count=2, size=16, precision="fp32", prune_keep=0.5)
    cand = ArchCandidate.normalized(SPACE.largest(), ["dense"] * 4, 0.5)
    with torch.no_grad():
        out = supernet.get_active_subnet(SPACE.largest())(quality.lr)
    sr = out.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expected = np.mean([calculate_psnr(a, b, crop_border=2) for a, b in zip(sr, quality.hr)])
    assert quality.psnr(cand) == pytest.approx(expected, abs=1e-9)
    pruned = ArchCandidate.normalized(SPACE.largest(), ["filter_g8"] * 4, 0.5)
    assert quality.model(pruned.pruned(0.5)).pruned.channels == pruned.pruned(0.5).channels
    assert quality.psnr(pruned) != quality.psnr(cand)
    with pytest.raises(ConfigError, match="int8"):
        QualityEvaluator(supernet, pairs, count=2, size=16, precision="int8", prune_keep=0.5)


def test_only_accelerated_filter_schemes_on_the_table_grid_are_searched(inputs) -> None:
    predictor = load_predictor(inputs.table_dir)
    schemes = searchable_schemes(predictor)
    accepted = predictor.table.extra["accepted_schemes"]
    assert schemes and set(schemes) <= set(accepted)
    assert all(s.startswith("filter_g") and int(s[8:]) >= predictor.table.granularity for s in schemes)


def test_config_validation() -> None:
    for key, value, message in (("strategy", "grid", "unknown strategy"), ("mode", "both", "unknown mode"),
                                ("prune_keep", 1.0, "prune_keep"), ("trials", 0, "trials"), ("budget_ms", 0, "budget_ms")):
        with pytest.raises(ConfigError, match=message):
            from_mapping(SearchArchConfig, {key: value}, "search_arch")


# ---------------------------------------------------------------------------------------- search


@pytest.mark.parametrize("strategy", ["tpe", "random", "gp"])
def test_search_respects_the_budget_and_writes_outputs(inputs, tmp_path, strategy) -> None:
    predictor = load_predictor(inputs.table_dir)
    budget = 0.5 * (predictor.predict(SPACE.smallest()) + predictor.predict(SPACE.largest()))
    result = search_arch(inputs, _cfg(strategy=strategy, budget_ms=budget, trials=12), tmp_path, progress=False)
    assert len(result.records) == 12
    assert result.chosen.feasible and result.chosen.latency_ms <= budget
    assert result.chosen.psnr == max(r.psnr for r in result.records if r.feasible)
    arch = json.loads((tmp_path / "arch.json").read_text())
    assert arch["chosen"]["name"] == result.chosen.candidate.name and arch["strategy"] == strategy
    assert predictor.predict(ArchCandidate.from_dict(arch["chosen"]).pruned(0.5)) == pytest.approx(arch["chosen"]["predicted_ms"])
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 13
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "search_metrics.json").read_text())
    assert metrics["trials"] == 12 and metrics["best_psnr"] == pytest.approx(result.chosen.psnr)


def test_pareto_mode_returns_the_front_within_budget(inputs, tmp_path) -> None:
    result = search_arch(inputs, _cfg(mode="pareto", trials=12), tmp_path, progress=False)
    front = json.loads((tmp_path / "arch.json").read_text())["front"]
    assert [p["name"] for p in front] == [r.candidate.name for r in result.front]
    latencies, psnrs = [p["predicted_ms"] for p in front], [p["psnr"] for p in front]
    assert latencies == sorted(latencies) and psnrs == sorted(psnrs)
    assert len(pareto_front(result.records)) == len(front)


def test_budget_below_the_fastest_subnet_is_a_clear_error(inputs, tmp_path) -> None:
    with pytest.raises(ConfigError, match="below the fastest subnet"):
        search_arch(inputs, _cfg(budget_ms=1e-6), tmp_path, progress=False)
    assert not (tmp_path / "arch.json").exists()


def test_a_finished_study_is_reused_and_extended(inputs, tmp_path) -> None:
    first = search_arch(inputs, _cfg(trials=6), tmp_path, progress=False)
    again = search_arch(inputs, _cfg(trials=6), tmp_path, progress=False)
    assert [r.candidate for r in again.records] == [r.candidate for r in first.records]  # nothing re-run
    more = search_arch(inputs, _cfg(trials=9), tmp_path, progress=False)
    assert [r.candidate for r in more.records[:6]] == [r.candidate for r in first.records]
    assert len(more.records) == 9
    other = search_arch(inputs, _cfg(trials=3, budget_ms=1e8), tmp_path, progress=False)  # another study in the file
    assert len(other.records) == 3 and other.study != first.study


def _completed(study_path: Path) -> int:
    """Completed trials in the file, read without creating Optuna's tables: a reader that created them while the
    search process did too would race it (SQLite schema creation is not atomic across processes)."""
    if not study_path.exists():
        return 0
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{study_path}", skip_table_creation=True,
                                             skip_compatibility_check=True)
        names = [s.study_name for s in storage.get_all_studies()]
        return sum(len(optuna.load_study(study_name=n, storage=storage).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) for n in names)
    except Exception:  # the search process is still creating the file
        return 0


def _cli(inputs: SearchInputs, params: Path, out: Path) -> list[str]:
    return ["search-arch", "--params", str(params), "--supernet", str(inputs.supernet),
            "--tables", str(inputs.table_dir.parent), "--data-dir", str(inputs.data_dir), "--out", str(out)]


def _params(tmp_path: Path, **search) -> Path:
    params = tmp_path / "params.yaml"
    cfg = {"tracking": {"enabled": False},
           "latency": {"targets": [{"name": TARGET.name, "runtime": "torch_fp32", "precision": "fp32", "input_size": [12, 16]}]},
           "search_arch": {"budget_ms": 1e9, "val_crops": 2, "crop_size": 16, "verify_runs": 0} | search}
    params.write_text(json.dumps(cfg), encoding="utf-8")
    return params


@pytest.mark.slow
def test_a_killed_search_resumes_where_it_stopped(inputs, tmp_path) -> None:
    params, out = _params(tmp_path, trials=60, seed=3), tmp_path / "out"
    cmd = [sys.executable, "-m", "srnas.cli", *_cli(inputs, params, out)]
    kill_when(cmd, lambda: _completed(out / "study.db") >= 5, "5 completed trials")
    done = _completed(out / "study.db")
    assert 5 <= done < 60 and not (out / "arch.json").exists()
    name = optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}")[0]
    before = [t.params for t in optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))]

    from srnas.cli import main

    assert main(_cli(inputs, params, out)) == 0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")
    after = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(after) == 60
    assert [t.params for t in after[:done]] == before  # the trials done before the kill are kept, not redone
    assert json.loads((out / "arch.json").read_text())["trials"] == 60


@pytest.mark.slow
def test_two_workers_share_one_study(inputs, tmp_path) -> None:
    from srnas.cli import main

    params, out = _params(tmp_path, trials=24, n_workers=2), tmp_path / "out"
    assert main(_cli(inputs, params, out)) == 0
    name = optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}")[0]
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    assert 24 <= len(trials) <= 25  # the stop callback may let the other process finish one more
    workers = {t.user_attrs["worker"].split(":")[0] for t in trials}
    assert workers == {"0", "1"}
    pids = {t.user_attrs["worker"].split(":")[1] for t in trials}
    assert len(pids) == 2


def test_cli_logs_each_trial_as_a_nested_mlflow_run(inputs, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from srnas.cli import main

    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, trials=5)
    cfg = json.loads(params.read_text())
    cfg["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "search-test",
                       "artifact_location": str(tmp_path / "artifacts")}
    params.write_text(json.dumps(cfg), encoding="utf-8")
    assert main(_cli(inputs, params, tmp_path / "out")) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("search-test")
    stage = client.search_runs([exp.experiment_id], "tags.`srnas.kind` = 'stage' and tags.`srnas.stage` = 'search_arch'")
    assert len(stage) == 1 and stage[0].data.params["chosen"]
    trials = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{stage[0].info.run_id}'")
    assert len(trials) == 5
    assert all({"psnr", "predicted_ms", "feasible"} <= set(t.data.metrics) and t.data.params["arch"] for t in trials)


# ----------------------------------------------------------------------------- stage 3: ratios


def test_ratio_search_prunes_the_stage2_layers_within_budget_and_never_below_stage2(inputs, tmp_path) -> None:
    from srnas.arch.network import load_network
    from srnas.config import RatioSearchConfig
    from srnas.search.ratio import search_ratio

    predictor = load_predictor(inputs.table_dir)
    budget = 0.6 * predictor.predict(SPACE.largest())
    arch_cfg = _cfg(budget_ms=budget, trials=15, verify_runs=1)
    stage2 = search_arch(inputs, dataclasses.replace(arch_cfg, verify_runs=0), tmp_path / "arch", progress=False)
    if not stage2.chosen.candidate.is_pruned:  # make sure there is something to search: prune every layer
        chosen = ArchCandidate.normalized(stage2.chosen.candidate.subnet, ["filter_g4"] * 4, 0.5)
        arch = json.loads((tmp_path / "arch" / "arch.json").read_text())
        arch["chosen"] |= chosen.to_dict()
        (tmp_path / "arch" / "arch.json").write_text(json.dumps(arch))
    candidate = ArchCandidate.from_dict(json.loads((tmp_path / "arch" / "arch.json").read_text())["chosen"])
    result = search_ratio(inputs, tmp_path / "arch" / "arch.json", RatioSearchConfig(trials=8, keep_step=0.25),
                          arch_cfg, tmp_path / "ratio")
    assert result.network.config == candidate.subnet and result.predicted_ms <= budget
    # dense layers keep every filter; the first trial is stage 2's own network, so the result is at least as good
    full = as_pruned(candidate.subnet).channels
    free = prunable_convs(candidate.subnet)
    for index, scheme in zip(free, candidate.conv_schemes()):
        if scheme == "dense":
            assert result.network.channels[index] == full[index]
    stage2_net = candidate.pruned(0.5)
    from srnas.search.quality import QualityEvaluator

    quality = QualityEvaluator(load_supernet(inputs.supernet), load_pairs(inputs.data_dir / "val" / "x2", 2), count=2,
                               size=16, precision="fp32", prune_keep=0.5, importance=arch_cfg.importance)
    assert result.psnr >= quality.psnr_network(stage2_net) - 1e-9
    model = load_network(tmp_path / "ratio" / "pruned.pt")
    assert model.pruned == result.network
    saved = json.loads((tmp_path / "ratio" / "ratio.json").read_text())
    assert saved["network"] == result.network.to_dict() and saved["predicted_speedup"] >= 1.0
    assert saved["measured_speedup"] > 0  # measured for real (tiny input), not asserted against timing


def test_check_budget_passes_or_fails_with_the_miss(inputs, tmp_path, capsys) -> None:
    from srnas.arch.network import save_network
    from srnas.cli import main
    from srnas.pruning import prune_subnet

    net = ArchCandidate.normalized(SPACE.smallest(), ["dense"] * 4, 0.5).pruned(0.5)
    save_network(tmp_path / "model.pt", prune_subnet(load_supernet(inputs.supernet).get_active_subnet(net.config), net))
    args = ["check-budget", "--checkpoint", str(tmp_path / "model.pt"), "--tables", str(inputs.table_dir.parent)]
    assert main([*args, "--params", str(_params(tmp_path, verify_runs=2)), "--out", str(tmp_path / "ok.json")]) == 0
    verdict = json.loads((tmp_path / "ok.json").read_text())
    assert verdict["within_budget"] and verdict["measured_ms"] > 0
    assert main([*args, "--params", str(_params(tmp_path, budget_ms=0.001, verify_runs=2)), "--out", str(tmp_path / "no.json")]) == 1
    assert not (tmp_path / "no.json").exists()
    assert "over the" in capsys.readouterr().err
