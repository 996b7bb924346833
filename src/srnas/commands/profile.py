"""``srnas profile``: latency of a model on every runtime this machine -- or the device agent of ``profile.device`` --
has (stages profile_model, profile_final)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from srnas.commands.common import add_settings_arguments, print_json, settings_from_args
from srnas.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from srnas.config import ProfileConfig
    from srnas.profiling import LatencyResult

LOG = logging.getLogger("srnas.profile")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure latency on every available runtime (stage profile_model)",
        description="Median and p90 latency over profile.runs calls after profile.warmup, threads fixed, for a "
        "1x3xHxW input (default: the LR size whose output is 1280x720). Runtimes: PyTorch fp32, PyTorch bf16 "
        "(CPUs with native bf16), ONNX Runtime fp32, ExecuTorch/XNNPACK if installed, CUDA if present. Each result "
        "carries the target fingerprint (CPU, flags, threads, library versions). Latency does not depend on the "
        "weights, so --checkpoint is optional. With profile.device set to a device agent's http://HOST:PORT the "
        "model is profiled there, on the runtimes it offers (token in $SRNAS_DEVICE_TOKEN).",
    )
    add_settings_arguments(parser)
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="default: %(default)s")
    parser.add_argument("--checkpoint", type=Path, help="trained model.pt (default: the untrained architecture)")
    parser.add_argument("--onnx", type=Path, help="the exported model.onnx to time on ONNX Runtime (default: export to a temp file)")
    parser.add_argument("--artifact", type=Path, action="append", default=[], metavar="FILE",
                        help="an exported file to time (repeatable): model.onnx / model.int8.onnx on ONNX Runtime, "
                        "model.pte / model.int8.pte on ExecuTorch, each result labelled with its runtime and precision "
                        "(onnxruntime_int8, ...); replaces --onnx and the temporary export for that runtime")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    parser.add_argument("--json", action="store_true", help="print the results JSON on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas import atomic, tracking
    from srnas.loading import load_trained
    from srnas.models import count_params, create_model, deployed_form, gmacs
    from srnas.profiling import lr_size_for_720p, profile_all, resolve_threads

    settings = settings_from_args(args)
    cfg = settings.profile
    model = load_trained(args.checkpoint, args.model, args.scale) if args.checkpoint else deployed_form(create_model(args.model, args.scale)).eval()
    input_hw = tuple(cfg.input_size) if cfg.input_size else lr_size_for_720p(args.scale)
    threads = cfg.threads if cfg.device else resolve_threads(cfg.threads)  # 0 on a device: all of its CPUs
    tags = {"srnas.model": args.model, "srnas.scale": str(args.scale), "srnas.data": settings.data.source}
    params = {"model": args.model, "scale": args.scale, "profile": cfg.__dict__, "input_hw": list(input_hw), "threads": threads}
    if cfg.device:
        tags["srnas.device"] = cfg.device
    with tracking.stage_run(settings.tracking, "profile_model", params, tags) as stage:
        if cfg.device:
            if args.artifact:
                LOG.warning("--artifact: profiled on the device %s, which exports the module itself (fp32): the "
                            "exported files are not timed there", cfg.device)
            results = _profile_on_device(cfg, model, input_hw, args.scale)  # each fingerprint says how many threads
        else:
            results = profile_all(model, args.onnx, input_hw, threads, warmup=cfg.warmup, runs=cfg.runs,
                                  runtimes=cfg.runtimes or None, artifacts=args.artifact)
        metrics = {f"latency_ms_{r.label}": r.median_ms for r in results}
        metrics |= {f"latency_p90_ms_{r.label}": r.p90_ms for r in results}
        payload = {
            "model": args.model,
            "scale": args.scale,
            "input_hw": list(input_hw),
            "output_hw": [input_hw[0] * args.scale, input_hw[1] * args.scale],
            "threads": threads,
            "device": cfg.device or "this machine",
            "params": count_params(model),
            "gmacs": gmacs(model, *input_hw),
            "metrics": metrics,
            "results": [r.to_dict() for r in results],
        }
        stage.log_metrics(metrics | {"params": float(payload["params"]), "gmacs": payload["gmacs"]})
        if args.out is not None:
            atomic.write_json(args.out, payload)
            stage.log_artifact(args.out)
    for r in results:
        LOG.info("%s x%d %s: median %.2f ms, p90 %.2f ms", args.model, args.scale, r.label, r.median_ms, r.p90_ms)
        if r.disturbed:
            LOG.warning("%s x%d %s: timed while other processes kept %.2f cores busy: flagged as disturbed (the report "
                        "marks it); rerun profile-model on a quiet machine", args.model, args.scale, r.label, r.busy_cores)
    if args.json:
        print_json(payload)
    return 0


def _profile_on_device(cfg: ProfileConfig, model: nn.Module, input_hw: tuple[int, int], scale: int) -> list[LatencyResult]:
    """Every runtime the device agent at ``cfg.device`` offers (or ``cfg.runtimes``), profiled there."""
    from srnas.latency.measure import device_runtimes, profile_on_device

    offered = device_runtimes(cfg.device)
    missing = [rt for rt in cfg.runtimes if rt not in offered]
    if missing:
        raise ConfigError(f"profile.runtimes: {', '.join(missing)} not offered by the device {cfg.device} "
                          f"(it offers {', '.join(offered)})")
    results = []
    for runtime in cfg.runtimes or offered:
        result = profile_on_device(cfg.device, model, runtime, input_hw, scale=scale, threads=cfg.threads,
                                   warmup=cfg.warmup, runs=cfg.runs)
        LOG.info("%s on %s: median %.2f ms, p90 %.2f ms", runtime, cfg.device, result.median_ms, result.p90_ms)
        results.append(result)
    return results
