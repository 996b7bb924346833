"""Every registered model: shapes, gradients, channels-last parity; the registry and the complexity counters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srnas.errors import ConfigError
from srnas.models import conv_macs, count_params, create_model, gmacs, list_models, model_info, register_model
from srnas.models.plain import PlainNet

SCALES = (2, 3, 4)
CASES = [(name, scale) for name in list_models() for scale in SCALES]


def _input(h: int = 11, w: int = 14, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def test_registry_lists_the_baselines() -> None:
    assert {"bicubic", "espcn", "fsrcnn", "plain16", "plain32", "plain48"} <= set(list_models())
    assert list_models() == sorted(list_models())
    assert model_info("bicubic").has_weights is False
    assert model_info("plain32").has_weights is True
    assert model_info("espcn").description


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_forward_backward(name: str, scale: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, scale)
    assert model.scale == scale
    x = _input()
    x.requires_grad_(True)
    y = model(x)
    assert y.shape == (2, 3, 11 * scale, 14 * scale)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    if not model_info(name).has_weights:
        assert count_params(model) == 0
        assert model.has_weights is False and model.trainable is False
        return
    assert model.has_weights is True
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_channels_last_matches_contiguous(name: str, scale: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, scale).eval()
    x = _input(9, 12)
    with torch.no_grad():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_bicubic_is_torch_bicubic_clamped() -> None:
    x = _input(8, 8)
    y = create_model("bicubic", 3)(x)
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False).clamp(0, 1))
    assert y.min() >= 0 and y.max() <= 1


def test_plain_net_global_residual_is_nearest_upsample() -> None:
    """With the last conv zeroed the network outputs the nearest-neighbour upsample of its input."""
    model = create_model("plain16", 3)
    assert isinstance(model, PlainNet) and model.width == 16 and model.depth == 6
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    tail = model.body[-1]
    nn.init.zeros_(tail.weight)
    nn.init.zeros_(tail.bias)
    x = _input(5, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.interpolate(x, scale_factor=3, mode="nearest"))


def test_unknown_model_and_bad_scale_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*plain16"):
        create_model("nope", 2)
    with pytest.raises(ConfigError, match=r"scale 5 is not supported"):
        create_model("espcn", 5)
    with pytest.raises(ConfigError, match="unknown model"):
        model_info("nope")


def test_register_rejects_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("espcn")(lambda scale: nn.Identity())
    with pytest.raises(ValueError, match="lower-case"):
        register_model("Bad Name")


def test_param_counts() -> None:
    # plain16 x2: 3->16, 4 x 16->16, 16->12 3x3 convs with biases
    assert count_params(create_model("plain16", 2)) == (3 * 16 * 9 + 16) + 4 * (16 * 16 * 9 + 16) + (16 * 12 * 9 + 12)
    # ESPCN x3: 5x5 3->64, 3x3 64->32, 3x3 32->27
    assert count_params(create_model("espcn", 3)) == (3 * 64 * 25 + 64) + (64 * 32 * 9 + 32) + (32 * 27 * 9 + 27)


def test_conv_macs_match_hand_counts() -> None:
    h, w = 36, 64
    plain16_per_pixel = 3 * 16 * 9 + 4 * 16 * 16 * 9 + 16 * 12 * 9  # 11376: 2.62 GMAC at 640x360
    assert conv_macs(create_model("plain16", 2), h, w) == plain16_per_pixel * h * w
    assert gmacs(create_model("plain16", 2), h, w) == pytest.approx(plain16_per_pixel * h * w / 1e9)
    # FSRCNN(56, 12, 4) x2: convs at LR size; the 9x9 deconv scatters each LR pixel into 3 * 81 outputs
    fsrcnn_per_pixel = 3 * 56 * 25 + 56 * 12 + 4 * 12 * 12 * 9 + 12 * 56 + 56 * 3 * 81
    assert conv_macs(create_model("fsrcnn", 2), 10, 20) == fsrcnn_per_pixel * 200
    assert conv_macs(create_model("bicubic", 2), 10, 20) == 0
