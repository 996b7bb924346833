"""ECBSR: the collapsed conv equals the multi-branch block (borders included), the deployed form, the families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from srnas.checkpoint import save_trained
from srnas.errors import ConfigError
from srnas.loading import load_trained
from srnas.models import (
    conv_macs,
    count_params,
    create_model,
    deployed_form,
    family_info,
    gmacs,
    list_families,
    list_models,
    model_info,
    register_family,
    register_model,
)
from srnas.models.ecbsr import ECB, ECBSR, EDGE_FILTERS
from srnas.models.plain import PlainNet

ATOL = 1e-5


def _randomise(model: nn.Module, seed: int, spread: float = 0.08) -> None:
    """Every parameter random and non-trivial (edge scales and biases far from their ~1e-3 initialisation), scaled
    so activations stay O(1) and an absolute tolerance of 1e-5 is meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g) * (0.3 if name.endswith(("scale", "bias")) else spread))


def _train_a_little(model: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.rand(x.shape[0], 3, x.shape[2] * model.scale, x.shape[3] * model.scale,
                        generator=torch.Generator().manual_seed(5))
    for _ in range(steps):
        loss = (model(x) - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _input(c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_edge_filters_sum_to_zero() -> None:
    for name, rows in EDGE_FILTERS.items():
        assert sum(map(sum, rows)) == 0, name


@pytest.mark.parametrize(("cin", "cout"), [(3, 8), (8, 8), (8, 12), (5, 3)])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (2, 3), (7, 5), (9, 13)])
def test_ecb_collapse_equals_branches_at_borders(cin: int, cout: int, h: int, w: int) -> None:
    """The single collapsed conv equals the branch-by-branch sum on every pixel, borders included (the supernet's
    tests slice the same class to narrower widths and check ECBSR's branch biases too)."""
    torch.manual_seed(0)
    block = ECB(cin, cout, identity=cin == cout)
    _randomise(block, seed=cin * 100 + cout)
    x = _input(cin, h, w) * 2 - 1
    weight, bias = block.collapse()
    assert weight.shape == (cout, cin, 3, 3) and bias.shape == (cout,)
    with torch.no_grad():
        reference = block.forward_branches(x)
        torch.testing.assert_close(torch.nn.functional.conv2d(x, weight, bias, padding=1), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(block(x), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(block.to_conv()(x), reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize(("blocks", "width"), [(0, 8), (2, 3), (4, 16)])
def test_ecbsr_collapse_equals_multi_branch_network(scale: int, blocks: int, width: int) -> None:
    torch.manual_seed(scale)
    model = ECBSR(scale, width=width, blocks=blocks)
    _randomise(model, seed=blocks * 10 + width)
    _train_a_little(model, _input(3, 7, 9, seed=3))
    x = _input(3, 11, 13, seed=4)
    plain = model.collapse()
    assert isinstance(plain, PlainNet) and not plain.training
    assert (plain.scale, plain.width, plain.depth) == (scale, width, blocks + 2)
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    with torch.no_grad():
        reference = model.forward_branches(x)
        assert reference.abs().max() > 0.1  # not a degenerate, all-residual network
        torch.testing.assert_close(model(x), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(plain(x), reference, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.deploy()(x), reference, atol=ATOL, rtol=0)


def test_ecbsr_bf16_autocast_builds_the_kernel_in_fp32() -> None:
    torch.manual_seed(0)
    block = ECB(8, 8, identity=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight, bias = block.collapse()
        y = block(_input(8, 5, 5))
    assert weight.dtype == torch.float32 and bias.dtype == torch.float32
    assert y.dtype == torch.bfloat16


def test_families_are_registered_and_listed() -> None:
    assert {"ecbsr", "plain"} <= set(list_families())
    names = set(list_models())
    assert {"ecbsr_m4c16", "ecbsr_m4c32", "plain_m4c16", "plain16", "plain32", "plain48"} <= names
    info = family_info("ecbsr")
    assert info.pattern == "ecbsr_m<M>c<C>" and set(info.examples) <= names
    assert model_info("ecbsr_m8c24").family == "ecbsr" and "24 channels" in model_info("ecbsr_m8c24").description
    model = create_model("ecbsr_m2c24", 3)  # not an example: any name in bounds works
    assert isinstance(model, ECBSR) and (model.blocks, model.width, model.scale) == (2, 24, 3)


def test_plain_family_is_the_fixed_plain_net() -> None:
    torch.manual_seed(0)
    fixed = create_model("plain16", 2)
    torch.manual_seed(0)
    member = create_model("plain_m4c16", 2)
    assert isinstance(member, PlainNet) and (member.width, member.depth) == (16, 6)
    assert member.state_dict().keys() == fixed.state_dict().keys()
    for key, value in fixed.state_dict().items():
        torch.testing.assert_close(member.state_dict()[key], value)
    assert create_model("plain_m0c1", 4).depth == 2


@pytest.mark.parametrize("name", ["ecbsr_m04c16", "ecbsr_m4c016", "ecbsr_m4", "ecbsr_mc16", "ecbsr_m-1c16",
                                  "ECBSR_m4c16", "ecbsr_m4c16 ", "ecbsr_m4c16x", "ecbsr-m4c16", "ecbsr_m+4c16"])
def test_malformed_family_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown model .*known models: .*plain16.*families: .*ecbsr_m<M>c<C>"):
        create_model(name, 2)
    with pytest.raises(ConfigError, match="unknown model"):
        model_info(name)


@pytest.mark.parametrize("name", ["ecbsr_m33c16", "ecbsr_m4c257", "ecbsr_m4c0", "plain_m100c8"])
def test_family_bounds_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown model .*needs M in 0\.\.32 and C in 1\.\.256.*known models"):
        create_model(name, 2)


def test_register_family_rejects_clashes() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_family("ecbsr", examples=("ecbsr_m1c1",))(lambda scale, blocks, channels: nn.Identity())
    with pytest.raises(ValueError, match="already a name of family"):
        register_model("ecbsr_m1c2")(lambda scale: nn.Identity())
    with pytest.raises(ValueError, match="not a valid"):
        register_family("newfam", examples=("newfam_m99c1",))(lambda scale, blocks, channels: nn.Identity())
    with pytest.raises(ValueError, match="lower-case"):
        register_family("Bad", examples=("Bad_m1c1",))
    with pytest.raises(ConfigError, match="unknown model family"):
        family_info("nope")


def test_load_trained_returns_the_deployed_plain_net(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("ecbsr_m2c8", 3)
    _randomise(model, seed=7)
    _train_a_little(model, _input(3, 6, 6, seed=2))
    save_trained(tmp_path / "model.pt", model, "ecbsr_m2c8", 3, {})
    loaded = load_trained(tmp_path / "model.pt")
    assert isinstance(loaded, PlainNet) and not loaded.training
    assert (loaded.width, loaded.depth, loaded.scale) == (8, 4, 3)
    x = _input(3, 9, 11, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.forward_branches(x), atol=ATOL, rtol=0)
    # a model without a deployed form comes back as itself
    plain = create_model("plain16", 2)
    save_trained(tmp_path / "plain.pt", plain, "plain16", 2, {})
    assert type(load_trained(tmp_path / "plain.pt")) is PlainNet


def test_complexity_counts_the_deployed_form() -> None:
    model = create_model("ecbsr_m4c16", 2)
    deployed = deployed_form(model)
    assert isinstance(deployed, PlainNet)
    h, w = 36, 64
    plain16_per_pixel = 3 * 16 * 9 + 4 * 16 * 16 * 9 + 16 * 12 * 9
    assert conv_macs(model, h, w) == conv_macs(deployed, h, w) == plain16_per_pixel * h * w
    assert gmacs(model, h, w) == gmacs(create_model("plain16", 2), h, w)
    assert count_params(deployed) == count_params(create_model("plain_m4c16", 2))
    assert count_params(model) > count_params(deployed)  # the training form's branches
    assert model.training  # counting did not change the training model's mode


def test_ecb_training_form_of_a_network_starts_equal_and_collapses_back() -> None:
    """with_ecb_training_form swaps every 3x3 conv of any network for an equal ECB (fine-tuning trains that form);
    after training steps, collapse_ecbs gives plain convs computing what the trained ECB form computes."""
    import copy

    from srnas.arch.network import SubnetSR
    from srnas.arch.space import SubnetConfig
    from srnas.models.ecbsr import ECB, collapse_ecbs, with_ecb_training_form

    torch.manual_seed(0)
    net = SubnetSR(SubnetConfig.from_name("w8-c.w2.s"), 2).eval()
    x = torch.rand(2, 3, 11, 13)
    wrapped = with_ecb_training_form(copy.deepcopy(net))
    ecbs = [m for m in wrapped.modules() if isinstance(m, ECB)]
    assert len(ecbs) == 4  # head, the conv cell, the wdsr cell's 3x3, tail (the 1x1s stay)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x), atol=1e-5, rtol=0)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        (wrapped(x) - x.repeat_interleave(2, -1).repeat_interleave(2, -2)).abs().mean().backward()
        optimizer.step()
    assert all(float(e.edge_scale.detach().abs().sum()) > 0 and float(e.conv_weight.detach().abs().sum()) > 0 for e in ecbs)
    collapsed = collapse_ecbs(copy.deepcopy(wrapped))
    assert isinstance(collapsed, SubnetSR) and not any(isinstance(m, ECB) for m in collapsed.modules())
    with torch.no_grad():
        expected = wrapped(x)
        torch.testing.assert_close(collapsed(x), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(expected, net(x), atol=1e-3)  # it trained
    assert collapsed.state_dict().keys() == net.state_dict().keys()
