"""The report's supernet and latency-model sections read the stage outputs they describe."""

from __future__ import annotations

import json
from pathlib import Path

from srnas.report import (
    ModelResult,
    headline_metrics,
    latency_model_section,
    models_table,
    render_html,
    render_markdown,
    supernet_section,
    verification_section,
)


def test_sections_are_empty_without_the_stage_outputs(tmp_path: Path) -> None:
    assert supernet_section(tmp_path / "train_supernet") == []
    assert latency_model_section(tmp_path / "profile_device") == []
    assert verification_section(tmp_path) == []


def test_supernet_and_latency_sections_show_the_stage_outputs(tmp_path: Path) -> None:
    (tmp_path / "train_supernet").mkdir()
    (tmp_path / "train_supernet" / "train_metrics.json").write_text(json.dumps(
        {"space_size": 12345, "params": 67890, "largest": "w32-c.c", "smallest": "w8-s.s", "sandwich": 4, "steps": 20,
         "seconds": 3.5, "val_psnr_largest": 31.234, "val_psnr_smallest": None}))
    target = tmp_path / "profile_device" / "cpu_torch_fp32"
    target.mkdir(parents=True)
    (target / "build.json").write_text(json.dumps({"entries": 40, "granularity": 8, "measured": 30, "reused": 10,
                                                   "seconds": 61.2, "calibration_mape": 0.042}))
    (target / "schemes.md").write_text("### Pruning schemes on cpu_torch_fp32\n\n| scheme |\n|---|\n| filter_g8 |\n")
    missing = tmp_path / "profile_device" / "cpu_torch_bf16"
    missing.mkdir()
    (missing / "build.json").write_text(json.dumps({"target": "cpu_torch_bf16", "available": False, "reason": "no bf16"}))
    (missing / "schemes.md").write_text("### Pruning schemes on cpu_torch_bf16\n\nnot measured: no bf16\n")

    text = render_markdown([], {}, supernet_section(tmp_path / "train_supernet")
                           + latency_model_section(tmp_path / "profile_device"))
    assert "| subnets in the space | 12,345 |" in text and "| largest subnet val PSNR | 31.23 |" in text
    assert "| smallest subnet val PSNR | - |" in text
    assert "40 layer configurations on the granularity-8 channel grid (30 measured, 10 reused" in text
    assert "calibration MAPE 4.2%" in text and "| filter_g8 |" in text
    assert "not measured: no bf16" in text and "Latency table of `cpu_torch_bf16`" not in text


def _measured(name: str, psnr: float, predicted: float, measured: float, budget: float = 33.0) -> dict:
    return {"name": name, "psnr": psnr, "predicted_ms": predicted, "measured_ms": measured,
            "error": (predicted - measured) / measured, "fits": measured <= budget}


def test_predicted_against_measured_lists_every_candidate_both_searches_measured(tmp_path: Path) -> None:
    for folder in ("search_arch", "search_ratio", "profile_device/cpu_auto"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "search_arch" / "arch.json").write_text(json.dumps({
        "target": "cpu_auto", "budget_ms": 33.0, "admit_ms": 36.3, "chosen_by": "measured",
        "chosen": {"name": "w24-c.c/g16.d.d"},
        "measured": [_measured("w32-c.c/d.d.d", 31.2, 35.0, 34.1), _measured("w24-c.c/g16.d.d", 31.0, 34.0, 32.0)]}))
    (tmp_path / "search_ratio" / "ratio.json").write_text(json.dumps({
        "target": "cpu_auto", "budget_ms": 33.0, "admit_ms": 36.3, "chosen_by": "predicted",
        "chosen_by_reason": "budget.verify_runs is 0", "name": "w24-c.c/p16.24.24", "measured": []}))
    (tmp_path / "profile_device" / "cpu_auto" / "build.json").write_text(json.dumps({"calibration_mape": 0.031}))

    lines = verification_section(tmp_path)
    text = "\n".join(lines)
    assert lines[0] == "## Predicted against measured latency"
    assert "admit candidates predicted within 36.3 ms (the 33 ms budget plus its slack)" in text and "`cpu_auto`" in text
    assert "| stage | candidate | PSNR (dB) | predicted ms | measured ms | prediction error | fits |" in text
    assert "| search_arch | `w32-c.c/d.d.d` | 31.20 | 35.00 | 34.10 | +2.6% | no |" in text
    assert "| search_arch | **`w24-c.c/g16.d.d`** (chosen) | 31.00 | 34.00 | 32.00 | +6.2% | yes |" in text
    assert ("- search_arch: chose `w24-c.c/g16.d.d` by measurement (2 candidate(s) measured; median absolute "
            "prediction error 4.4%).") in text
    assert "- search_ratio: chose `w24-c.c/p16.24.24` by prediction within the budget (budget.verify_runs is 0)." in text
    assert "overhead-model calibration MAPE 3.1% (profile_device)" in text
    assert "## Predicted against measured latency" in render_markdown([], {}, lines)


def test_predicted_against_measured_says_when_stage_3_stepped_aside(tmp_path: Path) -> None:
    (tmp_path / "search_ratio").mkdir()
    (tmp_path / "search_ratio" / "ratio.json").write_text(json.dumps({
        "target": "cpu_auto", "budget_ms": 33.0, "admit_ms": 36.3, "chosen_by": "search_arch", "skipped": True,
        "skip_reason": "search_ratio.enabled is false", "name": "w24-c.c/p8.24.24", "measured": []}))
    text = "\n".join(verification_section(tmp_path))
    assert "- search_ratio: stepped aside (search_ratio.enabled is false): `w24-c.c/p8.24.24`." in text
    assert "| stage |" not in text  # nothing measured, no table


def test_budget_comparison_judges_every_row_by_the_same_measurement(tmp_path: Path) -> None:
    """The final model against the baselines check_budget timed: in-budget marks from that measurement (not from
    profile_model), training compute with the supernet's steps on top, and the lead over the best in-budget baseline
    per set (a faster-but-worse and an over-budget-but-better baseline are both handled)."""
    from srnas.report import budget_comparison_section

    (tmp_path / "train_supernet").mkdir()
    (tmp_path / "train_supernet" / "train_metrics.json").write_text(json.dumps({"steps": 4000, "sandwich": 4}))
    verdict = {"target": "cpu_auto", "budget_ms": 33.0, "verdict_ms": 31.0, "within_budget": True,
               "verdict_basis": "normalised_ms",
               "baselines": [{"model": "ecbsr_fit", "verdict_ms": 32.5, "within_budget": True},
                             {"model": "plain16", "verdict_ms": 20.0, "within_budget": True},
                             {"model": "plain48", "verdict_ms": 60.0, "within_budget": False},
                             {"model": "bicubic", "verdict_ms": 5.0, "within_budget": True}]}

    def result(model: str, psnr: tuple[float, float], steps: int | None, network: str = "") -> ModelResult:
        sets = {"Set5": {"psnr": psnr[0], "ssim": 0.9 + psnr[0] / 1000}, "B100": {"psnr": psnr[1], "ssim": 0.8 + psnr[1] / 1000}}
        training = {"steps": steps, "model": network} if steps else {"steps": 0}
        return ModelResult(model, 2, {}, sets, training=training)

    final = ModelResult("final", 2, {}, {"Set5": {"psnr": 37.3, "ssim": 0.95}, "B100": {"psnr": 31.5, "ssim": 0.89}},
                        training={"steps": 8000, "pruned": "w32-c.c/p32.16.32"})
    results = [final, result("ecbsr_fit", (37.1, 31.45), 8000, "ecbsr_m4c32"), result("plain16", (36.9, 31.2), 8000),
               result("plain48", (37.6, 31.7), 8000), result("bicubic", (33.66, 29.56), None)]
    text = "\n".join(budget_comparison_section(tmp_path, results, final, verdict))
    assert "| **final** | `w32-c.c/p32.16.32` | 31.0 | yes | 8,000 + 4,000 supernet steps (sandwich of 4) |" in text
    assert "| ecbsr_fit | `ecbsr_m4c32` | 32.5 | yes | 8,000 | 37.10 / 0.9371 | 31.45 / 0.8315 |" in text
    assert "| plain48 | `-` | 60.0 | no |" in text
    # plain48 is better but over budget, bicubic untrained: the best in-budget baseline is ecbsr_fit on both sets
    assert "Set5 +0.20 dB PSNR, +0.0129 SSIM (vs ecbsr_fit); B100 +0.05 dB PSNR, +0.0585 SSIM (vs ecbsr_fit)" in text

    # the headline figures dvc exp show compares: the final model and the same best in-budget baseline
    (tmp_path / "check_budget.json").write_text(json.dumps(verdict))
    headline = headline_metrics(tmp_path, results)
    assert headline["budget_ms"] == 33.0
    assert headline["final"] == {"scale": 2, "psnr_set5": 37.3, "ssim_set5": 0.95, "psnr_b100": 31.5, "ssim_b100": 0.89,
                                 "verdict_ms": 31.0, "headroom_ms": 2.0}
    assert headline["best_baseline"]["model"] == "ecbsr_fit" and headline["best_baseline"]["psnr_set5"] == 37.1
    assert headline["best_baseline"]["verdict_ms"] == 32.5 and headline["best_baseline"]["headroom_ms"] == 0.5


def test_latencies_measured_on_a_busy_machine_are_marked_with_a_footnote(tmp_path: Path) -> None:
    """profile_model's ``disturbed`` runtimes and check_budget's ``busy`` verdicts carry the mark; the footnote says
    what it means, once per table; a quiet report has neither."""
    from srnas.report import (
        BUSY_MARK,
        BUSY_NOTE,
        ModelResult,
        budget_comparison_section,
    )

    def profiled(model: str, disturbed: bool) -> ModelResult:
        fingerprint = {"cpu": "test"}
        results = [{"runtime": "torch_fp32", "median_ms": 232.04, "disturbed": disturbed, "fingerprint": fingerprint},
                   {"runtime": "torch_bf16", "median_ms": 1.61, "disturbed": False, "fingerprint": fingerprint}]
        return ModelResult(model, 2, {}, {"Set5": {"psnr": 30.0, "ssim": 0.9}}, profile={"results": results})

    quiet = render_markdown([profiled("final", False)])
    assert BUSY_MARK not in quiet and BUSY_NOTE not in quiet
    text = render_markdown([profiled("final", True), profiled("espcn", False)])
    assert "| final | - | - | - | 1.6 | 232.0" + BUSY_MARK + " | 30.00 / 0.9000 |" in text
    assert "| espcn | - | - | - | 1.6 | 232.0 | 30.00 / 0.9000 |" in text
    assert text.count(BUSY_NOTE) == 1 and "busy" in BUSY_NOTE
    verdict = {"target": "cpu_auto", "budget_ms": 33.0, "verdict_ms": 31.0, "within_budget": True, "busy": True,
               "verdict_basis": "normalised_ms",
               "baselines": [{"model": "espcn", "verdict_ms": 20.0, "within_budget": True, "disturbed_measurements": 0}]}
    lines = budget_comparison_section(tmp_path, [profiled("final", False), profiled("espcn", False)],
                                      profiled("final", False), verdict)
    table = "\n".join(lines)
    assert f"| 31.0{BUSY_MARK} | yes |" in table and "| 20.0 | yes |" in table and BUSY_NOTE in lines


def test_models_table_and_the_one_page_report(tmp_path: Path) -> None:
    """models.csv (dvc plots: PSNR versus latency) has a row per model with a latency; report.html renders the tables
    and inlines the images it links, so it opens anywhere."""
    profile = {"results": [{"runtime": "torch_fp32", "median_ms": 12.5}, {"runtime": "onnxruntime_fp32", "median_ms": 9.25}]}
    results = [ModelResult("plain16", 2, {}, {"val": {"psnr": 30.123456, "ssim": 0.912346}}, profile),
               ModelResult("unprofiled", 2, {}, {"val": {"psnr": 29.0, "ssim": 0.9}})]
    assert models_table(results, "val").splitlines() == ["model,scale,set,psnr,ssim,fastest_ms,runtime",
                                                         "plain16,2,val,30.1235,0.91235,9.2500,onnxruntime_fp32"]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "pareto_x2.png").write_bytes(b"\x89PNG fake")
    page = render_html("# Title\n\n| model | ms |\n|---|---|\n| plain16 | 9.3 |\n\n![Pareto](report/pareto_x2.png)\n"
                       "![gone](report/missing.png)\n", tmp_path)
    assert "<td>plain16</td>" in page and "<h1>Title</h1>" in page
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page and 'src="report/missing.png"' in page
