"""``srnas evaluate``: PSNR/SSIM with the SR protocol (Y channel, border = scale, uint8)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from srnas.commands.common import (
    add_settings_arguments,
    log_data_input,
    print_json,
    settings_from_args,
)
from srnas.settings import Settings

LOG = logging.getLogger("srnas.evaluate")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model with PSNR/SSIM (stage evaluate)",
        description="Score a model with the SR protocol: PSNR and SSIM on the BT.601 Y channel, both images as uint8, "
        "a border of `scale` pixels cropped, SSIM with an 11x11 Gaussian window (sigma 1.5).\n\n"
        "Ad hoc: --hr-dir DIR scores a folder of HR images (LR made with MATLAB bicubic, like prepare-data).\n"
        "Pipeline: without --hr-dir, every evaluation set in --data-dir is scored and --out gets the metrics JSON.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser)
    parser.add_argument("--model", required=True, help="model name (bicubic needs no checkpoint)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    parser.add_argument("--checkpoint", type=Path, help="trained weights (model.pt) for models other than bicubic")
    parser.add_argument("--hr-dir", type=Path, help="ad hoc: a folder of HR images to score")
    parser.add_argument("--skip-bad-images", action="store_true", help="ad hoc: warn and skip unreadable images")
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="arithmetic to score in (default fp32; bf16 as the torch_bf16 runtime deploys it)")
    parser.add_argument("--tables", type=Path,
                        help="pipeline: profile_device output; a model at the budget target's scale is scored in that "
                        "target's precision (the precision its latency is measured in)")
    parser.add_argument("--artifact", type=Path, action="append", default=[], metavar="FILE",
                        help="pipeline: also score the model through this exported file (repeatable; model.onnx, "
                        "model.int8.onnx on ONNX Runtime, model.pte, model.int8.pte on ExecuTorch): the JSON's "
                        "`deployed` gives PSNR/SSIM per set for each, labelled with its runtime and precision")
    parser.add_argument("--out", type=Path, help="pipeline: write metrics JSON here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.set_defaults(handler=run)


def make_upscaler(model: str, scale: int, checkpoint: Path | None, precision: str = "fp32") -> Callable[[np.ndarray], np.ndarray]:
    """The ``LR uint8 -> SR uint8`` function for ``model`` in ``precision``; bicubic is the protocol's MATLAB bicubic."""
    from srnas.errors import ConfigError

    if model == "bicubic":
        from srnas.evaluation import bicubic_upscaler

        return bicubic_upscaler(scale)
    if checkpoint is None:
        raise ConfigError(f"--checkpoint: model {model!r} needs its trained weights (model.pt)")
    from srnas.inference import torch_upscaler
    from srnas.loading import load_trained

    return torch_upscaler(load_trained(checkpoint, model, scale), precision)


def metric_name(kind: str, set_name: str, scale: int) -> str:
    """``psnr_set5_x2``: the metric naming every stage and MLflow share."""
    return f"{kind}_{set_name.lower()}_x{scale}"


def deployed_precision(tables: Path, settings: Settings, scale: int) -> str:
    """The precision the budget's target deploys in (its latency table in ``tables``), for a model at its scale; fp32
    for other scales and for precisions whose quality is not modelled here (int8)."""
    from srnas.inference import UPSCALE_PRECISIONS
    from srnas.latency.table import LatencyTable
    from srnas.latency.targets import budget_target_name

    target = LatencyTable.load(tables / budget_target_name(settings.budget, settings.latency) / "table.json").target
    if target.scale != scale:
        return "fp32"
    if target.precision not in UPSCALE_PRECISIONS:
        LOG.warning("%s deploys in %s: PSNR is scored in fp32 (only fp32 and bf16 are modelled)", target.name, target.precision)
        return "fp32"
    return target.precision


def _score_artifacts(args: argparse.Namespace, settings: Settings, stage: Any) -> dict[str, dict]:
    """PSNR/SSIM per evaluation set through each ``--artifact`` (the file run by its runtime, in its precision), by its
    label (``onnxruntime_int8``, ...); each figure logged as ``<metric>_<label>``."""
    from srnas.data.prepare import read_pairs
    from srnas.evaluation import evaluate_pairs
    from srnas.export import artifact_form, exported_upscaler

    deployed: dict[str, dict] = {}
    for path in args.artifact:
        form = artifact_form(path)
        upscale = exported_upscaler(path, scale=args.scale)
        sets: dict[str, dict] = {}
        for set_name in settings.data.eval_set_names:
            result = evaluate_pairs(upscale, read_pairs(args.data_dir, set_name, args.scale), args.scale,
                                    desc=f"{form.label} {set_name}")
            sets[set_name] = {"psnr": result.psnr, "ssim": result.ssim, "images": result.images}
            LOG.info("%s x%d %s through %s (%s): PSNR %.2f dB SSIM %.4f", args.model, args.scale, set_name, path,
                     form.label, result.psnr, result.ssim)
        deployed[form.label] = {"file": str(path), "runtime": form.runtime, "precision": form.precision, "sets": sets}
        stage.log_metrics({f"{metric_name(kind, n, args.scale)}_{form.label}": v[kind]
                           for n, v in sets.items() for kind in ("psnr", "ssim")})
    return deployed


def run(args: argparse.Namespace) -> int:
    from srnas import atomic, tracking
    from srnas.data.prepare import read_pairs
    from srnas.evaluation import evaluate_hr_folder, evaluate_pairs

    settings = settings_from_args(args) if args.hr_dir is None else None
    precision = args.precision or (deployed_precision(args.tables, settings, args.scale)
                                   if args.tables is not None and settings is not None else "fp32")
    upscale = make_upscaler(args.model, args.scale, args.checkpoint, precision)
    if args.hr_dir is not None:
        result = evaluate_hr_folder(upscale, args.hr_dir, args.scale, skip_bad_images=args.skip_bad_images)
        summary = {"psnr": result.psnr, "ssim": result.ssim, "images": result.images}
        if args.json:
            print_json(summary)
        else:
            print(f"{args.model} x{args.scale} on {args.hr_dir}: PSNR {result.psnr:.2f} dB  SSIM {result.ssim:.4f}  ({result.images} images)")
        return 0

    assert settings is not None
    metrics: dict[str, float] = {}
    per_set: dict[str, dict] = {}
    tags = {"srnas.model": args.model, "srnas.scale": str(args.scale), "srnas.data": settings.data.source}
    with tracking.stage_run(settings.tracking, "evaluate", {"model": args.model, "scale": args.scale, "data": dataclasses.asdict(settings.data)}, tags) as stage:
        log_data_input(stage, args.data_dir, "evaluation")
        for set_name in settings.data.eval_set_names:
            result = evaluate_pairs(upscale, read_pairs(args.data_dir, set_name, args.scale), args.scale)
            metrics[metric_name("psnr", set_name, args.scale)] = result.psnr
            metrics[metric_name("ssim", set_name, args.scale)] = result.ssim
            per_set[set_name] = {"psnr": result.psnr, "ssim": result.ssim, "images": result.images}
            LOG.info("%s x%d %s (%s): PSNR %.2f dB SSIM %.4f (%d images)", args.model, args.scale, set_name, precision,
                     result.psnr, result.ssim, result.images)
        stage.log_metrics(metrics)
        payload = {"model": args.model, "scale": args.scale, "precision": precision, "metrics": metrics, "sets": per_set}
        if args.artifact:
            payload["deployed"] = _score_artifacts(args, settings, stage)
        if args.out is not None:
            atomic.write_json(args.out, payload)
    if args.json:
        print_json(payload)
    return 0
