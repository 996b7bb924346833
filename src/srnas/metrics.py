"""PSNR and SSIM as SR papers compute them (BasicSR signatures, MATLAB numbers).

Inputs are uint8 ``H x W x 3`` RGB arrays. ``crop_border`` pixels are removed from each side, then the
comparison is made on the BT.601 luma or on all three channels (SSIM: mean over R, G, B).

The luma is rounded to whole levels before the comparison, as MATLAB's ``rgb2ycbcr`` does for uint8
images in the evaluation scripts that produced the published tables. This reproduces the published
bicubic numbers (Set5 x2 33.65 dB vs 33.66 printed); BasicSR's unrounded float Y gives about
0.01-0.02 dB and 0.0005-0.001 SSIM more (Set5 x2 33.68 dB). :func:`rgb_to_y` itself returns the
unrounded float luma.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

__all__ = ["rgb_to_y", "calculate_psnr", "calculate_ssim", "SSIM_WINDOW"]

SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an ``H x W x 3`` RGB image with values in [0, 255] (uint8 or float).

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B in [0, 1]; returns float64 in [0, 255].
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {img.shape}")
    rgb = img.astype(np.float64) / 255.0
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def _y_levels(img: np.ndarray) -> np.ndarray:
    """Luma rounded to whole levels (half away from zero), as MATLAB ``rgb2ycbcr`` on uint8; float64."""
    return np.floor(rgb_to_y(img) + 0.5)


def _prepare(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
    for name, a in (("img", img), ("img2", img2)):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{what}: {name} must be a uint8 HxWx3 numpy array, got {type(a).__name__}")
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{what}: {name} must be a uint8 HxWx3 array, got {a.dtype} array of shape {a.shape}")
    if img.shape != img2.shape:
        raise ValueError(f"{what}: image shapes differ: {img.shape} vs {img2.shape}")
    if int(crop_border) != crop_border or crop_border < 0:
        raise ValueError(f"{what}: crop_border must be a non-negative integer, got {crop_border!r}")
    crop_border = int(crop_border)
    h, w = img.shape[:2]
    if h <= 2 * crop_border or w <= 2 * crop_border:
        raise ValueError(f"{what}: image of size {h}x{w} has no pixels left after cropping {crop_border} per side")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        return _y_levels(img)[..., None], _y_levels(img2)[..., None]
    return img.astype(np.float64), img2.astype(np.float64)


def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    """PSNR in dB (peak 255) between two uint8 RGB images; ``inf`` for identical images."""
    a, b = _prepare(img, img2, crop_border, test_y_channel, "calculate_psnr")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d() -> np.ndarray:
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


_GAUSS = _gaussian_1d()


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """Separable 11x11 Gaussian filter over the last two axes, keeping only the 'valid' part (no padding)."""
    out = correlate1d(x, _GAUSS, axis=-2, mode="constant")
    out = correlate1d(out, _GAUSS, axis=-1, mode="constant")
    r = SSIM_WINDOW // 2
    return out[..., r:-r, r:-r]


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    # filter the five maps in one call: mu1, mu2, E[a^2], E[b^2], E[ab]
    mu1, mu2, e11, e22, e12 = _filter_valid(np.stack([a, b, a * a, b * b, a * b]))
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = e11 - mu1_sq
    sigma2_sq = e22 - mu2_sq
    sigma12 = e12 - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _C1) * (2 * sigma12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))
    return float(ssim_map.mean())


def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = True) -> float:
    """SSIM (11x11 Gaussian window, sigma 1.5, 'valid' region) between two uint8 RGB images.

    On the Y channel by default; otherwise the mean of the R, G and B SSIMs.
    """
    a, b = _prepare(img, img2, crop_border, test_y_channel, "calculate_ssim")
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ValueError(
            f"calculate_ssim: {a.shape[0]}x{a.shape[1]} pixels after cropping {crop_border} per side; "
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW}"
        )
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))
