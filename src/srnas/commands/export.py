"""``srnas export``: ONNX (always) and ExecuTorch (optional), each checked for parity (stage export)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from srnas.commands.common import add_settings_arguments, settings_from_args

LOG = logging.getLogger("srnas.export")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX (and .pte) with parity checks (stage export)",
        description="Export OUT/model.onnx (dynamic batch, height and width; its metadata says the scale, input range, "
        "colour order and layout) and check it against PyTorch: max abs difference at most export.atol and PSNR on the validation set within export.psnr_tol dB, or the export fails and no "
        "file is left. With export.executorch: true, OUT/model.pte (XNNPACK; LR up to 720x1280) too, checked the same way; "
        "parity.json then also says which operators the XNNPACK delegate runs and which fall out of it "
        "(executorch_delegation).",
    )
    add_settings_arguments(parser)
    parser.add_argument("--model", required=True, help="model name (for tags and messages)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained model.pt")
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/export/plain32_x2")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from srnas import atomic, tracking
    from srnas.data.prepare import read_pairs
    from srnas.export import check_parity, check_pte_parity, export_onnx, export_pte
    from srnas.loading import load_trained

    settings = settings_from_args(args)
    cfg = settings.export
    model = load_trained(args.checkpoint, args.model, args.scale)
    val_set = settings.data.eval_set_names[0]
    pairs = [(lr, hr) for _, hr, lr in read_pairs(args.data_dir, val_set, args.scale)]
    tags = {"srnas.model": args.model, "srnas.scale": str(args.scale), "srnas.data": settings.data.source}
    with tracking.stage_run(settings.tracking, "export", {"model": args.model, "scale": args.scale, "export": cfg.__dict__}, tags) as stage:
        onnx_path = export_onnx(model, args.out / "model.onnx", opset=cfg.opset, sample_hw=tuple(cfg.sample_size),
                                name=f"{args.model}_x{args.scale}")
        reports = {"onnxruntime": check_parity(model, onnx_path, pairs, args.scale, atol=cfg.atol, psnr_tol=cfg.psnr_tol)}
        summary: dict[str, Any] = {"model": args.model, "scale": args.scale, "val_set": val_set}
        if cfg.executorch:
            pte = export_pte(model, args.out / "model.pte", sample_hw=tuple(cfg.sample_size))
            reports["executorch"] = check_pte_parity(model, pte.path, pairs, args.scale, atol=cfg.atol, psnr_tol=cfg.psnr_tol)
            summary["executorch_delegation"] = pte.delegation.to_dict()
            LOG.info("executorch delegation: %s", pte.delegation.describe())
            stage.log_metrics({"executorch_delegate_subgraphs": pte.delegation.subgraphs,
                               "executorch_non_delegated_ops": sum(pte.delegation.portable.values())})
        summary |= {k: r.to_dict() for k, r in reports.items()}
        atomic.write_json(args.out / "parity.json", summary)
        for runtime, report in reports.items():
            LOG.info("%s parity: %s", runtime, report.describe())
            stage.log_metrics({f"parity_max_abs_diff_{runtime}": report.max_abs_diff_random, f"parity_psnr_diff_{runtime}": report.psnr_diff})
        stage.log_artifact(args.out / "parity.json")
        # The deployable model in MLflow's two flavours (PyTorch, ONNX), with a 16x16 LR input example in [0, 1];
        # the report stage registers the final model's ONNX one.
        example = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
        stage.log_models(f"{args.model}_x{args.scale}", model, onnx_path, example,
                         {"srnas.model": args.model, "srnas.scale": str(args.scale)})
    return 0
