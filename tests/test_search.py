"""Stage 2, the architecture and pruning-scheme search: candidates, quality, the persisted study, the command.

The latency table is built with deterministic fake timers (no timing is asserted on the shared CPU); the search
itself runs for real: supernet weights, physical pruning, PSNR on crops, Optuna on SQLite, worker processes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import config_of, kill_when, params_overlay, write_prepared_set
from test_latency import patch_fake_timers

from srnas.arch.pruned import as_pruned
from srnas.arch.space import SearchSpace, SubnetConfig
from srnas.config import BudgetConfig, LatencyConfig, RatioSearchConfig, SearchArchConfig, SearchSpaceConfig
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


IMPORTANCE = RatioSearchConfig().importance


def _cfg(**overrides) -> SearchArchConfig:
    return config_of(SearchArchConfig, {"trials": 10, "val_crops": 2, "crop_size": 16} | overrides, "search_arch")


def _budget(**overrides) -> BudgetConfig:
    return config_of(BudgetConfig, {"latency_ms": 1e9, "margin": 0.0, "verify_runs": 0} | overrides, "budget")


def _search(inputs: SearchInputs, out: Path, budget: BudgetConfig | None = None, **overrides):
    return search_arch(inputs, _cfg(**overrides), budget or _budget(), out, importance=IMPORTANCE, progress=False)


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
                                ("prune_keep", 1.0, "prune_keep"), ("trials", 0, "trials")):
        with pytest.raises(ConfigError, match=message):
            _cfg(**{key: value})
    for key, value, message in (("latency_ms", 0, "budget.latency_ms: must be positive"), ("margin", 1.0, "budget.margin"),
                                ("verify_runs", -1, "budget.verify_runs")):
        with pytest.raises(ConfigError, match=message):
            _budget(**{key: value})
    with pytest.raises(ConfigError, match="search_ratio.importance: unknown criterion 'l3'"):
        config_of(RatioSearchConfig, {"importance": "l3"}, "search_ratio")
    assert _budget(latency_ms=20.0, margin=0.25).search_ms == pytest.approx(15.0)


# ---------------------------------------------------------------------------------------- search


@pytest.mark.parametrize("strategy", ["tpe", "random", "gp"])
def test_search_respects_the_budget_and_writes_outputs(inputs, tmp_path, strategy) -> None:
    predictor = load_predictor(inputs.table_dir)
    budget = 0.5 * (predictor.predict(SPACE.smallest()) + predictor.predict(SPACE.largest()))
    result = _search(inputs, tmp_path, _budget(latency_ms=budget), strategy=strategy, trials=12)
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
    result = _search(inputs, tmp_path, mode="pareto", trials=12)
    front = json.loads((tmp_path / "arch.json").read_text())["front"]
    assert [p["name"] for p in front] == [r.candidate.name for r in result.front]
    latencies, psnrs = [p["predicted_ms"] for p in front], [p["psnr"] for p in front]
    assert latencies == sorted(latencies) and psnrs == sorted(psnrs)
    assert len(pareto_front(result.records)) == len(front)


def test_budget_below_the_fastest_subnet_is_a_clear_error(inputs, tmp_path) -> None:
    with pytest.raises(ConfigError, match="budget.latency_ms: .* below the fastest subnet"):
        _search(inputs, tmp_path, _budget(latency_ms=1e-6))
    assert not (tmp_path / "arch.json").exists()


def test_a_finished_study_is_reused_and_extended(inputs, tmp_path) -> None:
    first = _search(inputs, tmp_path, trials=6)
    again = _search(inputs, tmp_path, _budget(verify_runs=1), trials=6)  # how the chosen one is measured: same study
    assert [r.candidate for r in again.records] == [r.candidate for r in first.records]  # nothing re-run
    assert again.study == first.study
    more = _search(inputs, tmp_path, trials=9)
    assert [r.candidate for r in more.records[:6]] == [r.candidate for r in first.records]
    assert len(more.records) == 9
    other = _search(inputs, tmp_path, _budget(latency_ms=1e8), trials=3)  # another study in the file
    assert len(other.records) == 3 and other.study != first.study
    pruned_otherwise = search_arch(inputs, _cfg(trials=3), _budget(), tmp_path, importance="l1", progress=False)
    assert pruned_otherwise.study not in (first.study, other.study)


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


def _cli(inputs: SearchInputs, params: list[str], out: Path) -> list[str]:
    return ["search-arch", *params, "--supernet", str(inputs.supernet),
            "--tables", str(inputs.table_dir.parent), "--data-dir", str(inputs.data_dir), "--out", str(out)]


def _params(tmp_path: Path, budget: dict | None = None, tracking: dict | None = None, **search) -> list[str]:
    """CLI arguments: params.yaml with an overlay for the test's target, budget and search."""
    target = {"name": TARGET.name, "device": "test-cpu", "runtime": "torch_fp32", "precision": "fp32", "threads": 0,
              "input_size": [12, 16]}
    return params_overlay(tmp_path, {"tracking": tracking or {"enabled": False}, "latency": {"targets": [target]},
                                     "budget": {"latency_ms": 1e9, "verify_runs": 0} | (budget or {}),
                                     "search_arch": {"val_crops": 2, "crop_size": 16} | search})


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
    params = _params(tmp_path, tracking={"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                         "experiment": "search-test", "artifact_location": str(tmp_path / "artifacts")},
                     trials=5)
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
    from srnas.search.ratio import search_ratio

    predictor = load_predictor(inputs.table_dir)
    budget = 0.6 * predictor.predict(SPACE.largest())
    arch_cfg = _cfg(trials=15)
    stage2 = search_arch(inputs, arch_cfg, _budget(latency_ms=budget), tmp_path / "arch", importance=IMPORTANCE,
                         progress=False)
    if not stage2.chosen.candidate.is_pruned:  # make sure there is something to search: prune every layer
        chosen = ArchCandidate.normalized(stage2.chosen.candidate.subnet, ["filter_g4"] * 4, 0.5)
        arch = json.loads((tmp_path / "arch" / "arch.json").read_text())
        arch["chosen"] |= chosen.to_dict()
        (tmp_path / "arch" / "arch.json").write_text(json.dumps(arch))
    candidate = ArchCandidate.from_dict(json.loads((tmp_path / "arch" / "arch.json").read_text())["chosen"])
    result = search_ratio(inputs, tmp_path / "arch" / "arch.json", RatioSearchConfig(trials=8, keep_step=0.25),
                          arch_cfg, _budget(latency_ms=budget, verify_runs=1), tmp_path / "ratio")
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
                               size=16, precision="fp32", prune_keep=0.5, importance=IMPORTANCE)
    assert result.psnr >= quality.psnr_network(stage2_net) - 1e-9
    model = load_network(tmp_path / "ratio" / "pruned.pt")
    assert model.pruned == result.network
    saved = json.loads((tmp_path / "ratio" / "ratio.json").read_text())
    assert saved["network"] == result.network.to_dict() and saved["predicted_speedup"] >= 1.0
    assert saved["importance"] == IMPORTANCE and saved["budget_ms"] == pytest.approx(budget)
    assert saved["measured_speedup"] > 0  # measured for real (tiny input), not asserted against timing


# ------------------------------------------------------------------------------- the budget verdict


def _final_model(inputs: SearchInputs, path: Path) -> Path:
    """A pruned network with weights of its own (not what a fresh build would draw), saved as finetune saves one."""
    from srnas.arch.network import save_network
    from srnas.pruning import prune_subnet

    net = ArchCandidate.normalized(SPACE.smallest(), ["dense"] * 4, 0.5).pruned(0.5)
    model = prune_subnet(load_supernet(inputs.supernet).get_active_subnet(net.config), net)
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            param.add_(0.01 * (i + 1))
    save_network(path, model)
    return path


def _table_copy(inputs: SearchInputs, tmp_path: Path, edit) -> Path:
    """The fixture's tables folder copied, its table.json changed by ``edit(payload)``."""
    import shutil

    tables = tmp_path / "tables"
    shutil.copytree(inputs.table_dir.parent, tables)
    path = tables / TARGET.name / "table.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return tables


def test_check_budget_passes_or_fails_with_the_miss(inputs, tmp_path, capsys) -> None:
    from srnas.cli import main

    model = _final_model(inputs, tmp_path / "model.pt")
    args = ["check-budget", "--checkpoint", str(model), "--tables", str(inputs.table_dir.parent)]
    assert main([*args, *_params(tmp_path, budget={"verify_runs": 2}), "--out", str(tmp_path / "ok.json")]) == 0
    verdict = json.loads((tmp_path / "ok.json").read_text())
    table = load_predictor(inputs.table_dir).table
    assert verdict["within_budget"] and verdict["wall_clock_ms"] > 0 and verdict["normalised_ms"] > 0
    assert verdict["verdict_basis"] == "normalised_ms" and verdict["verdict_ms"] == verdict["normalised_ms"]
    assert verdict["margin_ms"] == pytest.approx(1e9 - verdict["verdict_ms"])
    assert verdict["fingerprint_id"] == table.fingerprint_id and verdict["timing"]["table"] == table.protocol()
    assert verdict["timing"]["measurement"]["runs"] == 2 and verdict["timing"]["measurement"]["rounds"] >= 5
    err = capsys.readouterr().err
    assert "ms wall clock; the verdict uses normalised_ms: within the 1e+09 ms budget" in err
    assert main([*args, *_params(tmp_path, budget={"latency_ms": 0.001, "verify_runs": 2}),
                 "--out", str(tmp_path / "no.json")]) == 1
    assert not (tmp_path / "no.json").exists()
    err = capsys.readouterr().err
    assert "over the 0.001 ms budget" in err and "wall clock" in err and "the verdict uses normalised_ms" in err


def test_check_budget_times_the_fine_tuned_weights(inputs, tmp_path, monkeypatch) -> None:
    """What is timed is the model finetune wrote, weights included (load_trained), with the table's protocol; both
    figures land in the verdict, and the normalised one decides under the paired protocol."""
    from srnas.arch.network import build_network
    from srnas.latency.measure import NetworkTiming
    from srnas.loading import load_trained
    from srnas.search import budget as budget_module

    model_path = _final_model(inputs, tmp_path / "model.pt")
    timed = []

    def record(target, model, **timing):
        timed.append((target, {k: v.clone() for k, v in model.state_dict().items()}, timing))
        return NetworkTiming(wall_clock_ms=3.0 + len(timed), normalised_ms=2.0)

    monkeypatch.setattr(budget_module, "time_network", record)
    latency = LatencyConfig()
    verdict = budget_module.check_budget(model_path, inputs.table_dir, _budget(latency_ms=2.5, verify_runs=4), latency)
    table = load_predictor(inputs.table_dir).table
    assert len(timed) == latency.net_passes
    trained = load_trained(model_path).state_dict()
    fresh = build_network(trained_net := load_trained(model_path).pruned, 2).state_dict()
    for target, state, timing in timed:
        assert target == table.target
        assert timing == {"warmup": latency.net_warmup, "runs": 4, "rounds": 5, "reference_ms": table.reference_ms}
        assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in trained)
        assert not all(torch.equal(state[k], fresh[k]) for k in fresh)
    assert verdict.network == trained_net.name and verdict.timing == NetworkTiming(5.0, 2.0)  # medians of 4, 5, 6 / 2
    assert verdict.basis == "normalised_ms" and verdict.verdict_ms == 2.0 and verdict.within_budget
    saved = verdict.to_dict()
    assert saved["wall_clock_ms"] == 5.0 and saved["normalised_ms"] == 2.0 and saved["verdict_basis"] == "normalised_ms"

    # the absolute protocol has no normalised figure: the verdict uses the wall clock (the lowest round), and says so
    def absolute(payload):
        payload["protocol"] = {k: v for k, v in payload["protocol"].items() if k not in ("reference_ms", "passes")}
        payload["protocol"]["kind"] = "absolute"

    timed.clear()
    monkeypatch.setattr(budget_module, "time_network", lambda target, model, **timing: (
        timed.append(timing) or NetworkTiming(3.0 + len(timed))))
    verdict = budget_module.check_budget(model_path, _table_copy(inputs, tmp_path, absolute) / TARGET.name,
                                         _budget(latency_ms=4.5, verify_runs=4), latency)
    assert timed == [{"warmup": latency.net_warmup, "runs": 4}] * 5  # rounds of one median each
    assert verdict.timing == NetworkTiming(4.0, None) and verdict.basis == "wall_clock_ms" and verdict.within_budget
    assert verdict.to_dict()["normalised_ms"] is None and verdict.to_dict()["verdict_ms"] == 4.0


def test_check_budget_refuses_a_table_of_another_fingerprint(inputs, tmp_path, capsys) -> None:
    from srnas.cli import main

    def other_machine(payload):
        payload["fingerprint"]["torch"] = "0.0.1"  # measured under another torch: its speed is another machine's

    tables = _table_copy(inputs, tmp_path, other_machine)
    model = _final_model(inputs, tmp_path / "model.pt")
    out = tmp_path / "verdict.json"
    code = main(["check-budget", "--checkpoint", str(model), "--tables", str(tables), *_params(tmp_path, budget={"verify_runs": 1}),
                 "--out", str(out)])
    assert code == 2 and not out.exists()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"srnas: error: {tables / TARGET.name / 'table.json'}: measured under "
                                                   "fingerprint ")
    assert f"this machine's for target {TARGET.name} is {TARGET.fingerprint_id()}" in lines[0]
