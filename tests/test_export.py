"""ONNX export and parity: tiny self-built models, so nothing here depends on the model registry."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import killed_writer_prefix
from torch import nn

from srnas import export as export_mod
from srnas.errors import SrnasError
from srnas.export import ExportError, ParityError, check_parity, export_onnx, export_pte, onnx_exporter
from srnas.runtimes.executorch import ExecuTorchUnavailableError, executorch_available
from srnas.runtimes.ort import SESSION_CONFIG, ort_session

SCALE = 2


class ShuffleNet(nn.Module):
    """conv + ReLU + conv to 3*s^2 + PixelShuffle."""

    def __init__(self, scale: int = SCALE, width: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.tail(torch.relu(self.head(x))))


class DeconvNet(nn.Module):
    """FSRCNN-like: conv + PReLU + strided ConvTranspose2d."""

    def __init__(self, scale: int = SCALE, width: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 5, padding=2)
        self.act = nn.PReLU(width)
        self.up = nn.ConvTranspose2d(width, 3, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.head(x)))


def _seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def _pairs(n: int = 2, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        h, w = 20 + 3 * i, 26 + 5 * i
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hr = np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1)
        pairs.append((lr, hr))
    return pairs


@pytest.fixture(scope="module")
def shuffle_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, object]:
    model = _seeded(ShuffleNet)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "shuffle.onnx")
    return model, path


def test_pixelshuffle_export_passes_parity(shuffle_onnx) -> None:
    model, path = shuffle_onnx
    assert onnx_exporter(path) == "dynamo"
    assert sorted(p.name for p in path.parent.iterdir()) == ["shuffle.onnx"], "one self-contained file, no temp or .data left"
    report = check_parity(model, path, [*_pairs(), _pairs(1, seed=5)[0][0]], SCALE)
    assert report.passed and report.images == 3 and report.runtime == "onnxruntime"
    assert report.max_abs_diff_random < 1e-4 and report.max_abs_diff_images < 1e-4
    assert math.isfinite(report.psnr_torch) and report.psnr_diff <= 0.01
    assert report.to_dict()["passed"] is True
    assert path.is_file()


def test_deconv_prelu_export_passes_parity(tmp_path) -> None:
    model = _seeded(DeconvNet).train()
    path = export_onnx(model, tmp_path / "deconv.onnx")
    assert model.training, "export hands the model back in the mode it came in"
    graph_ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"ConvTranspose", "PRelu"} <= graph_ops
    report = check_parity(model, path, _pairs(), SCALE)
    assert report.passed
    assert model.training


def test_height_and_width_are_dynamic(shuffle_onnx) -> None:
    model, path = shuffle_onnx
    session = ort_session(path, threads=1)
    options = session.get_session_options()  # idle workers sleep: two sessions timed in turn do not steal cores
    assert {key: options.get_session_config_entry(key) for key in SESSION_CONFIG} == {
        "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
    assert [i.name for i in session.get_inputs()] == ["lr"]
    assert [o.name for o in session.get_outputs()] == ["sr"]
    for h, w in ((17, 29), (40, 24)):
        x = torch.rand(1, 3, h, w)
        (out,) = session.run(["sr"], {"lr": x.numpy()})
        assert out.shape == (1, 3, h * SCALE, w * SCALE)
        with torch.inference_mode():
            np.testing.assert_allclose(out, model.eval()(x).numpy(), atol=1e-5)


def test_the_batch_is_dynamic_and_the_metadata_says_how_to_feed_the_model(tmp_path) -> None:
    """What a deployer reads back: scale, input range, colour order, layout, model name and srnas version in the
    metadata; a batch of 2 runs on ONNX Runtime like PyTorch."""
    import srnas

    model = _seeded(ShuffleNet)
    path = export_onnx(model, tmp_path / "m.onnx", sample_hw=(24, 20), name="shuffle_x2")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == export_mod.onnx_metadata(path)
    assert {k: meta[k] for k in ("srnas.scale", "srnas.input_range", "srnas.input_dtype", "srnas.colour_order",
                                 "srnas.layout", "srnas.model", "srnas.version")} == {
        "srnas.scale": "2", "srnas.input_range": "[0, 1]", "srnas.input_dtype": "float32", "srnas.colour_order": "RGB",
        "srnas.layout": "NCHW", "srnas.model": "shuffle_x2", "srnas.version": srnas.__version__}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 3 and dims[2].dim_param and dims[3].dim_param
    session = ort_session(path, threads=1)
    for batch, (h, w) in ((2, (17, 29)), (3, (8, 12)), (1, (9, 9))):
        x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
        (out,) = session.run(["sr"], {"lr": x.numpy()})
        with torch.inference_mode():
            ref = model.eval()(x).numpy()
        assert out.shape == ref.shape == (batch, 3, 2 * h, 2 * w)
        assert float(np.max(np.abs(out - ref))) < 1e-5
    # a model with a fixed batch of 1 is refused (what the exporter wrote before)
    del proto.metadata_props[:]
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "fixed.onnx"))
    with pytest.raises(ExportError, match="not \\(dynamic N, C, dynamic H, dynamic W\\)"):
        export_mod._finish_onnx(tmp_path / "fixed.onnx", tmp_path / "fixed.onnx", "dynamo", 17, {})


def test_the_torchscript_fallback_has_the_same_dynamic_batch_and_metadata(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_mod, "_export_dynamo", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    model = _seeded(DeconvNet)
    path = export_onnx(model, tmp_path / "ts.onnx")
    meta = export_mod.onnx_metadata(path)
    assert meta["srnas.exporter"] == "torchscript" and meta["srnas.scale"] == "2" and "srnas.model" not in meta
    x = torch.rand(2, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    (out,) = ort_session(path, threads=1).run(["sr"], {"lr": x.numpy()})
    with torch.inference_mode():
        assert float(np.max(np.abs(out - model.eval()(x).numpy()))) < 1e-4


def test_a_model_that_does_not_upscale_is_not_exported(tmp_path) -> None:
    with pytest.raises(ExportError, match="not a super-resolution model: a 16x16 input gives a 8x8 output"):
        export_onnx(nn.Conv2d(3, 3, 3, stride=2, padding=1), tmp_path / "down.onnx", sample_hw=(16, 16))
    assert not (tmp_path / "down.onnx").exists()


def test_parity_failure_raises_and_removes_the_file(tmp_path) -> None:
    path = export_onnx(_seeded(ShuffleNet, seed=0), tmp_path / "bad.onnx")
    other = _seeded(ShuffleNet, seed=1)  # same architecture, different weights
    with pytest.raises(ParityError) as info:
        check_parity(other, path, _pairs(), SCALE)
    message = str(info.value)
    assert str(path) in message and "max abs diff" in message and "removed" in message
    assert isinstance(info.value, SrnasError)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_psnr_tolerance_is_enforced_on_its_own(tmp_path) -> None:
    model = _seeded(ShuffleNet)
    path = export_onnx(model, tmp_path / "m.onnx", sample_hw=(16, 16))

    class Shifted(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 0.02  # ~5 grey levels: visible in PSNR

    with pytest.raises(ParityError, match="PSNR"):
        check_parity(Shifted(model), path, _pairs(), SCALE, atol=1.0, psnr_tol=0.01)
    assert not path.exists()


def test_nan_output_never_passes() -> None:
    assert export_mod._max_abs_diff(np.array([np.nan, 0.0]), np.zeros(2)) == math.inf
    assert export_mod._psnr_diff(math.inf, math.inf) == 0.0


def test_falls_back_to_the_torchscript_exporter(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no translation for aten::made_up")

    monkeypatch.setattr(export_mod, "_export_dynamo", broken)
    model = _seeded(DeconvNet)
    path = export_onnx(model, tmp_path / "ts.onnx")
    assert onnx_exporter(path) == "torchscript"
    assert check_parity(model, path, _pairs(1), SCALE).passed


def test_failed_export_leaves_nothing(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(export_mod, "_export_dynamo", broken)
    monkeypatch.setattr(export_mod, "_export_torchscript", broken)
    target = tmp_path / "never.onnx"
    with pytest.raises(ExportError, match="never.onnx"):
        export_onnx(_seeded(ShuffleNet), target)
    assert list(tmp_path.iterdir()) == []


def test_an_export_removes_what_a_killed_export_left(tmp_path) -> None:
    """A SIGKILLed export leaves its temporary (and the exporter's external weights) beside the target: the next export
    of that target removes them; other files, and temporaries of other targets, stay."""
    def temporary(name: str, suffix: str = "") -> Path:  # named as srnas.atomic's writers name them
        fd, path = tempfile.mkstemp(prefix=killed_writer_prefix(name), suffix=f".tmp{suffix}", dir=tmp_path)
        os.close(fd)
        return Path(path)

    killed = temporary("m.onnx", ".onnx")
    stale = [killed, Path(f"{killed}.data")]
    others = [tmp_path / "parity.json", temporary("parity.json"), temporary("m.onnx.data")]
    for path in stale + others:
        path.write_bytes(b"partial")
    path = export_onnx(_seeded(ShuffleNet), tmp_path / "m.onnx", sample_hw=(16, 16))
    assert sorted(tmp_path.iterdir()) == sorted([path, *others])

def test_bad_val_images_are_named(shuffle_onnx, tmp_path) -> None:
    model, path = shuffle_onnx
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"val_images\[0\]"):
        check_parity(model, copy, [np.zeros((8, 8, 3), dtype=np.float32)], SCALE)
    assert not copy.exists(), "an artifact that was not verified does not stay"


def test_export_pte_needs_executorch(tmp_path, monkeypatch) -> None:
    """Where executorch does not import, .pte export and its parity check say so, naming the file, and leave nothing
    (executorch itself is tested in test_executorch.py)."""
    from srnas.export import check_pte_parity
    from srnas.runtimes import executorch as et_mod

    monkeypatch.setattr(et_mod, "_executorch_import_error", lambda: "executorch is not installed (pip install ...)")
    assert not executorch_available()
    with pytest.raises(ExecuTorchUnavailableError, match=r"m\.pte: executorch is not installed"):
        export_pte(_seeded(ShuffleNet), tmp_path / "m.pte")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old.pte").write_bytes(b"not checked")
    with pytest.raises(ExecuTorchUnavailableError, match=r"old\.pte: executorch is not installed"):
        check_pte_parity(_seeded(ShuffleNet), tmp_path / "old.pte", _pairs(), SCALE)
