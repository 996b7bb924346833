"""Physical filter pruning of a subnet: keep-all is the identity, pruning equals masking the removed filters
in the original network, the most important filters are kept, streams stay aligned, keep ratios round to the
granularity, pruned networks save and load, and mismatches are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from srnas.arch.network import SubnetSR, load_network, save_network
from srnas.arch.pruned import PrunedSubnet, as_pruned, full_channels
from srnas.arch.space import CellConfig, SubnetConfig
from srnas.checkpoint import CheckpointError, save_checkpoint
from srnas.errors import ConfigError
from srnas.latency.layers import network_layers
from srnas.loading import load_trained
from srnas.models import count_params
from srnas.pruning import CRITERIA, filter_importance, kept_channels, prunable_convs, prune_subnet, pruned_from_keep

CONV, SKIP = CellConfig("conv"), CellConfig("skip")
W2, W4 = CellConfig("wdsr", 2), CellConfig("wdsr", 4)
# conv order: head, expand, reduce, wdsr conv (tied to the head), conv, expand, reduce, wdsr conv (tied to conv)
MIXED = SubnetConfig(8, (W2, CONV, SKIP, W4))
MIXED_PRUNED = PrunedSubnet(MIXED, (5, 10, 6, 5, 6, 20, 3, 6))


def _subnet(config: SubnetConfig, scale: int, seed: int = 0) -> SubnetSR:
    """A random SubnetSR with non-trivial biases (a dropped or misplaced bias cannot hide)."""
    torch.manual_seed(seed)
    model = SubnetSR(config, scale)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(-0.2, 0.2)
    return model.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _conv_list(model: nn.Module) -> list[nn.Conv2d]:
    """Every conv but the tail, in forward order (registration order of both network classes)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)][:-1]


@pytest.mark.parametrize("scale", [2, 3])
def test_keeping_every_filter_reproduces_the_subnet(scale: int) -> None:
    config = SubnetConfig(8, (CONV, W2, SKIP, W4, CONV, W2))
    model = _subnet(config, scale)
    net = prune_subnet(model, as_pruned(config))
    assert isinstance(net, SubnetSR) and not net.training and net.scale == scale
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        assert _max_diff(net(x), model(x)) <= 1e-6


@pytest.mark.parametrize("criterion", CRITERIA)
def test_pruning_equals_zeroing_the_removed_filters_of_the_original(criterion: str) -> None:
    model = _subnet(MIXED, 2, seed=1)
    keep = kept_channels(model, MIXED_PRUNED, criterion)
    net = prune_subnet(model, MIXED_PRUNED, criterion)
    masked = _subnet(MIXED, 2, seed=1)
    with torch.no_grad():
        for conv, kept in zip(_conv_list(masked), keep, strict=True):
            removed = torch.ones(conv.out_channels, dtype=torch.bool)
            removed[kept] = False
            conv.weight[removed] = 0
            conv.bias[removed] = 0
        x = torch.rand(2, 3, 10, 7)
        assert _max_diff(net(x), masked(x)) <= 1e-5
        assert _max_diff(net(x), model(x)) > 1e-3  # the pruning did change something


def test_a_stream_keeps_the_same_channels_chosen_by_summed_importance() -> None:
    model = _subnet(MIXED, 2, seed=2)
    keep = kept_channels(model, MIXED_PRUNED, "l2")
    assert [len(k) for k in keep] == list(MIXED_PRUNED.channels)
    assert all(torch.equal(k, k.sort().values) for k in keep)  # original order
    convs = _conv_list(model)
    for producer, tied in ((0, 3), (4, 7)):
        assert torch.equal(keep[producer], keep[tied])
        summed = filter_importance(convs[producer].weight, "l2") + filter_importance(convs[tied].weight, "l2")
        expected = summed.topk(MIXED_PRUNED.channels[producer]).indices.sort().values
        assert torch.equal(keep[producer], expected)
    for free in (1, 2, 5, 6):  # expand / reduce: their own top-k
        own = filter_importance(convs[free].weight, "l2").topk(MIXED_PRUNED.channels[free]).indices.sort().values
        assert torch.equal(keep[free], own)


def test_the_most_important_filters_are_kept_in_order() -> None:
    config = SubnetConfig(8, (CONV,))
    model = _subnet(config, 2)
    with torch.no_grad():  # filter f: one entry (L1 = L2 = a[f]) or four entries of b[f] (L1 = 4b, L2 = 2b)
        model.head.weight.zero_()
        model.head.weight[[0, 2, 4, 6], 0, 0, 0] = torch.tensor([3.0, 1.0, 5.0, 0.5])
        model.head.weight[[1, 3, 5, 7], 0, :2, :2] = torch.tensor([1.0, 0.1, 1.1, 0.2]).view(4, 1, 1)
    assert torch.allclose(filter_importance(model.head.weight, "l1"), torch.tensor([3, 4, 1, 0.4, 5, 4.4, 0.5, 0.8]))
    assert torch.allclose(filter_importance(model.head.weight, "l2"), torch.tensor([3, 2, 1, 0.2, 5, 2.2, 0.5, 0.4]))
    pruned = PrunedSubnet(config, (3, 8))
    for criterion, expected in (("l1", [1, 4, 5]), ("l2", [0, 4, 5])):
        assert kept_channels(model, pruned, criterion)[0].tolist() == expected
        net = prune_subnet(model, pruned, criterion)
        assert torch.equal(net.head.weight, model.head.weight[expected])
        assert torch.equal(net.head.bias, model.head.bias[expected])
        assert torch.equal(net.cells[0].conv.weight, model.cells[0].conv.weight[:, expected])
    with pytest.raises(ConfigError, match="'l3'"):
        filter_importance(model.head.weight, "l3")
    with pytest.raises(ConfigError, match="'linf'"):
        prune_subnet(model, pruned, "linf")


@pytest.mark.parametrize("scale", [2, 3])
def test_the_pruned_network_is_smaller_and_runs_the_priced_layers(scale: int) -> None:
    model = _subnet(MIXED, scale)
    net = prune_subnet(model, MIXED_PRUNED)
    assert count_params(net) < count_params(model)
    shapes = [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert shapes == [(k.cin, k.cout, k.kernel) for k in network_layers(MIXED_PRUNED, scale)]
    assert net.tail.out_channels == 3 * scale * scale
    with torch.no_grad():
        assert net(torch.rand(1, 3, 6, 5)).shape == (1, 3, 6 * scale, 5 * scale)


def test_pruned_from_keep_rounds_to_the_granularity_and_ties_wdsr_outputs() -> None:
    config = SubnetConfig(32, (W2, CONV, SKIP, W4))
    assert full_channels(config) == (32, 64, 32, 32, 32, 128, 32, 32)
    assert prunable_convs(config) == (0, 1, 2, 4, 5, 6)
    keep = [0.5, 0.3, 0.1, 0.7, 1.0, 0.01]
    expected = {16: (16, 16, 16, 16, 16, 128, 16, 16), 8: (16, 16, 8, 16, 24, 128, 8, 24),
                4: (16, 20, 4, 16, 24, 128, 4, 24), 1: (16, 19, 3, 16, 22, 128, 1, 22)}
    for granularity, channels in expected.items():
        pruned = pruned_from_keep(config, keep, granularity)
        assert pruned.config == config and pruned.channels == channels, granularity
    assert pruned_from_keep(config, keep, [16, 8, 4, 1, 16, 8]).channels == (16, 16, 4, 16, 22, 128, 8, 22)
    # granularity 48: 32 -> 48 and 128 -> 144 are capped at full, 64 -> 48 is the nearest multiple
    assert pruned_from_keep(config, [1.0] * 6, 48).channels == (32, 48, 32, 32, 32, 128, 32, 32)
    assert pruned_from_keep(config, [1.0] * 6, 64).channels == full_channels(config)
    assert not pruned_from_keep(config, [1.0] * 6, 1).is_pruned
    assert prunable_convs(SubnetConfig(8, (SKIP, SKIP))) == (0,)
    assert pruned_from_keep(SubnetConfig(8, (SKIP,)), [0.2], 16).channels == (8,)


@pytest.mark.parametrize(("keep", "granularity", "match"), [
    ([0.5] * 5, 8, "expected 6 keep ratios"),
    ([0.5] * 7, 8, "expected 6 keep ratios"),
    ([0.5, 0.5, 0.0, 0.5, 0.5, 0.5], 8, r"keep ratio 2 is 0\.0; must be in \(0, 1\]"),
    ([0.5, 0.5, 0.5, 1.5, 0.5, 0.5], 8, r"keep ratio 3 is 1\.5"),
    ([0.5, -0.1, 0.5, 0.5, 0.5, 0.5], 8, r"keep ratio 1 is -0\.1"),
    ([0.5] * 6, [8, 8], "expected one granularity or 6"),
    ([0.5] * 6, 0, "granularity 0 is 0; must be a positive integer"),
    ([0.5] * 6, [8, 8, 8, 8, 2.5, 8], "granularity 4 is 2.5"),
])
def test_pruned_from_keep_rejects_bad_ratios_and_granularities(keep: list[float], granularity: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        pruned_from_keep(SubnetConfig(32, (W2, CONV, SKIP, W4)), keep, granularity)  # type: ignore[arg-type]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    net = prune_subnet(_subnet(MIXED, 3), MIXED_PRUNED)
    save_network(tmp_path / "pruned.pt", net, extra={"criterion": "l1"})
    again = load_network(tmp_path / "pruned.pt")
    assert again.pruned == MIXED_PRUNED and again.scale == 3 and not again.training
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


def test_one_network_class_and_one_loader_for_pruned_and_unpruned(tmp_path: Path) -> None:
    """The subnet and the pruned network are one class; each is stored in its own format and read by one loader."""
    whole = _subnet(MIXED, 2)
    pruned = prune_subnet(whole, MIXED_PRUNED)
    assert type(whole) is type(pruned) is SubnetSR and not whole.pruned.is_pruned and pruned.pruned.is_pruned
    assert set(whole.state_dict()) == set(pruned.state_dict())
    x = torch.rand(1, 3, 8, 8)
    for name, net, fmt in (("whole.pt", whole, "srnas-subnet/1"), ("pruned.pt", pruned, "srnas-pruned/1")):
        save_network(tmp_path / name, net)
        assert torch.load(tmp_path / name, weights_only=True)["format"] == fmt
        for loaded in (load_network(tmp_path / name), load_trained(tmp_path / name)):
            assert isinstance(loaded, SubnetSR) and loaded.pruned == net.pruned
            with torch.no_grad():
                assert torch.equal(loaded(x), net.eval()(x))
    with pytest.raises(ConfigError, match="pruned already"):
        prune_subnet(pruned, MIXED_PRUNED)


def test_unusable_pruned_files_are_checkpoint_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt.*not a readable checkpoint"):
        load_network(corrupt)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        load_network(tmp_path / "missing.pt")
    ckpt = tmp_path / "last.ckpt"
    save_checkpoint(ckpt, {"step": 1})
    with pytest.raises(CheckpointError, match=r"last\.ckpt: expected a 'srnas-subnet/1' or 'srnas-pruned/1' file"):
        load_network(ckpt)
    # weights that do not fit the stored channel counts
    net = prune_subnet(_subnet(MIXED, 2), MIXED_PRUNED)
    object.__setattr__(net, "pruned", PrunedSubnet(MIXED, (4, 10, 6, 4, 6, 20, 3, 6)))
    save_network(tmp_path / "mismatch.pt", net)
    with pytest.raises(CheckpointError, match=r"(?s)mismatch\.pt: .*size mismatch"):
        load_network(tmp_path / "mismatch.pt")


def test_mismatched_configuration_or_scale_is_a_config_error() -> None:
    model = _subnet(MIXED, 2)
    other = as_pruned(SubnetConfig(8, (W2, CONV, SKIP, W2)))
    with pytest.raises(ConfigError, match=r"subnet w8-w2\.c\.s\.w2, the model is subnet w8-w2\.c\.s\.w4"):
        prune_subnet(model, other)
    with pytest.raises(ConfigError, match=r"w8-w2\.c\.s\.w2"):
        kept_channels(model, other)
    with pytest.raises(ConfigError, match="asked for x3, the model is x2"):
        prune_subnet(model, MIXED_PRUNED, scale=3)
    assert prune_subnet(model, MIXED_PRUNED, scale=2).scale == 2
    model.scale = 3  # an attribute that contradicts the weights
    with pytest.raises(ConfigError, match="do not fit RGB x3"):
        prune_subnet(model, MIXED_PRUNED)
