"""Supernet benchmark (issue 5): ranking fidelity, the largest subnet against itself trained alone, step overhead.

Benchmark config: train on T91, evaluate Set5 + Set14 at x2 (prepared with ``srnas.data.prepare`` into a cache
folder outside the repository). Figures printed:

(a) ranking fidelity -- for ``--subnets`` subnets spread over the space (smallest, largest, and random ones at
    evenly spaced log-MACs in between), the Kendall tau between PSNR with inherited supernet weights and PSNR
    of the same architectures trained alone for ``--alone-steps`` steps each (target: tau >= 0.6). The score
    ranked is the mean of the Set5 and Set14 PSNRs; the per-set taus are printed too.
(b) the largest subnet's inherited Set5 x2 PSNR against the same architecture trained alone for the same
    number of steps as the supernet (``--supernet-steps``; target: within 0.3 dB).
(c) milliseconds per training step, measured in one run with the steps interleaved (so background load hits
    them alike): a supernet sandwich step, a supernet step of the largest subnet alone (the cost of the
    dynamic, sliced layers), and a plain training step of a standalone network of the largest subnet's
    architecture (the same ``srnas.training.train_step`` baselines use).

``--reparam`` (default: ``supernet.reparam``'s) is the form of the supernet and of every standalone run, so the
ablation with and without re-parameterised blocks is two runs of this script. Every standalone run uses the
supernet's optimiser settings (Adam, cosine schedule, L1, batch, patch, bf16 and channels-last as configured) and the same training form (see ``train_alone``). Results of finished trainings are cached in ``--work`` keyed by their settings,
and the supernet resumes from its ``last.ckpt``, so an interrupted run picks up where it stopped.

    # a few minutes: checks that everything works; at this budget nothing has learned much yet
    .venv/bin/python bench/bench_supernet.py --supernet-steps 100 --alone-steps 100 --timing-steps 3
    # ~10 min on 2 idle cores: the figures below
    .venv/bin/python bench/bench_supernet.py --supernet-steps 2000 --alone-steps 1000
    # the full run, ~30 min on 2 idle cores
    .venv/bin/python bench/bench_supernet.py --supernet-steps 6000 --alone-steps 3000 --json bench_supernet.json

Measured in the ``identity`` form, before ``--reparam`` existed (default space and training config, 2000 / 1000
steps, batch 32, LR patch 24, bf16, 2 threads, 11 min):
(a) Kendall tau 0.786 (Set5, Set14 and their mean alike); (b) largest subnet w32-w4.w4.w4.w4.w4.w4, Set5 x2
inherited 36.35 dB vs 36.43 dB trained alone (-0.08 dB); (c) sandwich step 99 ms, the supernet's largest subnet
alone 64 ms, a plain step of the standalone largest subnet 61 ms (1.62x and 1.04x). With 1 thread: tau 0.786,
-0.11 dB, 142 / 97 / 91 ms (1.56x, 1.06x).

Timings are wall-clock on a shared machine; compare figures of one run, not of runs at different times.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srnas.arch.network import SubnetSR
from srnas.arch.space import SearchSpace, SubnetConfig, subnet_macs_per_pixel
from srnas.config import SUPERNET_REPARAMS, DataConfig, SearchSpaceConfig, SupernetConfig, SupernetTrainConfig
from srnas.data.prepare import load_manifest, prepare_data, read_pairs
from srnas.errors import DataError
from srnas.evaluation import evaluate_pairs
from srnas.inference import torch_upscaler
from srnas.models import gmacs
from srnas.supernet import SRSupernet
from srnas.supernet.train import SandwichLoss, patch_generator, sandwich_subnets, train_supernet
from srnas.training import PatchSampler, load_pairs, resolve_bf16, step_generator, train_step

SCALE = 2
EVAL_SETS = ("Set5", "Set14")


def ensure_data(root: Path, cache: Path) -> Path:
    cfg = DataConfig(source="folder", root=str(root), train_set="T91", eval_sets=EVAL_SETS, scales=(SCALE,))
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))
    try:
        if load_manifest(cache).get("config") == wanted:
            return cache
    except DataError:
        pass
    print(f"preparing T91 / Set5 / Set14 x{SCALE} into {cache} ...", flush=True)
    prepare_data(cfg, cache, show_progress=False)
    return cache


def psnr_on(model: torch.nn.Module, data: Path) -> dict[str, float]:
    model = model.cpu().float().eval()
    upscale = torch_upscaler(model)
    return {name: evaluate_pairs(upscale, read_pairs(data, name, SCALE), SCALE, desc=name).psnr for name in EVAL_SETS}


def single_architecture(subnet: SubnetConfig, space: SearchSpaceConfig) -> SearchSpaceConfig:
    """A space holding ``subnet``'s architecture only (its width, its expansions): weights sized for it alone."""
    expansions = sorted({c.expand for c in subnet.cells if c.block == "wdsr"}) or [space.expansions[0]]
    return SearchSpaceConfig(num_cells=len(subnet.cells), widths=(subnet.width,), blocks=space.blocks, expansions=tuple(expansions))


def train_alone(subnet: SubnetConfig, space: SearchSpaceConfig, sampler: PatchSampler, cfg: SupernetTrainConfig,
                steps: int, reparam: str) -> SubnetSR:
    """``subnet``'s architecture with weights of its own, trained alone with the supernet's settings.

    It is trained in the same form as inside the supernet (``reparam``: ECB blocks, or conv cells as
    ``ReLU(x + conv(x))``; initialised for its own widths), then exported to the plain standalone network, so the two
    are compared like with like.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = SRSupernet(single_architecture(subnet, space), SCALE, reparam)
    net.train()
    model = SandwichLoss(net, distill=0.0, bf16=resolve_bf16(cfg.bf16))
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=cfg.min_lr)
    for step in range(steps):
        lr, hr = sampler.sample(cfg.batch_size, step_generator(cfg.seed, step), cfg.augment, cfg.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss, report = model(lr, hr, [subnet])
        loss.backward()
        optimizer.step()
        scheduler.step()
        if not math.isfinite(float(report[0])):
            raise RuntimeError(f"{subnet.name}: loss {float(report[0])} at step {step}")
    return net.get_active_subnet(subnet).eval()


def cached(work: Path, key: dict[str, Any], compute: Any) -> dict[str, float]:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = work / "alone" / f"{key['subnet']}_{digest}.json"
    if path.exists():
        return json.loads(path.read_text())["psnr"]
    t0 = time.perf_counter()
    psnr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "psnr": psnr, "seconds": time.perf_counter() - t0}))
    return psnr


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def ranking_taus(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Kendall tau between inherited and stand-alone PSNR over ``rows``: of the mean of the sets, and per set."""
    mean = {kind: [statistics.fmean(r[kind].values()) for r in rows] for kind in ("inherited", "alone")}
    taus = {"mean": kendall_tau(mean["inherited"], mean["alone"])}
    for name in EVAL_SETS:
        taus[name] = kendall_tau([r["inherited"][name] for r in rows], [r["alone"][name] for r in rows])
    return taus


def time_steps(space: SearchSpace, sampler: PatchSampler, cfg: SupernetTrainConfig, warmup: int, repeat: int,
               reparam: str) -> dict[str, Any]:
    """Median ms per step of: the sandwich, the supernet's largest subnet alone, a plain net of that architecture."""
    use_bf16 = resolve_bf16(cfg.bf16)
    torch.manual_seed(cfg.seed)
    supernet = SRSupernet(space, SCALE, reparam).train()
    sandwich = SandwichLoss(supernet, distill=cfg.distill, child_weight=cfg.child_weight, bf16=use_bf16)
    opt_super = torch.optim.Adam(supernet.parameters(), lr=cfg.lr)
    plain = SubnetSR(space.largest(), SCALE)
    plain = (plain.to(memory_format=torch.channels_last) if cfg.channels_last else plain).train()
    opt_plain = torch.optim.Adam(plain.parameters(), lr=cfg.lr)
    largest = space.largest()
    macs_ratio: list[float] = []

    def super_step(step: int, subnets: list[SubnetConfig]) -> float:
        t0 = time.perf_counter()
        lr, hr = sampler.sample(cfg.batch_size, patch_generator(cfg.seed, step, 0), cfg.augment, cfg.channels_last)
        opt_super.zero_grad(set_to_none=True)
        total, _ = sandwich(lr, hr, subnets)
        total.backward()
        opt_super.step()
        return time.perf_counter() - t0

    def plain_step(step: int) -> float:
        t0 = time.perf_counter()
        lr, hr = sampler.sample(cfg.batch_size, step_generator(cfg.seed, step), cfg.augment, cfg.channels_last)
        train_step(plain, opt_plain, lr, hr, use_bf16)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"sandwich": [], "supernet_largest": [], "plain_largest": []}
    for step in range(warmup + repeat):
        subnets = sandwich_subnets(space, cfg.seed, step, cfg.num_random)
        measured = {"sandwich": super_step(step, subnets), "supernet_largest": super_step(step, [largest]),
                    "plain_largest": plain_step(step)}
        if step >= warmup:
            for key, value in measured.items():
                times[key].append(value)
            macs_ratio.append(sum(subnet_macs_per_pixel(s, SCALE) for s in subnets) / subnet_macs_per_pixel(largest, SCALE))
    result: dict[str, Any] = {f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}
    result["sandwich_macs_over_largest"] = statistics.fmean(macs_ratio)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="folder holding T91, Set5, Set14 (default: ../shared/data beside the repository)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/srnas-bench-data"), help="prepared data (outside the repo)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/srnas-bench-supernet"), help="checkpoints and cached results")
    parser.add_argument("--supernet-steps", type=int, default=2000, help="supernet budget, and the budget of (b)'s standalone run")
    parser.add_argument("--alone-steps", type=int, default=1000, help="budget of each standalone run for (a)")
    parser.add_argument("--subnets", type=int, default=8, help="subnets spread over the space ranked in (a)")
    parser.add_argument("--near", action="append", default=[], metavar="SUBNET",
                        help="a subnet (name, e.g. w16-c.c.s.s.c.c) of a second group ranked on its own in (a): the "
                             "candidates near a budget, where the search's choice is made; repeat for each")
    parser.add_argument("--timing-steps", type=int, default=10, help="measured steps per kind in (c), after 2 warm-up")
    parser.add_argument("--num-cells", type=int, default=SearchSpaceConfig().num_cells)
    parser.add_argument("--widths", type=int, nargs="+", default=list(SearchSpaceConfig().widths))
    parser.add_argument("--expansions", type=int, nargs="+", default=list(SearchSpaceConfig().expansions))
    parser.add_argument("--batch", type=int, default=SupernetTrainConfig().batch_size)
    parser.add_argument("--patch", type=int, default=SupernetTrainConfig().lr_patch_size, help="LR patch size")
    parser.add_argument("--lr", type=float, default=SupernetTrainConfig().lr)
    parser.add_argument("--num-random", type=int, default=SupernetTrainConfig().num_random)
    parser.add_argument("--distill", type=float, default=SupernetTrainConfig().distill)
    parser.add_argument("--child-weight", type=float, default=SupernetTrainConfig().child_weight)
    parser.add_argument("--reparam", choices=SUPERNET_REPARAMS, default=SupernetConfig().reparam,
                        help="the form the supernet (and each architecture trained alone) trains its 3x3 convs in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = ensure_data(args.data_root, args.cache)
    space_cfg = SearchSpaceConfig(num_cells=args.num_cells, widths=tuple(args.widths), expansions=tuple(args.expansions))
    train_cfg = SupernetTrainConfig(steps=args.supernet_steps, batch_size=args.batch, lr_patch_size=args.patch, lr=args.lr,
                                    min_lr=args.lr / 100, seed=args.seed, checkpoint_every=max(args.supernet_steps // 10, 25),
                                    log_every=max(args.supernet_steps // 10, 1), num_random=args.num_random, distill=args.distill,
                                    child_weight=args.child_weight, device="cpu")
    cfg = SupernetConfig(scale=SCALE, reparam=args.reparam, space=space_cfg, train=train_cfg)
    space = SearchSpace(space_cfg)
    sampler = PatchSampler(load_pairs(data / "train" / f"x{SCALE}", SCALE), args.patch)
    hw = (360, 640)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 {resolve_bf16(train_cfg.bf16)}; "
          f"T91 ({len(sampler)} images) -> Set5 + Set14 x{SCALE}; batch {args.batch}, LR patch {args.patch}, "
          f"sandwich of {2 + args.num_random}, distill {args.distill}, child weight {args.child_weight}")
    print(space.describe())
    print(f"largest {gmacs(SubnetSR(space.largest(), SCALE), *hw):.2f} GMAC, smallest "
          f"{gmacs(SubnetSR(space.smallest(), SCALE), *hw):.2f} GMAC at 720p output", flush=True)
    figures: dict[str, Any] = {"config": json.loads(json.dumps(dataclasses.asdict(cfg))), "alone_steps": args.alone_steps}

    # (c) first: it is short and needs no trained weights
    timing = time_steps(space, sampler, train_cfg, warmup=2, repeat=args.timing_steps, reparam=args.reparam)
    figures["timing"] = timing
    print(f"\n(c) ms per training step, median of {args.timing_steps} interleaved steps:\n"
          f"    supernet sandwich step ({2 + args.num_random} subnets)      {timing['sandwich_ms']:8.1f}\n"
          f"    supernet step, largest subnet only          {timing['supernet_largest_ms']:8.1f}\n"
          f"    plain step, standalone largest subnet      {timing['plain_largest_ms']:8.1f}\n"
          f"    sandwich / plain = {timing['sandwich_ms'] / timing['plain_largest_ms']:.2f}x "
          f"(its MACs are {timing['sandwich_macs_over_largest']:.2f}x the largest's); "
          f"dynamic-layer overhead = {timing['supernet_largest_ms'] / timing['plain_largest_ms']:.2f}x", flush=True)

    t0 = time.perf_counter()
    result = train_supernet(data, cfg, args.work / "supernet", progress=True, val_set="Set5")
    supernet = result.supernet.cpu().eval()
    print(f"\nsupernet: {args.supernet_steps} steps, {result.seconds:.0f} s "
          f"({time.perf_counter() - t0:.0f} s now), final L1 of the largest {result.final_loss:.4f}", flush=True)

    spread = space.spread(args.subnets, np.random.default_rng(args.seed + 1))
    near = [SubnetConfig.from_name(name) for name in args.near]
    for subnet in near:
        space.validate(subnet)
    base_key = {"form": "supernet-single-arch/1", "reparam": args.reparam, "batch": args.batch, "patch": args.patch,
                "lr": args.lr, "seed": args.seed, "bf16": train_cfg.bf16, "channels_last": train_cfg.channels_last,
                "data": sampler.fingerprint()}
    rows: dict[str, dict[str, Any]] = {}
    print(f"\n(a) inherited PSNR vs trained alone for {args.alone_steps} steps (dB, x{SCALE})")
    print(f"    {'subnet':<30} {'GMAC':>6} {'inh Set5':>9} {'inh Set14':>9} {'alone Set5':>10} {'alone Set14':>11}")
    for subnet in [*spread, *(s for s in near if s not in spread)]:
        inherited = psnr_on(supernet.get_active_subnet(subnet), data)
        alone = cached(args.work, {"subnet": subnet.name, "steps": args.alone_steps, **base_key},
                       lambda s=subnet: psnr_on(train_alone(s, space_cfg, sampler, train_cfg, args.alone_steps, args.reparam), data))
        macs = subnet_macs_per_pixel(subnet, SCALE) * hw[0] * hw[1] / 1e9
        rows[subnet.name] = {"subnet": subnet.name, "gmac_720p": macs, "inherited": inherited, "alone": alone}
        print(f"    {subnet.name:<30} {macs:6.2f} {inherited['Set5']:9.2f} {inherited['Set14']:9.2f} {alone['Set5']:10.2f} "
              f"{alone['Set14']:11.2f}", flush=True)
    figures["ranking"] = {"rows": list(rows.values())}
    for group, members in (("spread", spread), ("near", near)):
        if len(members) < 2:
            continue
        taus = ranking_taus([rows[s.name] for s in members])
        figures["ranking"][f"kendall_tau_{group}"] = taus
        print(f"    Kendall tau, {len(members)} subnets {'spread over the space' if group == 'spread' else 'near the budget'} "
              f"(mean of Set5 and Set14): {taus['mean']:.3f}   " + "  ".join(f"{name}: {taus[name]:.3f}" for name in EVAL_SETS))

    largest = space.largest()
    inherited_largest = rows[largest.name]["inherited"]
    alone_largest = cached(args.work, {"subnet": largest.name, "steps": args.supernet_steps, **base_key},
                           lambda: psnr_on(train_alone(largest, space_cfg, sampler, train_cfg, args.supernet_steps, args.reparam), data))
    gap = inherited_largest["Set5"] - alone_largest["Set5"]
    figures["largest"] = {"subnet": largest.name, "steps": args.supernet_steps, "inherited": inherited_largest,
                          "alone": alone_largest, "gap_set5_db": gap}
    print(f"\n(b) largest subnet {largest.name}, {args.supernet_steps} steps: Set5 x{SCALE} inherited "
          f"{inherited_largest['Set5']:.2f} dB, trained alone {alone_largest['Set5']:.2f} dB, difference {gap:+.2f} dB "
          f"[target: within 0.3 dB]  (Set14: {inherited_largest['Set14']:.2f} vs {alone_largest['Set14']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
