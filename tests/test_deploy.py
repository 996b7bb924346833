"""The deployable forms (``srnas export --deploy``): ONNX and ``.pte`` in fp32 and int8, the int8 ones really quantized
and calibrated deterministically on training patches; parity recorded for each; scored (``srnas evaluate
--artifact``), timed (``srnas profile --artifact``) and reported per runtime x precision; ``srnas upscale`` runs the
int8 ``.pte``. One tiny network (plain_m1c8), tiny images: every test here is a few seconds.

executorch is in the main install (``make setup``); where it is missing these tests skip, under
``SRNAS_REQUIRE_SERVICES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import params_overlay, write_prepared_set
from PIL import Image
from services import service_missing

from srnas.checkpoint import save_trained
from srnas.cli import main
from srnas.data.prepare import MANIFEST_NAME, MANIFEST_VERSION, calibration_patches
from srnas.deploy import calibration_digest
from srnas.export import DEPLOYED_FORMS, ExportError, artifact_form
from srnas.images import read_rgb
from srnas.inference import torch_upscaler
from srnas.loading import load_trained
from srnas.models import create_model
from srnas.report import deployment_table
from srnas.runtimes.executorch import executorch_available

ROOT = Path(__file__).resolve().parents[1]
SCALE = 2
MODEL = "plain_m1c8"
LABELS = ["onnxruntime_fp32", "onnxruntime_int8", "executorch_xnnpack_fp32", "executorch_xnnpack_int8"]
FILES = {"onnxruntime_fp32": "model.onnx", "onnxruntime_int8": "model.int8.onnx", "executorch_xnnpack_fp32": "model.pte",
         "executorch_xnnpack_int8": "model.int8.pte"}
CALIBRATION = {"calibration_patches": 4, "calibration_size": 16, "calibration_seed": 0}


@pytest.fixture(scope="module", autouse=True)
def _executorch() -> None:
    if not executorch_available():
        service_missing("executorch (make setup installs it)", "make setup")


def _prepare(root: Path) -> Path:
    """Prepared data: a training set of three images, a validation set of two (HR 48x48 / 40x40)."""
    data = root / "data"
    write_prepared_set(data, "train", 3, np.random.default_rng(1), size=48, scale=SCALE)
    write_prepared_set(data, "val", 2, np.random.default_rng(0), size=40, scale=SCALE)
    files = {str(p.relative_to(data)): {} for p in data.rglob("*.png")}  # what image_pairs lists
    (data / MANIFEST_NAME).write_text(json.dumps({"version": MANIFEST_VERSION, "sets": ["train", "val"], "scales": [SCALE],
                                                  "counts": {"train": {str(SCALE): 3}, "val": {str(SCALE): 2}},
                                                  "files": files}))
    return data


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``srnas export --deploy`` of a plain_m1c8 x2 checkpoint: its output folder (beside it the checkpoint, data and
    the params overlay in ``params.json``)."""
    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    save_trained(root / "model.pt", create_model(MODEL, SCALE), MODEL, SCALE, {})
    data = _prepare(root)
    params = params_overlay(root, {"tracking": {"enabled": False}, "export": CALIBRATION,
                                   "profile": {"warmup": 0, "runs": 1, "input_size": [16, 24], "threads": 1,
                                               "runtimes": ["onnxruntime_fp32", "executorch_xnnpack_fp32"]}})
    (root / "params.json").write_text(json.dumps(params))
    assert main(["export", *params, "--model", MODEL, "--scale", str(SCALE), "--checkpoint", str(root / "model.pt"),
                 "--data-dir", str(data), "--out", str(root / "out"), "--deploy"]) == 0
    return root / "out"


def test_export_deploy_writes_four_checked_forms_whose_int8_ones_are_quantized(deployed: Path) -> None:
    assert sorted(p.name for p in deployed.iterdir()) == sorted([*FILES.values(), "parity.json"])
    parity = json.loads((deployed / "parity.json").read_text())
    assert sorted(parity["deployed"]) == sorted(LABELS)  # JSON keys sorted
    for label, entry in parity["deployed"].items():
        assert entry["file"] == FILES[label] and entry["label"] == label and artifact_form(deployed / entry["file"]).label == label
        report = entry["parity"]
        assert report["passed"] and report["images"] == 2 and report["precision"] == entry["precision"], label
        if entry["precision"] == "fp32":  # held to the export tolerance
            assert report["bounded"] and report["max_abs_diff_random"] <= 1e-4 and report["psnr_diff"] <= 0.01, label
        else:  # recorded, not bounded: what int8 loses against the fp32 model on the validation images
            assert not report["bounded"] and 0 < report["max_abs_diff_random"] < 0.5, label
            assert math.isfinite(report["psnr_loss"]) and report["psnr_loss"] == pytest.approx(
                report["psnr_torch"] - report["psnr_runtime"]), label
    assert parity["onnxruntime"] == parity["deployed"]["onnxruntime_fp32"]["parity"]  # the fp32-only export's keys
    # int8 ONNX: static QDQ around the convs, int8 weights, the calibration's digest and the fp32 file's metadata kept
    graph = onnx.load(str(deployed / "model.int8.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(init.data_type == onnx.TensorProto.INT8 and len(init.dims) == 4 for init in graph.graph.initializer)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["srnas.precision"] == "int8" and meta["srnas.scale"] == "2"
    assert meta["srnas.calibration_sha256"] == parity["calibration"]["sha256"]
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(str(deployed / "model.onnx")).graph.node)
    # int8 .pte: the quantized ops run inside the XNNPACK delegate; the fp32 one has none
    delegated = parity["deployed"]["executorch_xnnpack_int8"]["delegation"]["delegated"]
    assert any(op.startswith("quantized_decomposed.") for op in delegated) and "aten.convolution.default" in delegated
    assert not any(op.startswith("quantized_decomposed.")
                   for op in parity["deployed"]["executorch_xnnpack_fp32"]["delegation"]["delegated"])


def test_calibration_patches_are_seeded_crops_of_the_training_images(deployed: Path) -> None:
    data = deployed.parent / "data"
    patches = calibration_patches(data, SCALE, count=5, size=16, seed=0)
    again = calibration_patches(data, SCALE, count=5, size=16, seed=0)
    assert len(patches) == 5 and all(p.shape == (16, 16, 3) and p.dtype == np.uint8 for p in patches)
    assert all(np.array_equal(a, b) for a, b in zip(patches, again))
    assert calibration_digest(patches) != calibration_digest(calibration_patches(data, SCALE, count=5, size=16, seed=1))
    train = [read_rgb(p) for p in sorted((data / "train" / "x2" / "lr").glob("*.png"))]

    def cut_from_training_image(patch: np.ndarray) -> bool:
        return any(np.array_equal(img[y:y + 16, x:x + 16], patch)
                   for img in train for y in range(img.shape[0] - 15) for x in range(img.shape[1] - 15))

    assert all(cut_from_training_image(p) for p in patches)
    used = calibration_patches(data, SCALE, count=CALIBRATION["calibration_patches"], size=16, seed=0)
    assert json.loads((deployed / "parity.json").read_text())["calibration"] == {
        "set": "train", "patches": 4, "size": 16, "seed": 0, "sha256": calibration_digest(used)}
    with pytest.raises(Exception, match=r"no LR image is at least 64x64"):
        calibration_patches(data, SCALE, count=2, size=64, seed=0)


def test_scored_and_timed_through_each_file_and_reported_per_runtime_and_precision(deployed: Path, tmp_path: Path) -> None:
    root = deployed.parent
    params = json.loads((root / "params.json").read_text())
    results = tmp_path / "results"
    folder = results / "deploy" / f"{MODEL}_x{SCALE}"
    folder.mkdir(parents=True)
    (folder / "parity.json").write_bytes((deployed / "parity.json").read_bytes())
    artifacts = [arg for name in FILES.values() for arg in ("--artifact", str(deployed / name))]
    common = [*params, "--model", MODEL, "--scale", str(SCALE), "--checkpoint", str(root / "model.pt")]
    assert main(["evaluate", *common, "--data-dir", str(root / "data"), *artifacts, "--out", str(folder / "evaluate.json")]) == 0
    scores = json.loads((folder / "evaluate.json").read_text())
    assert sorted(scores["deployed"]) == sorted(LABELS)
    torch_val = scores["sets"]["val"]
    for label, entry in scores["deployed"].items():
        assert entry["precision"] == artifact_form(entry["file"]).precision and entry["sets"]["val"]["images"] == 2
        if entry["precision"] == "fp32":  # the same network through the file: the same figures as in PyTorch
            assert entry["sets"]["val"]["psnr"] == pytest.approx(torch_val["psnr"], abs=0.01), label
            assert entry["sets"]["val"]["ssim"] == pytest.approx(torch_val["ssim"], abs=1e-4), label
        else:
            assert 10.0 < entry["sets"]["val"]["psnr"] < torch_val["psnr"] + 1.0, label
    assert main(["profile", *common, *artifacts, "--out", str(folder / "profile.json")]) == 0
    timed = json.loads((folder / "profile.json").read_text())["results"]
    assert [r["label"] for r in timed] == LABELS and all(r["median_ms"] > 0 for r in timed)
    assert [r["fingerprint"]["precision"] for r in timed] == ["fp32", "int8", "fp32", "int8"]
    lines = deployment_table(results, f"{MODEL}_x{SCALE}")
    rows = [line for line in lines if line.startswith("| ") and "PSNR" not in line]
    assert len(rows) == 5 and rows[0].startswith("| PyTorch (eager) | fp32 |")
    assert rows[2].startswith("| ONNX Runtime (`model.int8.onnx`) | int8 |") and "vs fp32 on 2 val image(s)" in rows[2]
    assert "max abs diff" in rows[1] and "ok" in rows[1]
    cost = next(line for line in lines if line.startswith("int8 against fp32"))
    assert re.search(r"ONNX Runtime: val [+-]\d+\.\d\d dB, \d+\.\d\dx the fp32 speed; ExecuTorch/XNNPACK: val", cost)


def test_upscale_runs_the_int8_pte(deployed: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (14, 22, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    assert main(["upscale", str(tmp_path / "in"), "--model", str(deployed / "model.int8.pte"), "--out",
                 str(tmp_path / "out"), "--threads", "1"]) == 0
    sr = np.asarray(Image.open(tmp_path / "out" / "a.png")).astype(int)
    reference = torch_upscaler(load_trained(deployed.parent / "model.pt", MODEL, SCALE))(image).astype(int)
    assert sr.shape == reference.shape == (28, 44, 3)
    assert np.abs(sr - reference).mean() < 4.0, "int8 within a few levels of fp32"
    with pytest.raises(ExportError, match=r"model\.int8\.txt: not an exported model"):
        artifact_form("model.int8.txt")


def test_the_workflow_names_the_same_deployed_files_as_the_code() -> None:
    declared = dict(re.findall(r'"(\w+)": "(model[.\w]+)"', re.search(r"^DEPLOYED_FILES = \{(.*)\}$",
                    (ROOT / "workflow" / "rules" / "common.smk").read_text(), re.MULTILINE).group(1)))
    assert list(declared.values()) == [form.filename for form in DEPLOYED_FORMS]
