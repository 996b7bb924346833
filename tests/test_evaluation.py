import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from srnas.errors import DataError, ImageError
from srnas.evaluation import EvalResult, ImageScore, bicubic_upscaler, evaluate_hr_folder, evaluate_pairs
from srnas.images import write_png
from srnas.imresize import bicubic_downscale, bicubic_upscale, modcrop

# Published bicubic baseline (MATLAB protocol): (set, scale, PSNR, SSIM, PSNR tolerance)
PUBLISHED = [
    ("Set5", 2, 33.66, 0.9299, 0.02),
    ("Set5", 3, 30.39, 0.8682, 0.02),
    ("Set5", 4, 28.42, 0.8104, 0.02),
    ("B100", 2, 29.56, 0.8431, 0.02),
    ("B100", 3, 27.21, 0.7385, 0.02),
    ("B100", 4, 25.96, 0.6675, 0.02),
    # Set14 copies differ between sources (grayscale bridge, crops): up to ~0.1 dB
    ("Set14", 2, 30.24, 0.8688, 0.1),
    ("Set14", 3, 27.55, 0.7742, 0.1),
    ("Set14", 4, 26.00, 0.7027, 0.1),
]
IMAGES = {"Set5": 5, "Set14": 14, "B100": 100}


@pytest.mark.parametrize(("name", "scale", "psnr", "ssim", "tol"), PUBLISHED, ids=[f"{p[0]}-x{p[1]}" for p in PUBLISHED])
def test_bicubic_reproduces_published_numbers(shared_data, name, scale, psnr, ssim, tol):
    result = evaluate_hr_folder(bicubic_upscaler(scale), shared_data / name, scale)
    assert result.images == IMAGES[name]
    assert abs(result.psnr - psnr) <= tol, f"{name} x{scale}: PSNR {result.psnr:.4f}, published {psnr}"
    assert abs(result.ssim - ssim) <= 0.002, f"{name} x{scale}: SSIM {result.ssim:.5f}, published {ssim}"


def _smooth_image(seed, h=40, w=52):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    ph = rng.random(3) * 6
    img = np.stack([128 + 90 * np.sin(xx / (5 + c) + yy / 11 + ph[c]) for c in range(3)], -1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pairs(scale, n=3):
    out = []
    for i in range(n):
        hr = modcrop(_smooth_image(i), scale)
        out.append((f"img{i}", hr, bicubic_downscale(hr, scale)))
    return out


def test_evaluate_pairs_means_and_result_shape():
    pairs = _pairs(2)
    result = evaluate_pairs(bicubic_upscaler(2), pairs, 2)
    assert result.images == 3
    assert [s.name for s in result.per_image] == ["img0", "img1", "img2"]
    assert result.psnr == pytest.approx(np.mean([s.psnr for s in result.per_image]))
    assert result.ssim == pytest.approx(np.mean([s.ssim for s in result.per_image]))
    assert 25 < result.psnr < 60 and 0.5 < result.ssim < 1
    # a generator works as well as a list
    assert evaluate_pairs(bicubic_upscaler(2), iter(pairs), 2) == result
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.psnr = 0.0  # type: ignore[misc]


def test_evaluate_pairs_perfect_upscaler_gives_inf_and_json_is_valid():
    pairs = _pairs(3, n=2)
    hr_by_lr = {lr.tobytes(): hr for _, hr, lr in pairs}
    result = evaluate_pairs(lambda lr: hr_by_lr[lr.tobytes()], pairs, 3)
    assert result.psnr == math.inf and result.ssim == pytest.approx(1.0)
    data = result.to_json()
    assert set(data) == {"psnr", "ssim", "images", "per_image"}
    assert data["images"] == 2 and data["per_image"][0]["name"] == "img0"
    json.dumps(data, allow_nan=False)


def test_to_json_values():
    r = EvalResult(psnr=30.5, ssim=0.9, images=1, per_image=(ImageScore("a", 30.5, 0.9),))
    assert r.to_json() == {"psnr": 30.5, "ssim": 0.9, "images": 1, "per_image": [{"name": "a", "psnr": 30.5, "ssim": 0.9}]}


def test_evaluate_pairs_rejects_bad_upscaler_output_and_empty_input():
    pairs = _pairs(2, n=1)
    with pytest.raises(ValueError, match="img0.*HR shape"):
        evaluate_pairs(lambda lr: lr, pairs, 2)
    with pytest.raises(ValueError, match="img0.*float64"):
        evaluate_pairs(lambda lr: bicubic_upscale(lr, 2).astype(np.float64), pairs, 2)
    with pytest.raises(DataError):
        evaluate_pairs(bicubic_upscaler(2), [], 2)
    with pytest.raises(ValueError, match="scale"):
        evaluate_pairs(bicubic_upscaler(2), pairs, 0)


def _write_folder(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(folder / f"img{i}.png", _smooth_image(i, 41, 53))  # not multiples of the scale: modcrop needed
    return folder


def test_evaluate_hr_folder_matches_evaluate_pairs(tmp_path):
    folder = _write_folder(tmp_path / "hr")
    (folder / "notes.txt").write_text("not an image, not listed")
    result = evaluate_hr_folder(bicubic_upscaler(4), folder, 4)
    assert result.images == 2
    assert result == evaluate_pairs(bicubic_upscaler(4), [(n, hr, lr) for n, hr, lr in _pairs_from(folder, 4)], 4)


def _pairs_from(folder, scale):
    from srnas.images import read_rgb

    for p in sorted(folder.glob("*.png")):
        hr = modcrop(read_rgb(p), scale)
        yield p.stem, hr, bicubic_downscale(hr, scale)


def test_evaluate_hr_folder_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match="nope"):
        evaluate_hr_folder(bicubic_upscaler(2), tmp_path / "nope", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty.*no images"):
        evaluate_hr_folder(bicubic_upscaler(2), tmp_path / "empty", 2)


def test_evaluate_hr_folder_bad_image_raises_or_is_skipped_with_warning(tmp_path):
    folder = _write_folder(tmp_path / "hr")
    (folder / "bad.png").write_text("this is text, not a PNG")
    with pytest.raises(ImageError, match="bad.png"):
        evaluate_hr_folder(bicubic_upscaler(2), folder, 2)
    with pytest.warns(UserWarning, match="bad.png"):
        result = evaluate_hr_folder(bicubic_upscaler(2), folder, 2, skip_bad_images=True)
    assert result.images == 2
    assert [s.name for s in result.per_image] == ["img0", "img1"]


def test_evaluate_hr_folder_too_small_image_and_all_bad(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    write_png(folder / "tiny.png", np.zeros((12, 12, 3), np.uint8))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageError, match="bad.png"):
        evaluate_hr_folder(bicubic_upscaler(2), folder, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="none of its 2 images"):
            evaluate_hr_folder(bicubic_upscaler(2), folder, 2, skip_bad_images=True)
    messages = [str(w.message) for w in caught]
    assert any("bad.png" in m for m in messages) and any("tiny.png" in m and "too small" in m for m in messages)


def test_bicubic_upscaler():
    lr = _smooth_image(0, 10, 12)
    assert bicubic_upscaler(3)(lr).shape == (30, 36, 3)
    np.testing.assert_array_equal(bicubic_upscaler(2)(lr), bicubic_upscale(lr, 2))
    with pytest.raises(ValueError):
        bicubic_upscaler(0)


def test_torch_upscaler_scores_in_the_deployed_precision() -> None:
    """bf16 runs as the torch_bf16 runtime deploys it (autocast): close to fp32, but not the same arithmetic."""
    import numpy as np
    import torch

    from srnas.inference import torch_upscaler
    from srnas.models.plain import PlainNet

    torch.manual_seed(0)
    model = PlainNet(2, 16, 4).eval()
    lr = np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    fp32, bf16 = torch_upscaler(model)(lr), torch_upscaler(model, "bf16")(lr)
    assert fp32.shape == bf16.shape == (40, 48, 3)
    diff = np.abs(fp32.astype(int) - bf16.astype(int))
    assert diff.max() <= 8 and diff.any()
    with pytest.raises(ValueError, match="precision 'int8'"):
        torch_upscaler(model, "int8")
