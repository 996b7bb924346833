"""The SR supernet: search space (size, JSON), standalone subnets (equality, export, profiling), sandwich
training (loss goes down, exact resume after SIGKILL), the train-supernet command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, config_of, kill_at_first_checkpoint, smooth_image
from torch import nn

from srnas.arch.network import SubnetSR, load_network, save_network
from srnas.arch.space import CellConfig, SearchSpace, SubnetConfig, subnet_macs_per_pixel
from srnas.checkpoint import CheckpointError, load_checkpoint
from srnas.config import SearchSpaceConfig, SupernetConfig, SupernetTrainConfig
from srnas.errors import ConfigError, DataError
from srnas.images import write_png
from srnas.models import count_params, gmacs
from srnas.supernet import SRSupernet, load_supernet, save_supernet
from srnas.supernet.layers import DynamicConv2d, DynamicECB
from srnas.supernet.train import patch_generator, sandwich_subnets, train_supernet

SCALE = 2
SMALL_SPACE = SearchSpaceConfig(num_cells=4, widths=(8, 16, 24), blocks=("conv", "wdsr", "skip"), expansions=(2, 4))
TINY_SPACE = SearchSpaceConfig(num_cells=3, widths=(8, 16), blocks=("conv", "wdsr", "skip"), expansions=(2,))
TINY_TRAIN = SupernetTrainConfig(steps=60, batch_size=4, lr_patch_size=8, lr=2e-3, min_lr=1e-4, seed=3, checkpoint_every=0,
                                 log_every=15, num_random=1)
TINY = SupernetConfig(scale=SCALE, space=TINY_SPACE, train=TINY_TRAIN)


# --- data ---------------------------------------------------------------------------------------------




def write_prepared(root: Path, sets: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """Tiny smooth images in the prepared-data layout: ``root/<set>/x2/{hr,lr}/img<i>.png``."""
    rng = np.random.default_rng(seed)
    for name, count in sets.items():
        for i in range(count):
            hr = smooth_image(rng, size)
            lr = np.rint(hr.reshape(size // SCALE, SCALE, size // SCALE, SCALE, 3).mean(axis=(1, 3))).astype(np.uint8)
            write_png(root / name / f"x{SCALE}" / "hr" / f"img{i}.png", hr)
            write_png(root / name / f"x{SCALE}" / "lr" / f"img{i}.png", lr)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepare_data"), {"train": 4, "val": 2})


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, dict]]]:
    """One uninterrupted tiny run: its output folder and the metrics it reported."""
    out = tmp_path_factory.mktemp("reference")
    seen: list[tuple[int, dict]] = []
    train_supernet(data_dir, TINY, out, on_metrics=lambda m, s: seen.append((s, dict(m))), progress=False)
    return out, seen


# --- search space -------------------------------------------------------------------------------------


def test_subnet_config_json_and_name_round_trip() -> None:
    space = SearchSpace(SMALL_SPACE)
    rng = np.random.default_rng(0)
    for cfg in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(20))]:
        assert SubnetConfig.from_json(cfg.to_json()) == cfg
        assert SubnetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert SubnetConfig.from_name(cfg.name) == cfg
    cfg = SubnetConfig(24, (CellConfig("conv"), CellConfig("wdsr", 4), CellConfig("skip")))
    assert cfg.name == "w24-c.w4.s" and cfg.depth == 2 + 1 + 3
    assert json.loads(cfg.to_json()) == {"width": 24, "cells": [{"block": "conv", "expand": 0}, {"block": "wdsr", "expand": 4},
                                                                {"block": "skip", "expand": 0}]}
    assert SearchSpace.from_json(space.to_json()) == space
    assert SearchSpace.from_json(space.to_json()).config == SMALL_SPACE
    with pytest.raises(ConfigError, match="unknown block 'pool'"):
        SubnetConfig.from_json('{"width": 8, "cells": [{"block": "pool", "expand": 0}]}')
    with pytest.raises(ConfigError, match="expand is only for wdsr"):
        CellConfig("conv", 2)
    with pytest.raises(ConfigError, match="not valid JSON"):
        SubnetConfig.from_json("{width")
    with pytest.raises(ConfigError, match=r"w<width>"):
        SubnetConfig.from_name("24-c.c")


def test_space_size_counts_every_distinct_subnet() -> None:
    assert SearchSpace().size() == len(SearchSpaceConfig().widths) * 4 ** SearchSpaceConfig().num_cells
    tiny = SearchSpace(SearchSpaceConfig(num_cells=2, widths=(8, 16), blocks=("conv", "wdsr", "skip"), expansions=(2, 4)))
    assert tiny.size() == 2 * 4 ** 2
    rng = np.random.default_rng(0)
    seen = {tiny.sample(rng) for _ in range(2000)}
    assert len(seen) == tiny.size() and all(s in tiny for s in seen)
    assert "size: 2 x 4^2 = 32 subnets" in tiny.describe()
    assert tiny.largest() == SubnetConfig(16, (CellConfig("wdsr", 4),) * 2)
    assert tiny.smallest() == SubnetConfig(8, (CellConfig("skip"),) * 2)
    no_skip = SearchSpace(SearchSpaceConfig(num_cells=3, widths=(8,), blocks=("conv",), expansions=(2,)))
    assert no_skip.size() == 1 and no_skip.largest() == no_skip.smallest()


def test_space_validation_names_what_does_not_fit() -> None:
    space = SearchSpace(SMALL_SPACE)
    with pytest.raises(ConfigError, match="width 12 not in"):
        space.validate(SubnetConfig(12, (CellConfig("conv"),) * 4))
    with pytest.raises(ConfigError, match="3 cells, the space has 4"):
        space.validate(SubnetConfig(8, (CellConfig("conv"),) * 3))
    with pytest.raises(ConfigError, match=r"cell 1 \(w3\)"):
        space.validate(SubnetConfig(8, (CellConfig("conv"), CellConfig("wdsr", 3), CellConfig("skip"), CellConfig("skip"))))
    with pytest.raises(ConfigError, match=r"supernet\.space\.widths: must be strictly increasing"):
        config_of(SupernetConfig, {"space": {"widths": [16, 8]}}, "supernet")
    with pytest.raises(ConfigError, match=r"supernet\.space\.blocks: unknown block 'pool'"):
        config_of(SupernetConfig, {"space": {"blocks": ["conv", "pool"]}}, "supernet")
    with pytest.raises(ConfigError, match=r"supernet\.train\.distill: must be between 0 and 1"):
        config_of(SupernetConfig, {"train": {"distill": 1.5}}, "supernet")
    with pytest.raises(ConfigError, match=r"supernet\.train\.steps"):
        config_of(SupernetConfig, {"train": {"steps": 0}}, "supernet")
    with pytest.raises(ConfigError, match=r"supernet\.reparam: expected one of ecb, identity, got 'rep'"):
        config_of(SupernetConfig, {"reparam": "rep"}, "supernet")
    cfg = config_of(SupernetConfig, {"scale": 4, "train": {"num_random": 0, "bf16": "off"}}, "supernet")
    assert cfg.scale == 4 and cfg.train.num_random == 0 and cfg.train.batch_size == 32


# --- supernet and standalone subnets ---------------------------------------------------------------------


def _plain_module_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if not list(m.children())}


def _randomise_ecb(module: DynamicECB, generator: torch.Generator) -> None:
    """Every parameter of an ECB drawn afresh so that every branch contributes (its init leaves branch (c) near zero
    and any branch biases at zero): conv weights at ``nn.Conv2d``'s scale, biases of the order of 0.1, edge scales of
    either sign around 0.1 (the Sobel filters sum |8| over a kernel, so larger scales would let the activations grow)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if name in ("weight", "conv_weight", "expand_weight") else p.shape[-1]
            if name.endswith("bias"):
                p.copy_(0.2 * torch.rand(p.shape, generator=generator) - 0.1)
            elif name == "edge_scale":
                sign = torch.sign(torch.randn(p.shape, generator=generator))
                p.copy_((0.05 + 0.1 * torch.rand(p.shape, generator=generator)) * sign)
            else:
                p.copy_((2 * torch.rand(p.shape, generator=generator) - 1) / fan_in ** 0.5)


def _branch_by_branch(net: SRSupernet, x: torch.Tensor, cfg: SubnetConfig) -> torch.Tensor:
    """``net(x, cfg)`` with every ECB computed branch by branch (bias-padded 1x1 outputs), not through its collapsed
    kernel: the independent computation the collapsed forms are held to."""
    def conv(layer: nn.Module, h: torch.Tensor, out: int) -> torch.Tensor:
        return layer.forward_branches(h, out) if isinstance(layer, DynamicECB) else layer(h, out)

    residual = torch.repeat_interleave(x, net.scale ** 2, dim=1)
    h = torch.relu(conv(net.head, x, cfg.width))
    for cell, dyn in zip(cfg.cells, net.cells):
        if cell.block == "conv" and isinstance(dyn.conv, DynamicECB):
            h = torch.relu(dyn.conv.forward_branches(h, cfg.width))
        else:
            h = dyn(h, cell)
    return net.upsample(conv(net.tail, h, 3 * net.scale ** 2) + residual)


@pytest.mark.parametrize("reparam", ["identity", "ecb"])
@pytest.mark.parametrize("scale", [2, 4])
def test_get_active_subnet_matches_the_supernet(scale: int, reparam: str) -> None:
    torch.manual_seed(0)
    space = SearchSpace(SMALL_SPACE)
    net = SRSupernet(space, scale, reparam).eval()
    assert net.reparam == reparam
    assert isinstance(net.head, DynamicECB if reparam == "ecb" else DynamicConv2d)
    with torch.no_grad():  # non-trivial biases, so a dropped or misplaced bias cannot hide
        for p in net.parameters():
            if p.ndim == 1:
                p.uniform_(-0.1, 0.1)
    ecbs = [m for m in net.modules() if isinstance(m, DynamicECB)]
    assert len(ecbs) == (2 + SMALL_SPACE.num_cells if reparam == "ecb" else 0)
    generator = torch.Generator().manual_seed(scale)
    for module in ecbs:  # every branch of every ECB non-trivial
        _randomise_ecb(module, generator)
    rng = np.random.default_rng(scale)
    configs = [space.largest(), space.smallest(), SubnetConfig(16, (CellConfig("conv"),) * 4),
               *(space.sample(rng) for _ in range(6))]
    x = torch.rand(2, 3, 13, 17)
    for cfg in configs:
        sub = net.get_active_subnet(cfg)
        assert isinstance(sub, SubnetSR) and sub.subnet == cfg and sub.scale == scale
        assert _plain_module_types(sub) <= {nn.Conv2d, nn.ReLU, nn.PixelShuffle, nn.Sequential}  # empty: all skip
        with torch.no_grad():
            expected = net(x, cfg)
            net.set_active_subnet(cfg)
            assert torch.equal(net(x), expected)
            out = sub.eval()(x)
            branches = _branch_by_branch(net, x, cfg)
        assert out.shape == (2, 3, 13 * scale, 17 * scale)
        assert float((out - expected).abs().max()) <= 1e-6, cfg.name
        # the collapsed network against the branches computed one by one, image borders included
        assert float((out - branches).abs().max()) <= 1e-5, cfg.name
        if reparam == "ecb":
            assert float(branches.abs().max()) > 0.5  # the comparison is not between near-zero outputs
        assert gmacs(sub, 13, 17) * 1e9 == subnet_macs_per_pixel(cfg, scale) * 13 * 17
        fresh = SubnetSR(cfg, scale)
        assert count_params(fresh) == count_params(sub)
        fresh.load_state_dict(sub.state_dict())  # same architecture, same keys
    # the copy is independent of the supernet
    sub = net.get_active_subnet(space.largest())
    with torch.no_grad():
        sub.head.weight.zero_()
    assert float(net.head.weight.detach().abs().sum()) > 0
    assert net.sample_active_subnet(np.random.default_rng(1)) == net.active_subnet
    with pytest.raises(ConfigError, match="not in the space"):
        net.set_active_subnet(SubnetConfig(40, space.largest().cells))


def test_ecb_collapses_exactly_with_bias_padding_and_trains_every_branch() -> None:
    """One ECB, elastic widths: the collapsed conv equals the branches (borders included) only with bias padding,
    and training through the collapsed kernel gives every branch parameter the gradient the branches give it."""
    generator = torch.Generator().manual_seed(0)
    cases = [(True, (24, 24), (16, 16)), (False, (3, 24), (3, 8)), (False, (24, 12), (8, 12))]
    for branch_biases, (identity, (max_in, max_out), (cin, cout)) in [(b, case) for b in (True, False) for case in cases]:
        layer = DynamicECB(max_in, max_out, identity=identity, branch_biases=branch_biases)
        biases = {"expand_bias", "conv_bias", "edge_bias"}
        assert biases <= dict(layer.named_parameters()).keys() if branch_biases else not biases & dict(layer.named_parameters()).keys()
        buffers = {name for name, _ in layer.named_buffers()}
        assert buffers == ({"edge_filters", "identity_kernel"} if identity else {"edge_filters"})
        assert not buffers & set(layer.state_dict())  # derived from constants, not saved
        _randomise_ecb(layer, generator)
        x = torch.randn(2, cin, 9, 11, generator=generator)
        with torch.no_grad():
            collapsed = layer(x, cout)
            branches = layer.forward_branches(x, cout)
            zero_padded = layer.forward_branches(x, cout, bias_padding=False)
            exported = layer.export(cin, cout)(x)
        assert collapsed.shape == (2, cout, 9, 11)
        assert float((collapsed - branches).abs().max()) <= 1e-5
        assert float((collapsed - exported).abs().max()) <= 1e-6
        interior = (collapsed - zero_padded)[..., 1:-1, 1:-1]
        assert float(interior.abs().max()) <= 1e-5  # zero padding differs only along the border ...
        if branch_biases:
            assert float((collapsed - zero_padded).abs().max()) > 1e-3  # ... where it does differ, with biased 1x1s
        else:
            assert float((collapsed - zero_padded).abs().max()) <= 1e-5  # (without, the ring is zero either way)
        weight, bias = layer.kernel(cin, cout)
        assert weight.shape == (cout, cin, 3, 3) and bias.shape == (cout,) and weight.dtype == torch.float32
        grads = []
        for forward in (layer.forward, layer.forward_branches):
            layer.zero_grad(set_to_none=True)
            (forward(x, cout) * torch.linspace(-1, 1, 11)).square().mean().backward()
            grads.append({name: p.grad.clone() for name, p in layer.named_parameters()})
        for name, grad in grads[0].items():
            assert float(grad.abs().max()) > 0, name
            assert torch.allclose(grad, grads[1][name], rtol=1e-4, atol=1e-6), name
        with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the kernel is still built in fp32
            assert layer.kernel(cin, cout)[0].dtype == torch.float32
            assert layer(x, cout).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="maps a width to itself"):
        DynamicECB(16, 16, identity=True)(torch.rand(1, 8, 4, 4), 16)
    with pytest.raises(ValueError, match="do not fit"):
        DynamicECB(8, 16, identity=False)(torch.rand(1, 12, 4, 4), 16)


def test_supernet_file_keeps_its_training_form(tmp_path: Path) -> None:
    torch.manual_seed(0)
    space = SearchSpace(TINY_SPACE)
    cfg = SubnetConfig(16, (CellConfig("conv"), CellConfig("wdsr", 2), CellConfig("conv")))
    x = torch.rand(1, 3, 8, 8)
    for reparam in ("ecb", "identity"):
        net = SRSupernet(space, SCALE, reparam)
        save_supernet(tmp_path / f"{reparam}.pt", net)
        again = load_supernet(tmp_path / f"{reparam}.pt")
        assert again.reparam == reparam
        with torch.no_grad():
            assert torch.equal(again(x, cfg), net.eval()(x, cfg))
    # a file written before `reparam` existed holds the identity form
    payload = torch.load(tmp_path / "identity.pt", weights_only=True)
    del payload["reparam"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_supernet(tmp_path / "old.pt").reparam == "identity"
    payload = torch.load(tmp_path / "ecb.pt", weights_only=True)
    del payload["reparam"]
    torch.save(payload, tmp_path / "old_ecb.pt")
    with pytest.raises(CheckpointError, match=r"(?s)old_ecb\.pt.*Unexpected key"):  # ECB weights are not an identity supernet's
        load_supernet(tmp_path / "old_ecb.pt")
    with pytest.raises(ConfigError, match="supernet.reparam"):
        SRSupernet(space, SCALE, "repvgg")


def test_all_conv_subnet_is_a_plain_net() -> None:
    from srnas.models.plain import PlainNet

    torch.manual_seed(0)
    space = SearchSpace(SMALL_SPACE)
    net = SRSupernet(space, SCALE)
    sub = net.get_active_subnet(SubnetConfig(16, (CellConfig("conv"),) * 4)).eval()
    plain = PlainNet(SCALE, width=16, depth=6).eval()
    convs = [m for m in sub.modules() if isinstance(m, nn.Conv2d)]
    plain_convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for a, b in zip(convs, plain_convs, strict=True):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
        x = torch.rand(1, 3, 9, 11)
        assert torch.equal(sub(x), plain(x))


def test_standalone_subnet_exports_to_onnx_with_parity_and_profiles(tmp_path: Path) -> None:
    from srnas.export import check_parity, export_onnx
    from srnas.profiling import profile_module

    torch.manual_seed(0)
    space = SearchSpace(SMALL_SPACE)
    net = SRSupernet(space, SCALE)
    cfg = SubnetConfig(16, (CellConfig("wdsr", 2), CellConfig("skip"), CellConfig("conv"), CellConfig("wdsr", 4)))
    sub = net.get_active_subnet(cfg)
    path = export_onnx(sub, tmp_path / "subnet.onnx", sample_hw=(24, 24))
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))]
    report = check_parity(sub, path, images, SCALE)
    assert report.passed and report.max_abs_diff_random <= 1e-4
    latency = profile_module(sub, "torch_fp32", (16, 16), threads=1, warmup=0, runs=2)
    assert latency.median_ms > 0 and latency.input_shape == (1, 3, 16, 16)
    save_network(tmp_path / "subnet.pt", sub)
    again = load_network(tmp_path / "subnet.pt")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), sub.eval()(x))


# --- sandwich training ------------------------------------------------------------------------------------


def test_sandwich_subnets_and_patch_generators_are_seeded() -> None:
    space = SearchSpace(SMALL_SPACE)
    a = sandwich_subnets(space, 0, 5, 3)
    assert a == sandwich_subnets(space, 0, 5, 3)
    assert a[0] == space.largest() and a[1] == space.smallest() and len(a) == 5
    assert a != sandwich_subnets(space, 0, 6, 3)
    draws = [torch.randint(0, 1 << 30, (4,), generator=patch_generator(0, 5, rank)) for rank in (0, 1, 0)]
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "supernet.pt", weights_only=True)["state_dict"]


def test_sandwich_training_loss_goes_down(reference: tuple[Path, list[tuple[int, dict]]], data_dir: Path) -> None:
    out, seen = reference
    logged = [(s, m) for s, m in seen if "train_loss" in m]
    assert [s for s, _ in logged] == [15, 30, 45, 60]
    first, last = logged[0][1], logged[-1][1]
    assert last["train_loss"] < 0.85 * first["train_loss"], (first, last)
    assert last["loss_smallest"] < first["loss_smallest"], (first, last)
    assert {"loss_random", "lr", "steps_per_s"} <= set(last)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["scale"] == SCALE and metrics["sandwich"] == 3
    assert metrics["space_size"] == SearchSpace(TINY_SPACE).size() and metrics["world_size"] == 1
    assert metrics["final_loss"] == pytest.approx(last["train_loss"])
    assert metrics["val_set"] == "val" and 15 < metrics["val_psnr_largest"] < 60 and 15 < metrics["val_psnr_smallest"] < 60
    final = seen[-1][1]
    assert final["val_psnr_largest"] == pytest.approx(metrics["val_psnr_largest"])
    # the trained largest and smallest subnets beat their initialisation (seeded like train_supernet seeds it)
    trained = load_supernet(out / "supernet.pt")
    torch.manual_seed(TINY_TRAIN.seed)
    initial = SRSupernet(SearchSpace(TINY_SPACE), SCALE).eval()
    from srnas.training import PatchSampler, load_pairs

    sampler = PatchSampler(load_pairs(data_dir / "train" / f"x{SCALE}", SCALE), 8)
    lr, hr = sampler.sample(64, patch_generator(99, 0, 0), augment=False, channels_last=False)
    space = SearchSpace(TINY_SPACE)
    with torch.no_grad():
        for cfg in (space.largest(), space.smallest()):
            before = float((initial(lr, cfg) - hr).abs().mean())
            after = float((trained.get_active_subnet(cfg)(lr) - hr).abs().mean())
            assert after < 0.8 * before, (cfg.name, before, after)
    assert load_checkpoint(out / "last.ckpt")["step"] == 60


_CHILD = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    from srnas.config import SupernetConfig, from_mapping
    from srnas.supernet.train import train_supernet
    torch.set_num_threads(int(sys.argv[3]))
    cfg = from_mapping(SupernetConfig, json.loads(sys.argv[4]), "child")
    train_supernet(Path(sys.argv[1]), cfg, Path(sys.argv[2]), progress=False)
""")


def _as_mapping(cfg: SupernetConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def test_resume_after_sigkill_matches_uninterrupted(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    steps = 80  # long enough that the child is still training when its first checkpoint appears
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY_TRAIN, steps=steps, checkpoint_every=4, log_every=7))
    kill_at_first_checkpoint([sys.executable, "-c", _CHILD, str(data_dir), str(out), str(torch.get_num_threads()),
                              json.dumps(_as_mapping(cfg))], out / "last.ckpt")
    killed_at = load_checkpoint(out / "last.ckpt")["step"]
    assert 4 <= killed_at < steps and killed_at % 4 == 0
    assert not (out / "supernet.pt").exists()

    result = train_supernet(data_dir, cfg, out, progress=False)
    assert result.resumed_from_step == killed_at
    straight = train_supernet(data_dir, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=0)),
                              tmp_path / "straight", resume=False, progress=False)
    assert_same_weights(_weights(out), _weights(tmp_path / "straight"))
    assert result.final_loss == pytest.approx(straight.final_loss, abs=1e-6)
    assert list(out.glob(".*tmp*")) == []


def test_resume_ignores_a_checkpoint_for_another_config(data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY_TRAIN, steps=3))
    train_supernet(data_dir, cfg, tmp_path, progress=False)
    assert train_supernet(data_dir, cfg, tmp_path, progress=False).resumed_from_step == 3
    other_space = dataclasses.replace(cfg, space=dataclasses.replace(TINY_SPACE, widths=(8, 24)))
    assert train_supernet(data_dir, other_space, tmp_path, progress=False).resumed_from_step == 0
    assert "different space, config, data or process count" in caplog.text
    (tmp_path / "last.ckpt").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"last\.ckpt"):
        train_supernet(data_dir, cfg, tmp_path, progress=False)
    assert train_supernet(data_dir, cfg, tmp_path, resume=False, progress=False).resumed_from_step == 0


def test_missing_data_and_bad_batch_are_clear_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x4.*prepare-data"):
        train_supernet(data_dir, dataclasses.replace(TINY, scale=4), tmp_path / "a", progress=False)
    with pytest.raises(DataError, match=r"Set5.*not found"):
        train_supernet(data_dir, TINY, tmp_path / "b", val_set="Set5", progress=False)


# --- the command ------------------------------------------------------------------------------------------


def _args(overlay: Path, **kwargs: object) -> argparse.Namespace:
    """The command's arguments: the repository's params.yaml with ``overlay`` on top."""
    base = {"params": Path(__file__).resolve().parents[1] / "params.yaml", "overlay": [overlay], "config_json": None,
            "log": None, "data_dir": None, "out": None, "no_resume": False, "describe": False, "json": False}
    return argparse.Namespace(**{**base, **kwargs})


def test_train_supernet_command(data_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from srnas.commands import supernet as command

    params = tmp_path / "overlay.yaml"
    section = _as_mapping(dataclasses.replace(TINY, train=dataclasses.replace(TINY_TRAIN, steps=4, log_every=2)))
    params.write_text(json.dumps({"tracking": {"enabled": False}, "supernet": section}))
    assert command.run(_args(params, describe=True)) == 0
    assert f"= {SearchSpace(TINY_SPACE).size():,} subnets" in capsys.readouterr().out
    out = tmp_path / "results" / "train_supernet"
    assert command.run(_args(params, data_dir=data_dir, out=out, json=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 4 and printed["supernet_path"] == str(out / "supernet.pt")
    assert sorted(p.name for p in out.iterdir()) == ["last.ckpt", "supernet.pt", "train_log.csv", "train_metrics.json"]
    assert json.loads((out / "train_metrics.json").read_text())["steps"] == 4
    assert load_supernet(out / "supernet.pt").space == SearchSpace(TINY_SPACE)
