"""How well stage 3's scores rank pruning ratios: PSNR right after pruning (inherited weights, no training; the
``search_ratio`` score with ``recovery_steps`` 0) and PSNR after a short recovery fine-tune (``recovery_steps`` N, on
the search's crops), against PSNR after the final fine-tune, over random keep ratios of one stage-2 architecture.

    .venv/bin/python bench/bench_ratio_proxy.py --arch results/search_arch/arch.json \
        --supernet results/train_supernet/supernet.pt --table results/profile_device/cpu_auto \
        --data-dir results/prepare_data [--count 8] [--recovery-steps 0 100 300] [--final-steps 3000] [--json FILE]

For ``--count`` keep-ratio settings of the architecture's pruned convs (stage 2's own setting first, the rest drawn
uniformly on the ``search_ratio`` grid): each score of ``--recovery-steps`` (0: the proxy), then the final
fine-tune -- ``finetune``'s defaults (distillation from the supernet's largest subnet, ECB form) over
``--final-steps`` steps (default: ``finetune.steps`` of params.yaml's defaults) -- and the validation PSNR of the
result. Prints every figure per setting and the Spearman and Kendall rank correlations of each score with it.
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
from srnas.search.recovery import recover, recovery_recipe
from srnas.search.run import TrialEvaluator
from srnas.training import PatchSampler, load_pairs


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
    parser.add_argument("--recovery-steps", type=int, nargs="+", default=[0, 100, 300],
                        help="the scores compared: recovery fine-tune steps before scoring (0: right after pruning)")
    parser.add_argument("--final-steps", type=int, default=FinetuneConfig().steps, help="the final fine-tune's steps")
    parser.add_argument("--final-distill", type=float, default=FinetuneConfig().distill)
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
    final_cfg = dataclasses.replace(FinetuneConfig(), steps=args.final_steps, checkpoint_every=0,
                                    log_every=args.final_steps, distill=args.final_distill)
    scale = evaluator.supernet.scale
    sampler = PatchSampler(load_pairs(args.data_dir / "train" / f"x{scale}", scale), final_cfg.lr_patch_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="srnas-proxy-") as work:
        for k, keeps in enumerate(settings):
            net = candidate.network(keeps)
            scores = {}
            for steps in args.recovery_steps:
                model = evaluator.quality.model(net)
                if steps:
                    recover(model, sampler, recovery_recipe(final_cfg, steps))
                scores[f"recovery{steps}"] = evaluator.quality.psnr_model(model)
            path = Path(work) / f"p{k}.pt"
            save_network(path, evaluator.quality.model(net))
            tuned = finetune(path, args.supernet, args.data_dir, final_cfg, Path(work) / f"f{k}", resume=False, progress=False)
            rows.append({"network": net.name, "predicted_ms": evaluator.predictor.predict(net), **scores,
                         "final_psnr": tuned.val_psnr, "val_set": tuned.val_set})
            print(f"{k}: {net.name}: predicted {rows[-1]['predicted_ms']:.1f} ms, "
                  + ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
                  + f" dB; after the final fine-tune ({args.final_steps} steps) {tuned.val_psnr:.3f} dB ({tuned.val_set})",
                  flush=True)
    final = [r["final_psnr"] for r in rows]
    summary = {"final_steps": args.final_steps, "final_distill": args.final_distill, "rows": rows, "scores": {}}
    print(f"\nscores against PSNR after the final fine-tune, {len(rows)} settings:")
    for steps in args.recovery_steps:
        score = [r[f"recovery{steps}"] for r in rows]
        summary["scores"][f"recovery{steps}"] = {"spearman": spearman(score, final), "kendall": kendall(score, final)}
        print(f"    {'right after pruning' if steps == 0 else f'after {steps} recovery steps':<28} "
              f"Spearman {spearman(score, final):.3f}, Kendall {kendall(score, final):.3f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
