"""MATLAB-compatible bicubic ``imresize`` in numpy (the SR benchmark protocol).

Follows MATLAB's ``imresize(img, scale, 'bicubic')`` with its default antialiasing:

- cubic kernel with a = -0.5; when downscaling the kernel is stretched by ``1/scale`` (antialiasing);
- MATLAB's ``contributions``: output pixel ``x`` (1-based) maps to ``u = x/scale + 0.5*(1 - 1/scale)``,
  ``ceil(width) + 2`` taps from ``floor(u - width/2)``, weights normalised to sum to one,
  out-of-range indices mirrored symmetrically (``[1..n, n..1]``);
- the dimension with the smaller scale is resized first (rows first on a tie);
- arithmetic in float64; integer inputs are rounded half away from zero and saturated at the end.

Each axis is applied as a dense ``(out x in)`` weight matrix product (BLAS), so a 480x320 image
resizes in milliseconds.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["imresize", "modcrop", "bicubic_downscale", "bicubic_upscale", "cubic"]

_KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (Keys, a = -0.5)."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
    return inner + outer


def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's per-output weights and 0-based input indices, each ``(out_length, taps)``."""
    antialias = scale < 1
    width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may be out of range
    distance = u[:, None] - indices
    weights = scale * cubic(scale * distance) if antialias else cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # symmetric padding: aux = [1..n, n..1]
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    idx = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


@lru_cache(maxsize=64)
def _weight_matrix(in_length: int, out_length: int, scale: float) -> np.ndarray:
    weights, idx = contributions(in_length, out_length, scale)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], idx.shape)
    np.add.at(matrix, (rows, idx), weights)
    matrix.setflags(write=False)
    return matrix


def _output_length(length: int, scale: float) -> int:
    # round first so that e.g. 321 * (1/3) = 107.00000000000001 gives 107, as intended, not 108
    return max(1, int(math.ceil(round(length * scale, 9))))


def _resize_axis(x: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    matrix = _weight_matrix(x.shape[axis], out_length, float(scale))
    moved = np.moveaxis(x, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    out = (matrix @ flat).reshape((out_length,) + moved.shape[1:])
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float, output_shape: tuple[int, int] | None = None) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` for an ``H x W`` or ``H x W x C`` array.

    Integer input (uint8) is computed in float64 and rounded/saturated back to its dtype like MATLAB;
    float input stays float (no rounding or clipping). ``output_shape`` (H, W) overrides the size
    ``ceil(scale * size)``; the kernel still uses ``scale`` as MATLAB does when given a scale.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"imresize expects an integer or float array, got dtype {img.dtype}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"imresize scale must be a positive finite number, got {scale!r}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"imresize got an empty image of shape {img.shape}")
    if output_shape is None:
        output_shape = (_output_length(img.shape[0], scale), _output_length(img.shape[1], scale))

    out = img.astype(np.float64, copy=False)
    # MATLAB: sort the scales ascending (stable) and resize the dimension with the smaller scale first.
    # With a single scalar scale both are equal, so rows come first.
    for axis in (0, 1):
        out = _resize_axis(out, axis, int(output_shape[axis]), scale)

    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        # MATLAB: saturate, then round half away from zero
        out = np.clip(out, info.min, info.max, out=out)  # `out` is a fresh array here
        if info.min < 0:
            return np.where(out >= 0, np.floor(out + 0.5), np.ceil(out - 0.5)).astype(img.dtype, order="C")
        out += 0.5
        return out.astype(img.dtype, order="C")  # truncation == floor for values >= 0
    return np.ascontiguousarray(out, dtype=img.dtype)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop H and W down to multiples of ``scale`` (top-left part kept)."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"modcrop scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


def _check_uint8_image(img: np.ndarray, what: str) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3):
        desc = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{what} expects a uint8 HxW or HxWx3 image, got {desc}")


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(hr, 1/scale, 'bicubic')`` rounded to uint8. H and W must be multiples of ``scale``."""
    _check_uint8_image(hr, "bicubic_downscale")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"bicubic_downscale scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"bicubic_downscale: image size {h}x{w} is not a multiple of {scale}; modcrop it first")
    if h < scale or w < scale:
        raise ValueError(f"bicubic_downscale: image size {h}x{w} is smaller than the scale {scale}")
    return imresize(hr, 1.0 / scale, output_shape=(h // scale, w // scale))


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale, 'bicubic')`` rounded to uint8 (output is ``scale`` times larger)."""
    _check_uint8_image(lr, "bicubic_upscale")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"bicubic_upscale scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    h, w = lr.shape[:2]
    return imresize(lr, float(scale), output_shape=(h * scale, w * scale))
