import numpy as np
import pytest

from srnas.imresize import bicubic_downscale, bicubic_upscale, contributions, imresize, modcrop

# MATLAB imresize(x, 1/2, 'bicubic') on a length-4 signal, worked out by hand from MATLAB's
# contributions(): kernel 0.5*cubic(0.5*d), 10 taps from floor(u - 4), symmetric mirroring.
# Taps of output 1 (u = 1.5): d = +-0.5 -> 0.8671875, +-1.5 -> 0.2265625, +-2.5 -> -0.0703125,
# +-3.5 -> -0.0234375, +-4.5 -> 0; normalised by their sum 2.0.
DOWN2_TAPS = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875])
DOWN2_IDX = np.array([2, 1, 0, 0, 1, 2, 3, 3])  # 1-based -2..5 mirrored into [1..4] (0-based here)
DOWN2 = np.array(
    [
        [0.546875, 0.3984375, 0.1015625, -0.046875],
        [-0.046875, 0.1015625, 0.3984375, 0.546875],
    ]
)
# MATLAB imresize(x, 2, 'bicubic'), first three outputs of a length-4 signal (u = 0.75, 1.25, 1.75)
UP2_FIRST_ROWS = np.array(
    [
        [1.09375, -0.09375, 0.0, 0.0],
        [0.796875, 0.2265625, -0.0234375, 0.0],
        [0.203125, 0.8671875, -0.0703125, 0.0],
    ]
)


def test_contributions_match_hand_computed_matlab_weights():
    weights, idx = contributions(4, 2, 0.5)
    np.testing.assert_allclose(weights[0], DOWN2_TAPS, atol=1e-15)
    np.testing.assert_array_equal(idx[0], DOWN2_IDX)
    np.testing.assert_allclose(weights[1], DOWN2_TAPS[::-1], atol=1e-15)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_downscale_tiny_array_matches_hand_computed_weights():
    x = np.arange(16, dtype=np.float64).reshape(4, 4) ** 2
    out = imresize(x, 0.5)
    assert out.dtype == np.float64 and out.shape == (2, 2)
    np.testing.assert_allclose(out, DOWN2 @ x @ DOWN2.T, atol=1e-12)


def test_downscale_uint8_rounds_like_matlab():
    x = np.array([[10, 200, 30, 255], [0, 90, 180, 70], [255, 255, 0, 0], [5, 60, 120, 240]], dtype=np.uint8)
    exact = DOWN2 @ x.astype(np.float64) @ DOWN2.T
    out = imresize(x, 0.5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.floor(np.clip(exact, 0, 255) + 0.5).astype(np.uint8))


def test_upscale_matches_hand_computed_weights():
    p = np.array([[3.0], [50.0], [20.0], [7.0]])
    out = imresize(p, 2.0)
    assert out.shape == (8, 2)
    np.testing.assert_allclose(out[:3, 0], UP2_FIRST_ROWS @ p[:, 0], atol=1e-12)
    np.testing.assert_allclose(out[:, 0], out[:, 1])  # width 1 -> 2 just copies
    # symmetric: the last outputs mirror the first ones
    np.testing.assert_allclose(imresize(p[::-1], 2.0)[::-1, 0], out[:, 0], atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.75, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_constant_image_stays_constant(scale, dtype):
    img = np.full((24, 36, 3), 137, dtype=dtype)
    out = imresize(img, scale)
    assert out.dtype == dtype
    assert out.shape == (int(np.ceil(24 * scale)), int(np.ceil(36 * scale)), 3)
    np.testing.assert_allclose(out, 137, atol=1e-9)


def test_gray_and_float_inputs_keep_kind():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 18), dtype=np.uint8)
    assert imresize(gray, 0.5).shape == (6, 9)
    f = rng.random((12, 18, 3)).astype(np.float32)
    out = imresize(f, 2.0)
    assert out.dtype == np.float32 and out.shape == (24, 36, 3)


def test_uint8_output_is_rounded_clipped_float_result():
    rng = np.random.default_rng(1)
    img = (rng.integers(0, 2, (20, 30, 3)) * 255).astype(np.uint8)  # binary noise overshoots: exercises clipping
    for scale in (0.5, 3.0):
        exact = imresize(img.astype(np.float64), scale)
        assert exact.min() < 0 and exact.max() > 255
        np.testing.assert_array_equal(imresize(img, scale), np.floor(np.clip(exact, 0, 255) + 0.5).astype(np.uint8))


def test_modcrop_and_bicubic_shapes():
    img = np.zeros((321, 481, 3), dtype=np.uint8)
    assert modcrop(img, 3).shape == (321, 480, 3)
    assert modcrop(img, 4).shape == (320, 480, 3)
    hr = modcrop(img, 3)
    lr = bicubic_downscale(hr, 3)
    assert lr.shape == (107, 160, 3) and lr.dtype == np.uint8
    assert imresize(hr, 1 / 3).shape == (107, 160, 3)  # 321 * (1/3) is 107.00000000000001 in floating point
    assert bicubic_upscale(lr, 3).shape == (321, 480, 3)


def test_downscale_then_upscale_smooth_image_is_close():
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([128 + 60 * np.sin(xx / 9.0), 128 + 60 * np.cos(yy / 7.0), 100 + xx + yy * 0.5], -1)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    back = bicubic_upscale(bicubic_downscale(img, 2), 2)
    assert np.abs(back.astype(int) - img)[4:-4, 4:-4].max() <= 3


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="multiple of 3"):
        bicubic_downscale(np.zeros((10, 9, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        bicubic_downscale(np.zeros((12, 12, 3), np.float32), 2)
    with pytest.raises(ValueError, match="uint8"):
        bicubic_upscale(np.zeros((4, 4, 3, 1), np.uint8), 2)
    with pytest.raises(ValueError, match="positive integer"):
        bicubic_upscale(np.zeros((4, 4, 3), np.uint8), 1.5)
    with pytest.raises(ValueError, match="scale"):
        imresize(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros(4), 2)
    with pytest.raises(ValueError, match="positive integer"):
        modcrop(np.zeros((4, 4)), 0)
