"""Stage 2, the architecture and pruning-scheme search: candidates, quality, the persisted study, the command.

The latency table is built with deterministic fake timers (no timing is asserted on the shared CPU); the search
itself runs for real: supernet weights, physical pruning, PSNR on crops, Optuna on SQLite, worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
    return config_of(BudgetConfig, {"latency_ms": 1e9, "slack": 0.0, "verify_runs": 0} | overrides, "budget")


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
    for key, value, message in (("latency_ms", 0, "budget.latency_ms: must be positive"),
                                ("slack", -0.1, "budget.slack: must be 0 or positive, got -0.1"),
                                ("verify_candidates", 0, "budget.verify_candidates: must be at least 1, got 0"),
                                ("verify_runs", -1, "budget.verify_runs")):
        with pytest.raises(ConfigError, match=message) as error:
            _budget(**{key: value})
        assert "\n" not in str(error.value) and str(error.value).startswith(f"budget.{key}: ")
    with pytest.raises(ConfigError, match="budget.margin: unknown key"):  # the blanket margin is gone
        _budget(margin=0.15)
    with pytest.raises(ConfigError, match="search_ratio.importance: unknown criterion 'l3'"):
        config_of(RatioSearchConfig, {"importance": "l3"}, "search_ratio")
    with pytest.raises(ConfigError, match="search_ratio.enabled: expected true or false"):
        config_of(RatioSearchConfig, {"enabled": "no"}, "search_ratio")
    assert _budget(latency_ms=20.0, slack=0.25).admit_ms == pytest.approx(25.0)
    assert BudgetConfig().slack > 0 and BudgetConfig().verify_candidates >= 1 and RatioSearchConfig().enabled


# ------------------------------------------------------------------- choosing by measurement (verify)


def _picks() -> list:
    """Budget 10 ms, admitted up to 11 ms: A-D on the front, E over the admission limit, F dominated by B, G within
    the budget but dominated by C; H a duplicate name of B (one network, one name)."""
    from srnas.search.verify import Pick

    rows = [("A", 30.0, 10.8), ("B", 29.5, 10.5), ("C", 29.0, 9.8), ("D", 28.0, 9.0), ("E", 31.0, 12.0),
            ("F", 29.2, 10.9), ("G", 28.5, 9.9), ("B", 29.5, 10.5)]
    return [Pick(name, psnr, ms, name) for name, psnr, ms in rows]


class _Meter:
    """A fake measuring function: fixed figures per candidate, recording the order it is asked in."""

    def __init__(self, figures: dict[str, float]) -> None:
        self.figures, self.calls = figures, []

    def __call__(self, item: str) -> float:
        self.calls.append(item)
        return self.figures[item]


def test_shortlist_is_the_admitted_front_and_the_best_within_budget_in_psnr_order() -> None:
    from srnas.search.verify import shortlist

    def names(picks: list) -> list[str]:
        return [p.name for p in picks]

    assert names(shortlist(_picks(), budget_ms=10.0, admit_ms=11.0, limit=8)) == ["A", "B", "C", "G", "D"]
    assert names(shortlist(_picks(), budget_ms=10.0, admit_ms=11.0, limit=3)) == ["A", "B", "C"]
    # the front above the budget fills the list: the best pick predicted within the budget takes the last place
    assert names(shortlist(_picks(), budget_ms=10.0, admit_ms=11.0, limit=2)) == ["A", "C"]
    assert names(shortlist(_picks(), budget_ms=10.0, admit_ms=11.0, limit=1)) == ["C"]
    # without slack the admitted picks are the ones predicted within the budget
    assert names(shortlist(_picks(), budget_ms=10.0, admit_ms=10.0, limit=8)) == ["C", "G", "D"]
    assert shortlist(_picks(), budget_ms=1.0, admit_ms=1.1, limit=8) == []


def test_select_measures_best_first_and_stops_at_the_first_that_fits() -> None:
    from srnas.search.verify import MEASURED, select

    meter = _Meter({"A": 10.4, "B": 9.7, "C": 9.0, "D": 8.0, "G": 9.1})
    chosen = select(_picks(), budget_ms=10.0, admit_ms=11.0, limit=8, measure=meter, where="test")
    assert meter.calls == ["A", "B"]  # A over the budget, B fits: every better candidate was measured, so B
    assert chosen.chosen.name == "B" and chosen.chosen_by == MEASURED and chosen.measured_ms == 9.7
    assert [(m.name, m.fits) for m in chosen.measured] == [("A", False), ("B", True)]
    assert chosen.measured[1].to_dict() == {"name": "B", "psnr": 29.5, "predicted_ms": 10.5, "measured_ms": 9.7,
                                            "error": pytest.approx((10.5 - 9.7) / 9.7), "fits": True}
    metrics = chosen.metrics()
    assert metrics["measured_candidates"] == 2
    expected = 100 * (abs(10.8 - 10.4) / 10.4 + abs(10.5 - 9.7) / 9.7) / 2
    assert metrics["prediction_abs_error_median_pct"] == pytest.approx(expected)
    assert chosen.to_dict()["chosen_by"] == "measured" and "chosen_by_reason" not in chosen.to_dict()
    # a candidate that fits exactly fits (the whole budget, no margin)
    exact = select(_picks(), budget_ms=10.0, admit_ms=11.0, limit=8, measure=_Meter({"A": 10.0}), where="test")
    assert exact.chosen.name == "A" and len(exact.measured) == 1
    # at most `limit` measurements: with 3, A, B and C are measured and C fits
    meter = _Meter({"A": 10.4, "B": 10.2, "C": 9.9})
    assert select(_picks(), budget_ms=10.0, admit_ms=11.0, limit=3, measure=meter, where="test").chosen.name == "C"
    assert meter.calls == ["A", "B", "C"]


def test_select_names_the_closest_when_no_candidate_measured_fits() -> None:
    from srnas.search.verify import SearchError, select

    meter = _Meter({"A": 12.0, "B": 11.0, "C": 10.3, "G": 10.6, "D": 10.1})
    with pytest.raises(SearchError) as error:
        select(_picks(), budget_ms=10.0, admit_ms=11.0, limit=8, measure=meter, where="search_arch on cpu_test")
    message = str(error.value)
    assert "\n" not in message and message.startswith("search_arch on cpu_test: none of the 5 candidates measured fits the 10 ms budget")
    assert "closest: D, 10.10 ms measured, 9.00 ms predicted" in message and "budget.verify_candidates" in message
    assert meter.calls == ["A", "B", "C", "G", "D"]
    with pytest.raises(SearchError, match=r"^test: none of the 8 trials is predicted within 1.1 ms \(budget.latency_ms plus "
                                          r"budget.slack; fastest predicted: D, 9.00 ms\)"):
        select(_picks(), budget_ms=1.0, admit_ms=1.1, limit=8, measure=meter, where="test")


def test_select_without_measurement_falls_back_to_the_best_predicted_within_the_whole_budget() -> None:
    from srnas.search.verify import PREDICTED, SearchError, select

    chosen = select(_picks(), budget_ms=10.0, admit_ms=11.0, limit=8, measure=None, where="test",
                    reason="budget.verify_runs is 0")
    assert chosen.chosen.name == "C" and chosen.chosen_by == PREDICTED  # A and B are admitted but not predicted within
    assert chosen.measured == () and chosen.measured_ms is None and chosen.metrics() == {"measured_candidates": 0.0}
    assert chosen.to_dict() == {"chosen_by": "predicted", "measured": [], "chosen_by_reason": "budget.verify_runs is 0"}
    with pytest.raises(SearchError, match=r"^test: none of the 8 trials is predicted within the 5 ms budget and nothing "
                                          r"is measured \(budget.verify_runs is 0; fastest predicted: D, 9.00 ms\)"):
        select(_picks(), budget_ms=5.0, admit_ms=5.5, limit=8, measure=None, where="test", reason="budget.verify_runs is 0")


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
    # verify_runs 0: nothing measured, the best predicted within the whole budget, and arch.json says so
    assert arch["chosen_by"] == "predicted" and arch["measured"] == [] and "verify_runs is 0" in arch["chosen_by_reason"]
    assert arch["budget_ms"] == pytest.approx(budget) and arch["admit_ms"] == pytest.approx(budget)  # slack 0
    assert predictor.predict(ArchCandidate.from_dict(arch["chosen"]).pruned(0.5)) == pytest.approx(arch["chosen"]["predicted_ms"])
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 13
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "search_metrics.json").read_text())
    assert metrics["trials"] == 12 and metrics["best_psnr"] == pytest.approx(result.chosen.psnr)


def _fake_measurer(monkeypatch, module, factor: float) -> list:
    """``module.network_measurer`` replaced: a network "measures" ``factor`` times its prediction (no timing on the
    shared CPU); returns the list of networks measured, in order."""
    calls = []

    def measurer(predictor, runs, latency):
        def measure(net):
            calls.append(net)
            return factor * predictor.predict(net)

        return measure, ""

    monkeypatch.setattr(module, "network_measurer", measurer)
    return calls


def test_search_chooses_by_measurement_within_the_slack(inputs, tmp_path, monkeypatch) -> None:
    """The latency model over-predicts by 20% here: candidates predicted up to 25% over the budget are admitted and the
    best one whose (fake) measured latency fits the whole budget is chosen -- above what prediction alone allows."""
    from srnas.search import run as run_module

    # random search samples the same trials whatever the budget: put the best of them 10% over it by prediction
    unconstrained = _search(inputs, tmp_path / "free", strategy="random", trials=16)
    best = max(unconstrained.records, key=lambda r: (r.psnr, -r.latency_ms))
    budget_ms = best.latency_ms / 1.1
    calls = _fake_measurer(monkeypatch, run_module, 1 / 1.2)
    budget = _budget(latency_ms=budget_ms, slack=0.25, verify_candidates=4, verify_runs=1)
    result = _search(inputs, tmp_path, budget, strategy="random", trials=16)
    assert [r.candidate for r in result.records] == [r.candidate for r in unconstrained.records]
    arch = json.loads((tmp_path / "arch.json").read_text())
    measured = arch["measured"]
    assert arch["chosen_by"] == "measured" and "chosen_by_reason" not in arch and len(calls) == len(measured) == 1
    assert measured[0]["name"] == arch["chosen"]["name"] == result.chosen.candidate.name == best.candidate.name
    assert measured[0]["fits"] and measured[0]["measured_ms"] == pytest.approx(best.latency_ms / 1.2)
    assert result.chosen.latency_ms > budget_ms  # predicted over the budget: a margin (or no slack) would have lost it
    assert arch["chosen"]["measured_ms"] == pytest.approx(measured[0]["measured_ms"])
    assert arch["admit_ms"] == pytest.approx(1.25 * budget_ms) and arch["verify_candidates"] == 4
    metrics = json.loads((tmp_path / "search_metrics.json").read_text())
    assert metrics["measured_candidates"] == len(measured) and metrics["measured_ms"] == pytest.approx(measured[-1]["measured_ms"])
    assert metrics["prediction_abs_error_median_pct"] == pytest.approx(20.0)  # (p - p / 1.2) / (p / 1.2)

    # measured in PSNR order, stopping at the first that fits: a model that under-predicts a thousandfold leaves
    # nothing that fits, so every shortlisted candidate is measured -- then one line naming the closest
    calls = _fake_measurer(monkeypatch, run_module, 1e3)
    from srnas.search.verify import SearchError

    with pytest.raises(SearchError, match=r"^search_arch on cpu_test: none of the \d candidates measured fits .* \(closest: ") as error:
        _search(inputs, tmp_path, dataclasses.replace(budget, verify_candidates=3), strategy="random", trials=16)
    assert f"none of the {len(calls)} candidates" in str(error.value) and 1 <= len(calls) <= 3
    assert calls[0] == best.candidate.pruned(0.5)
    psnrs = [next(r.psnr for r in result.records if r.candidate.pruned(0.5) == net) for net in calls]
    assert psnrs == sorted(psnrs, reverse=True)


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


def _trials(study_path: Path) -> list[optuna.trial.FrozenTrial]:
    """Every trial in the file, read without creating Optuna's tables: a reader that created them while the search
    process did too would race it (SQLite schema creation is not atomic across processes); [] while absent."""
    if not study_path.exists():
        return []
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{study_path}", skip_table_creation=True,
                                             skip_compatibility_check=True)
        names = [s.study_name for s in storage.get_all_studies()]
        return [t for n in names for t in optuna.load_study(study_name=n, storage=storage).get_trials(deepcopy=False)]
    except Exception:  # the search process is still creating the file
        return []


def _states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    return {state.name: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}


def _completed(study_path: Path) -> int:
    """Completed trials in the file (see :func:`_trials`)."""
    return _states(_trials(study_path))["COMPLETE"]


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


def _in_evaluation(study_path: Path, done: int) -> bool:
    """At least ``done`` trials completed and one running that is evaluating its candidate (its parameters drawn)."""
    trials = _trials(study_path)
    return (_states(trials)["COMPLETE"] >= done
            and any(t.state == optuna.trial.TrialState.RUNNING and t.params for t in trials))


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_as_the_uninterrupted_search(inputs, tmp_path) -> None:
    """SIGKILL while a trial runs, resume: the killed trial is failed and run again, no trial is left running, and the
    sampler goes on where it was -- the same 20 configurations in the same order, and the same choice, as a search
    that was never interrupted (not the first trials again: a sampler seeded once per process replays them)."""
    from srnas.cli import main

    params = _params(tmp_path, trials=20, seed=5, val_crops=8, crop_size=24)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    kill_when([sys.executable, "-m", "srnas.cli", *_cli(inputs, params, killed)],
              lambda: _in_evaluation(killed / "study.db", 6), "6 completed trials and one running")
    at_kill = _states(_trials(killed / "study.db"))
    assert 6 <= at_kill["COMPLETE"] < 20 and at_kill["RUNNING"] == 1 and not (killed / "arch.json").exists()

    assert main(_cli(inputs, params, killed)) == 0
    assert main(_cli(inputs, params, straight)) == 0
    resumed, uninterrupted = _trials(killed / "study.db"), _trials(straight / "study.db")
    assert _states(resumed)["RUNNING"] == 0 and _states(resumed)["COMPLETE"] == 20 and _states(resumed)["FAIL"] == 1
    assert _states(uninterrupted)["COMPLETE"] == 20

    def configs(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
        return [t.params for t in sorted(trials, key=lambda t: t.number) if t.state == optuna.trial.TrialState.COMPLETE]

    assert len({json.dumps(c, sort_keys=True) for c in configs(resumed)}) == len(
        {json.dumps(c, sort_keys=True) for c in configs(uninterrupted)})
    assert configs(resumed) == configs(uninterrupted)
    chosen = [json.loads((out / "arch.json").read_text())["chosen"] for out in (killed, straight)]
    assert {k: v for k, v in chosen[0].items() if k != "trial"} == {k: v for k, v in chosen[1].items() if k != "trial"}


def test_the_sampler_proposes_from_the_finished_trials_not_from_its_process(tmp_path) -> None:
    """A failed trial in the middle (a killed one) does not shift the sequence, and a new process (a new sampler on the
    same storage) continues it: per-trial seeding from (seed, finished trials)."""
    from srnas.search import study as studies

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0, 1) + trial.suggest_int("n", 0, 9)

    for strategy in ("random", "tpe"):
        straight = optuna.create_study(direction="maximize", sampler=studies.make_sampler(strategy, 7))
        straight.optimize(objective, n_trials=14)
        storage = f"sqlite:///{tmp_path / strategy}.db"
        first = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                    sampler=studies.make_sampler(strategy, 7))
        first.optimize(objective, n_trials=11)
        killed = first.ask()  # drew its parameters, then its process died
        objective(killed)
        first.tell(killed, state=optuna.trial.TrialState.FAIL)
        again = optuna.load_study(storage=storage, study_name="s", sampler=studies.make_sampler(strategy, 7))
        again.optimize(objective, n_trials=3)
        done = again.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert [t.params for t in done] == [t.params for t in straight.trials], strategy
        assert killed.params == straight.trials[11].params  # the interrupted trial is proposed again


def test_only_trials_of_dead_processes_are_failed_on_resume(tmp_path) -> None:
    import datetime
    import socket
    import subprocess
    import warnings

    from srnas.search import study as studies

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    url = studies.storage_url("", tmp_path / "study.db")
    study = studies.open_study(url, "s", _cfg(), 0)
    host = socket.gethostname()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize() with a heartbeat storage warns
        trials = [study.ask() for _ in range(3)]
        # a trial whose process has not recorded itself: the search's sampler does as soon as the trial exists
        trials.append(optuna.load_study(study_name="s", storage=url, sampler=optuna.samplers.RandomSampler()).ask())
    assert [t.user_attrs.get("pid") for t in study.get_trials(deepcopy=False)] == [os.getpid()] * 3 + [None]
    attrs = [{"host": host, "pid": dead.pid}, {"host": host, "pid": os.getpid()}, {"host": "elsewhere", "pid": dead.pid}, {}]
    for trial, values in zip(trials, attrs):
        for key, value in values.items():
            trial.set_user_attr(key, value)
    # a process of this host that is gone; a live one, one of another host (the heartbeat's), one that has not yet
    # recorded its process (it just started)
    assert studies.fail_dead_trials(study) == [0]
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["FAIL", "RUNNING", "RUNNING", "RUNNING"]
    # minutes later, a trial that never recorded its process is one whose process died before it could
    later = datetime.datetime.now() + datetime.timedelta(minutes=5)
    assert studies.fail_dead_trials(study, now=later) == [3]
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["FAIL", "RUNNING", "RUNNING", "FAIL"]


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
    assert all({"psnr_proxy", "predicted_ms", "feasible"} <= set(t.data.metrics) and t.data.params["arch"] for t in trials)


# ----------------------------------------------------------------------------- stage 3: ratios


def _stage2(inputs: SearchInputs, out: Path, budget_ms: float, arch_cfg: SearchArchConfig) -> ArchCandidate:
    """Stage 2 run (chosen by prediction) into ``out``; its choice made to prune every layer when it prunes none, so
    that stage 3 has something to search."""
    stage2 = search_arch(inputs, arch_cfg, _budget(latency_ms=budget_ms), out, importance=IMPORTANCE, progress=False)
    if not stage2.chosen.candidate.is_pruned:
        chosen = ArchCandidate.normalized(stage2.chosen.candidate.subnet, ["filter_g4"] * 4, 0.5)
        arch = json.loads((out / "arch.json").read_text())
        arch["chosen"] |= chosen.to_dict()
        (out / "arch.json").write_text(json.dumps(arch))
    return ArchCandidate.from_dict(json.loads((out / "arch.json").read_text())["chosen"])


def test_ratio_search_prunes_the_stage2_layers_within_budget_and_never_below_stage2(inputs, tmp_path, monkeypatch) -> None:
    from srnas.arch.network import load_network
    from srnas.search import ratio as ratio_module
    from srnas.search.ratio import search_ratio

    predictor = load_predictor(inputs.table_dir)
    budget = 0.6 * predictor.predict(SPACE.largest())
    arch_cfg = _cfg(trials=15)
    candidate = _stage2(inputs, tmp_path / "arch", budget, arch_cfg)
    calls = _fake_measurer(monkeypatch, ratio_module, 1 / 1.1)  # the model over-predicts by 10%: no timing asserted
    ratio_budget = _budget(latency_ms=budget, slack=0.1, verify_runs=1)
    result = search_ratio(inputs, tmp_path / "arch" / "arch.json", RatioSearchConfig(trials=8, keep_step=0.25),
                          arch_cfg, ratio_budget, tmp_path / "ratio")
    assert result.network.config == candidate.subnet and result.predicted_ms <= ratio_budget.admit_ms
    # chosen by measurement: best proxy first, the first that fits the whole budget; then the unpruned parent
    assert result.chosen_by == "measured" and result.measured_ms <= budget
    assert [m.fits for m in result.measured] == [False] * (len(result.measured) - 1) + [True]
    assert result.measured[-1].name == result.network.name and len(calls) == len(result.measured) + 1
    assert calls[-1] == as_pruned(candidate.subnet)
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
    assert saved["measured_speedup"] == pytest.approx(saved["predicted_speedup"])  # both measured 1/1.1 of predicted
    assert saved["chosen_by"] == "measured" and saved["skipped"] is False
    assert [m["name"] for m in saved["measured"]] == [m.name for m in result.measured]
    assert saved["measured_candidates"] == len(result.measured)
    assert saved["prediction_abs_error_median_pct"] == pytest.approx(10.0)
    rows = (tmp_path / "ratio" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 8
    # the study persists beside the outputs, named and resumable: a rerun with more trials only runs the new ones
    from srnas.search.run import STUDY_FILE

    (name,) = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'ratio' / STUDY_FILE}")
    assert name.startswith(f"search_ratio-x2-{TARGET.name}-{budget:g}ms-")
    evaluated: list[str] = []
    score = QualityEvaluator.psnr_network
    monkeypatch.setattr(QualityEvaluator, "psnr_network", lambda self, net: evaluated.append(net.name) or score(self, net))
    more = search_ratio(inputs, tmp_path / "arch" / "arch.json", RatioSearchConfig(trials=10, keep_step=0.25),
                        arch_cfg, ratio_budget, tmp_path / "ratio")
    again = (tmp_path / "ratio" / "trials.csv").read_text().splitlines()
    assert more.trials == 10 and again[:9] == rows and len(again) == 1 + 10
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'ratio' / STUDY_FILE}")
    assert study.metric_names == ["psnr_db"] and len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 10
    assert len(evaluated) == 2  # the two new trials; the first eight are read back from the study


def test_ratio_stage_steps_aside_with_the_same_outputs(inputs, tmp_path, monkeypatch) -> None:
    """search_ratio.enabled false: stage 2's choice at search_arch.prune_keep, as stage 2 priced it, with inherited
    weights; nothing searched and nothing measured (stage 2 measured it), the DAG's outputs all written."""
    from srnas.arch.network import load_network
    from srnas.search import ratio as ratio_module
    from srnas.search.ratio import search_ratio

    predictor = load_predictor(inputs.table_dir)
    budget = 0.6 * predictor.predict(SPACE.largest())
    arch_cfg = _cfg(trials=6)
    candidate = _stage2(inputs, tmp_path / "arch", budget, arch_cfg)
    calls = _fake_measurer(monkeypatch, ratio_module, 1.0)
    out = tmp_path / "ratio"
    result = search_ratio(inputs, tmp_path / "arch" / "arch.json", RatioSearchConfig(enabled=False), arch_cfg,
                          _budget(latency_ms=budget, verify_runs=1), out)
    net = candidate.pruned(arch_cfg.prune_keep)
    assert result.skipped and result.network == net and result.trials == 1 and calls == []
    assert result.predicted_ms == pytest.approx(predictor.predict(net))
    assert {p.name for p in out.iterdir()} >= {"pruned.pt", "ratio.json", "trials.csv", "ratio_metrics.json"}
    model = load_network(out / "pruned.pt")
    quality = QualityEvaluator(load_supernet(inputs.supernet), load_pairs(inputs.data_dir / "val" / "x2", 2), count=2,
                               size=16, precision="fp32", prune_keep=0.5, importance=IMPORTANCE)
    inherited = quality.model(net).state_dict()
    assert model.pruned == net and all(torch.equal(v, inherited[k]) for k, v in model.state_dict().items())
    saved = json.loads((out / "ratio.json").read_text())
    assert saved["skipped"] is True and "search_ratio.enabled is false" in saved["skip_reason"]
    assert saved["chosen_by"] == "search_arch" and saved["measured"] == [] and saved["name"] == net.name
    assert saved["keeps"] == {f"keep{i}": 0.5 for i, s in enumerate(candidate.conv_schemes()) if s != "dense"}
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 2 and net.name in rows[1]
    assert json.loads((out / "ratio_metrics.json").read_text())["skipped"] == 1.0


def _with_train_set(inputs: SearchInputs, tmp_path: Path) -> SearchInputs:
    """The fixture's inputs with a prepared training set beside the val set (what the recovery fine-tunes read)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(inputs.data_dir, data)
    write_prepared_set(data, "train", 3, np.random.default_rng(1), size=48)
    return dataclasses.replace(inputs, data_dir=data)


def test_best_per_width_keeps_the_best_admitted_candidates_of_each_width() -> None:
    from srnas.search.run import best_per_width

    def record(number: int, name: str, psnr: float, ms: float) -> TrialRecord:
        candidate = ArchCandidate.normalized(SubnetConfig.from_name(name), ["dense"] * 4, 0.5)
        return TrialRecord(number, candidate, psnr, ms, True, 0.0, "0")

    records = [record(0, "w8-c.c.c", 30.0, 5.0), record(1, "w16-c.s.s", 29.0, 6.0), record(2, "w8-c.c.s", 31.0, 4.0),
               record(3, "w8-c.s.s", 30.5, 3.0), record(4, "w16-c.c.s", 32.0, 99.0), record(5, "w8-c.c.s", 31.0, 4.0),
               record(6, "w16-c.c.c", 28.0, 7.0), record(7, "w8-c.s.c", 30.9, 4.0)]
    chosen = best_per_width(records, admit_ms=10.0, count=2)
    # w8 then w16, best first; over the limit, repeats and a second net of one cost (7: as costly as 2) left out
    assert [r.number for r in chosen] == [2, 3, 1, 6]
    assert [r.number for r in best_per_width(records, admit_ms=10.0, count=3)] == [2, 3, 0, 1, 6]
    assert [r.number for r in best_per_width(records, admit_ms=10.0, count=1)] == [2, 1]


def test_search_arch_chooses_among_the_best_of_each_width_after_a_recovery_fine_tune(inputs, tmp_path) -> None:
    """search_arch.recovery_steps > 0: the best admitted candidates of each width are re-scored after a recovery
    fine-tune and the choice follows that score (recorded in arch.json beside the inherited one); the trials, and
    so the study, are the same as without it."""
    from srnas.config import FinetuneConfig
    from srnas.search.recovery import RecoveryScorer
    from srnas.search.run import best_per_width

    with_train = _with_train_set(inputs, tmp_path)
    recipe = config_of(FinetuneConfig, {"batch_size": 4, "lr_patch_size": 8, "lr": 0.01}, "finetune")
    plain = search_arch(with_train, _cfg(trials=8), _budget(), tmp_path / "plain", importance=IMPORTANCE, progress=False)
    rescored = search_arch(with_train, _cfg(trials=8, recovery_steps=4, recovery_per_width=1), _budget(),
                           tmp_path / "rescored", importance=IMPORTANCE, progress=False, finetune=recipe)
    assert rescored.study == plain.study and [r.candidate for r in rescored.records] == [r.candidate for r in plain.records]
    best = best_per_width(plain.records, _budget().admit_ms, 1)
    assert len({r.candidate.subnet.width for r in best}) == len(best) >= 1  # one per width
    quality = QualityEvaluator(load_supernet(inputs.supernet), load_pairs(inputs.data_dir / "val" / "x2", 2), count=2,
                               size=16, precision="fp32", prune_keep=0.5, importance=IMPORTANCE)
    scorer = RecoveryScorer(quality, with_train.data_dir, recipe, 4)
    scores = {r.candidate.name: scorer(r.candidate.pruned(0.5)) for r in best}
    assert rescored.chosen.candidate.name == max(scores, key=lambda name: scores[name])
    saved = json.loads((tmp_path / "rescored" / "arch.json").read_text())["rescored"]
    assert saved["recovery_steps"] == 4
    assert {c["name"]: c["recovered_psnr"] for c in saved["candidates"]} == pytest.approx(scores)
    assert {c["name"]: c["inherited_psnr"] for c in saved["candidates"]} == {r.candidate.name: r.psnr for r in best}


def test_the_study_reads_as_what_it_is_names_its_objectives_and_labels_the_architecture(inputs, tmp_path) -> None:
    """A dashboard on study.db shows a readable study name (stage, scale, target, budget, digest), the objectives by
    name, and the architecture by name beside the sampled levels: the width in channels, each cell's block."""
    import re

    from srnas.search.run import STUDY_FILE
    from srnas.search.study import block_label, block_levels

    result = _search(inputs, tmp_path, _budget(latency_ms=33.0, slack=1e9), trials=5)
    assert re.fullmatch(rf"search_arch-x2-{TARGET.name}-33ms-[0-9a-f]{{12}}", result.study), result.study
    study = optuna.load_study(study_name=result.study, storage=f"sqlite:///{tmp_path / STUDY_FILE}")
    assert study.metric_names == ["psnr_db"]
    names = [block_label(c) for c in block_levels(SPACE)]
    assert set(names) == {"skip", "conv", "wdsr2", "wdsr4"}
    for trial, record in zip(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), result.records, strict=True):
        subnet = record.candidate.subnet
        assert trial.params["arch_width"] == subnet.width == sorted(SPACE.widths)[trial.params["width"]]
        assert trial.distributions["arch_width"] == optuna.distributions.CategoricalDistribution([8, 16])
        for i, cell in enumerate(subnet.cells):
            assert trial.params[f"arch_cell{i}"] == block_label(cell) == names[trial.params[f"cell{i}"]]
            assert trial.distributions[f"arch_cell{i}"] == optuna.distributions.CategoricalDistribution(names)
    pareto = _search(inputs, tmp_path, trials=3, mode="pareto")
    assert pareto.study != result.study and pareto.study.startswith(f"search_arch-x2-{TARGET.name}-1e+09ms-")
    assert optuna.load_study(study_name=pareto.study, storage=f"sqlite:///{tmp_path / STUDY_FILE}").metric_names == [
        "psnr_db", "predicted_ms"]


@pytest.mark.parametrize("strategy", ["tpe", "gp"])
def test_the_architecture_labels_are_hidden_from_the_samplers(strategy) -> None:
    """Labels recorded beside the sampled levels leave the samplers' proposals exactly as without them."""
    from srnas.search import study as studies

    def run(labelled: bool) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=studies.make_sampler(strategy, 3))

        def objective(trial: optuna.Trial) -> float:
            level = trial.suggest_int("cell0", 0, 2)
            x = trial.suggest_float("x", 0, 1)
            if labelled:
                dist = optuna.distributions.CategoricalDistribution(["skip", "conv", "wdsr2"])
                value = ["skip", "conv", "wdsr2"][level]
                trial.storage.set_trial_param(trial._trial_id, "arch_cell0", dist.to_internal_repr(value), dist)
            return level * x

        study.optimize(objective, n_trials=14)
        return [{k: v for k, v in t.params.items() if not k.startswith("arch_")} for t in study.trials]

    labelled = run(True)
    assert labelled == run(False)
    assert len({json.dumps(p, sort_keys=True) for p in labelled}) >= 8  # the samplers did sample


def test_plain_seeds_are_the_first_trials_of_a_fresh_study(inputs, tmp_path) -> None:
    """search_arch.plain_seeds: a fresh study first evaluates every plain network of the space (each width, 1 to
    num_cells conv cells then skips, dense), once; a resumed study does not enqueue them again."""
    from srnas.search.study import plain_seeds

    seeds = plain_seeds(SPACE)
    expected = [f"w{w}-" + ".".join(["c"] * d + ["s"] * (SPACE.num_cells - d)) for w in sorted(SPACE.widths)
                for d in range(1, SPACE.num_cells + 1)]
    assert len(seeds) == len(expected) == 6
    result = _search(inputs, tmp_path, trials=8, plain_seeds=True)
    names = [r.candidate.name for r in result.records]
    assert names[:6] == expected and all(not r.candidate.is_pruned for r in result.records[:6])
    again = _search(inputs, tmp_path, trials=10, plain_seeds=True)  # resumed: two more trials, no seed re-enqueued
    assert [r.candidate.name for r in again.records][:8] == names and len(again.records) == 10
    from srnas.search.run import STUDY_FILE

    study = optuna.load_study(study_name=again.study, storage=f"sqlite:///{tmp_path / STUDY_FILE}")
    assert sum("fixed_params" in t.system_attrs for t in study.trials) == 6
    assert _search(inputs, tmp_path / "no_seeds", trials=8).study != result.study


def test_ratio_search_scores_each_setting_after_a_recovery_fine_tune(inputs, tmp_path) -> None:
    """search_ratio.recovery_steps > 0: every trial's pruned network first trains that many steps of finetune's
    recipe, deterministically; the score is that network's PSNR on the crops. pruned.pt keeps the inherited weights
    (the recovery is a score, finetune starts from the supernet's weights)."""
    from srnas.arch.network import load_network
    from srnas.config import FinetuneConfig
    from srnas.search.ratio import search_ratio
    from srnas.search.recovery import recover, recovery_recipe
    from srnas.training import PatchSampler

    with_train = _with_train_set(inputs, tmp_path)
    data = with_train.data_dir
    budget = 0.6 * load_predictor(inputs.table_dir).predict(SPACE.largest())
    arch_cfg = _cfg(trials=6)
    _stage2(with_train, tmp_path / "arch", budget, arch_cfg)
    recipe_cfg = config_of(FinetuneConfig, {"batch_size": 4, "lr_patch_size": 8, "lr": 0.01}, "finetune")
    result = search_ratio(with_train, tmp_path / "arch" / "arch.json",
                          RatioSearchConfig(trials=3, keep_step=0.25, recovery_steps=6), arch_cfg,
                          _budget(latency_ms=budget), tmp_path / "ratio", finetune=recipe_cfg)
    quality = QualityEvaluator(load_supernet(inputs.supernet), load_pairs(data / "val" / "x2", 2), count=2,
                               size=16, precision="fp32", prune_keep=0.5, importance=IMPORTANCE)
    sampler = PatchSampler(load_pairs(data / "train" / "x2", 2), 8)
    recipe = recovery_recipe(recipe_cfg, 6)
    assert recipe.steps == 6 and recipe.lr == 0.01 and recipe.batch_size == 4
    once = recover(quality.model(result.network), sampler, recipe)
    twice = recover(quality.model(result.network), sampler, recipe)
    assert all(torch.equal(v, twice.state_dict()[k]) for k, v in once.state_dict().items())
    inherited = quality.model(result.network)
    assert not all(torch.equal(v, inherited.state_dict()[k]) for k, v in once.state_dict().items())
    assert result.psnr == pytest.approx(quality.psnr_model(once), abs=1e-9)
    assert result.psnr != pytest.approx(quality.psnr_network(result.network), abs=1e-6)
    saved = load_network(tmp_path / "ratio" / "pruned.pt")
    assert all(torch.equal(v, inherited.state_dict()[k]) for k, v in saved.state_dict().items())


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
    assert verdict["headroom_ms"] == pytest.approx(1e9 - verdict["verdict_ms"])
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


def test_check_budget_flags_a_verdict_measured_on_a_busy_machine(inputs, tmp_path, monkeypatch) -> None:
    """Measurements the quiet guard saw disturbed (the machine never became quiet) are counted into the verdict and
    each baseline's: check_budget.json says ``busy``, and the report marks the figure."""
    from srnas.latency.measure import NetworkTiming
    from srnas.runtimes import timing
    from srnas.search import budget as budget_module
    from srnas.search.fit import judge_models

    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)
    monkeypatch.setattr(timing, "_machine_busy", False)
    busy = {"cores": 0.0}
    monkeypatch.setattr(timing, "others_busy", lambda fn: (fn(), busy["cores"]))

    def fake(target, model, **kwargs):
        return NetworkTiming(timing.quiet(lambda: 3.0, "fake"), 2.0)

    model_path = _final_model(inputs, tmp_path / "model.pt")
    quiet = budget_module.check_budget(model_path, inputs.table_dir, _budget(latency_ms=2.5), LatencyConfig(), measure=fake)
    assert quiet.timing.disturbed == 0 and quiet.to_dict()["busy"] is False
    busy["cores"] = 1.5
    loaded = budget_module.check_budget(model_path, inputs.table_dir, _budget(latency_ms=2.5), LatencyConfig(), measure=fake)
    saved = loaded.to_dict()
    assert saved["busy"] is True and saved["disturbed_measurements"] == LatencyConfig().net_passes
    assert saved["verdict_ms"] == 2.0  # the figure is kept, flagged, not dropped
    (baseline,) = judge_models({"plain": torch.nn.Conv2d(3, 12, 3)}, TARGET, 2.5,
                               {"warmup": 0, "runs": 1, "rounds": 5}, None, measure=fake)
    assert dataclasses.asdict(baseline)["disturbed_measurements"] == 5  # absolute protocol: five rounds, all disturbed


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


def test_check_budget_times_every_baseline_at_the_target_scale_the_same_way(inputs, tmp_path) -> None:
    """--baselines: each trained baseline at the target's scale is timed (deployed form: an ECBSR as its collapsed
    plain net) with the final model's protocol and held against the same budget; other scales are left out."""
    from srnas.checkpoint import save_trained
    from srnas.cli import main
    from srnas.models import create_model

    model = _final_model(inputs, tmp_path / "model.pt")
    train_dir = tmp_path / "train_baseline"
    for name, scale in (("plain_m1c8", 2), ("ecbsr_m1c8", 2), ("plain_m1c8", 4)):
        save_trained(train_dir / f"{name}_x{scale}" / "model.pt", create_model(name, scale), name, scale, {})
    args = ["check-budget", "--checkpoint", str(model), "--tables", str(inputs.table_dir.parent), "--baselines", str(train_dir)]
    assert main([*args, *_params(tmp_path, budget={"verify_runs": 2}), "--out", str(tmp_path / "ok.json")]) == 0
    verdict = json.loads((tmp_path / "ok.json").read_text())
    rows = {b["model"]: b for b in verdict["baselines"]}
    assert sorted(rows) == ["ecbsr_m1c8", "plain_m1c8"]
    assert all(b["within_budget"] and 0 < b["verdict_ms"] <= 1e9 and b["wall_clock_ms"] > 0 for b in rows.values())
