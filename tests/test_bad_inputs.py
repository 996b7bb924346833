"""Bad input, one row each: the CLI answers with one line naming the problem, a non-zero exit status, and leaves every
file as it was (nothing written, nothing changed, by hash). Then the cases that end well despite bad input: skipped
images, stale temporaries of a killed run, 16-bit RGB. docs/failures.md lists the guarantee each test holds."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import params_overlay
from PIL import Image

from srnas.checkpoint import MODEL_FORMAT, save_trained
from srnas.cli import main
from srnas.images import read_rgb
from srnas.models import create_model

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> Path:
    """A PNG written byte by byte (Pillow writes neither 16-bit RGB nor a header without its pixels)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    data = b"" if rows is None else _png_chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b""))
    return path


def bomb(path: Path) -> Path:
    """A PNG whose header says 30000 x 30000 pixels (2.7 GB decoded): a decompression bomb."""
    return _raw_png(path, 30000, 30000, 8, 2, None)


def png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit RGB (3 channels) or RGBA (4) PNG of ``values`` (H x W x C uint16)."""
    height, width, channels = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    return _raw_png(path, width, height, 16, {3: 2, 4: 6}[channels], rows)


def photo(path: Path, size: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def onnx_model(path: Path, *, input_name: str = "lr", factor: int = 2) -> Path:
    """A hand-written ONNX model: nearest-neighbour resize by ``factor`` (1: the identity) of input ``input_name``."""
    import onnx
    from onnx import TensorProto, helper

    lr = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["n", 3, "h", "w"])
    sr = helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["n", 3, "H", "W"])
    if factor == 1:
        nodes, weights = [helper.make_node("Identity", [input_name], ["sr"])], []
    else:
        weights = [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, float(factor), float(factor)])]
        nodes = [helper.make_node("Resize", [input_name, "", "scales"], ["sr"], mode="nearest")]
    model = helper.make_model(helper.make_graph(nodes, "sr", [lr], [sr], initializer=weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class CarriesCode:
    """Pickles as a call (``print``): what a checkpoint carrying code looks like to ``torch.load``."""

    def __reduce__(self) -> tuple:
        return (print, ("this checkpoint ran code",))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared inputs: a plain16 x2 ``model.pt``, ONNX models (x2, another input name, identity), a code-carrying
    checkpoint, a params overlay without tracking."""
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    save_trained(root / "plain16_x2.pt", create_model("plain16", 2), "plain16", 2, {})
    onnx_model(root / "x2.onnx")
    onnx_model(root / "renamed.onnx", input_name="input")
    onnx_model(root / "identity.onnx", factor=1)
    torch.save({"format": MODEL_FORMAT, "scale": 2, "state_dict": {}, "model_name": "plain16", "extra": CarriesCode()},
               root / "code.pt")
    params_overlay(root, {"tracking": {"enabled": False}})
    return root


def _params(assets: Path) -> list[str]:
    return ["--params", str(ROOT / "params.yaml"), "--overlay", str(assets / "overlay.yaml")]


# ----------------------------------------------------------------------------------------------- the table


def images(case: Path) -> None:
    photo(case / "in" / "a.png", seed=1)
    photo(case / "in" / "b.png", seed=2)


def same_stem_other_suffix(case: Path) -> None:
    images(case)
    photo(case / "in" / "a.jpg", seed=3)


def same_name_two_folders(case: Path) -> None:
    photo(case / "x" / "a.png", seed=1)
    photo(case / "y" / "a.png", seed=2)


def earlier_output(case: Path) -> None:
    images(case)
    (case / "out").mkdir()
    (case / "out" / "b.png").write_bytes(b"the user's own file")


def with_bomb(case: Path) -> None:
    images(case)
    bomb(case / "in" / "bomb.png")


def x2_result_named_x3(case: Path) -> None:
    images(case)
    (case / "results" / "export" / "m_x3").mkdir(parents=True)
    onnx_model(case / "results" / "export" / "m_x3" / "model.onnx")


def disk_full(monkeypatch: pytest.MonkeyPatch, case: Path) -> None:
    """Every image write fails half-way with ENOSPC, as on a full disk."""

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG half of it")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)


def read_only_out(monkeypatch: pytest.MonkeyPatch, case: Path) -> None:
    """``out`` is read-only (mode 0555); where permission bits do not bind (root), creating a file in it is refused
    the way the kernel refuses it."""
    out = case / "out"
    out.mkdir()
    out.chmod(0o555)
    probe = out / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return
    probe.unlink()
    real = tempfile.mkstemp

    def refused(*args: object, dir: str | os.PathLike[str] | None = None, **kwargs: object) -> tuple[int, str]:
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(tempfile, "mkstemp", refused)


Argv = Callable[[Path, Path], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Argv  # (case folder, assets) -> the srnas arguments
    message: str  # a fragment of the one error line ({case}: the case folder)
    setup: Callable[[Path], None] = images
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    code: int = 2


def upscale(*inputs: str, model: str = "x2.onnx", out: str = "out", extra: tuple[str, ...] = ()) -> Argv:
    return lambda case, assets: ["upscale", *(str(case / i) for i in inputs), "--model", str(assets / model),
                                 "--out", str(case / out), *extra]


def evaluate(model: str, scale: int, checkpoint: str, *extra: str) -> Argv:
    return lambda case, assets: ["evaluate", "--model", model, "--scale", str(scale), "--checkpoint",
                                 str(assets / checkpoint), "--hr-dir", str(case / "in"), *extra]


CASES = [
    # 1. upscale never destroys user files
    Case("upscale-out-is-the-input-folder", upscale("in", out="in"), "{case}/in: output folder is the input folder {case}/in"),
    Case("upscale-output-is-an-input-file", upscale("in/a.png", out="in"), "{case}/in/a.png: output would replace the input"),
    Case("upscale-out-is-an-input-file", upscale("in/a.png", out="in/a.png"), "{case}/in/a.png: output folder is an existing file"),
    Case("upscale-same-stem-two-suffixes", upscale("in"), "{case}/in/a.jpg and {case}/in/a.png would both be written to {case}/out/a.png",
         same_stem_other_suffix),
    Case("upscale-same-name-two-folders", upscale("x", "y"), "{case}/x/a.png and {case}/y/a.png would both be written to {case}/out/a.png",
         same_name_two_folders),
    Case("upscale-output-exists", upscale("in"), "{case}/out/b.png: already exists (the output for {case}/in/b.png); pass --overwrite",
         earlier_output),
    # 2. one line, not a traceback
    Case("upscale-bomb-fail-fast", upscale("in/bomb.png", extra=("--fail-fast",)), "{case}/in/bomb.png: refused, too many pixels",
         with_bomb),
    Case("evaluate-bomb", evaluate("plain16", 2, "plain16_x2.pt"), "{case}/in/bomb.png: refused, too many pixels", with_bomb),
    Case("upscale-disk-full", upscale("in"), "{case}/out/a.png: cannot write: no space left on the device", patch=disk_full),
    Case("upscale-read-only-out", upscale("in"), "{case}/out/a.png: cannot write: permission denied", patch=read_only_out),
    Case("evaluate-other-scale", evaluate("plain16", 3, "plain16_x2.pt"), "plain16_x2.pt: holds a x2 model, but x3 was asked for"),
    Case("evaluate-other-model", evaluate("espcn", 2, "plain16_x2.pt"), "plain16_x2.pt: holds model 'plain16', not 'espcn'"),
    Case("export-other-model",
         lambda case, assets: ["export", *_params(assets), "--model", "espcn", "--scale", "2", "--checkpoint",
                               str(assets / "plain16_x2.pt"), "--out", str(case / "out")],
         "plain16_x2.pt: holds model 'plain16', not 'espcn'"),
    Case("profile-other-model",
         lambda case, assets: ["profile", *_params(assets), "--model", "espcn", "--scale", "2", "--checkpoint",
                               str(assets / "plain16_x2.pt"), "--out", str(case / "out.json")],
         "plain16_x2.pt: holds model 'plain16', not 'espcn'"),
    Case("upscale-onnx-other-input-name", upscale("in", model="renamed.onnx"),
         "renamed.onnx: expected one input 'lr' and one output 'sr'"),
    Case("evaluate-onnx-file", evaluate("plain16", 2, "x2.onnx"), "x2.onnx: an ONNX model, not a PyTorch checkpoint"),
    Case("upscale-identity-onnx", upscale("in", model="identity.onnx"),
         "identity.onnx: not an x2/x3/x4 super-resolution model: a 1x3x16x24 input gives a 1x3x16x24 output"),
    Case("upscale-result-of-another-scale",
         lambda case, assets: ["upscale", str(case / "in"), "--model", "m_x3", "--results", str(case / "results"),
                               "--out", str(case / "out")],
         "model.onnx: not an x3 super-resolution model: a 1x3x16x24 input gives a 1x3x32x48 output", x2_result_named_x3),
    # 3. half-truths
    Case("evaluate-code-carrying-checkpoint", evaluate("plain16", 2, "code.pt"),
         "code.pt: refused: it carries Python code or objects (print)"),
]


def _files(*roots: Path) -> dict[Path, str]:
    """Every file under ``roots`` (temporaries included) and its SHA-256."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_every_file_as_it_was(
    case: Case, assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case.setup(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch, tmp_path)
    before = _files(tmp_path, assets)
    try:
        code = main(case.argv(tmp_path, assets))
    finally:
        if (tmp_path / "out").is_dir():
            (tmp_path / "out").chmod(0o755)
    err = capsys.readouterr().err
    assert code == case.code, err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith("srnas: error: ") and case.message.format(case=tmp_path) in last, err
    assert "Traceback" not in err
    assert _files(tmp_path, assets) == before, "a file was written, changed or removed"


def test_the_code_refusal_does_not_advise_loading_it_anyway(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images(tmp_path)
    assert main(evaluate("plain16", 2, "code.pt")(tmp_path, assets)) == 2
    out = capsys.readouterr()
    for advice in ("can still be loaded", "weights_only", "likely succeed", "trust"):
        assert advice not in out.err, f"repeats PyTorch's advice ({advice!r}): {out.err}"
    assert "this checkpoint ran code" not in out.out + out.err, "its code never ran"


# ----------------------------------------------------------------------------------------------- ends well


def test_upscale_skips_a_bomb_and_finishes_the_batch(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_bomb(tmp_path)
    assert main(upscale("in")(tmp_path, assets)) == 1, "a skipped file makes the exit status 1"
    out = capsys.readouterr()
    assert "bomb.png: refused, too many pixels" in out.err and "1 file(s) failed" in out.out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    assert np.asarray(Image.open(tmp_path / "out" / "a.png")).shape == (96, 96, 3)


def test_evaluate_skip_bad_images_skips_a_bomb(assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_bomb(tmp_path)
    code = main(evaluate("plain16", 2, "plain16_x2.pt", "--skip-bad-images")(tmp_path, assets))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "bomb.png: refused, too many pixels" in out.err and "(2 images)" in out.out


def test_upscale_overwrite_replaces_earlier_outputs_only(assets: Path, tmp_path: Path) -> None:
    earlier_output(tmp_path)
    assert main(upscale("in", extra=("--overwrite",))(tmp_path, assets)) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "b.png")).shape == (96, 96, 3)
    assert main(upscale("in/a.png", out="in", extra=("--overwrite",))(tmp_path, assets)) == 2, "never an input"


def _killed_inside_atomic_dir(target: Path) -> None:
    """A process that starts writing ``target`` with atomic_dir and is killed (SIGKILL) half-way."""
    script = ("import os, signal, sys\nfrom srnas.atomic import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'half.png').write_bytes(b'x')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, str(target)], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr.decode()


def test_a_rerun_removes_what_a_killed_prepare_data_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        photo(tmp_path / "data" / "train" / f"img{i}.png", size=40, seed=i)
    out = tmp_path / "prepared"
    _killed_inside_atomic_dir(out)
    litter = [p for p in tmp_path.iterdir() if p.name.startswith(".prepared.")]
    assert len(litter) == 1 and (litter[0] / "half.png").is_file(), "the killed run left its temporary folder"
    section = {"source": "folder", "root": str(tmp_path / "data"), "train_set": "train", "eval_sets": [], "scales": [2],
               "val_images": 1, "min_size": 16}
    code = main(["prepare-data", *params_overlay(tmp_path, {"tracking": {"enabled": False}, "data": section}), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "stale temporaries removed"


def test_temporaries_of_a_live_writer_are_kept(tmp_path: Path) -> None:
    from srnas.atomic import remove_stale_temporaries

    target = tmp_path / "prepared"
    script = ("import sys, time\nfrom srnas.atomic import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                             stdout=subprocess.PIPE, text=True)
    try:
        live = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
        assert live.is_dir()
        assert remove_stale_temporaries(target) == [] and live.is_dir(), "a live writer's folder is not stale"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    assert remove_stale_temporaries(target) == [live] and not live.exists()


def test_16_bit_rgb_and_rgba_keep_their_low_byte(tmp_path: Path) -> None:
    # high bytes alone would give 0, 127, 128, 1, 18, 255; round(v / 257) gives 1, 128, 128, 2, 18, 255
    values = np.array([[[0x00FF, 0x80FF, 0x8080], [0x01FF, 0x1280, 0xFFFF]]], dtype=np.uint16)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert expected.tolist() == [[[1, 128, 128], [2, 18, 255]]]
    assert np.array_equal(read_rgb(png16(tmp_path / "rgb.png", values)), expected)
    rgba = np.concatenate([values, np.full((1, 2, 1), 0x1234, dtype=np.uint16)], axis=2)
    assert np.array_equal(read_rgb(png16(tmp_path / "rgba.png", rgba)), expected)
    noise = np.random.default_rng(0).integers(0, 65536, (17, 23, 3), dtype=np.uint16)
    assert np.array_equal(read_rgb(png16(tmp_path / "noise.png", noise)), np.rint(noise / 257.0).astype(np.uint8))


def test_a_checkpoint_answers_to_its_own_name_and_scale_only(tmp_path: Path) -> None:
    from srnas.arch.network import build_network, save_network
    from srnas.arch.space import CellConfig, SubnetConfig
    from srnas.checkpoint import CheckpointError
    from srnas.loading import load_trained

    save_trained(tmp_path / "member.pt", create_model("plain_m1c8", 2), "plain_m1c8", 2, {})
    assert load_trained(tmp_path / "member.pt", "plain_m1c8", 2) is not None
    assert load_trained(tmp_path / "member.pt", "plain_fit", 2) is not None, "plain_fit stands for a plain family member"
    for name, scale, message in (("ecbsr_fit", 2, "holds model 'plain_m1c8', not 'ecbsr_fit'"),
                                 ("plain_m1c16", 2, "holds model 'plain_m1c8', not 'plain_m1c16'"),
                                 ("plain_m1c8", 4, "holds a x2 model, but x4 was asked for")):
        with pytest.raises(CheckpointError, match=message):
            load_trained(tmp_path / "member.pt", name, scale)
    save_network(tmp_path / "searched.pt", build_network(SubnetConfig(8, (CellConfig("conv"),)), 2))
    assert load_trained(tmp_path / "searched.pt", "final", 2) is not None
    with pytest.raises(CheckpointError, match=r"searched\.pt: holds a searched network \(srnas-subnet/1\), not the registered model 'plain16'"):
        load_trained(tmp_path / "searched.pt", "plain16", 2)
