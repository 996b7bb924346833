"""Commands users run directly: upscale, compare, profile --json, models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import params_overlay
from PIL import Image

from srnas.cli import main
from srnas.config import TrackingConfig
from srnas.export import export_onnx
from srnas.models import create_model


@pytest.fixture()
def onnx_model(tmp_path: Path) -> Path:
    model = create_model("plain16", 2).eval()
    return export_onnx(model, tmp_path / "results" / "export" / "plain16_x2" / "model.onnx", sample_hw=(16, 16))


def _images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_text("not an image")
    return folder


def test_upscale_writes_outputs_and_reports_bad_files(tmp_path: Path, onnx_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _images(tmp_path / "in")
    code = main(["upscale", str(inputs), "--model", "plain16_x2", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 1, "a failed file makes the exit status non-zero"
    assert "broken.png" in out.out + out.err
    assert "frames/s" in out.out
    for name in ("a.png", "b.png"):
        assert np.asarray(Image.open(tmp_path / "out" / name)).shape == (24, 40, 3)
    assert not (tmp_path / "out" / "broken.png").exists()


def test_upscale_fail_fast_and_bad_model(tmp_path: Path, onnx_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _images(tmp_path / "in")
    assert main(["upscale", str(inputs / "broken.png"), "--model", str(onnx_model), "--out", str(tmp_path / "o"), "--fail-fast"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["upscale", str(inputs), "--model", "nope_x2", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "o")]) == 2
    assert "nope_x2" in capsys.readouterr().err


def test_compare_joins_evaluate_and_profile_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from srnas import tracking

    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(uri="sqlite:///mlflow.db", experiment="exp-a")
    tags = {"srnas.model": "plain16", "srnas.scale": "2", "srnas.data": "folder"}
    with tracking.stage_run(cfg, "evaluate", {}, tags) as stage:
        stage.log_metrics({"psnr_set5_x2": 36.5, "ssim_set5_x2": 0.95})
    with tracking.stage_run(cfg, "profile_model", {}, tags) as stage:
        stage.log_metrics({"latency_ms_onnxruntime_fp32": 40.0})
    tracking.end_pipeline(cfg)
    params = params_overlay(tmp_path, {"tracking": {"uri": "sqlite:///mlflow.db", "experiment": "exp-a"}})
    assert main(["compare", *params, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"experiment": "exp-a", "data": "folder", "model": "plain16", "scale": 2, "psnr_set5_x2": 36.5, "ssim_set5_x2": 0.95, "latency_ms_onnxruntime_fp32": 40.0}
    ]
    assert main(["compare", *params]) == 0
    table = capsys.readouterr().out
    assert "plain16" in table and "36.50" in table and "40.00" in table


def test_profile_json_for_an_untrained_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = params_overlay(tmp_path, {"tracking": {"enabled": False}, "profile": {
        "runtimes": ["torch_fp32", "onnxruntime_fp32"], "warmup": 0, "runs": 2, "input_size": [24, 32]}})
    assert main(["profile", *params, "--model", "espcn", "--scale", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["input_hw"] == [24, 32] and payload["output_hw"] == [48, 64]
    assert {r["runtime"] for r in payload["results"]} == {"torch_fp32", "onnxruntime_fp32"}
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] for r in payload["results"])
    assert payload["params"] == 26796


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("bicubic", "espcn", "fsrcnn", "plain16", "plain32"):
        assert f"\n{name} " in out
