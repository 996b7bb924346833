"""The ``srnas`` command: help on every subcommand, bad input exits 2 naming the problem, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import params_overlay
from PIL import Image

from srnas.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: srnas" in capsys.readouterr().out


def _photo(path: Path, size: tuple[int, int] = (64, 56), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _folder_params(tmp_path: Path, root: Path, **data: object) -> list[str]:
    """CLI arguments: params.yaml with an overlay selecting the folder source ``root``."""
    section = {"source": "folder", "root": str(root), "train_set": "train", "eval_sets": [], "scales": [2], "val_images": 1, "min_size": 16, **data}
    return params_overlay(tmp_path, {"tracking": {"enabled": False}, "data": section})


def _prepare(tmp_path: Path, params: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    code = main(["prepare-data", *params, "--out", str(out)])
    return code, capsys.readouterr().err, out


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    for i in range(3):
        _photo(train / f"img{i}.png", seed=i)
    return tmp_path / "data"


def test_prepare_data_succeeds_on_a_folder(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, out = _prepare(tmp_path, _folder_params(tmp_path, data_root), capsys)
    assert code == 0, err
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "train" / "x2" / "lr").iterdir()) == ["img0.png", "img1.png"]
    lr = np.asarray(Image.open(out / "val" / "x2" / "lr" / "img2.png"))
    assert lr.shape == (28, 32, 3)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", "img0.png: cannot decode image"),
        ("text", "img0.png: not a readable image"),
        ("tiny", "img0.png: image is 10x10 pixels"),
        ("empty", "no image files"),
        ("missing", "image folder not found"),
    ],
)
def test_prepare_data_bad_input(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], damage: str, expected: str) -> None:
    target = data_root / "train" / "img0.png"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    elif damage == "text":
        target.write_text("this is not a picture\n")
    elif damage == "tiny":
        _photo(target, size=(10, 10))
    elif damage == "empty":
        for path in (data_root / "train").iterdir():
            path.unlink()
    elif damage == "missing":
        (data_root / "train").rename(data_root / "elsewhere")
    code, err, out = _prepare(tmp_path, _folder_params(tmp_path, data_root), capsys)
    assert code == 2
    error_line = err.strip().splitlines()[-1]
    assert error_line.startswith("srnas: error:") and expected in error_line
    assert not out.exists(), "no partial output"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"scales": [5]}, "data.scales: scale 5 is not supported"),
        ({"source": "ftp"}, "data.source: unknown source 'ftp'"),
    ],
)
def test_prepare_data_bad_config(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], data: dict, expected: str) -> None:
    code, err, out = _prepare(tmp_path, _folder_params(tmp_path, data_root, **data), capsys)
    assert code == 2 and expected in err
    assert not out.exists()


def test_a_failing_stage_leaves_its_error_in_its_log_file(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A Snakemake or DVC user reads logs/<stage>/*.log: the error is there with its traceback, while the terminal keeps
    its one line (an expected error) or Python's traceback (a bug)."""
    import srnas.commands.prepare_data as command

    log = tmp_path / "logs" / "prepare.log"
    (data_root / "train").rename(data_root / "elsewhere")
    code = main(["prepare-data", *_folder_params(tmp_path, data_root), "--out", str(tmp_path / "out"), "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("image folder not found") == 1 and "Traceback" not in err
    text = log.read_text()
    assert "ERROR srnas: error:" in text and "image folder not found" in text and "Traceback (most recent call last)" in text

    def broken(args: object) -> int:
        raise RuntimeError("a bug in the stage")

    monkeypatch.setattr(command, "run", broken)
    with pytest.raises(RuntimeError, match="a bug in the stage"):
        main(["prepare-data", *_folder_params(tmp_path, data_root), "--out", str(tmp_path / "out"), "--log", str(log)])
    text = log.read_text()
    assert "CRITICAL srnas prepare-data failed" in text and "RuntimeError: a bug in the stage" in text
    assert "in broken" in text and "CRITICAL" not in capsys.readouterr().err


def test_skip_bad_images_warns_and_continues(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data_root / "train" / "img0.png").write_text("not a picture")
    params = _folder_params(tmp_path, data_root, skip_bad_images=True)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="img0.png"):
        code = main(["prepare-data", *params, "--out", str(out)])
    assert code == 0
    assert [p.name for p in (out / "train" / "x2" / "hr").iterdir()] == ["img1.png"]


def test_evaluate_bicubic_json_on_set5(shared_data: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "srnas.cli", "evaluate", "--model", "bicubic", "--hr-dir", str(shared_data / "Set5"), "--scale", "2", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(proc.stdout)
    assert result["images"] == 5
    assert result["psnr"] == pytest.approx(33.66, abs=0.02)
    assert result["ssim"] == pytest.approx(0.9299, abs=0.002)


def test_snakemake_lint_is_clean() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr
