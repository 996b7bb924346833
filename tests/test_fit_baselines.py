"""The budget-fitted baselines: the grid walk, the pick, the choice file and what ``train --fitted`` reads from it.

Timing is faked (a latency proportional to the network's MACs), so these tests check the logic, not this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from srnas.errors import ConfigError, DataError
from srnas.latency.measure import NetworkTiming
from srnas.latency.targets import Target
from srnas.models import gmacs
from srnas.models.fitted import is_fitted, resolve_fitted
from srnas.search.fit import GridPoint, fit_grid, judge_models, pick, write_fit

TARGET = Target("cpu", "this-cpu", "torch_fp32", "fp32", 1, (36, 64), 2)
TIMING = {"warmup": 0, "runs": 1, "rounds": 1, "passes": 1}


def fake_measure(calls: list[str]):
    """ms = 10 x GMAC of the network at the target's input size (monotone in width and depth), both figures."""

    def measure(target, model, **kwargs):
        calls.append(f"w{model.width}d{model.depth}")
        ms = 10.0 * gmacs(model, *target.input_hw)
        return NetworkTiming(ms, ms if kwargs.get("reference_ms") is not None else None)

    return measure


def test_fit_grid_deepens_each_width_until_one_misses_and_picks_the_most_macs() -> None:
    calls: list[str] = []
    budget = 0.2  # ms: width 8 fits 12 blocks, width 16 two, width 32 none
    result = fit_grid(TARGET, budget, (8, 16, 32), 12, TIMING, None, measure=fake_measure(calls))
    by_width: dict[int, list[GridPoint]] = {}
    for p in result.points:
        by_width.setdefault(p.width, []).append(p)
    for width, points in by_width.items():
        # depth grows from one block; every point but the last of a width fits, and the last misses or is the deepest
        assert [p.blocks for p in points] == list(range(1, len(points) + 1))
        assert all(p.fits for p in points[:-1])
        assert (not points[-1].fits) or points[-1].blocks == 12
        assert all(p.fits == (p.verdict_ms <= budget) for p in points)
    assert [len(by_width[w]) for w in (8, 16, 32)] == [12, 3, 1]
    fitting = [p for p in result.points if p.fits]
    assert result.chosen == max(fitting, key=lambda p: (p.gmac, p.width))
    assert result.basis == "wall_clock_ms"
    assert result.choice() == {"plain_fit": f"plain_m{result.chosen.blocks}c{result.chosen.width}",
                               "ecbsr_fit": f"ecbsr_m{result.chosen.blocks}c{result.chosen.width}"}
    assert len(calls) == len(result.points)


def test_fit_grid_uses_the_normalised_figure_under_the_paired_protocol() -> None:
    result = fit_grid(TARGET, 1e9, (8,), 2, TIMING, 1.0, measure=fake_measure([]))
    assert result.basis == "normalised_ms" and [p.blocks for p in result.points] == [1, 2] and result.chosen.blocks == 2


def test_pick_prefers_macs_then_width_and_none_when_nothing_fits() -> None:
    a = GridPoint(16, 8, 2.0, 30.0, 30.0, True)
    b = GridPoint(32, 2, 2.0, 31.0, 31.0, True)
    c = GridPoint(64, 1, 5.0, 40.0, 40.0, False)
    assert pick([a, b, c]) == b
    assert pick([c]) is None


def test_choice_file_round_trip_and_errors(tmp_path: Path) -> None:
    result = fit_grid(TARGET, 0.2, (8, 16), 4, TIMING, None, measure=fake_measure([]))
    write_fit(tmp_path, result)
    choice = tmp_path / "choice.json"
    assert resolve_fitted("ecbsr_fit", choice) == result.choice()["ecbsr_fit"]
    assert resolve_fitted("plain16", choice) == "plain16"  # not fitted: itself, the file unread
    assert resolve_fitted("plain16", None) == "plain16"
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert len(grid["points"]) == len(result.points) and grid["chosen"]["width"] == result.chosen.width

    nothing = fit_grid(TARGET, 1e-9, (8,), 4, TIMING, None, measure=fake_measure([]))
    write_fit(tmp_path / "none", nothing)
    with pytest.raises(DataError, match="nothing to train"):
        resolve_fitted("plain_fit", tmp_path / "none" / "choice.json")
    with pytest.raises(DataError, match="not found"):
        resolve_fitted("plain_fit", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json: not a fit-baselines choice"):  # JSON, but not a choice
        resolve_fitted("plain_fit", tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="--fitted"):
        resolve_fitted("plain_fit", None)


def test_is_fitted_names_only_the_families() -> None:
    assert is_fitted("plain_fit") and is_fitted("ecbsr_fit")
    assert not is_fitted("espcn_fit") and not is_fitted("plain16")


def test_judge_models_holds_each_model_against_the_budget() -> None:
    from srnas.models.plain import PlainNet

    models = {"small": PlainNet(2, 8, 3).eval(), "large": PlainNet(2, 64, 8).eval()}
    torch.manual_seed(0)
    verdicts = judge_models(models, TARGET, 10.0 * 0.01, TIMING, 1.0, measure=fake_measure([]))
    assert [v.model for v in verdicts] == ["small", "large"]
    assert [v.within_budget for v in verdicts] == [True, False]


def test_judge_models_leaves_out_a_model_the_target_cannot_run(caplog: pytest.LogCaptureFixture) -> None:
    """On an ExecuTorch target the bicubic baseline has no ``.pte`` (srnas.export): it gets no verdict, the others do."""
    from srnas.export import ExportError
    from srnas.models.plain import PlainNet

    plain = PlainNet(2, 8, 3).eval()
    measure = fake_measure([])

    def no_pte(target: Any, model: Any, **kwargs: Any) -> Any:
        if model is not plain:
            raise ExportError("net.pte: ExecuTorch export failed: AssertionError")
        return measure(target, model, **kwargs)

    verdicts = judge_models({"bicubic": torch.nn.Upsample(scale_factor=2, mode="bicubic"), "plain": plain}, TARGET,
                            1.0, TIMING, 1.0, measure=no_pte)
    assert [v.model for v in verdicts] == ["plain"]
    assert "bicubic: left out on" in caplog.text and "cannot be exported" in caplog.text
