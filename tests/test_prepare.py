"""prepare_data: layout, manifest, determinism, atomicity, bad inputs, skip option, image modes."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import config_of, killed_writer_prefix
from PIL import Image

from srnas.config import DataConfig
from srnas.data.prepare import SkippedImageWarning, image_pairs, load_manifest, prepare_data
from srnas.errors import ConfigError, DataError, ImageError, SrnasError
from srnas.images import read_rgb
from srnas.imresize import bicubic_downscale, modcrop

SCALES = (2, 3, 4)


def _noise(width: int, height: int, seed: int, channels: int = 3, dtype=np.uint8, high: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, high, size=shape, dtype=np.int64).astype(dtype)


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _rgb(path: Path, width: int = 25, height: int = 19, seed: int = 0) -> Path:
    return _save(path, Image.fromarray(_noise(width, height, seed)))


def _png_bytes(width: int = 25, height: int = 19, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_noise(width, height, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """root/T91 with one image of each mode, root/Set5 with two RGB images; odd sizes to exercise modcrop."""
    root = tmp_path / "data"
    train = root / "T91"
    _rgb(train / "rgb.png", 25, 19, seed=1)
    _save(train / "rgba.png", Image.fromarray(_noise(23, 17, seed=2, channels=4), mode="RGBA"))
    palette = Image.fromarray(_noise(21, 20, seed=3, channels=1, high=16), mode="L").convert("P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    _save(train / "palette.png", palette)
    _save(train / "gray.png", Image.fromarray(_noise(18, 22, seed=4, channels=1), mode="L"))
    gray16 = Image.fromarray(_noise(20, 26, seed=5, channels=1, dtype=np.uint16, high=65536))
    assert gray16.mode.startswith("I;16")
    _save(train / "gray16.png", gray16)
    _rgb(root / "Set5" / "bird.png", 31, 29, seed=6)
    _rgb(root / "Set5" / "baby.bmp", 16, 16, seed=7)
    return root


def _cfg(root: Path, **overrides) -> DataConfig:
    values = {"source": "folder", "root": str(root), "eval_sets": ("Set5",), "scales": SCALES, "min_size": 4}
    values.update(overrides)
    return DataConfig(**values)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ layout/manifest


def test_layout_and_manifest(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = prepare_data(_cfg(data_root), out, show_progress=False)

    assert manifest == load_manifest(out, verify=True)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["sets"] == ["train", "Set5"]
    assert manifest["scales"] == list(SCALES)
    assert manifest["counts"] == {"train": {"x2": 5, "x3": 5, "x4": 5}, "Set5": {"x2": 2, "x3": 2, "x4": 2}}
    assert manifest["config"]["source"] == "folder" and manifest["config"]["eval_sets"] == ["Set5"]
    assert manifest["skipped"] == []
    assert [entry["name"] for entry in manifest["inputs"]["Set5"]] == ["baby", "bird"]
    assert manifest["inputs"]["Set5"][1]["sha256"] == hashlib.sha256((data_root / "Set5/bird.png").read_bytes()).hexdigest()

    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert on_disk == sorted(manifest["files"])
    assert len(on_disk) == (5 + 2) * len(SCALES) * 2
    for rel, entry in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
        with Image.open(out / rel) as img:
            assert img.mode == "RGB" and img.format == "PNG"
            assert img.size == (entry["width"], entry["height"])

    for set_name in ("train", "Set5"):
        for scale in SCALES:
            pairs = image_pairs(out, set_name, scale, manifest)
            assert len(pairs) == manifest["counts"][set_name][f"x{scale}"]
            for _name, hr_path, lr_path in pairs:
                hr = manifest["files"][str(hr_path.relative_to(out))]
                lr = manifest["files"][str(lr_path.relative_to(out))]
                assert hr["width"] % scale == 0 and hr["height"] % scale == 0
                assert (lr["width"], lr["height"]) == (hr["width"] // scale, hr["height"] // scale)

    # pixels: HR is the modcropped source, LR its MATLAB-bicubic downscale
    source = read_rgb(data_root / "Set5" / "bird.png")
    hr = read_rgb(out / "Set5/x3/hr/bird.png")
    np.testing.assert_array_equal(hr, modcrop(source, 3))
    np.testing.assert_array_equal(read_rgb(out / "Set5/x3/lr/bird.png"), bicubic_downscale(hr, 3))
    assert hr.shape == (27, 30, 3)
    assert _leftovers(tmp_path) == []


def test_image_modes_are_converted_to_8bit_rgb(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_data(_cfg(data_root, scales=(2,)), out, show_progress=False)
    gray16 = np.asarray(Image.open(data_root / "T91/gray16.png"), dtype=np.float64)
    expected = np.clip(np.rint(gray16 / 257.0), 0, 255).astype(np.uint8)
    hr = read_rgb(out / "train/x2/hr/gray16.png")
    np.testing.assert_array_equal(hr, np.repeat(modcrop(expected, 2)[:, :, None], 3, axis=2))
    rgba = np.asarray(Image.open(data_root / "T91/rgba.png"))
    np.testing.assert_array_equal(read_rgb(out / "train/x2/hr/rgba.png"), modcrop(rgba[:, :, :3], 2))
    palette = np.asarray(Image.open(data_root / "T91/palette.png").convert("RGB"))
    np.testing.assert_array_equal(read_rgb(out / "train/x2/hr/palette.png"), modcrop(palette, 2))
    gray = read_rgb(out / "train/x2/hr/gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_two_runs_give_identical_output(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, scales=(3,))
    first = prepare_data(cfg, tmp_path / "a", show_progress=False)
    second = prepare_data(cfg, tmp_path / "b", show_progress=False)
    assert first == second
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    # running again into the same folder replaces it whole
    third = prepare_data(cfg, tmp_path / "a", show_progress=False)
    assert third == first
    assert _leftovers(tmp_path) == []


def test_held_out_val_from_folder(data_root: Path, tmp_path: Path) -> None:
    manifest = prepare_data(_cfg(data_root, eval_sets=(), val_images=2, scales=(2,)), tmp_path / "out", show_progress=False)
    assert manifest["sets"] == ["train", "val"]
    assert [e["name"] for e in manifest["inputs"]["val"]] == ["rgb", "rgba"]  # last two by file name
    assert manifest["counts"] == {"train": {"x2": 3}, "val": {"x2": 2}}


def test_skimage_source_full_run(tmp_path: Path) -> None:
    manifest = prepare_data(DataConfig(scales=(2,)), tmp_path / "out", show_progress=False)
    assert manifest["counts"] == {"train": {"x2": 6}, "val": {"x2": 2}}
    assert [e["name"] for e in manifest["inputs"]["val"]] == ["motorcycle_left", "motorcycle_right"]
    files = manifest["files"]
    assert (files["train/x2/hr/chelsea.png"]["width"], files["train/x2/hr/chelsea.png"]["height"]) == (450, 300)
    assert (files["train/x2/lr/chelsea.png"]["width"], files["train/x2/lr/chelsea.png"]["height"]) == (225, 150)
    assert (files["val/x2/lr/motorcycle_left.png"]["width"], files["val/x2/lr/motorcycle_left.png"]["height"]) == (370, 250)
    assert all(not Path(e["file"]).is_absolute() for entries in manifest["inputs"].values() for e in entries)


# --------------------------------------------------------------------------------------------- bad inputs


def _truncated(path: Path) -> None:
    data = _png_bytes(40, 40, seed=9)
    path.write_bytes(data[: len(data) // 2])


def _text(path: Path) -> None:
    path.write_text("this is not a PNG file\n")


BAD_INPUTS = {
    "truncated": (_truncated, ImageError, "cannot decode|not a readable"),
    "text": (_text, ImageError, "not a readable image"),
    "empty_file": (lambda p: p.write_bytes(b""), ImageError, "not a readable image"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_image_fails_naming_file_and_leaves_no_output(data_root: Path, tmp_path: Path, kind: str) -> None:
    make, error, message = BAD_INPUTS[kind]
    bad = data_root / "T91" / f"zz_{kind}.png"
    make(bad)
    out = tmp_path / "out"
    with pytest.raises(error, match=re.escape(str(bad)) + f".*({message})"):
        prepare_data(_cfg(data_root, scales=(2,)), out, show_progress=False)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("size", "scales", "min_size", "message"),
    [
        ((30, 7), (2,), 8, "smaller than data.min_size=8"),  # 7 px high
        ((9, 30), (4,), 9, r"8x28 after cropping to a multiple of 4\), smaller than data.min_size=9"),
        ((3, 20), (4,), 1, "smaller than the scale 4"),
    ],
)
def test_too_small_image_fails(data_root: Path, tmp_path: Path, size, scales, min_size, message) -> None:
    bad = _rgb(data_root / "Set5" / "small.png", *size)
    with pytest.raises(ImageError, match=re.escape(str(bad)) + ".*" + message):
        prepare_data(_cfg(data_root, scales=scales, min_size=min_size), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("setup", "named"),
    [
        (lambda root: (root / "Set14").mkdir(), "Set14"),  # empty eval folder
        (lambda root: None, "Set14"),  # missing eval folder
        (lambda root: (_rgb(root / "T91" / "rgb.bmp"), _rgb(root / "Set14" / "x.png")), "rgb.bmp"),  # stem 'rgb' twice
    ],
    ids=["empty_folder", "missing_folder", "duplicate_stem"],
)
def test_bad_folders_fail_naming_path(data_root: Path, tmp_path: Path, setup, named: str) -> None:
    setup(data_root)
    with pytest.raises(DataError, match=re.escape(named)):
        prepare_data(_cfg(data_root, eval_sets=("Set5", "Set14")), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_failure_keeps_previous_good_output(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = prepare_data(_cfg(data_root, scales=(2,)), out, show_progress=False)
    _text(data_root / "T91" / "zz.png")
    with pytest.raises(ImageError, match="zz.png"):
        prepare_data(_cfg(data_root, scales=(2,)), out, show_progress=False)
    assert load_manifest(out, verify=True) == good
    assert _leftovers(tmp_path) == []


def test_a_run_removes_the_folder_a_killed_run_left(data_root: Path, tmp_path: Path) -> None:
    """A SIGKILLed run leaves its half-written temporary folder beside the output: the next run removes it."""
    stale = Path(tempfile.mkdtemp(prefix=killed_writer_prefix("out"), suffix=".tmp", dir=tmp_path))  # as srnas.atomic names it
    _rgb(stale / "train" / "x2" / "hr" / "rgb.png")
    other = Path(tempfile.mkdtemp(prefix=killed_writer_prefix("outer"), suffix=".tmp", dir=tmp_path))  # another folder's
    prepare_data(_cfg(data_root, scales=(2,)), tmp_path / "out", show_progress=False)
    assert _leftovers(tmp_path) == [other.name]
    assert load_manifest(tmp_path / "out", verify=True)["files"]

@pytest.mark.parametrize(("mapping", "key"), [({"source": "flickr"}, "data.source"), ({"scales": [5]}, "data.scales")])
def test_config_errors_before_anything_runs(mapping: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_of(DataConfig, mapping, "params.yaml:data")


# ------------------------------------------------------------------------------------------------ skipping


def test_skip_bad_images_warns_and_continues(data_root: Path, tmp_path: Path) -> None:
    truncated = data_root / "T91" / "broken.png"
    _truncated(truncated)
    text = data_root / "Set5" / "notes.png"
    _text(text)
    small = _rgb(data_root / "T91" / "small.png", 3, 3)
    out = tmp_path / "out"
    with pytest.warns(SkippedImageWarning) as record:
        manifest = prepare_data(_cfg(data_root, scales=(2,), skip_bad_images=True), out, show_progress=False)
    messages = [str(w.message) for w in record]
    for path in (truncated, text, small):
        assert any(str(path) in m for m in messages), (path, messages)
    assert manifest["counts"] == {"train": {"x2": 5}, "Set5": {"x2": 2}}
    assert sorted((s["set"], s["file"]) for s in manifest["skipped"]) == [
        ("Set5", "notes.png"),
        ("train", "broken.png"),
        ("train", "small.png"),
    ]
    assert not (out / "train/x2/hr/broken.png").exists()
    assert load_manifest(out, verify=True) == manifest


def test_skip_leaving_a_set_empty_is_still_an_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _rgb(root / "T91" / "good.png")
    (root / "Set5").mkdir()
    _text(root / "Set5" / "only.png")
    with pytest.warns(SkippedImageWarning, match="only.png"), pytest.raises(DataError, match="set 'Set5'"):
        prepare_data(_cfg(root, skip_bad_images=True), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ manifest


def test_load_manifest_errors(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match=re.escape(str(out / "manifest.json"))):
        load_manifest(out)
    prepare_data(_cfg(data_root, scales=(2,)), out, show_progress=False)
    (out / "train/x2/lr/gray.png").write_bytes(b"tampered")
    assert load_manifest(out)["counts"]  # no verification: fine
    with pytest.raises(DataError, match=re.escape(str(out / "train/x2/lr/gray.png"))):
        load_manifest(out, verify=True)
    with pytest.raises(DataError, match="scale 3 not prepared"):
        image_pairs(out, "train", 3)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(SrnasError, match="unreadable manifest"):
        load_manifest(out)
