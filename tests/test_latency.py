"""Latency model: layers of the space, table cache by fingerprint, predictor, schemes, validation, CLI.

No timing is asserted (the CPU is shared): real measurements only check that a positive number comes back and
that the predictor reproduces the table; decisions and fits are tested with deterministic fake timers.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import config_of, params_overlay

from srnas import fingerprint as fp_mod
from srnas.arch.network import build_network
from srnas.arch.pruned import PrunedSubnet, as_pruned, full_channels, random_pruned
from srnas.arch.space import CellConfig, SearchSpace, SubnetConfig
from srnas.config import LatencyConfig, SearchSpaceConfig, TargetConfig, from_mapping
from srnas.errors import ConfigError
from srnas.latency import measure as runtime
from srnas.latency.layers import LayerKey, enumerate_layers, network_layers
from srnas.latency.predictor import LatencyPredictor, OverheadModel, fit_overhead, join_features
from srnas.latency.profile import calibration_from_table, load_predictor, profile_target
from srnas.latency.schemes import decide, measure_schemes, median_interval, schemes_markdown
from srnas.latency.table import LatencyTable, TableError, build_table
from srnas.latency.targets import Target, resolve_target
from srnas.latency.validate import sample_networks, spearman, validate_predictor
from srnas.runtimes.availability import bf16_supported
from srnas.runtimes.timing import busy_ticks, paired_ms
from srnas.settings import plain

TINY_SPACE = SearchSpace(SearchSpaceConfig(num_cells=3, widths=(8, 16), expansions=(2,)))
HW = (12, 16)


def _target(runtime_name: str = "torch_fp32", precision: str = "fp32") -> Target:
    return Target("t", "test-cpu", runtime_name, precision, 1, HW, 2)


def fake_layer_ms(target: Target, layer: LayerKey, *, warmup: int, runs: int, rounds: int = 1,
                  reference_ms: float | None = None) -> float:
    """A deterministic 'latency': proportional to MACs, cheaper for some schemes."""
    factor = {"bf16": 0.5, "int8": 0.6}.get(layer.scheme, 1.0)
    return factor * (0.2 + 1e-3 * layer.cin * layer.cout * layer.kernel**2)


JOIN_MS, JOIN_CHANNEL_MS = 0.05, 0.002


def fake_network_ms(target: Target, net, *, warmup: int, runs: int, precision=None, sparsity=0.0, rounds: int = 1,
                    reference_ms: float | None = None) -> float:
    layers = network_layers(as_pruned(net), target.scale)
    joins, channels = join_features(layers)
    factor = 0.5 if precision in ("bf16", "int8") else 1.0
    return factor * (sum(fake_layer_ms(target, layer, warmup=0, runs=1) for layer in layers)
                     + JOIN_MS * joins + JOIN_CHANNEL_MS * channels)


FAKE_REFERENCE_MS = 2.5


def fake_reference_ms(target: Target, *, warmup: int, runs: int, rounds: int) -> float:
    return FAKE_REFERENCE_MS


def fake_compare_layers(layer_ms=fake_layer_ms):
    """A paired comparison from a layer timer: every round the same speedup ``base / other``."""

    def compare(target: Target, base: LayerKey, other: LayerKey, *, warmup: int, runs: int, rounds: int) -> list[float]:
        return [layer_ms(target, base, warmup=warmup, runs=runs) / layer_ms(target, other, warmup=warmup, runs=runs)] * rounds

    return compare


def fake_compare_networks(target: Target, net, *, base_precision: str, precision: str, warmup: int, runs: int,
                          rounds: int) -> list[float]:
    ms = [fake_network_ms(target, net, warmup=warmup, runs=runs, precision=p) for p in (base_precision, precision)]
    return [ms[0] / ms[1]] * rounds


def patch_fake_timers(mp: pytest.MonkeyPatch) -> None:
    """Every timer of :mod:`srnas.latency.measure` replaced by the deterministic fakes above."""
    mp.setattr(runtime, "measure_layer", fake_layer_ms)
    mp.setattr(runtime, "measure_network", fake_network_ms)
    mp.setattr(runtime, "measure_reference", fake_reference_ms)
    mp.setattr(runtime, "compare_layers", fake_compare_layers())
    mp.setattr(runtime, "compare_networks", fake_compare_networks)


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, target, layer, *, warmup, runs, **paired):
        self.calls += 1
        return fake_layer_ms(target, layer, warmup=warmup, runs=runs)


# --------------------------------------------------------------------------------------- layers


def test_network_layers_follow_the_subnet() -> None:
    cfg = SubnetConfig(16, (CellConfig("conv"), CellConfig("skip"), CellConfig("wdsr", 2)))
    layers = network_layers(cfg, 2)
    assert [(l.op, l.cin, l.cout) for l in layers] == [
        ("head", 3, 16), ("conv", 16, 16), ("expand", 16, 32), ("reduce", 32, 16), ("wdsr_conv", 16, 16), ("tail", 16, 12)]
    assert full_channels(cfg) == (16, 16, 32, 16, 16)
    assert LayerKey.from_id(layers[2].id) == layers[2]


def test_pruned_subnet_keeps_residuals_and_tail_aligned() -> None:
    cfg = SubnetConfig(16, (CellConfig("conv"), CellConfig("wdsr", 2)))
    pruned = PrunedSubnet(cfg, (8, 12, 20, 4, 12))
    layers = network_layers(pruned, 2)
    assert [(l.cin, l.cout) for l in layers] == [(3, 8), (8, 12), (12, 20), (20, 4), (4, 12), (12, 12)]
    assert pruned.is_pruned and pruned.name.endswith("/p8.12.20.4.12")
    assert PrunedSubnet.from_dict(json.loads(json.dumps(pruned.to_dict()))) == pruned
    with pytest.raises(ConfigError, match="must keep 12"):
        PrunedSubnet(cfg, (8, 12, 20, 4, 8))  # the wdsr output must match its input
    with pytest.raises(ConfigError, match="1..16"):
        PrunedSubnet(cfg, (8, 17, 20, 4, 17))  # pruning never adds channels
    with pytest.raises(ConfigError, match="expected 5"):
        PrunedSubnet(cfg, (8, 12))
    model = build_network(pruned, 2)
    out = model(torch.rand(1, 3, 10, 14))
    assert out.shape == (1, 3, 20, 28)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 12, 20, 4, 12, 12]


def test_enumeration_covers_every_random_pruned_subnet() -> None:
    rng = np.random.default_rng(0)
    for g in (8, 4):
        table_layers = set(enumerate_layers(TINY_SPACE, 2, g))
        for _ in range(200):
            net = random_pruned(TINY_SPACE.sample(rng), rng, g)
            assert all(c % g == 0 or c in TINY_SPACE.widths for c in net.channels)
            assert set(network_layers(net, 2)) <= table_layers
            assert set(network_layers(TINY_SPACE.sample(rng), 2)) <= table_layers


# ---------------------------------------------------------------------------------------- table


def test_cached_table_is_reused_without_measuring(tmp_path) -> None:
    target = _target()
    layers = enumerate_layers(TINY_SPACE, 2, 8)
    counter = Counter()
    first = build_table(target, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert counter.calls == len(layers) == first.measured and first.reused == 0
    second = build_table(target, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert counter.calls == len(layers)  # nothing measured again
    assert second.reused == len(layers) and second.measured == 0
    assert second.entries == first.entries
    # a larger table measures only what is new
    more = enumerate_layers(TINY_SPACE, 2, 4)
    third = build_table(target, more, granularity=4, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert third.measured == len(set(more) - set(layers)) == counter.calls - len(layers)


def test_fingerprint_changes_with_the_runtime_version_and_the_table_is_rebuilt(tmp_path, monkeypatch) -> None:
    target = _target("onnxruntime_fp32")
    layers = enumerate_layers(TINY_SPACE, 2, 8)[:10]
    before = target.fingerprint_id()
    counter = Counter()
    build_table(target, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert counter.calls == 10

    real = fp_mod._package_version
    monkeypatch.setattr(fp_mod, "_package_version", lambda name: "99.0.0" if name == "onnxruntime" else real(name))
    assert target.fingerprint()["onnxruntime"] == "99.0.0"
    assert target.fingerprint_id() != before
    rebuilt = build_table(target, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert counter.calls == 20 and rebuilt.measured == 10  # measured again under the new fingerprint
    assert len(list(tmp_path.glob("*.json"))) == 2

    monkeypatch.setattr(fp_mod, "_package_version", real)
    assert target.fingerprint_id() == before
    build_table(target, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert counter.calls == 20  # the old fingerprint's table is still there


def test_rounds_keep_the_lowest_median(tmp_path) -> None:
    """A neighbour disturbing one round of a layer does not reach the table: each entry is its best round."""
    layers = enumerate_layers(TINY_SPACE, 2, 8)[:6]
    calls: list[LayerKey] = []

    def disturbed(target, layer, *, warmup, runs):
        calls.append(layer)
        slow = 10.0 if len(calls) <= len(layers) // 2 else 1.0  # the first half of round one is disturbed
        return slow * fake_layer_ms(target, layer, warmup=warmup, runs=runs)

    table = build_table(_target(), layers, granularity=8, warmup=1, runs=1, rounds=2, cache_dir=tmp_path, measure=disturbed)
    assert len(calls) == 2 * len(layers)
    assert calls[len(layers):] == calls[:len(layers)][::-1]  # the second round sweeps the other way
    assert all(table.entries[layer] == pytest.approx(fake_layer_ms(None, layer, warmup=1, runs=1)) for layer in layers)


def test_a_failed_table_build_resumes_where_it_stopped_and_ends_like_an_uninterrupted_one(tmp_path) -> None:
    """A build that fails mid-sweep (a device agent gone, an interrupt) keeps the passes it measured; the rerun
    measures only the rest, in the same sweep order, and its table equals an uninterrupted build's."""
    layers = enumerate_layers(TINY_SPACE, 2, 8)[:6]

    def timer(calls: list[LayerKey], fail_at: int | None = None, offset: int = 0):
        def measure(target, layer, *, warmup, runs):
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt
            calls.append(layer)
            drift = 1.0 + 0.1 * (offset + len(calls))  # a host that slows down call after call
            return drift * fake_layer_ms(target, layer, warmup=warmup, runs=runs)
        return measure

    whole: list[LayerKey] = []
    reference = build_table(_target(), layers, granularity=8, warmup=1, runs=1, rounds=3, cache_dir=tmp_path / "a",
                            measure=timer(whole))
    first: list[LayerKey] = []
    with pytest.raises(KeyboardInterrupt):
        build_table(_target(), layers, granularity=8, warmup=1, runs=1, rounds=3, cache_dir=tmp_path / "b",
                    measure=timer(first, fail_at=8))
    rest: list[LayerKey] = []
    resumed = build_table(_target(), layers, granularity=8, warmup=1, runs=1, rounds=3, cache_dir=tmp_path / "b",
                          measure=timer(rest, offset=len(first)))
    assert len(first) == 8 and first + rest == whole
    assert resumed.entries == reference.entries and resumed.measured == len(layers)


def test_paired_timing_cancels_a_drifting_host() -> None:
    """A host slowing down steadily (the item's raw time triples over the measurement) and one spike: the paired
    result stays the item's time at the reference's speed."""
    clock = {"t": 0}

    def slowdown() -> float:
        clock["t"] += 1
        return 1.0 + 0.2 * clock["t"]

    def reference_round() -> float:
        return 4.0 * slowdown()

    raw: list[float] = []

    def item_round() -> float:
        raw.append(10.0 * slowdown() * (5.0 if len(raw) == 2 else 1.0))  # the third round hit by a neighbour
        return raw[-1]

    assert paired_ms(item_round, reference_round, 5, reference_ms=2.0) == pytest.approx(2.0 * 10.0 / 4.0)
    assert max(raw) / min(raw) > 3.0
    with pytest.raises(ValueError, match="at least one round"):
        paired_ms(lambda: 1.0, lambda: 1.0, 0, reference_ms=2.0)


def test_paired_sweep_measures_each_item_once_with_its_rounds(tmp_path) -> None:
    layers = enumerate_layers(TINY_SPACE, 2, 8)[:4]
    seen: list[tuple[LayerKey, int, float]] = []

    def paired_fake(target, layer, *, warmup, runs, rounds, reference_ms):
        seen.append((layer, rounds, reference_ms))
        return fake_layer_ms(target, layer, warmup=warmup, runs=runs)

    table = build_table(_target(), layers, granularity=8, warmup=1, runs=1, rounds=5, reference_ms=2.5,
                        cache_dir=tmp_path, measure=paired_fake)
    assert sorted(layer for layer, _, _ in seen) == sorted(layers)
    assert {(r, ref) for _, r, ref in seen} == {(5, 2.5)}
    table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(tmp_path / "table.json")
    assert loaded.reference_ms == 2.5 and loaded.protocol()["kind"] == "paired" and loaded.protocol()["reference"] == "conv:16:16:dense"
    # an absolute table of the same layers is another protocol: measured, not served from the paired cache
    counter = Counter()
    absolute = build_table(_target(), layers, granularity=8, warmup=1, runs=1, rounds=5, cache_dir=tmp_path, measure=counter)
    assert counter.calls == 5 * len(layers) and absolute.reference_ms is None and absolute.protocol()["kind"] == "absolute"


def test_other_threads_or_input_size_are_not_reused(tmp_path) -> None:
    layers = enumerate_layers(TINY_SPACE, 2, 8)[:5]
    counter = Counter()
    build_table(_target(), layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    two_threads = Target("t", "test-cpu", "torch_fp32", "fp32", 2, HW, 2)
    build_table(two_threads, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    bigger = Target("t", "test-cpu", "torch_fp32", "fp32", 1, (24, 32), 2)
    build_table(bigger, layers, granularity=8, warmup=1, runs=1, cache_dir=tmp_path, measure=counter)
    assert counter.calls == 15


def test_table_json_round_trip_and_interpolation(tmp_path) -> None:
    table = build_table(_target(), enumerate_layers(TINY_SPACE, 2, 8), granularity=8, warmup=1, runs=1,
                        cache_dir=tmp_path, measure=fake_layer_ms)
    table.save(tmp_path / "table.json")
    loaded = LatencyTable.load(tmp_path / "table.json")
    assert loaded.entries == table.entries and loaded.fingerprint_id == table.fingerprint_id
    # conv 12 -> 12 lies between the measured 8 and 16: bilinear in both widths
    a, b = table.lookup(LayerKey("conv", 8, 8)), table.lookup(LayerKey("conv", 8, 16))
    c, d = table.lookup(LayerKey("conv", 16, 8)), table.lookup(LayerKey("conv", 16, 16))
    assert not table.exact(LayerKey("conv", 12, 12))
    assert table.lookup(LayerKey("conv", 12, 12)) == pytest.approx((a + b + c + d) / 4)
    with pytest.raises(TableError, match="no latency table"):
        LatencyTable.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------ predictor


@pytest.mark.parametrize("protocol", ["absolute", "paired"])
@pytest.mark.parametrize("runtime_name,precision", [("torch_fp32", "fp32"), ("onnxruntime_fp32", "fp32")])
def test_predictor_is_exact_on_one_profiled_block(tmp_path, runtime_name, precision, protocol) -> None:
    target = _target(runtime_name, precision)
    block = LayerKey("conv", 8, 16)
    reference_ms = runtime.measure_reference(target, warmup=0, runs=2, rounds=1) if protocol == "paired" else None
    table = build_table(target, [block], granularity=8, warmup=0, runs=2, rounds=2, reference_ms=reference_ms,
                        cache_dir=tmp_path)  # really measured
    assert table.protocol()["kind"] == protocol
    assert math.isfinite(table.entries[block]) and table.entries[block] > 0
    overhead = OverheadModel(per_join_ms=1.5, per_join_channel_ms=0.25)  # joins cost, but one block has none
    assert LatencyPredictor(table, overhead).predict_layers([block]) == table.entries[block]


def test_predictor_sums_layers_and_joins(tmp_path) -> None:
    target = _target()
    table = build_table(target, enumerate_layers(TINY_SPACE, 2, 8), granularity=8, warmup=1, runs=1,
                        cache_dir=tmp_path, measure=fake_layer_ms)
    net = random_pruned(SubnetConfig(16, (CellConfig("wdsr", 2), CellConfig("conv"), CellConfig("skip"))),
                        np.random.default_rng(3), 8)
    layers = network_layers(net, 2)
    plain = LatencyPredictor(table)
    assert plain.predict(net) == pytest.approx(sum(fake_layer_ms(target, l, warmup=0, runs=1) for l in layers))
    fitted = LatencyPredictor(table, OverheadModel(0.1, 0.01))
    joins, channels = join_features(layers)
    assert fitted.predict(net) == pytest.approx(plain.predict(net) + 0.1 * joins + 0.01 * channels)
    assert sum(ms for _, ms in fitted.breakdown(net)) == pytest.approx(fitted.predict(net))


def test_fit_overhead_recovers_the_join_costs(tmp_path) -> None:
    target = _target()
    table = build_table(target, enumerate_layers(TINY_SPACE, 2, 8), granularity=8, warmup=1, runs=1,
                        cache_dir=tmp_path, measure=fake_layer_ms)
    nets = sample_networks(TINY_SPACE, 8, np.random.default_rng(0), pruned_share=0.5, granularity=8, spread=True)
    measured = [fake_network_ms(target, n, warmup=0, runs=1) for n in nets]
    model = fit_overhead(table, nets, measured)
    assert model.per_join_ms == pytest.approx(JOIN_MS, rel=1e-3)
    assert model.per_join_channel_ms == pytest.approx(JOIN_CHANNEL_MS, rel=1e-3)
    assert model.calibration_mape < 1e-6


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)  # ties take their mean rank


def test_sample_networks_are_distinct_and_disjoint_from_calibration() -> None:
    space = SearchSpace(SearchSpaceConfig())
    calibration = sample_networks(space, 10, np.random.default_rng(0), pruned_share=0.5, granularity=8, spread=True)
    nets = sample_networks(space, 60, np.random.default_rng(1), pruned_share=0.5, granularity=8, exclude=calibration)
    assert len(set(nets)) == 60 and not set(nets) & set(calibration)
    assert 20 <= sum(n.is_pruned for n in nets) <= 40
    assert sum(n.is_pruned for n in calibration) >= 3


# -------------------------------------------------------------------------------- real runtimes


LAYERS = [LayerKey("head", 3, 8), LayerKey("conv", 8, 16), LayerKey("expand", 8, 16), LayerKey("reduce", 16, 8),
          LayerKey("wdsr_conv", 8, 16), LayerKey("tail", 8, 12)]


@pytest.mark.parametrize("runtime_name,precision", [("torch_fp32", "fp32"), ("torch_bf16", "bf16"),
                                                    ("onnxruntime_fp32", "fp32"), ("onnxruntime_fp32", "int8")])
def test_every_layer_op_measures_on_each_runtime(runtime_name, precision, monkeypatch) -> None:
    if runtime_name == "torch_bf16" and not bf16_supported():
        pytest.skip("no native bf16 on this CPU")
    from srnas.runtimes import timing

    # what runs is under test here, not the quiet guard: a busy test machine must not turn rounds into NaN (or wait)
    monkeypatch.setattr(timing, "QUIET_LIMIT", math.inf)
    target = _target(runtime_name, precision)
    for layer in LAYERS:
        ms = runtime.measure_layer(target, layer, warmup=0, runs=1)
        assert math.isfinite(ms) and ms > 0.0
    net = PrunedSubnet(SubnetConfig(16, (CellConfig("conv"), CellConfig("wdsr", 2))), (8, 8, 16, 8, 8))
    assert runtime.measure_network(target, net, warmup=0, runs=1) > 0.0
    # the paired protocol: a reference, then the same calls bracketed by it
    reference_ms = runtime.measure_reference(target, warmup=0, runs=1, rounds=1)
    assert reference_ms > 0.0
    assert math.isfinite(runtime.measure_layer(target, LAYERS[1], warmup=0, runs=1, rounds=2, reference_ms=reference_ms))
    assert runtime.measure_network(target, net, warmup=0, runs=1, rounds=2, reference_ms=reference_ms) > 0.0
    # a scheme's paired comparison: one speedup per round (base and scheme interleaved)
    speedups = runtime.compare_layers(target, LayerKey("conv", 16, 16), LayerKey("conv", 16, 8), warmup=0, runs=1, rounds=3)
    assert len(speedups) == 3 and all(math.isfinite(v) and v > 0 for v in speedups)
    other = "int8" if runtime_name.startswith("onnxruntime") else "fp32"
    speedups = runtime.compare_networks(target, net, base_precision="fp32", precision=other, warmup=0, runs=1, rounds=2)
    assert len(speedups) == 2 and all(math.isfinite(v) and v > 0 for v in speedups)


@pytest.mark.parametrize("layer", [*LAYERS, LayerKey("conv", 4, 4), LayerKey("wdsr_conv", 4, 8), LayerKey("conv", 8, 16, "int8")],
                         ids=lambda layer: layer.id)
def test_onnxruntime_profile_keeps_the_nodes_the_layer_owns(tmp_path, layer) -> None:
    """In the graph ONNX Runtime optimised, the layer's nodes are its conv, what runs after it (epilogue; the tail's
    residual and DepthToSpace) and what only feeds it (a reorder to NCHW): never the context, never the hand-back
    of a non-tail result as a graph output."""
    import onnx

    from srnas.onnx_graph import CONTEXT_PREFIX, layer_nodes
    from srnas.runtimes.ort import ort_session

    target = _target("onnxruntime_fp32", "int8" if layer.scheme == "int8" else "fp32")
    graph = runtime._ort_layer_graph(layer, target, runtime.scheme_precision(target, layer.scheme), 0.0, tmp_path)
    ort_session(graph, 1, optimized_path=tmp_path / "optimized.onnx")
    mine = layer_nodes(tmp_path / "optimized.onnx", keeps_output=layer.op == "tail")
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    nodes = {n.name: n for n in optimized.node}
    convs = [n for n in mine if nodes[n].op_type in ("Conv", "QLinearConv", "FusedConv")]
    assert len(convs) == 1, f"{layer.id}: one conv of its own, got {sorted(mine)}"
    conv = nodes[convs[0]]
    assert not any(n.startswith(CONTEXT_PREFIX) for n in mine)
    assert any(n.startswith(CONTEXT_PREFIX) for n in nodes) == (layer.op != "head")  # the context is there, and left out
    downstream, frontier = set(), set(conv.output)
    for node in optimized.node:  # saved in topological order
        if frontier & set(node.input):
            downstream.add(node.name)
            frontier |= set(node.output)
    outputs = {o.name for o in optimized.output}
    for name in mine - {conv.name} - downstream:  # upstream of the conv: only what feeds the layer and nothing else
        users = [n for n in optimized.node if set(nodes[name].output) & set(n.input)]
        assert users and all(u.name in mine for u in users), f"{layer.id}: {name} also feeds {[u.name for u in users]}"
    produced = {o for n in mine for o in nodes[n].output}
    if layer.op == "tail":
        assert {"Expand", "DepthToSpace"} <= {nodes[n].op_type for n in mine} and outputs <= produced
    else:
        assert not outputs & produced, f"{layer.id}: the graph-output conversion is not the layer's"


def test_ort_profile_runs_group_node_kernel_times(tmp_path) -> None:
    from srnas.runtimes.ort import read_ort_profile

    events = [
        {"cat": "Session", "name": "model_loading_uri", "ts": 0, "dur": 50},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 7},  # before any run: not counted
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 40},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 105, "dur": 20},
        {"cat": "Node", "name": "conv_fence_before", "ts": 104, "dur": 1},
        {"cat": "Node", "name": "relu_kernel_time", "ts": 126, "dur": 10},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 30},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 201, "dur": 25},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events[::-1]), encoding="utf-8")  # any order
    runs = read_ort_profile(path)
    assert [r.run_us for r in runs] == [40.0, 30.0]
    assert runs[0].node_us == {"conv": 20.0, "relu": 10.0} and runs[1].node_us == {"conv": 25.0}


def test_torch_layer_module_matches_the_subnet_blocks() -> None:
    """The measured layer modules compute what the network computes (so they cost what it costs)."""
    torch.manual_seed(0)
    net = PrunedSubnet(SubnetConfig(8, (CellConfig("wdsr", 2),)), (8, 16, 8, 8))
    model = build_network(net, 2)
    x = torch.rand(1, 3, 6, 5)
    modules = [runtime.LayerModule(layer, 2) for layer in network_layers(net, 2)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for module, conv in zip(modules, convs):
        module.conv.load_state_dict(conv.state_dict())
    with torch.no_grad():
        h = modules[0](x)
        block_in = h
        h = modules[3](modules[2](modules[1](h)), res=block_in)
        out = modules[4](h, img=x)
        assert torch.allclose(out, model(x), atol=1e-6)


# -------------------------------------------------------------------------------------- schemes


def test_scheme_decisions(monkeypatch) -> None:
    space = SearchSpace(SearchSpaceConfig(num_cells=2, widths=(16, 32), expansions=(2,)))
    cfg = LatencyConfig(granularities=(16, 8, 4, 1))

    def padded_layer_ms(target, layer, *, warmup, runs, **paired):
        # a runtime that pads channels to multiples of 8 and ignores zeros
        cout = -(-layer.cout // 8) * 8
        return fake_layer_ms(target, LayerKey(layer.op, layer.cin, cout, layer.scheme if layer.scheme in ("bf16", "int8") else "dense"),
                             warmup=warmup, runs=runs)

    report = measure_schemes(_target(), space, cfg, compare_layers=fake_compare_layers(padded_layer_ms),
                             compare_networks=fake_compare_networks)
    status = {r.scheme: r.status for r in report.results}
    assert status["filter_g16"] == "accelerated"
    assert status["filter_g8"] == "accelerated"  # 24 really is cheaper than 32
    assert status["filter_g4"] == "not accelerated"  # 12 runs as 16: padded away
    assert status["filter_g1"] == "not accelerated"
    assert status["sparse50"] == status["sparse90"] == "not accelerated"
    assert status["sparse_2to4"] == "unavailable"
    assert report.table_granularity(cfg.granularities, floor=4) == 8
    assert report.table_granularity(cfg.granularities, floor=16) == 16
    if bf16_supported():
        assert status["bf16"] == "accelerated" and report.get("bf16").decisive == pytest.approx(2.0)
    md = schemes_markdown(report)
    assert "| filter_g4 | filter |" in md and "not accelerated" in md
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["accepted"] == report.accepted()

    ort = measure_schemes(_target("onnxruntime_fp32"), space, cfg, compare_layers=fake_compare_layers(padded_layer_ms),
                          compare_networks=fake_compare_networks)
    assert ort.get("int8").status == "accelerated" and ort.get("bf16") is None
    assert ort.get("int8").note.startswith("static QDQ per network")
    xnnpack = measure_schemes(_target("executorch_xnnpack_fp32"), space, cfg,
                              compare_layers=fake_compare_layers(padded_layer_ms), compare_networks=fake_compare_networks)
    assert xnnpack.get("int8").status == "accelerated" and xnnpack.get("bf16") is None
    assert xnnpack.get("int8").note.startswith("PT2E static int8 (XNNPACK quantizer) per network")
    assert [r.scheme for r in xnnpack.results] == [r.scheme for r in ort.results]  # the same schemes, measured the same way


def test_median_interval_is_the_sign_test_interval() -> None:
    # 5 rounds: [min, max] holds the median with probability 1 - 2/32 = 0.9375 (the narrower [2nd, 4th]: 0.625)
    assert median_interval([1.3, 1.1, 1.5, 1.2, 1.4], 0.9) == (1.3, 1.1, 1.5)
    # 9 rounds: [2nd, 8th] has 1 - 2 * 10/512 = 0.961 >= 0.95; [3rd, 7th] only 0.820
    assert median_interval(list(range(1, 10)), 0.95) == (5, 2, 8)
    assert median_interval(list(range(1, 10)), 0.8) == (5, 3, 7)
    # too few rounds for the confidence: nothing is concluded
    assert median_interval([1.2, 1.3, 1.4, 1.5], 0.9) == (pytest.approx(1.35), 0.0, math.inf)
    median, low, high = median_interval([math.nan, math.nan], 0.9)
    assert math.isnan(median) and math.isnan(low) and math.isnan(high)


def test_a_scheme_is_accelerated_only_when_the_whole_interval_clears_the_threshold() -> None:
    threshold, confidence = 1.05, 0.9
    steady = decide([2.0, 2.1, 1.9, 2.05, 1.95], threshold, confidence)
    assert steady.verdict == "accelerated" and steady.accelerated and steady.median == 2.0 and steady.low == 1.9
    slower = decide([0.8, 0.85, 0.9, 0.82, 0.88], threshold, confidence)
    assert slower.verdict == "not_accelerated" and not slower.accelerated
    # the case that flipped between builds: one round at 0.80x, the others fast; the median alone (2.0x) would accept
    noisy = decide([0.8, 2.1, 2.0, 1.9, 2.11], threshold, confidence)
    assert noisy.median == 2.0 and noisy.low == 0.8 and noisy.verdict == "within_noise" and not noisy.accelerated
    # a speedup right at the threshold, measured with noise either side: within the noise, not kept
    assert decide([1.02, 1.08, 1.05, 1.04, 1.07], threshold, confidence).verdict == "within_noise"
    # more rounds tolerate an outlier: 9 rounds, one slow, the interval ([2nd, 8th]) still clears the threshold
    assert decide([0.8, 1.3, 1.35, 1.32, 1.4, 1.28, 1.33, 1.31, 1.36], threshold, confidence).verdict == "accelerated"
    # too few rounds to bound the median: conservative, whatever they say
    assert decide([3.0, 3.0, 3.0], threshold, confidence).verdict == "within_noise"
    assert decide([], threshold, confidence).verdict == "not_measured"
    assert decide([1.2, math.nan, 1.3, 1.25, 1.22, 1.28], threshold, confidence).rounds == 5  # NaN rounds are left out


def test_scheme_rounds_must_bound_the_median_at_the_confidence() -> None:
    with pytest.raises(ConfigError, match=r"latency\.scheme_rounds: 4 paired rounds cannot bound a median at scheme_confidence 0\.9"):
        config_of(LatencyConfig, {"scheme_rounds": 4}, "latency")
    assert config_of(LatencyConfig, {"scheme_rounds": 4, "scheme_confidence": 0.85}, "latency").scheme_rounds == 4
    with pytest.raises(ConfigError, match=r"latency\.scheme_confidence: must lie in \[0\.5, 1\)"):
        config_of(LatencyConfig, {"scheme_confidence": 1.0}, "latency")


def test_noisy_rounds_are_flagged_within_noise_in_the_scheme_table() -> None:
    space = SearchSpace(SearchSpaceConfig(num_cells=2, widths=(16, 32), expansions=(2,)))
    cfg = LatencyConfig(granularities=(16, 8), sparsities=(0.5,), scheme_rounds=5)  # 5 rounds: [min, max] at 90%
    fast = fake_compare_layers()

    def compare(target, base, other, *, warmup, runs, rounds):
        speedups = fast(target, base, other, warmup=warmup, runs=runs, rounds=rounds)
        if other.cout % 16 == 0:  # g=16 counts: steady; g=8's extra counts (24 vs 32): one round 0.8x (a burst)
            return speedups
        return [0.8, *speedups[1:]]

    report = measure_schemes(_target(), space, cfg, compare_layers=compare, compare_networks=fake_compare_networks)
    g16, g8 = report.get("filter_g16"), report.get("filter_g8")
    assert g16.decision == "accelerated" and g16.accelerated and g16.rounds == cfg.scheme_rounds
    assert g8.decision == "within_noise" and not g8.accelerated and g8.decisive > cfg.min_speedup  # median alone: kept
    assert g8.interval[0] < cfg.min_speedup <= g8.interval[1]
    assert report.accepted()[:1] == ["filter_g16"] and "filter_g8" not in report.accepted()
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["confidence"] == cfg.scheme_confidence
    assert {s["scheme"]: s["decision"] for s in payload["schemes"]}["filter_g8"] == "within_noise"
    row = next(line for line in schemes_markdown(report).splitlines() if line.startswith("| filter_g8 |"))
    assert "not accelerated" in row and "within the noise" in row


# ----------------------------------------------------------------------------- stage and command


@pytest.fixture
def fake_timers(monkeypatch):
    patch_fake_timers(monkeypatch)


def test_profile_target_writes_table_schemes_and_a_predictor(tmp_path, fake_timers) -> None:
    cfg = LatencyConfig(calibration_subnets=6)
    target = _target()
    result = profile_target(target, TINY_SPACE, cfg, tmp_path / "out", cache_dir=tmp_path / "cache")
    for name in ("table.json", "schemes.json", "schemes.md"):
        assert (tmp_path / "out" / name).is_file()
    predictor = load_predictor(tmp_path / "out")
    assert predictor.overhead.per_join_ms == pytest.approx(JOIN_MS, rel=1e-3)
    calibration = calibration_from_table(predictor.table)
    assert calibration == result.calibration
    nets = sample_networks(TINY_SPACE, 12, np.random.default_rng(1), pruned_share=0.5,
                           granularity=predictor.table.granularity, exclude=calibration)
    report = validate_predictor(predictor, nets, warmup=0, runs=1)
    assert report.within_10 == 1.0 and report.mape < 1e-6 and report.spearman == pytest.approx(1.0)
    # rerun: everything comes from the cache, and the outputs are the same bytes (downstream stages stay done)
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("table.json", "schemes.json", "schemes.md")}
    again = profile_target(target, TINY_SPACE, cfg, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert again.table.measured == 0
    assert json.loads((tmp_path / "out" / "build.json").read_text())["reused"] == len(again.table)
    assert before == {name: (tmp_path / "out" / name).read_bytes() for name in before}


def test_cli_profile_device_and_validate_latency(tmp_path, fake_timers, monkeypatch) -> None:
    from srnas.cli import main

    monkeypatch.chdir(tmp_path)
    fp32 = {"name": "cpu_torch_fp32", "device": "this-cpu", "runtime": "torch_fp32", "precision": "fp32", "threads": 0,
            "input_size": []}
    params = params_overlay(tmp_path, {"tracking": {"enabled": False}, "latency": {"targets": [fp32]}})
    assert main(["profile-device", *params, "--target", "cpu_torch_fp32", "--out", "pd",
                 "--cache-dir", "cache"]) == 0
    table = json.loads((tmp_path / "pd" / "cpu_torch_fp32" / "table.json").read_text())
    assert table["target"]["input_hw"] == [360, 640] and table["entries"]
    assert main(["validate-latency", *params, "--target", "cpu_torch_fp32", "--tables", "pd",
                 "--out", "vl", "--count", "6"]) == 0
    summary = json.loads((tmp_path / "vl" / "cpu_torch_fp32.json").read_text())["summary"]
    assert summary["networks"] == 6 and summary["within_10pct"] == 1.0
    assert main(["profile-device", *params, "--target", "nope", "--out", "pd"]) == 2


# ------------------------------------------------------------------------------------- config


def test_target_config_validation() -> None:
    def target(**keys):
        return {"name": "a", "device": "d", "runtime": "torch_fp32", "precision": "fp32", "threads": 0, "input_size": []} | keys

    cfg = config_of(LatencyConfig, {"targets": [target(name="phone", runtime="onnxruntime_fp32", precision="int8",
                                                       input_size=[180, 320], threads=4)]}, "params.yaml:latency")
    resolved = resolve_target(cfg.targets[0], 4, cfg.cache_dir).target
    assert resolved.input_hw == (180, 320) and resolved.threads == 4 and resolved.scale == 4
    assert resolve_target(TargetConfig("x", "d", "torch_fp32", "fp32", 0, ()), 2, cfg.cache_dir).target.input_hw == (360, 640)
    with pytest.raises(ConfigError, match="latency.targets\\[0\\].precision"):
        config_of(LatencyConfig, {"targets": [target(precision="bf16")]}, "params.yaml:latency")
    # ExecuTorch with the XNNPACK delegate: fp32 or int8 (PT2E), named like its profiling runtime
    xnnpack = config_of(LatencyConfig, {"targets": [target(name=f"x{p}", runtime="executorch_xnnpack_fp32", precision=p)
                                                    for p in ("fp32", "int8")]}, "params.yaml:latency")
    assert [(t.runtime, t.precision) for t in xnnpack.targets] == [("executorch_xnnpack_fp32", "fp32"),
                                                                   ("executorch_xnnpack_fp32", "int8")]
    for precision in ("bf16", "auto"):
        with pytest.raises(ConfigError, match=r"latency.targets\[0\].precision: executorch_xnnpack_fp32 runs fp32 or int8"):
            config_of(LatencyConfig, {"targets": [target(runtime="executorch_xnnpack_fp32", precision=precision)]},
                      "params.yaml:latency")
    with pytest.raises(ConfigError, match="runtime: unknown runtime 'executorch_xnnpack'"):
        config_of(LatencyConfig, {"targets": [target(runtime="executorch_xnnpack")]}, "params.yaml:latency")
    with pytest.raises(ConfigError, match="duplicate target names"):
        config_of(LatencyConfig, {"targets": [target(), target()]}, "params.yaml:latency")
    with pytest.raises(ConfigError, match="runtime"):
        config_of(LatencyConfig, {"targets": [target(runtime="tflite")]}, "params.yaml:latency")
    with pytest.raises(ConfigError, match=r"latency.targets\[0\].threads: missing key"):
        from_mapping(LatencyConfig, plain(LatencyConfig()) | {"targets": [{"name": "a", "device": "d", "runtime": "torch_fp32",
                                                                          "precision": "fp32", "input_size": []}]},
                     "params.yaml:latency")
    assert math.isclose(LatencyConfig().min_speedup, 1.05)


def test_the_quiet_guard_counts_only_the_cores_a_pinned_process_may_use() -> None:
    """A neighbour busy on cpu0 disturbs a process that may run there, not one pinned to cpu1 (a device agent under
    ``taskset`` next to a training): the guard reads the busy time of the process's own CPUs from /proc/stat."""
    before = ("cpu  100 0 50 1000 10 0 0 0 0 0\n"
              "cpu0 60 0 30 450 5 0 0 0 0 0\n"
              "cpu1 40 0 20 550 5 0 0 0 0 0\n"
              "intr 12345\n")
    after = ("cpu  210 0 50 1010 10 0 0 0 0 0\n"   # cpu0 ran 100 ticks of someone else's loop, cpu1 10 of ours
             "cpu0 160 0 30 450 5 0 0 0 0 0\n"
             "cpu1 50 0 20 560 5 0 0 0 0 0\n")
    assert busy_ticks(before, None) == 150 and busy_ticks(after, None) == 260  # every CPU: the total line
    assert busy_ticks(after, {0, 1}) - busy_ticks(before, {0, 1}) == 110      # unpinned: sees the neighbour
    assert busy_ticks(after, {1}) - busy_ticks(before, {1}) == 10             # pinned to cpu1: only its own core
    assert busy_ticks(after, {0}) - busy_ticks(before, {0}) == 100
    assert busy_ticks("intr 1\n", {0}) is None


def test_a_busy_machine_leaves_disturbed_rounds_out_and_stops_waiting(monkeypatch) -> None:
    from srnas.runtimes import timing

    sleeps: list[float] = []
    monkeypatch.setattr(timing.time, "sleep", sleeps.append)
    monkeypatch.setattr(timing, "_machine_busy", False)
    busy = {"cores": 1.0}
    monkeypatch.setattr(timing, "others_busy", lambda fn: (fn(), busy["cores"]))
    # a neighbour keeps a core busy: every attempt disturbed, the value flagged, the machine taken as busy
    assert timing.quiet_or_disturbed(lambda: 3.0, "first") == (3.0, True)
    assert len(sleeps) == timing.QUIET_ATTEMPTS - 1
    # the next measurement is taken once, without waiting, and flagged too
    assert timing.quiet_or_disturbed(lambda: 4.0, "second") == (4.0, True)
    assert len(sleeps) == timing.QUIET_ATTEMPTS - 1
    busy["cores"] = 0.0  # quiet again: not flagged, and the next disturbance gets its retries again
    assert timing.quiet_or_disturbed(lambda: 5.0, "third") == (5.0, False)
    busy["cores"] = 1.0
    timing.quiet_or_disturbed(lambda: 6.0, "fourth")
    assert len(sleeps) == 2 * (timing.QUIET_ATTEMPTS - 1)
    # a disturbed comparison round is no evidence: NaN, which decide() leaves out (all out: nothing decided)
    monkeypatch.setattr(runtime, "quiet_or_disturbed", lambda fn, what="": (fn(), True))
    speedups = runtime._compared_calls("x", lambda: None, lambda: None, warmup=0, runs=1, rounds=5)
    assert len(speedups) == 5 and all(math.isnan(v) for v in speedups)
    assert decide(speedups, 1.05, 0.9).verdict == "not_measured"
    space = SearchSpace(SearchSpaceConfig(num_cells=2, widths=(16, 32), expansions=(2,)))
    cfg = LatencyConfig(granularities=(16,), sparsities=(0.5,), scheme_rounds=5)
    report = measure_schemes(_target(), space, cfg, compare_layers=lambda *a, rounds, **k: [math.nan] * rounds,
                             compare_networks=lambda *a, rounds, **k: [math.nan] * rounds)
    assert report.accepted() == []
    sparse = report.get("sparse50")
    assert sparse.decision == "not_measured" and "no round was measured quietly" in sparse.note


def test_the_quiet_guard_observes_a_short_measurement_for_at_least_its_minimum_window() -> None:
    from srnas.runtimes import timing

    start = time.perf_counter()
    value, _ = timing.others_busy(lambda: 7)
    assert value == 7
    if timing._system_busy_s() is not None:  # /proc/stat: a window shorter than a few clock ticks could not see a neighbour
        assert time.perf_counter() - start >= timing.QUIET_MIN_WINDOW_S
