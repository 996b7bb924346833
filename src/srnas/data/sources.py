"""Where the HR images come from: each source lists ``(set_name, name, path)`` for every split.

Sources (``data.source``):

- ``skimage`` (default): the eight colour photographs shipped inside scikit-image's wheel (found through
  ``importlib.resources``, never downloaded). The split is fixed: the list :data:`SKIMAGE_PHOTOS` is in a
  fixed order and its **last** ``val_images`` entries are set ``val``, the others ``train``. The list
  ends with the stereo pair ``motorcycle_left`` / ``motorcycle_right``, so with the default
  ``val_images: 2`` no near-duplicate of a validation image is trained on.
- ``folder``: ``train`` from ``root/train_set``; each name in ``eval_sets`` from ``root/<name>``. With
  ``eval_sets`` empty, the last ``val_images`` images of the train folder (sorted by file name) are set
  ``val``.
- ``div2k``: ``train`` from ``DIV2K_train_HR.zip``, ``val`` from ``DIV2K_valid_HR.zip`` (downloaded and
  verified by :mod:`srnas.data.download`), each optionally cut to its first N images.

``name`` is the file stem; it must be unique within a set (checked by :func:`check_unique_names`).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from srnas.config import DataConfig, Div2kConfig
from srnas.data.download import fetch_archive
from srnas.errors import ConfigError, DataError
from srnas.images import IMAGE_SUFFIXES, list_images

__all__ = [
    "SKIMAGE_PHOTOS",
    "SourceImage",
    "check_unique_names",
    "div2k_images",
    "folder_images",
    "image_files",
    "skimage_data_dir",
    "skimage_images",
    "source_images",
]

#: The colour photographs inside scikit-image's wheel, in the fixed order that defines the split.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",  # immunohistochemistry
    "motorcycle_left.png",
    "motorcycle_right.png",
)


class SourceImage(NamedTuple):
    """One HR source image: the set it belongs to, its output name (file stem) and where it is."""

    set_name: str
    name: str
    path: Path


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image package."""
    try:
        root = importlib.resources.files("skimage.data")
    except ModuleNotFoundError:
        raise DataError("data.source skimage: scikit-image is not installed") from None
    return Path(str(root))


def skimage_images(val_images: int = 2) -> list[SourceImage]:
    """The eight scikit-image photographs: the last ``val_images`` of :data:`SKIMAGE_PHOTOS` are ``val``."""
    if not 1 <= val_images < len(SKIMAGE_PHOTOS):
        raise ConfigError(
            f"data.val_images: {val_images} leaves no training image; the skimage source has "
            f"{len(SKIMAGE_PHOTOS)} photographs, so use 1 to {len(SKIMAGE_PHOTOS) - 1}"
        )
    folder = skimage_data_dir()
    n_train = len(SKIMAGE_PHOTOS) - val_images
    images = []
    for index, file_name in enumerate(SKIMAGE_PHOTOS):
        path = folder / file_name
        if not path.is_file():
            raise DataError(f"{path}: scikit-image photograph missing from the installed package (reinstall scikit-image)")
        images.append(SourceImage("train" if index < n_train else "val", path.stem, path))
    return images


def image_files(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted, hidden files skipped). Missing or empty folder -> DataError naming it."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: image folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of images, found a file")
    if recursive:
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
    else:
        files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def folder_images(root: str | Path, train_set: str, eval_sets: Iterable[str] = (), val_images: int = 2) -> list[SourceImage]:
    """``train`` from ``root/train_set``; each eval set from ``root/<name>``, or ``val`` held out of train."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data.root folder not found")
    eval_sets = tuple(eval_sets)
    train_files = image_files(root / train_set)
    images: list[SourceImage] = []
    if eval_sets:
        images += [SourceImage("train", p.stem, p) for p in train_files]
        for set_name in eval_sets:
            images += [SourceImage(set_name, p.stem, p) for p in image_files(root / set_name)]
    else:
        if val_images >= len(train_files):
            raise DataError(
                f"{root / train_set}: holds {len(train_files)} image(s); holding out data.val_images={val_images} "
                "as 'val' would leave none for training (lower val_images or list eval_sets)"
            )
        n_train = len(train_files) - val_images
        images += [SourceImage("train" if i < n_train else "val", p.stem, p) for i, p in enumerate(train_files)]
    return images


def div2k_images(cfg: Div2kConfig, *, show_progress: bool = True) -> list[SourceImage]:
    """Download (once, verified) and extract the DIV2K HR archives; ``train`` and ``val`` image lists."""
    splits = (
        ("train", cfg.train_archive, "train_sha256", cfg.max_train_images),
        ("val", cfg.valid_archive, "valid_sha256", cfg.max_val_images),
    )
    for _, archive, sha_key, _ in splits:  # both checked before anything is downloaded
        if not getattr(cfg, sha_key):
            raise ConfigError(
                f"data.div2k.{sha_key} must be set to the SHA-256 of {archive} "
                "(the div2k source never uses an unverified download)"
            )
    images: list[SourceImage] = []
    for set_name, archive, sha_key, limit in splits:
        sha256 = getattr(cfg, sha_key)
        folder = fetch_archive(
            f"{cfg.base_url.rstrip('/')}/{archive}", Path(cfg.cache_dir), sha256, show_progress=show_progress
        )
        files = image_files(folder, recursive=True)
        if limit:
            files = files[:limit]
        images += [SourceImage(set_name, p.stem, p) for p in files]
    return images


def source_images(cfg: DataConfig, *, show_progress: bool = True) -> list[SourceImage]:
    """Every HR image of the configured source, ``train`` first, in a deterministic order."""
    if cfg.source == "skimage":
        images = skimage_images(cfg.val_images)
    elif cfg.source == "folder":
        images = folder_images(cfg.root, cfg.train_set, cfg.eval_sets, cfg.val_images)
    elif cfg.source == "div2k":
        images = div2k_images(cfg.div2k, show_progress=show_progress)
    else:  # DataConfig already refuses this; kept for callers that build one by hand
        raise ConfigError(f"data.source: unknown source {cfg.source!r}")
    check_unique_names(images)
    return images


def check_unique_names(images: Iterable[SourceImage]) -> None:
    """Two files with the same stem in one set would overwrite each other: DataError naming both."""
    seen: dict[tuple[str, str], Path] = {}
    for image in images:
        key = (image.set_name, image.name)
        if key in seen:
            raise DataError(
                f"{image.path}: duplicate image name {image.name!r} in set {image.set_name!r} "
                f"(also {seen[key]}); names are file stems and must be unique within a set"
            )
        seen[key] = image.path
