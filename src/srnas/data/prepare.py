"""The ``prepare_data`` stage: HR/LR PNG pairs for every scale, plus ``manifest.json``.

Layout (see ``docs/CONTRACTS.md``)::

    <out_dir>/manifest.json
    <out_dir>/<set>/x<s>/hr/<name>.png   # HR cropped to a multiple of s (srnas.imresize.modcrop)
    <out_dir>/<set>/x<s>/lr/<name>.png   # srnas.imresize.bicubic_downscale of that HR

``<set>`` is ``train`` then the evaluation sets (``DataConfig.eval_set_names``). Every input is read with
:func:`srnas.images.read_rgb` (grayscale, alpha, palette and 16-bit images converted the same way every
time). The whole folder is written atomically: on any error nothing new appears at ``out_dir`` and a
previous complete output stays as it was.

Checks (each a :class:`~srnas.errors.SrnasError` naming the file or key): missing or empty folders,
unreadable or truncated images, images whose side is below the scale or, after cropping to a multiple
of the scale, below ``data.min_size``, and duplicate names within a set. With
``data.skip_bad_images: true`` unreadable and too-small images are skipped with a
:class:`SkippedImageWarning` naming each file (and listed under ``skipped`` in the manifest); a set
left with no image is still an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from srnas.atomic import atomic_dir, write_json
from srnas.config import DataConfig
from srnas.data.sources import SourceImage, source_images
from srnas.digests import file_sha256
from srnas.errors import DataError, ImageError
from srnas.images import read_rgb, write_png
from srnas.imresize import bicubic_downscale, modcrop

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "SkippedImageWarning", "calibration_patches", "image_pairs", "load_manifest",
           "prepare_data", "read_pairs"]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class SkippedImageWarning(UserWarning):
    """An input image was skipped because ``data.skip_bad_images`` is true. The message names the file."""


def _check_size(path: Path, shape: tuple[int, ...], scales: tuple[int, ...], min_size: int) -> None:
    height, width = shape[:2]
    for scale in scales:
        if height < scale or width < scale:
            raise ImageError(f"{path}: image is {width}x{height} pixels, smaller than the scale {scale}")
        cropped_h, cropped_w = height - height % scale, width - width % scale
        if cropped_h < min_size or cropped_w < min_size:
            raise ImageError(
                f"{path}: image is {width}x{height} pixels ({cropped_w}x{cropped_h} after cropping to a multiple of "
                f"{scale}), smaller than data.min_size={min_size} (the patch size) on a side"
            )


def _png_entry(path: Path, array: np.ndarray) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "width": int(array.shape[1]),
        "height": int(array.shape[0]),
    }


def prepare_data(cfg: DataConfig, out_dir: str | os.PathLike[str], *, show_progress: bool = True) -> dict[str, Any]:
    """Write HR/LR PNG pairs for every scale in ``cfg.scales`` and ``manifest.json`` to ``out_dir``, atomically.

    Returns the manifest (the same dict ``load_manifest(out_dir)`` reads back).
    """
    out_dir = Path(out_dir)
    images = source_images(cfg, show_progress=show_progress)
    set_names = ("train", *cfg.eval_set_names)
    by_set: dict[str, list[SourceImage]] = {name: [] for name in set_names}
    for image in images:
        if image.set_name not in by_set:  # a source bug, not a user error
            raise DataError(f"{image.path}: source returned unexpected set {image.set_name!r}")
        by_set[image.set_name].append(image)
    for set_name, members in by_set.items():
        if not members:
            raise DataError(f"data.source {cfg.source}: set {set_name!r} has no images")

    scales = tuple(cfg.scales)
    files: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {name: {f"x{s}": 0 for s in scales} for name in set_names}
    inputs: dict[str, list[dict[str, Any]]] = {name: [] for name in set_names}
    skipped: list[dict[str, str]] = []

    with (
        atomic_dir(out_dir) as tmp,
        tqdm(total=len(images), desc="prepare_data", unit="img", disable=not show_progress) as bar,
    ):
        for set_name in set_names:
            for image in by_set[set_name]:
                bar.set_postfix_str(f"{set_name}/{image.name}", refresh=False)
                try:
                    rgb = read_rgb(image.path)
                    _check_size(image.path, rgb.shape, scales, cfg.min_size)
                except ImageError as exc:
                    if not cfg.skip_bad_images:
                        raise
                    warnings.warn(f"skipping {image.path}: {exc}", SkippedImageWarning, stacklevel=2)
                    skipped.append({"set": set_name, "file": image.path.name, "reason": str(exc)})
                    bar.update(1)
                    continue
                for scale in scales:
                    hr = np.ascontiguousarray(modcrop(rgb, scale))
                    lr = bicubic_downscale(hr, scale)
                    for kind, array in (("hr", hr), ("lr", lr)):
                        rel = f"{set_name}/x{scale}/{kind}/{image.name}.png"
                        write_png(tmp / rel, array)
                        files[rel] = _png_entry(tmp / rel, array)
                    counts[set_name][f"x{scale}"] += 1
                inputs[set_name].append(
                    {
                        "name": image.name,
                        "file": image.path.name,
                        "sha256": file_sha256(image.path),
                        "width": int(rgb.shape[1]),
                        "height": int(rgb.shape[0]),
                    }
                )
                bar.update(1)
            if not inputs[set_name]:
                raise DataError(
                    f"set {set_name!r}: no usable image left after skipping {len(by_set[set_name])} bad one(s) "
                    f"(first: {by_set[set_name][0].path})"
                )

        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "source": cfg.source,
            "scales": list(scales),
            "sets": list(set_names),
            "counts": counts,
            "inputs": inputs,
            "skipped": skipped,
            "files": dict(sorted(files.items())),
            "config": dataclasses.asdict(cfg),
        }
        manifest = json.loads(json.dumps(manifest))  # plain JSON types: equal to what load_manifest returns
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def load_manifest(out_dir: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Read ``out_dir/manifest.json``. With ``verify``, check every listed file's size and SHA-256.

    Raises :class:`DataError` naming the manifest or the file that is missing or changed.
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no manifest; run `srnas prepare-data` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "counts" not in manifest:
        raise DataError(f"{path}: not a prepare_data manifest (missing 'files' or 'counts')")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path}: manifest version {manifest.get('version')!r}, expected {MANIFEST_VERSION}; prepare the data again")
    if verify:
        root = Path(out_dir)
        for rel, entry in manifest["files"].items():
            file = root / rel
            if not file.is_file():
                raise DataError(f"{file}: listed in {path} but missing")
            if file.stat().st_size != entry["size"] or file_sha256(file) != entry["sha256"]:
                raise DataError(f"{file}: changed since {path} was written (size or SHA-256 differs)")
    return manifest


def image_pairs(
    out_dir: str | os.PathLike[str], set_name: str, scale: int, manifest: dict[str, Any] | None = None
) -> list[tuple[str, Path, Path]]:
    """``(name, hr_path, lr_path)`` for every image of ``set_name`` at ``scale``, sorted by name."""
    root = Path(out_dir)
    if manifest is None:
        manifest = load_manifest(root)
    if set_name not in manifest.get("sets", []):
        raise DataError(f"{root / MANIFEST_NAME}: no set {set_name!r}; prepared sets: {', '.join(manifest.get('sets', []))}")
    if scale not in manifest.get("scales", []):
        raise DataError(f"{root / MANIFEST_NAME}: scale {scale} not prepared; prepared scales: {manifest.get('scales')}")
    prefix = f"{set_name}/x{scale}/hr/"
    names = sorted(rel[len(prefix) : -len(".png")] for rel in manifest["files"] if rel.startswith(prefix))
    return [
        (name, root / f"{set_name}/x{scale}/hr/{name}.png", root / f"{set_name}/x{scale}/lr/{name}.png") for name in names
    ]


def read_pairs(out_dir: str | os.PathLike[str], set_name: str, scale: int) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, hr, lr)`` uint8 arrays for every image of a prepared set, read lazily in name order."""
    for name, hr_path, lr_path in image_pairs(out_dir, set_name, scale):
        yield name, read_rgb(hr_path), read_rgb(lr_path)


def calibration_patches(out_dir: str | os.PathLike[str], scale: int, *, count: int, size: int, seed: int,
                        set_name: str = "train") -> list[np.ndarray]:
    """``count`` LR patches (uint8 ``size x size x 3``) of a prepared set (the training set by default): what int8
    quantization observes its activation ranges on.

    Deterministic: the same prepared data, ``count``, ``size`` and ``seed`` give the same patches. A seeded shuffle
    of the set's images is read in order (images smaller than ``size`` skipped) until ``count`` images are found or
    the set runs out; patch ``k`` is cut at a seeded position of image ``k`` modulo their number. Only those images
    are read. DataError naming the set when no LR image is at least ``size`` pixels on both sides."""
    if count < 1 or size < 2:
        raise ValueError(f"calibration patches: need count >= 1 and size >= 2, got count={count}, size={size}")
    pairs = image_pairs(out_dir, set_name, scale)
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    for index in rng.permutation(len(pairs)):
        lr = read_rgb(pairs[int(index)][2])
        if lr.shape[0] >= size and lr.shape[1] >= size:
            images.append(lr)
        if len(images) == count:
            break
    if not images:
        raise DataError(f"{Path(out_dir) / set_name / f'x{scale}' / 'lr'}: no LR image is at least {size}x{size} pixels "
                        "to cut calibration patches from")
    patches = []
    for k in range(count):
        lr = images[k % len(images)]
        top = int(rng.integers(0, lr.shape[0] - size + 1))
        left = int(rng.integers(0, lr.shape[1] - size + 1))
        patches.append(np.ascontiguousarray(lr[top : top + size, left : left + size]))
    return patches
