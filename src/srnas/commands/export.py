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
        "(executorch_delegation).\n\n"
        "With --deploy (the final model's export): every deployable form, OUT/model.onnx, OUT/model.int8.onnx (static "
        "QDQ), OUT/model.pte and OUT/model.int8.pte (PT2E with the XNNPACK quantizer), the int8 ones calibrated on "
        "export.calibration_patches LR patches of the training set (seeded, deterministic). The fp32 forms are held to "
        "the limits above; an int8 form's PSNR loss against fp32 on the validation set is recorded in parity.json "
        "(deployed.<label>.parity.psnr_loss), and it fails only when broken. The .pte files take LR up to 720x1280, or "
        "the largest evaluation image when that is larger.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser)
    parser.add_argument("--model", required=True, help="model name (for tags and messages)")
    parser.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained model.pt")
    parser.add_argument("--data-dir", type=Path, default=Path("results/prepare_data"), help="prepared data (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/export/plain32_x2")
    parser.add_argument("--deploy", action="store_true",
                        help="write every deployable form: ONNX and .pte, fp32 and int8 (calibrated on training patches)")
    parser.set_defaults(handler=run)


def _eval_max_hw(data_dir: Path, set_names: tuple[str, ...], scale: int) -> tuple[int, int]:
    """The largest LR (height, width) a deployed ``.pte`` must take: 720x1280, or the evaluation images' when larger
    (the final model is scored through it on every set)."""
    from srnas.data.prepare import read_pairs
    from srnas.export import PTE_MAX_HW

    height, width = PTE_MAX_HW
    for set_name in set_names:
        for _, _, lr in read_pairs(data_dir, set_name, scale):
            height, width = max(height, lr.shape[0]), max(width, lr.shape[1])
    return height, width


def _deploy(args: argparse.Namespace, settings: Any, model: Any, pairs: list, stage: Any) -> dict[str, Any]:
    """Every deployable form (``--deploy``), checked; what parity.json records of them."""
    from srnas.data.prepare import calibration_patches
    from srnas.deploy import calibration_digest, export_forms

    cfg = settings.export
    patches = calibration_patches(args.data_dir, args.scale, count=cfg.calibration_patches, size=cfg.calibration_size,
                                  seed=cfg.calibration_seed)
    max_hw = _eval_max_hw(args.data_dir, settings.data.eval_set_names, args.scale)
    artifacts = export_forms(model, args.out, name=f"{args.model}_x{args.scale}", scale=args.scale, val_pairs=pairs,
                             calibration=patches, opset=cfg.opset, sample_hw=tuple(cfg.sample_size), atol=cfg.atol,
                             psnr_tol=cfg.psnr_tol, max_hw=max_hw)
    for artifact in artifacts:
        LOG.info("%s parity: %s", artifact.form.label, artifact.parity.describe())
        stage.log_metrics({f"parity_max_abs_diff_{artifact.form.label}": artifact.parity.max_abs_diff_random,
                           f"parity_psnr_loss_{artifact.form.label}": artifact.parity.psnr_loss})
    fp32 = {a.form.runtime: a for a in artifacts if a.form.precision == "fp32"}
    summary: dict[str, Any] = {
        "onnxruntime": fp32["onnxruntime_fp32"].parity.to_dict(),  # the keys the fp32-only export writes
        "executorch": fp32["executorch_xnnpack_fp32"].parity.to_dict(),
        "executorch_delegation": fp32["executorch_xnnpack_fp32"].delegation.to_dict(),  # type: ignore[union-attr]
        "pte_max_hw": list(max_hw),
        "calibration": {"set": "train", "patches": len(patches), "size": cfg.calibration_size,
                        "seed": cfg.calibration_seed, "sha256": calibration_digest(patches)},
        "deployed": {a.form.label: a.to_dict() for a in artifacts},
    }
    return summary


def run(args: argparse.Namespace) -> int:
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
    params = {"model": args.model, "scale": args.scale, "export": cfg.__dict__, "deploy": args.deploy}
    with tracking.stage_run(settings.tracking, "export", params, tags) as stage:
        summary: dict[str, Any] = {"model": args.model, "scale": args.scale, "val_set": val_set}
        if args.deploy:
            onnx_path = args.out / "model.onnx"
            summary |= _deploy(args, settings, model, pairs, stage)
            atomic.write_json(args.out / "parity.json", summary)
            for entry in summary["deployed"].values():  # the int8 files and the .pte: MLflow has no flavour for them
                stage.log_artifact(args.out / entry["file"], "deployed")
            stage.log_artifact(args.out / "parity.json")
            _log_models(stage, args, model, onnx_path)
            return 0
        onnx_path = export_onnx(model, args.out / "model.onnx", opset=cfg.opset, sample_hw=tuple(cfg.sample_size),
                                name=f"{args.model}_x{args.scale}")
        reports = {"onnxruntime": check_parity(model, onnx_path, pairs, args.scale, atol=cfg.atol, psnr_tol=cfg.psnr_tol)}
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
        _log_models(stage, args, model, onnx_path)
    return 0


def _log_models(stage: Any, args: argparse.Namespace, model: Any, onnx_path: Path) -> None:
    """The deployable model in MLflow's two flavours (PyTorch, ONNX fp32), with a 16x16 LR input example in [0, 1];
    the report stage registers the final model's ONNX one."""
    import numpy as np

    example = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    stage.log_models(f"{args.model}_x{args.scale}", model, onnx_path, example,
                     {"srnas.model": args.model, "srnas.scale": str(args.scale)})
