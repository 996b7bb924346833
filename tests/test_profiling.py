"""Latency profiling and target fingerprints. No timing is asserted: the CI CPU is shared."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from srnas import fingerprint as fp_mod
from srnas.export import export_onnx
from srnas.fingerprint import fingerprint_id, target_fingerprint
from srnas.profiling import LatencyResult, lr_size_for_720p, profile_all, profile_module
from srnas.runtimes import allocator
from srnas.runtimes.allocator import malloc_env, malloc_env_set
from srnas.runtimes.availability import RUNTIMES, RuntimeUnavailableError, available_runtimes, runtime_available

HW = (12, 16)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))


@pytest.fixture(scope="module")
def net_and_onnx(tmp_path_factory: pytest.TempPathFactory):
    model = _net()
    return model, export_onnx(model, tmp_path_factory.mktemp("prof") / "net.onnx", sample_hw=(16, 16))


def _check_sane(result: LatencyResult, runtime: str) -> None:
    assert result.runtime == runtime
    assert result.runs == 3
    assert result.input_shape == (1, 3, *HW)
    assert 0 < result.median_ms <= result.p90_ms
    assert result.mean_ms > 0
    assert result.minor_faults_per_run >= 0
    assert result.fingerprint["runtime"] == runtime and result.fingerprint["threads"] == 1
    assert result.fingerprint["torch"] == torch.__version__
    assert len(result.fingerprint_id) == 12
    assert result.to_dict()["fingerprint_id"] == result.fingerprint_id


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_available_runtime_measures(runtime, net_and_onnx) -> None:
    if not runtime_available(runtime):
        with pytest.raises(RuntimeUnavailableError, match=runtime):
            profile_module(_net(), runtime, HW, threads=1, runs=3)
        return
    model, onnx_path = net_and_onnx
    result = profile_module(model, runtime, HW, threads=1, warmup=1, runs=3, onnx_path=onnx_path)
    _check_sane(result, runtime)


def test_profile_all_covers_every_available_runtime(net_and_onnx) -> None:
    model, onnx_path = net_and_onnx
    threads_before = torch.get_num_threads()
    results = profile_all(model, onnx_path, HW, 1, warmup=1, runs=3)
    assert [r.runtime for r in results] == available_runtimes()
    assert {"torch_fp32", "onnxruntime_fp32"} <= {r.runtime for r in results}
    for result in results:
        _check_sane(result, result.runtime)
    assert torch.get_num_threads() == threads_before, "thread pinning is undone afterwards"


def test_an_exported_file_is_timed_even_when_the_runtimes_asked_for_leave_its_runtime_out(net_and_onnx) -> None:
    """``profile.runtimes: [torch_fp32]`` with ``--artifact model.onnx``: the file is timed too, on its runtime (the
    smoke profile times its deployed files while profiling its models on two runtimes only)."""
    model, onnx_path = net_and_onnx
    results = profile_all(model, None, HW, 1, warmup=0, runs=3, runtimes=["torch_fp32"], artifacts=[onnx_path])
    assert [(r.runtime, r.label) for r in results] == [("torch_fp32", "torch_fp32"), ("onnxruntime_fp32", "onnxruntime_fp32")]


def test_onnxruntime_accepts_a_path_as_the_model(net_and_onnx) -> None:
    _, onnx_path = net_and_onnx
    result = profile_module(onnx_path, "onnxruntime_fp32", HW, threads=1, warmup=0, runs=3)
    _check_sane(result, "onnxruntime_fp32")


def test_a_latency_timed_on_a_busy_machine_is_flagged(monkeypatch) -> None:
    """profile_module records the cores other processes kept busy while it timed the calls; above the quiet guard's
    limit the result is flagged disturbed, in its JSON too (what profile_model writes and the report marks)."""
    from srnas import profiling
    from srnas.runtimes.timing import QUIET_LIMIT

    for busy, flagged in ((0.0, False), (QUIET_LIMIT + 0.5, True)):
        monkeypatch.setattr(profiling, "others_busy", lambda fn, busy=busy: (fn(), busy))
        result = profile_module(_net(), "torch_fp32", HW, threads=1, warmup=0, runs=2)
        assert result.busy_cores == busy and result.disturbed is flagged
        saved = result.to_dict()
        assert saved["busy_cores"] == busy and saved["disturbed"] is flagged and saved["median_ms"] > 0


def test_lr_size_for_720p() -> None:
    assert lr_size_for_720p(2) == (360, 640)
    assert lr_size_for_720p(3) == (240, 427)
    assert lr_size_for_720p(4) == (180, 320)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError):
            lr_size_for_720p(bad)


def test_fingerprint_contents_and_stable_id() -> None:
    fp = target_fingerprint("onnxruntime_fp32", "fp32", 2)
    for key in ("cpu_model", "cpu_flags", "logical_cpus", "usable_cpus", "os", "python", "torch", "onnxruntime", "onnx"):
        assert key in fp, key
    assert set(fp["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}
    assert fp["threads"] == 2 and fp["precision"] == "fp32"
    same = target_fingerprint("onnxruntime_fp32", "fp32", 2)
    assert fingerprint_id(fp) == fingerprint_id(same) == fingerprint_id(dict(reversed(list(fp.items()))))
    assert fingerprint_id(fp) != fingerprint_id(target_fingerprint("onnxruntime_fp32", "fp32", 1))


def test_fingerprint_changes_with_a_runtime_version(monkeypatch) -> None:
    before = target_fingerprint("onnxruntime_fp32", "fp32", 2)
    real = fp_mod._package_version
    monkeypatch.setattr(fp_mod, "_package_version", lambda name: "9.9.9" if name == "onnxruntime" else real(name))
    after = target_fingerprint("onnxruntime_fp32", "fp32", 2)
    assert after["onnxruntime"] == "9.9.9"
    assert fingerprint_id(after) != fingerprint_id(before)


def test_fingerprint_changes_with_the_measurement_protocol(monkeypatch) -> None:
    before = target_fingerprint("onnxruntime_fp32", "fp32", 2)
    assert before["measurement_protocol"] == fp_mod.MEASUREMENT_PROTOCOL
    monkeypatch.setattr(fp_mod, "MEASUREMENT_PROTOCOL", fp_mod.MEASUREMENT_PROTOCOL + 1)
    assert fingerprint_id(target_fingerprint("onnxruntime_fp32", "fp32", 2)) != fingerprint_id(before)


def test_fingerprint_lists_executorch_only_when_installed_and_only_for_its_runtime(monkeypatch) -> None:
    real = fp_mod._package_version
    monkeypatch.setattr(fp_mod, "_package_version", lambda name: None if name == "executorch" else real(name))
    without = {rt: target_fingerprint(rt, "fp32", 1) for rt in ("torch_fp32", "onnxruntime_fp32", "auto")}
    monkeypatch.setattr(fp_mod, "_package_version", lambda name: "1.5.1" if name == "executorch" else real(name))
    assert target_fingerprint("executorch_xnnpack_fp32", "fp32", 1)["executorch"] == "1.5.1"
    # installing executorch leaves the other runtimes' fingerprints (and so their latency tables) as they were
    assert {rt: target_fingerprint(rt, "fp32", 1) for rt in without} == without
    monkeypatch.setattr(fp_mod, "_package_version", lambda name: None if name == "executorch" else real(name))
    assert "executorch" not in target_fingerprint("executorch_xnnpack_fp32", "fp32", 1)


def test_malloc_env() -> None:
    env = malloc_env()
    assert set(env) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    assert all(int(v) >= 32 << 20 for v in env.values())
    assert malloc_env_set(env) and not malloc_env_set({})


def test_warns_once_when_no_allocator_fix_is_possible(monkeypatch) -> None:
    monkeypatch.setattr(allocator, "malloc_env_set", lambda environ=None: False)
    monkeypatch.setattr(allocator, "apply_malloc_fix", lambda: False)
    allocator.prepare_allocator.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                profile_module(_net(), "torch_fp32", HW, threads=1, warmup=0, runs=1)
        relevant = [w for w in caught if "MALLOC_MMAP_THRESHOLD_" in str(w.message)]
        assert len(relevant) == 1 and issubclass(relevant[0].category, RuntimeWarning)
    finally:
        allocator.prepare_allocator.cache_clear()


@pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc only")
def test_mallopt_stops_per_call_page_faults() -> None:
    """Allocate, touch and free 64 MB a few times, as a torch forward does; count minor faults per
    round before and after :func:`apply_malloc_fix`, in a fresh process without MALLOC_* variables."""
    script = textwrap.dedent(
        """
        import ctypes, resource
        from srnas.runtimes import allocator

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        size = 64 << 20

        def faults_per_round():
            faults = []
            for _ in range(4):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                p = libc.malloc(size)
                ctypes.memset(p, 1, size)
                libc.free(p)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            return sum(faults[1:]) // 3  # the first round may grow the heap once

        plain = faults_per_round()
        assert allocator.apply_malloc_fix()
        print(plain, faults_per_round())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    plain, fixed = map(int, out.stdout.split())
    assert plain > 10_000  # 64 MB / 4 KiB pages = 16384 faults every round
    assert fixed < 100


def test_an_unknown_runtime_name_is_refused_not_run_on_another() -> None:
    from srnas.runtimes.calls import runtime_call

    with pytest.raises(ValueError, match="unknown runtime 'executorch_xnnpack'; choose from .*executorch_xnnpack_fp32"):
        runtime_call(_net(), "executorch_xnnpack", torch.rand(1, 3, *HW), 1)  # the name before issue 18
