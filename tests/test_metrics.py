import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from srnas.metrics import calculate_psnr, calculate_ssim, rgb_to_y

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def _pair(seed=0, shape=(40, 50, 3)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return a, b


def _ssim_reference(x, y):
    """Direct (non-separable) 11x11 Gaussian SSIM over the 'valid' region, for one float channel."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(z):
        return np.einsum("ijkl,kl->ij", sliding_window_view(z, (11, 11)), w)

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    return float(np.mean(((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))))


def test_rgb_to_y_bt601():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(px.astype(np.float32)), rgb_to_y(px))
    assert rgb_to_y(px).dtype == np.float64


def test_psnr_identical_is_inf_and_ssim_identical_is_one():
    a, _ = _pair()
    assert calculate_psnr(a, a.copy(), 2) == math.inf
    assert calculate_psnr(a, a.copy(), 0, test_y_channel=False) == math.inf
    assert calculate_ssim(a, a.copy(), 2) == pytest.approx(1.0, abs=1e-12)
    assert calculate_ssim(a, a.copy(), 0, test_y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_psnr_known_values_on_flat_images():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = np.full((20, 20, 3), 110, np.uint8)
    # RGB: difference 10 everywhere
    assert calculate_psnr(a, b, 0, test_y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100))
    # Y levels (rounded like MATLAB rgb2ycbcr): 16 + 100*219/255 = 101.88 -> 102, 16 + 110*219/255 = 110.47 -> 110
    assert calculate_psnr(a, b, 4) == pytest.approx(10 * math.log10(255**2 / 64))
    # SSIM of flat images: only the luminance term is left
    assert calculate_ssim(a, b, 2) == pytest.approx((2 * 102 * 110 + C1) / (102**2 + 110**2 + C1))


def test_psnr_matches_formula_on_random_pair():
    a, b = _pair(3)
    ya, yb = np.floor(rgb_to_y(a) + 0.5)[3:-3, 3:-3], np.floor(rgb_to_y(b) + 0.5)[3:-3, 3:-3]
    expected = 10 * math.log10(255**2 / np.mean((ya - yb) ** 2))
    assert calculate_psnr(a, b, 3) == pytest.approx(expected, rel=1e-12)
    mse_rgb = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert calculate_psnr(a, b, 0, test_y_channel=False) == pytest.approx(10 * math.log10(255**2 / mse_rgb))


def test_ssim_matches_direct_reference():
    a, b = _pair(4)
    ya, yb = np.floor(rgb_to_y(a) + 0.5)[2:-2, 2:-2], np.floor(rgb_to_y(b) + 0.5)[2:-2, 2:-2]
    assert calculate_ssim(a, b, 2) == pytest.approx(_ssim_reference(ya, yb), rel=1e-10)
    per_channel = [_ssim_reference(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert calculate_ssim(a, b, 0, test_y_channel=False) == pytest.approx(np.mean(per_channel), rel=1e-10)
    assert 0 < calculate_ssim(a, b, 2) < 1


def test_crop_border_removes_border_differences():
    a, _ = _pair(5)
    b = a.copy()
    b[:3] = 0
    b[:, -3:] = 255
    assert calculate_psnr(a, b, 3) == math.inf
    assert calculate_psnr(a, b, 2) < 40


@pytest.mark.parametrize("fn", [calculate_psnr, calculate_ssim])
def test_rejects_non_uint8_rgb(fn):
    a, b = _pair()
    with pytest.raises(ValueError, match="float32"):
        fn(a.astype(np.float32), b, 2)
    with pytest.raises(ValueError, match=r"\(40, 50\)"):
        fn(a, b[..., 0], 2)
    with pytest.raises(ValueError, match=r"\(40, 50, 4\)"):
        fn(np.zeros((40, 50, 4), np.uint8), b, 2)
    with pytest.raises(ValueError, match="list"):
        fn(a.tolist(), b, 2)
    with pytest.raises(ValueError, match="differ"):
        fn(a, b[:-1], 2)
    with pytest.raises(ValueError, match="crop"):
        fn(a, b, 20)


def test_ssim_rejects_images_smaller_than_window():
    a, b = _pair(shape=(14, 30, 3))
    with pytest.raises(ValueError, match="11x11"):
        calculate_ssim(a, b, 2)
