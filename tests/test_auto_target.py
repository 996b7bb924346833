"""``runtime: auto``: the target resolves to the fastest runtime this machine runs, measured once and cached."""

from __future__ import annotations

import json

import pytest
from conftest import config_of

from srnas import fingerprint
from srnas.config import LatencyConfig, TargetConfig
from srnas.errors import ConfigError
from srnas.latency import auto
from srnas.latency.targets import resolve_target, select_targets
from srnas.runtimes.availability import bf16_supported, runtime_available


class FakeProbe:
    """Probe latencies per runtime (ms at width 16, width 32); records every measurement."""

    def __init__(self, ms: dict[str, tuple[float, float]]) -> None:
        self.ms = ms
        self.calls: list[tuple[str, int]] = []

    def __call__(self, runtime: str, width: int) -> float:
        self.calls.append((runtime, width))
        return self.ms[runtime][auto.PROBE_WIDTHS.index(width)]


def test_auto_chooses_the_fastest_available_runtime_and_caches_the_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(auto, "runtime_available", lambda rt: True)
    probe = FakeProbe({"torch_bf16": (30.0, 28.0), "torch_fp32": (40.0, 100.0), "onnxruntime_fp32": (25.0, 120.0)})
    choice = auto.choose_runtime(2, (36, 64), 2, tmp_path, measure=probe)
    # geometric means: bf16 ~29.0, fp32 ~63.2, ORT ~54.8: bf16 wins although ORT is fastest at width 16
    assert (choice.runtime, choice.precision) == ("torch_bf16", "bf16")
    assert choice.scores_ms["torch_bf16"] == pytest.approx((30.0 * 28.0) ** 0.5)
    assert "torch_bf16 29.0 ms, onnxruntime_fp32 54.8 ms, torch_fp32 63.2 ms" in choice.reason
    assert len(probe.calls) == 6
    again = auto.choose_runtime(2, (36, 64), 2, tmp_path, measure=FakeProbe({}))  # would fail if it measured
    assert again == choice
    saved = json.loads(next((tmp_path / "auto").glob("*.json")).read_text())
    assert saved["runtime"] == "torch_bf16" and saved["reason"] == choice.reason


def test_auto_never_offers_an_unavailable_runtime(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(auto, "runtime_available", lambda rt: rt != "torch_bf16")
    probe = FakeProbe({"torch_fp32": (40.0, 100.0), "onnxruntime_fp32": (40.0, 90.0)})
    choice = auto.choose_runtime(1, (36, 64), 2, tmp_path, measure=probe)
    assert choice.runtime == "onnxruntime_fp32" and choice.unavailable == ("torch_bf16",)
    assert {rt for rt, _ in probe.calls} == {"torch_fp32", "onnxruntime_fp32"}
    assert "not available here: torch_bf16" in choice.reason


def test_a_new_input_size_is_a_new_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(auto, "runtime_available", lambda rt: rt != "onnxruntime_fp32")
    slow_bf16 = FakeProbe({"torch_bf16": (50.0, 50.0), "torch_fp32": (10.0, 20.0)})
    assert auto.choose_runtime(1, (36, 64), 2, tmp_path, measure=slow_bf16).runtime == "torch_fp32"
    fast_bf16 = FakeProbe({"torch_bf16": (5.0, 5.0), "torch_fp32": (10.0, 20.0)})
    assert auto.choose_runtime(1, (72, 128), 2, tmp_path, measure=fast_bf16).runtime == "torch_bf16"


def test_hiding_bf16_hides_it_from_every_decision(monkeypatch) -> None:
    monkeypatch.setenv(fingerprint.HIDE_BF16_ENV, "1")
    assert not bf16_supported() and not runtime_available("torch_bf16")
    assert not fingerprint.has_cpu_flag("amx_bf16") and not fingerprint.has_cpu_flag("avx512_bf16")
    hidden = fingerprint.target_fingerprint("torch_fp32", "fp32", 1)
    assert not hidden["cpu_flags"]["amx_bf16"] and not hidden["cpu_flags"]["avx512_bf16"]
    monkeypatch.setenv(fingerprint.HIDE_BF16_ENV, "0")
    shown = fingerprint.target_fingerprint("torch_fp32", "fp32", 1)
    if fingerprint.has_cpu_flag("amx_bf16") or fingerprint.has_cpu_flag("avx512_bf16"):
        assert fingerprint.fingerprint_id(shown) != fingerprint.fingerprint_id(hidden)


def test_resolving_an_auto_target_measures_the_real_runtimes(tmp_path, monkeypatch) -> None:
    """The default path end to end at a tiny input size: real probe nets on this machine's runtimes, bf16 hidden so the
    choice is one every CPU has."""
    monkeypatch.setenv(fingerprint.HIDE_BF16_ENV, "1")
    resolved = resolve_target(TargetConfig("cpu_auto", "this-cpu", "auto", "auto", 1, (16, 24)), 2, str(tmp_path))
    assert resolved.choice is not None and resolved.target.runtime == resolved.choice.runtime
    assert resolved.target.runtime in ("torch_fp32", "onnxruntime_fp32") and resolved.target.precision == "fp32"
    assert all(ms > 0 for ms in resolved.choice.scores_ms.values()) and "torch_bf16" in resolved.choice.unavailable


def test_explicit_targets_are_resolved_as_before_and_never_measured(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(auto, "choose_runtime", lambda *a, **k: pytest.fail("an explicit target was measured"))
    cfg = config_of(LatencyConfig, {"cache_dir": str(tmp_path), "targets": [
        {"name": "ort", "device": "d", "runtime": "onnxruntime_fp32", "precision": "int8", "threads": 1, "input_size": [8, 8]}]})
    [resolved] = select_targets(cfg, 2, None)
    assert (resolved.target.runtime, resolved.target.precision, resolved.choice) == ("onnxruntime_fp32", "int8", None)


@pytest.mark.parametrize("runtime,precision", [("auto", "fp32"), ("torch_fp32", "auto")])
def test_auto_goes_with_auto(runtime: str, precision: str) -> None:
    with pytest.raises(ConfigError, match="precision"):
        TargetConfig("t", "d", runtime, precision, 0, ())
