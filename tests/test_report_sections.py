"""The report's supernet and latency-model sections read the stage outputs they describe."""

from __future__ import annotations

import json
from pathlib import Path

from srnas.report import latency_model_section, render_markdown, supernet_section


def test_sections_are_empty_without_the_stage_outputs(tmp_path: Path) -> None:
    assert supernet_section(tmp_path / "train_supernet") == []
    assert latency_model_section(tmp_path / "profile_device") == []


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
