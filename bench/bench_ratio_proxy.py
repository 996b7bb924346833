"""How well stage 3's cheap proxy ranks pruning ratios: PSNR right after pruning (inherited weights, no training)
against PSNR after a short recovery fine-tune, over random keep ratios of one stage-2 architecture.

    .venv/bin/python bench/bench_ratio_proxy.py --arch results/search_arch/arch.json \
        --supernet results/train_supernet/supernet.pt --table results/profile_device/cpu_auto \
        --data-dir results/prepare_data [--count 8] [--steps 400] [--json FILE]

For ``--count`` keep-ratio settings of the architecture's pruned convs (stage 2's own setting first, the rest drawn
uniformly on the ``search_ratio`` grid): the proxy (the ``search_ratio`` score, on the search's crops), then
``--steps`` fine-tuning steps (``finetune`` defaults, no distillation) and the validation PSNR of the result. Prints
both per setting and the Spearman and Kendall rank correlations between them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from srnas.arch.network import save_network
from srnas.config import FinetuneConfig, RatioSearchConfig, SearchArchConfig
from srnas.finetune import finetune
from srnas.latency.validate import spearman
from srnas.search import ArchCandidate, SearchInputs
from srnas.search.candidate import DENSE
from srnas.search.run import TrialEvaluator


def kendall(a: list[float], b: list[float]) -> float:
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    score = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs)
    return float(score / len(pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=Path, required=True)
    parser.add_argument("--supernet", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    arch_cfg, ratio_cfg = SearchArchConfig(), RatioSearchConfig()
    candidate = ArchCandidate.from_dict(json.loads(args.arch.read_text())["chosen"])
    evaluator = TrialEvaluator(SearchInputs(args.supernet, args.table, args.data_dir), arch_cfg, ratio_cfg.importance)
    schemes = candidate.conv_schemes()
    grid = np.arange(ratio_cfg.min_keep, 1.0 + 1e-9, ratio_cfg.keep_step)
    rng = np.random.default_rng(args.seed)
    settings = [[1.0 if s == DENSE else arch_cfg.prune_keep for s in schemes]]
    while len(settings) < args.count:
        settings.append([1.0 if s == DENSE else float(rng.choice(grid)) for s in schemes])
    rows = []
    with tempfile.TemporaryDirectory(prefix="srnas-proxy-") as work:
        for k, keeps in enumerate(settings):
            net = candidate.network(keeps)
            proxy = evaluator.quality.psnr_network(net)
            path = Path(work) / f"p{k}.pt"
            save_network(path, evaluator.quality.model(net))
            cfg = dataclasses.replace(FinetuneConfig(), steps=args.steps, checkpoint_every=0, log_every=args.steps, distill=0.0)
            tuned = finetune(path, args.supernet, args.data_dir, cfg, Path(work) / f"f{k}", resume=False, progress=False)
            rows.append({"network": net.name, "predicted_ms": evaluator.predictor.predict(net), "proxy_psnr": proxy,
                         "tuned_psnr": tuned.val_psnr, "val_set": tuned.val_set})
            print(f"{k}: {net.name}: predicted {rows[-1]['predicted_ms']:.1f} ms, proxy {proxy:.3f} dB, after {args.steps} "
                  f"steps {tuned.val_psnr:.3f} dB ({tuned.val_set})", flush=True)
    proxy, tuned = [r["proxy_psnr"] for r in rows], [r["tuned_psnr"] for r in rows]
    summary = {"spearman": spearman(proxy, tuned), "kendall": kendall(proxy, tuned), "steps": args.steps, "rows": rows}
    print(f"\nproxy vs fine-tuned PSNR over {len(rows)} settings: Spearman {summary['spearman']:.3f}, "
          f"Kendall {summary['kendall']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
