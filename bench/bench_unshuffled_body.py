"""Would a body at half the LR resolution open a gap over ECBSR? (issue 16: a candidate search-space choice.)

Mobile SR designs for NPUs often run the body on a pixel-unshuffled input (``PixelUnshuffle(f)``: ``3 f^2`` channels
at ``1/f`` of the LR size) with wider convolutions, then shuffle out by ``s f``. On an AMX-class CPU a wide conv costs
about what a narrow one does per MAC, so a 64-channel body at a quarter of the pixels might buy depth and receptive
field for the latency of a 32-channel one. This trains such a network with the benchmark's recipe (ECB training form,
the same steps, batch, patch, bf16 and seed as every baseline; ``srnas.training.run_training``) on prepared data, scores
it in bf16 on the prepared evaluation sets (``srnas evaluate``'s protocol), and times it against a plain network in
torch bf16 at a 720p output, the two interleaved round by round (``srnas.profiling.profile_module``, median of rounds).

The network (:class:`UnshuffledBody`): ``PixelUnshuffle(f)``, conv3x3 (``3 f^2`` -> width) + ReLU, ``depth - 2`` x
[conv3x3 + ReLU], conv3x3 (width -> ``3 (s f)^2``), plus the nearest-neighbour upsample of the input laid out for
``PixelShuffle(s f)`` (a channel gather of the unshuffled input), then ``PixelShuffle(s f)``. Inputs whose sides are
not multiples of ``f`` are edge-padded and the output cropped.

    .venv/bin/python bench/bench_unshuffled_body.py --data-dir results/prepare_data --width 64 --depth 6 \
        --compare plain_m2c32 --work /tmp/unshuffled

Measured (2-core Xeon with AMX, x2, T91, 22000 steps, batch 32, LR patch 24, bf16; Set5 / Set14 / B100 in bf16):
``UnshuffledBody(f=2, width 64, depth 6)`` (10.5 GMAC per 720p frame) 36.82 / 32.56 / 31.39 dB against the x2
benchmark's ``ecbsr_m2c32`` (5.2 GMAC) 36.89 / 32.65 / 31.43 dB: lower on every set, and slower: 71.5 ms against
``plain_m2c32``'s 55.3 ms (median of 7 interleaved rounds, 1.22x-1.53x slower round by round; both absolute figures
were taken while the shared host ran slow, ``plain_m2c32`` measures 28-30 ms in quieter spells). Not added to the space.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from srnas.data.prepare import read_pairs
from srnas.evaluation import evaluate_pairs
from srnas.inference import torch_upscaler
from srnas.models import create_model
from srnas.models.ecbsr import collapse_ecbs, with_ecb_training_form
from srnas.profiling import profile_module
from srnas.settings import load_settings
from srnas.training.loop import config_identity, load_training_data, run_training


class UnshuffledBody(nn.Module):
    """A plain conv body on the pixel-unshuffled input (see the module docstring)."""

    def __init__(self, scale: int, width: int, depth: int, factor: int = 2) -> None:
        super().__init__()
        self.scale, self.factor = scale, factor
        out_scale = scale * factor
        layers: list[nn.Module] = [nn.Conv2d(3 * factor * factor, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 3 * out_scale * out_scale, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.down = nn.PixelUnshuffle(factor)
        self.up = nn.PixelShuffle(out_scale)
        # Output pixel (out_scale*i + a, out_scale*j + b) of colour c is LR pixel (factor*i + a//scale,
        # factor*j + b//scale): unshuffled channel c*factor^2 + (a//scale)*factor + b//scale.
        gather = [c * factor * factor + (a // scale) * factor + (b // scale)
                  for c in range(3) for a in range(out_scale) for b in range(out_scale)]
        self.register_buffer("gather", torch.tensor(gather), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.factor, (-w) % self.factor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        u = self.down(x)
        y = self.up(self.body(u) + u.index_select(1, self.gather))
        return y[..., : h * self.scale, : w * self.scale]


def check_residual(scale: int, factor: int) -> None:
    """With every conv zero the network is the nearest-neighbour upsample (odd sizes included)."""
    net = UnshuffledBody(scale, 8, 3, factor)
    with torch.no_grad():
        for p in net.body.parameters():
            p.zero_()
        x = torch.rand(1, 3, 7, 10)
        assert torch.equal(net(x), F.interpolate(x, scale_factor=scale, mode="nearest")), "residual layout is wrong"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared data (srnas prepare-data output)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--overlay", type=Path, action="append", default=[Path("config/benchmark.yaml")])
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--steps", type=int, help="training steps (default: train.steps of the settings)")
    parser.add_argument("--compare", default="plain_m2c32", help="registered network timed alongside")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--work", type=Path, required=True, help="folder for the training checkpoint (resumed)")
    args = parser.parse_args()
    check_residual(args.scale, args.factor)

    settings = load_settings(args.params, tuple(args.overlay))
    cfg = settings.train if args.steps is None else dataclasses.replace(settings.train, steps=args.steps)
    data = load_training_data(args.data_dir, args.scale, cfg.lr_patch_size, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = with_ecb_training_form(UnshuffledBody(args.scale, args.width, args.depth, args.factor))
    label = f"unshuffled f{args.factor} w{args.width} d{args.depth}"
    identity = {"network": label, "scale": args.scale, "config": config_identity(cfg)}
    run_training(model, cfg, data, args.work, identity, label=label, save_model=lambda *_: None,
                 describe={"model": label}, progress=True)
    net = collapse_ecbs(model).eval().to(memory_format=torch.contiguous_format)

    scores = {}
    for name in settings.data.eval_sets:
        result = evaluate_pairs(torch_upscaler(net, "bf16"), read_pairs(args.data_dir, name, args.scale), args.scale)
        scores[name] = {"psnr": round(result.psnr, 3), "ssim": round(result.ssim, 4)}

    hw = (720 // args.scale, 1280 // args.scale)
    other = create_model(args.compare, args.scale).eval()
    rounds: dict[str, list[float]] = {label: [], args.compare: []}
    for _ in range(args.rounds):
        for name, module in ((label, net), (args.compare, other)):
            rounds[name].append(profile_module(module, "torch_bf16", hw, threads=2, warmup=3, runs=15).median_ms)
    latency = {name: round(statistics.median(values), 2) for name, values in rounds.items()}
    print(json.dumps({"network": label, "steps": cfg.steps, "scores_bf16": scores, "torch_bf16_ms_720p": latency,
                      "rounds_ms": {k: [round(v, 1) for v in vs] for k, vs in rounds.items()}}, indent=1))


if __name__ == "__main__":
    main()
