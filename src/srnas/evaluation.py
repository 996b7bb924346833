"""The SR evaluation protocol: mean PSNR / SSIM on the Y channel, ``scale`` pixels of border cropped.

HR images are cropped to a multiple of the scale (modcrop), LR inputs are made by MATLAB-bicubic
downscaling, the model's output is compared with the HR image (see :mod:`srnas.metrics`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from srnas.errors import DataError, ImageError
from srnas.images import list_images, read_rgb
from srnas.imresize import bicubic_downscale, bicubic_upscale, modcrop
from srnas.metrics import SSIM_WINDOW, calculate_psnr, calculate_ssim

__all__ = ["ImageScore", "EvalResult", "evaluate_pairs", "evaluate_hr_folder", "bicubic_upscaler"]

logger = logging.getLogger(__name__)

Upscaler = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr: float
    ssim: float


@dataclass(frozen=True)
class EvalResult:
    psnr: float
    ssim: float
    images: int
    per_image: tuple[ImageScore, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: mean ``psnr``, ``ssim``, ``images`` count and the ``per_image`` list.

        An infinite PSNR (identical images) is written as the string ``"inf"``; JSON has no infinity.
        """
        return {
            "psnr": _json_float(self.psnr),
            "ssim": self.ssim,
            "images": self.images,
            "per_image": [{"name": s.name, "psnr": _json_float(s.psnr), "ssim": s.ssim} for s in self.per_image],
        }


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def bicubic_upscaler(scale: int) -> Upscaler:
    """The bicubic baseline: LR uint8 -> MATLAB-bicubic upscale by ``scale``, uint8."""
    scale = _check_scale(scale)

    def upscale(lr: np.ndarray) -> np.ndarray:
        return bicubic_upscale(lr, scale)

    upscale.__name__ = f"bicubic_x{scale}"
    return upscale


def _score(upscale: Upscaler, name: str, hr: np.ndarray, lr: np.ndarray, scale: int) -> ImageScore:
    sr = upscale(lr)
    if not isinstance(sr, np.ndarray) or sr.dtype != np.uint8 or sr.shape != hr.shape:
        got = f"{sr.dtype} array of shape {sr.shape}" if isinstance(sr, np.ndarray) else type(sr).__name__
        raise ValueError(f"{name}: the upscaler must return a uint8 array of the HR shape {hr.shape}, got {got}")
    return ImageScore(
        name=name,
        psnr=calculate_psnr(sr, hr, crop_border=scale, test_y_channel=True),
        ssim=calculate_ssim(sr, hr, crop_border=scale, test_y_channel=True),
    )


def _evaluate(
    upscale: Upscaler, pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], scale: int, total: int | None, desc: str
) -> EvalResult:
    scores = [
        _score(upscale, name, hr, lr, scale)
        for name, hr, lr in tqdm(pairs, total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)
    ]
    if not scores:
        raise DataError(f"{desc}: no images to evaluate")
    return EvalResult(
        psnr=float(np.mean([s.psnr for s in scores])),
        ssim=float(np.mean([s.ssim for s in scores])),
        images=len(scores),
        per_image=tuple(scores),
    )


def evaluate_pairs(
    upscale: Upscaler, pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], scale: int, *, desc: str = "evaluate"
) -> EvalResult:
    """Mean PSNR / SSIM of ``upscale(lr)`` against ``hr`` over ``(name, hr, lr)`` triples.

    ``upscale`` maps an LR uint8 ``h x w x 3`` array to a uint8 array of the HR shape. Metrics are on the
    Y channel with ``crop_border = scale``. Raises :class:`DataError` when ``pairs`` is empty.
    """
    scale = _check_scale(scale)
    total = len(pairs) if hasattr(pairs, "__len__") else None
    return _evaluate(upscale, pairs, scale, total, desc)


def _min_hr_side(scale: int) -> int:
    # after cropping `scale` per side, SSIM's 11x11 window must fit
    return 2 * scale + SSIM_WINDOW


def _load_pair(path: Path, scale: int) -> tuple[str, np.ndarray, np.ndarray]:
    hr = modcrop(read_rgb(path), scale)
    h, w = hr.shape[:2]
    need = _min_hr_side(scale)
    if h < need or w < need:
        raise ImageError(f"{path}: too small to evaluate at x{scale} ({h}x{w} after modcrop; needs {need}x{need})")
    return path.stem, hr, bicubic_downscale(hr, scale)


def evaluate_hr_folder(
    upscale: Upscaler, hr_dir: str | os.PathLike[str], scale: int, skip_bad_images: bool = False
) -> EvalResult:
    """Evaluate ``upscale`` on the HR images directly inside ``hr_dir`` (sorted by name).

    Each image is read as RGB (:func:`srnas.images.read_rgb`), modcropped to a multiple of ``scale`` and
    MATLAB-bicubic downscaled to make its LR input. A missing or empty folder raises :class:`DataError`.
    An unreadable (or too small) image raises :class:`ImageError`, unless ``skip_bad_images``: then a
    warning naming the file is issued (``warnings.warn`` and the ``srnas.evaluation`` logger) and the
    image is left out; if no image is left, :class:`DataError`.
    """
    scale = _check_scale(scale)
    folder = Path(hr_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: HR image folder does not exist")
    paths = list_images(folder)
    if not paths:
        raise DataError(f"{folder}: HR image folder contains no images")

    skipped: list[Path] = []

    def pairs() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for path in paths:
            try:
                pair = _load_pair(path, scale)
            except ImageError as exc:
                if not skip_bad_images:
                    raise
                message = f"skipping image {exc}"
                warnings.warn(message, stacklevel=4)
                logger.warning(message)
                skipped.append(path)
                continue
            yield pair

    try:
        return _evaluate(upscale, pairs(), scale, len(paths), f"{folder.name} x{scale}")
    except DataError:
        if skipped:
            raise DataError(f"{folder}: none of its {len(paths)} images could be read") from None
        raise
