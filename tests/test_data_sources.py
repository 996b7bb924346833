"""Image sources for prepare_data: skimage split, folder layout errors, config validation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import config_of
from PIL import Image

from srnas.config import DataConfig, Div2kConfig
from srnas.data.sources import (
    SKIMAGE_PHOTOS,
    SourceImage,
    div2k_images,
    folder_images,
    skimage_images,
    source_images,
)
from srnas.errors import ConfigError, DataError


def _png(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------------ skimage


def test_skimage_lists_eight_photographs_offline() -> None:
    images = skimage_images()
    assert len(images) == 8
    assert [im.name for im in images] == [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "ihc",
        "motorcycle_left",
        "motorcycle_right",
    ]
    assert all(isinstance(im, SourceImage) and im.path.is_file() for im in images)
    assert [im.path.name for im in images] == list(SKIMAGE_PHOTOS)


def test_skimage_split_is_fixed_last_images_held_out() -> None:
    first, second = skimage_images(2), skimage_images(2)
    assert first == second
    assert [im.name for im in first if im.set_name == "val"] == ["motorcycle_left", "motorcycle_right"]
    assert sum(im.set_name == "train" for im in first) == 6
    three = skimage_images(3)
    assert [im.name for im in three if im.set_name == "val"] == ["ihc", "motorcycle_left", "motorcycle_right"]
    # tuple-compatible: (set_name, name, path)
    set_name, name, path = first[0]
    assert (set_name, name, path.name) == ("train", "astronaut", "astronaut.png")


@pytest.mark.parametrize("val_images", [8, 9])
def test_skimage_refuses_split_without_training_images(val_images: int) -> None:
    with pytest.raises(ConfigError, match="data.val_images"):
        skimage_images(val_images)


# ------------------------------------------------------------------------------------------------- folder


def test_folder_source_named_eval_sets(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        _png(tmp_path / "T91" / f"{name}.png")
    _png(tmp_path / "Set5" / "baby.png")
    (tmp_path / "Set5" / "notes.txt").write_text("not an image")
    (tmp_path / "Set5" / ".hidden.png").write_text("hidden files are ignored")
    cfg = DataConfig(source="folder", root=str(tmp_path), eval_sets=("Set5",))
    images = source_images(cfg)
    assert [(im.set_name, im.name) for im in images] == [("train", "a"), ("train", "b"), ("train", "c"), ("Set5", "baby")]
    assert cfg.eval_set_names == ("Set5",)


def test_folder_source_holds_out_last_sorted_images_as_val(tmp_path: Path) -> None:
    for name in ("t3", "t1", "t2", "t4"):
        _png(tmp_path / "T91" / f"{name}.png")
    cfg = DataConfig(source="folder", root=str(tmp_path), val_images=1)
    images = source_images(cfg)
    assert [(im.set_name, im.name) for im in images] == [("train", "t1"), ("train", "t2"), ("train", "t3"), ("val", "t4")]
    assert cfg.eval_set_names == ("val",)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "T91"))):
        folder_images(tmp_path, "T91", (), val_images=4)


def test_folder_missing_and_empty_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
        folder_images(tmp_path / "nope", "T91")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "T91")) + ".*not found"):
        folder_images(tmp_path, "T91")
    (tmp_path / "T91").mkdir()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "T91")) + ".*no image files"):
        folder_images(tmp_path, "T91")
    (tmp_path / "T91" / "readme.txt").write_text("only text")
    with pytest.raises(DataError, match="no image files"):
        folder_images(tmp_path, "T91")
    _png(tmp_path / "T91" / "a.png")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "Set5"))):
        folder_images(tmp_path, "T91", ("Set5",))


def test_duplicate_stems_in_one_set_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "T91" / "bird.png")
    _png(tmp_path / "T91" / "bird.bmp")
    _png(tmp_path / "Set5" / "x.png")
    cfg = DataConfig(source="folder", root=str(tmp_path), eval_sets=("Set5",))
    with pytest.raises(DataError, match="duplicate image name 'bird'") as info:
        source_images(cfg)
    assert "bird.bmp" in str(info.value) and "bird.png" in str(info.value)


def test_same_stem_in_different_sets_is_fine(tmp_path: Path) -> None:
    _png(tmp_path / "T91" / "bird.png")
    _png(tmp_path / "Set5" / "bird.png")
    cfg = DataConfig(source="folder", root=str(tmp_path), eval_sets=("Set5",))
    assert len(source_images(cfg)) == 2


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"source": "imagenet"}, "data.source"),
        ({"scales": [5]}, "data.scales"),
        ({"scales": [2, 2]}, "data.scales"),
        ({"val_images": 0}, "data.val_images"),
        ({"source": "folder", "root": ""}, "data.root"),
        ({"train_set": "../x"}, "data.train_set"),
        ({"eval_sets": ["train"]}, "data.eval_sets"),
        ({"eval_sets": ["Set5", "Set5"]}, "data.eval_sets"),
        ({"div2k": {"train_sha256": "abc"}}, "data.div2k.train_sha256"),
        ({"div2k": {"base_url": "file:///etc"}}, "data.div2k.base_url"),
        ({"div2k": {"max_val_images": -1}}, "data.div2k.max_val_images"),
        ({"div2k": {"valid_archive": "../x.zip"}}, "data.div2k.valid_archive"),
    ],
)
def test_config_errors_name_the_key(mapping: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"params.yaml:{key}")):
        config_of(DataConfig, mapping, "params.yaml:data")


def test_div2k_default_hashes_are_real_sha256() -> None:
    cfg = Div2kConfig()
    assert cfg.train_sha256 == "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"
    assert cfg.valid_sha256 == "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"


@pytest.mark.parametrize("key", ["train_sha256", "valid_sha256"])
def test_div2k_refuses_to_run_without_hash(tmp_path: Path, key: str) -> None:
    cfg = Div2kConfig(base_url="http://127.0.0.1:9", cache_dir=str(tmp_path), **{key: ""})
    with pytest.raises(ConfigError, match=re.escape(f"data.div2k.{key} must be set")):
        div2k_images(cfg, show_progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded
