"""ExecuTorch with the XNNPACK delegate: ``.pte`` export of a baseline and of a searched (pruned) network, checked
for parity like ONNX; which operators fall out of the delegate; the ``executorch_xnnpack_fp32`` runtime timing a
``.pte``; ``srnas export`` and ``srnas upscale`` with one.

executorch is the ``mobile`` extra, which ``make setup`` installs. Where it is missing these tests skip, and under
``SRNAS_REQUIRE_SERVICES=1`` (CI) they fail instead. The operator counts below are executorch 1.5.1's (pinned in
constraints.txt): a new version that delegates more, or less, fails here and the docs (docs/pipeline.md,
"ExecuTorch") need the new figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import params_overlay, write_prepared_set
from PIL import Image
from services import service_missing

from srnas.arch.network import build_network
from srnas.arch.pruned import PrunedSubnet
from srnas.arch.space import SubnetConfig
from srnas.checkpoint import save_trained
from srnas.cli import main
from srnas.data.prepare import MANIFEST_NAME, MANIFEST_VERSION
from srnas.export import ExportError, check_pte_parity, export_pte
from srnas.export import lower_pte as export_lower_pte
from srnas.inference import torch_upscaler
from srnas.models import create_model, deployed_form
from srnas.runtimes.executorch import executorch_available, executorch_threads

SCALE = 2
MAX_HW = (64, 64)  # small programs: the bound only sizes the memory plan
# What XNNPACK leaves out of a network ending in `upsample(body(x) + repeat_interleave(x, s*s, dim=1))` exported
# with dynamic height and width: the residual's repeat (unsqueeze + expand + view) and PixelShuffle's two views.
OUTSIDE = {"aten.expand_copy.default": 1, "aten.unsqueeze_copy.default": 1, "aten.view_copy.default": 3}


@pytest.fixture(scope="module", autouse=True)
def _executorch() -> None:
    if not executorch_available():
        service_missing("executorch (the mobile extra: pip install -c constraints.txt '.[mobile]')", "make setup")


def _pairs(n: int = 2, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lr = rng.integers(0, 256, (20 + 3 * i, 26 + 5 * i, 3), dtype=np.uint8)
        out.append((lr, np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1)))
    return out


@pytest.fixture(scope="module")
def exported(_executorch: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``srnas export`` of a plain16 x2 checkpoint with ``export.executorch: true``: its output folder."""
    root = tmp_path_factory.mktemp("et-export")
    torch.manual_seed(0)
    save_trained(root / "plain16_x2.pt", create_model("plain16", SCALE), "plain16", SCALE, {})
    write_prepared_set(root / "data", "val", 2, np.random.default_rng(0), size=40, scale=SCALE)
    files = {str(p.relative_to(root / "data")): {} for p in (root / "data").rglob("*.png")}  # what read_pairs reads
    (root / "data" / MANIFEST_NAME).write_text(json.dumps({"version": MANIFEST_VERSION, "sets": ["val"], "scales": [SCALE],
                                                           "counts": {"val": {str(SCALE): 2}}, "files": files}))
    params = params_overlay(root, {"tracking": {"enabled": False}, "export": {"executorch": True}})
    assert main(["export", *params, "--model", "plain16", "--scale", str(SCALE), "--checkpoint", str(root / "plain16_x2.pt"),
                 "--data-dir", str(root / "data"), "--out", str(root / "out")]) == 0
    return root / "out"


def test_srnas_export_writes_a_checked_pte_and_what_the_delegate_left_out(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == ["model.onnx", "model.pte", "parity.json"]
    parity = json.loads((exported / "parity.json").read_text())
    for runtime in ("onnxruntime", "executorch"):  # the same check, the same limits
        report = parity[runtime]
        assert report["passed"] and report["images"] == 2 and report["atol"] == 1e-4 and report["psnr_tol"] == 0.01
        assert report["max_abs_diff_random"] <= 1e-4 and report["max_abs_diff_images"] <= 1e-4
        assert report["psnr_diff"] <= 0.01 and report["psnr_torch"] > 0
    delegation = parity["executorch_delegation"]
    assert delegation["non_delegated"] == OUTSIDE and delegation["non_delegated_ops"] == 5
    assert delegation["subgraphs"] == 4, "the views outside split the network into four delegate calls"
    assert delegation["delegated"]["aten.convolution.default"] == 6  # plain16: head, 4 body convs, tail
    assert delegation["delegated"]["aten.add.Tensor"] == 1 and delegation["delegated"]["aten.permute_copy.default"] == 1
    assert delegation["shape"] == {"mul": 2, "sym_size.int": 2}


def test_a_searched_pruned_network_passes_parity_and_its_residuals_are_delegated(tmp_path: Path) -> None:
    cfg = SubnetConfig.from_name("w16-c.w2.s.c")
    model = build_network(PrunedSubnet(cfg, (12, 10, 20, 7, 10, 13)), SCALE, seed=1)
    pte = export_pte(model, tmp_path / "subnet.pte", sample_hw=(24, 32), max_hw=MAX_HW)
    report = check_pte_parity(model, pte.path, _pairs(), SCALE)
    assert report.passed and report.runtime == "executorch" and report.images == 2
    assert report.max_abs_diff_random <= 1e-4 and report.psnr_diff <= 0.01
    assert dict(pte.delegation.portable) == OUTSIDE and pte.delegation.subgraphs == 4
    assert pte.delegation.delegated["aten.add.Tensor"] == 2, "the WDSR cell's and the global residual's additions"
    assert pte.delegation.delegated["aten.convolution.default"] == 7
    assert not pte.delegation.fully_delegated


def test_a_network_without_reshapes_is_one_delegate_call_and_bicubic_has_no_pte(tmp_path: Path) -> None:
    fsrcnn = deployed_form(create_model("fsrcnn", SCALE)).eval()
    pte = export_pte(fsrcnn, tmp_path / "fsrcnn.pte", max_hw=MAX_HW)
    assert pte.delegation.fully_delegated and pte.delegation.subgraphs == 1 and not pte.delegation.shape
    assert set(pte.delegation.delegated) == {"aten.convolution.default", "aten.prelu.default"}
    with pytest.raises(ExportError, match=r"bicubic\.pte: ExecuTorch export failed: AssertionError: raised in check_valid_edge_op"):
        export_pte(create_model("bicubic", SCALE), tmp_path / "bicubic.pte", max_hw=MAX_HW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fsrcnn.pte"]


def test_the_runtime_times_a_pte_on_pinned_threads(exported: Path) -> None:
    from srnas.loading import load_trained
    from srnas.profiling import profile_module
    from srnas.runtimes.calls import runtime_call

    result = profile_module(exported / "model.pte", "executorch_xnnpack_fp32", (24, 40), threads=1, warmup=1, runs=3)
    assert executorch_threads() == 1
    assert result.runtime == "executorch_xnnpack_fp32" and result.input_shape == (1, 3, 24, 40)
    assert 0 < result.median_ms <= result.p90_ms
    assert result.fingerprint["runtime"] == "executorch_xnnpack_fp32" and result.fingerprint["threads"] == 1
    assert result.fingerprint["executorch"] == "1.5.1"
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    model = load_trained(exported.parent / "plain16_x2.pt", "plain16", SCALE)
    with torch.inference_mode():
        (out,) = runtime_call(exported / "model.pte", "executorch_xnnpack_fp32", x, 2)()
        assert executorch_threads() == 2
        assert out.shape == (1, 3, 48, 80) and float((out - model(x)).abs().max()) <= 1e-4


def test_profile_all_leaves_out_a_model_executorch_cannot_take_unless_asked_for_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every runtime available (profile.runtimes empty): a model with no .pte (bicubic: see the test above) is timed on
    the others, with a warning; asked for by name, ExecuTorch fails."""
    from srnas import profiling

    def no_pte(*args: object, **kwargs: object) -> None:
        raise ExportError("model.pte: ExecuTorch export failed: AssertionError: raised in check_valid_edge_op")

    monkeypatch.setattr(profiling, "export_pte", no_pte)
    monkeypatch.setattr(profiling, "available_runtimes", lambda: ["torch_fp32", "executorch_xnnpack_fp32"])
    bicubic = create_model("bicubic", SCALE)
    with caplog.at_level("WARNING", logger="srnas.profiling"):
        results = profiling.profile_all(bicubic, None, (12, 16), 1, warmup=0, runs=1)
    assert [r.runtime for r in results] == ["torch_fp32"]
    assert "executorch_xnnpack_fp32: left out, the model cannot be exported for it: model.pte: ExecuTorch" in caplog.text
    with pytest.raises(ExportError, match="check_valid_edge_op"):
        profiling.profile_all(bicubic, None, (12, 16), 1, warmup=0, runs=1, runtimes=["executorch_xnnpack_fp32"])


def test_upscale_with_a_pte(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from srnas.loading import load_trained

    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    images = {"a.png": rng.integers(0, 256, (14, 22, 3), dtype=np.uint8), "b.png": rng.integers(0, 256, (9, 31, 3), dtype=np.uint8)}
    for name, image in images.items():
        Image.fromarray(image).save(tmp_path / "in" / name)
    code = main(["upscale", str(tmp_path / "in"), "--model", str(exported / "model.pte"), "--out", str(tmp_path / "out"),
                 "--threads", "1"])
    assert code == 0 and "frames/s" in capsys.readouterr().out
    reference = torch_upscaler(load_trained(exported.parent / "plain16_x2.pt", "plain16", SCALE))
    for name, image in images.items():
        sr = np.asarray(Image.open(tmp_path / "out" / name))
        assert sr.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
        assert int(np.abs(sr.astype(int) - reference(image).astype(int)).max()) <= 1  # rounding at most
    # larger than the program was exported for (srnas export: LR up to 720x1280): refused before it runs
    Image.fromarray(np.zeros((8, 1290, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    assert main(["upscale", str(tmp_path / "wide.png"), "--model", str(exported / "model.pte"), "--out", str(tmp_path / "o2")]) == 2
    assert "model.pte: a 8x1290 image is larger than the 720x1280 the program was exported for" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "wide.png").exists()


# ------------------------------------------------------------------------------ the latency target runtime

HW = (12, 16)  # LR of the latency tests: small, the programs' memory plan is sized for at least 64x64


@pytest.fixture()
def counted_lowerings(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every layer program srnas.latency.measure lowers from now on (an empty program cache to start with)."""
    from srnas.latency import measure
    from srnas.runtimes import timing

    # what runs is under test here, not the quiet guard: a busy test machine must not turn rounds into NaN (or wait)
    monkeypatch.setattr(timing, "QUIET_LIMIT", math.inf)
    monkeypatch.setattr(measure, "_PROGRAMS", {})
    lowered: list = []

    def lower(*args: object, **kwargs: object) -> object:
        lowered.append(export_lower_pte(*args, **kwargs))
        return lowered[-1]

    monkeypatch.setattr(measure, "lower_pte", lower)
    return lowered


def test_an_xnnpack_table_lowers_each_layer_once_and_its_programs_compute_the_layers(
        tmp_path: Path, counted_lowerings: list) -> None:
    from srnas.latency import measure
    from srnas.latency.layers import LayerKey
    from srnas.latency.table import build_table
    from srnas.latency.targets import Target
    from srnas.runtimes.executorch import program_call

    target = Target("xnn", "test-cpu", "executorch_xnnpack_fp32", "fp32", 1, HW, SCALE)
    layers = [LayerKey("head", 3, 8), LayerKey("wdsr_conv", 8, 8), LayerKey("tail", 8, 12)]
    reference_ms = measure.measure_reference(target, warmup=0, runs=1, rounds=1)
    table = build_table(target, layers, granularity=8, warmup=0, runs=1, rounds=2, passes=2, reference_ms=reference_ms,
                        cache_dir=tmp_path)
    assert table.reference_ms == reference_ms > 0 and table.fingerprint["executorch"] == "1.5.1" and "torchao" in table.fingerprint
    assert set(table.entries) == set(layers) and all(math.isfinite(ms) and ms > 0 for ms in table.entries.values())
    # each layer measured in two passes, each round bracketed by the reference: one lowering each all the same
    assert len(counted_lowerings) == 4 and all(pte.delegation.subgraphs >= 1 for pte in counted_lowerings)
    # the programs compute the layer: inputs in the delegate's layout (channels-last in the body, NCHW at the tail)
    for layer in layers[1:]:
        path = measure._layer_program(layer, target, "fp32", 0.0)
        inputs = measure._program_inputs(layer, HW, seed=5)
        torch.manual_seed(0)
        module = measure._LayerProgram(measure.LayerModule(layer, SCALE).eval())
        with torch.inference_mode():
            (out,) = program_call(path, inputs, 1)()
            assert float((out - module(*inputs)).abs().max()) <= 1e-4, layer.id
    assert len(counted_lowerings) == 4


def test_xnnpack_int8_layers_and_networks_are_quantized_and_timed(counted_lowerings: list,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from srnas.latency import measure
    from srnas.latency.layers import LayerKey
    from srnas.latency.targets import Target

    target = Target("xnn8", "test-cpu", "executorch_xnnpack_fp32", "int8", 1, HW, SCALE)
    assert measure.measure_layer(target, LayerKey("conv", 8, 16), warmup=0, runs=1) > 0
    (int8_conv,) = counted_lowerings
    assert any(op.startswith("quantized_decomposed.") for op in int8_conv.delegation.delegated), "int8 ops in the delegate"
    assert "aten.convolution.default" in int8_conv.delegation.delegated and not int8_conv.delegation.portable
    exports: list[bool] = []  # per exported network: quantized (calibrated) or not

    def counted_export(*args: object, calibration: object = None, **kwargs: object) -> object:
        exports.append(calibration is not None)
        return export_pte(*args, calibration=calibration, **kwargs)

    monkeypatch.setattr(measure, "export_pte", counted_export)
    net = SubnetConfig.from_name("w8-c")
    speedups = measure.compare_networks(target, net, base_precision="fp32", precision="int8", warmup=0, runs=1, rounds=2)
    assert len(speedups) == 2 and all(math.isfinite(v) and v > 0 for v in speedups)
    assert measure.time_network(target, net, warmup=0, runs=1).wall_clock_ms > 0  # the target's int8: exported before
    assert exports == [False, True]
    with pytest.raises(ValueError, match="executorch_xnnpack_fp32 runs fp32 or int8, not bf16"):
        measure.time_network(target, net, warmup=0, runs=1, precision="bf16")
