"""``srnas report``: the Markdown report, its figures and the metrics summary of a pipeline run."""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from srnas.commands.common import add_settings_arguments, settings_from_args

LOG = logging.getLogger("srnas.report")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write results/report.md, its figures and the metrics summary (stage report)",
        description="Collect the stage outputs under --results into a Markdown report with a table per scale "
        "(parameters, GMAC per 720p frame, latency per runtime, PSNR/SSIM per set), a PSNR-versus-latency Pareto "
        "plot, a visual comparison of crops, the supernet (train_supernet) and each target's latency table and "
        "measured pruning schemes (profile_device), the searches and every candidate they measured (predicted "
        "against measured latency), and the final model, when present, with the baseline exported like it: PSNR/SSIM "
        "and latency per runtime x precision (ONNX Runtime and ExecuTorch, fp32 and int8). Closes the pipeline's parent MLflow run.",
    )
    add_settings_arguments(parser)
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results/report.md"), help="report file (default: %(default)s)")
    parser.add_argument("--figures", type=Path, default=Path("results/report"), help="figure folder (default: %(default)s)")
    parser.add_argument("--metrics", type=Path, default=Path("results/metrics.json"),
                        help="headline metrics: the final model and the best baseline in budget (default: %(default)s)")
    parser.add_argument("--models", type=Path, default=Path("results/models.csv"),
                        help="every model's PSNR and latency, for dvc plots (default: %(default)s)")
    parser.set_defaults(handler=run)


def _comparison(results_dir: Path, models: list[str], scale: int, set_name: str, path: Path) -> None:
    from srnas.commands.evaluate import make_upscaler
    from srnas.data.prepare import read_pairs
    from srnas.metrics import calculate_psnr
    from srnas.report import checkpoint_path

    name, hr, lr = next(iter(read_pairs(results_dir / "prepare_data", set_name, scale)))
    panels = []
    for model in models:
        sr = make_upscaler(model, scale, checkpoint_path(results_dir, model, scale))(lr)
        panels.append((f"{model} {calculate_psnr(sr, hr, scale):.2f} dB", sr))
    from srnas.report import comparison_image

    comparison_image(panels, hr, path)
    LOG.info("comparison of %s/%s x%d written to %s", set_name, name, scale, path)


def _report_images(markdown: str, base: Path) -> list[str]:
    """The relative paths of the local images ``markdown`` shows (``![...](path)``), that exist under ``base``."""
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)
    return [link for link in dict.fromkeys(links)
            if "://" not in link and not link.startswith(("/", "../")) and (base / link).is_file()]


def _log_report(run: Any, report: Path, markdown: str) -> None:
    """``report`` at the run's artifact root and every image it shows at the same relative path, so the Markdown
    renders in MLflow's artifact viewer as it does on disk."""
    run.log_artifact(report)
    for link in _report_images(markdown, report.parent):
        run.log_artifact(report.parent / link, posixpath.dirname(link) or None)


def _register_final(stage: Any, settings: Any, results_dir: Path, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Register the final model's logged ONNX model (``tracking.registered_model``) with its target, budget, measured
    latency, scale and PSNR as version tags; a registry failure is a warning, never a failed report (a server that
    stopped answering fails the stage, as everywhere)."""
    from srnas import tracking
    from srnas.report import FINAL_MODEL

    scale = params.get("scale")
    onnx_file = results_dir / "export" / f"{FINAL_MODEL}_x{scale}" / "model.onnx"
    if scale is None or not onnx_file.is_file():
        return
    tags = {key: params.get(key) for key in ("target", "budget_ms", "scale")}
    tags |= {key: f"{value:.4f}" for key, value in metrics.items() if key == "latency_ms" or key.startswith(("psnr_", "ssim_"))}
    name = tracking.registered_model_name(settings.tracking, int(scale))
    try:
        version = stage.register_model(name, onnx_file, tags)
    except tracking.TrackingUnreachable:
        raise  # the server is gone: the stage cannot end its run either
    except tracking.TrackingError as exc:
        LOG.warning("final model not registered: %s", exc)
        return
    if version:
        LOG.info("final model registered as %s version %s", name, version)


def run(args: argparse.Namespace) -> int:
    from srnas import atomic, tracking
    from srnas.report import (
        collect_results,
        deployment_section,
        final_section,
        headline,
        headline_metrics,
        latency_model_section,
        models_table,
        per_model_metrics,
        plot_pareto,
        render_html,
        render_markdown,
        search_section,
        supernet_section,
        verification_section,
    )

    settings = settings_from_args(args)
    with tracking.stage_run(settings.tracking, "report", {"results": str(args.results)}) as stage:
        results = collect_results(args.results)
        figures: dict[str, str] = {}
        args.figures.mkdir(parents=True, exist_ok=True)
        set_name = settings.data.eval_set_names[0]
        for scale in sorted({r.scale for r in results}):
            models = [r.model for r in results if r.scale == scale]
            pareto = args.figures / f"pareto_x{scale}.png"
            plot_pareto(results, scale, set_name, pareto)
            comparison = args.figures / f"comparison_x{scale}.png"
            _comparison(args.results, models, scale, set_name, comparison)
            for key, path in ((f"pareto_x{scale}", pareto), (f"comparison_x{scale}", comparison)):
                figures[key] = Path(os.path.relpath(path, args.out.parent)).as_posix()
        sections = supernet_section(args.results / "train_supernet") + latency_model_section(args.results / "profile_device")
        sections += search_section(args.results / "search_arch", args.out.parent)
        sections += verification_section(args.results)
        sections += final_section(args.results, results)
        sections += deployment_section(args.results, results)
        markdown = render_markdown(results, figures, sections)
        atomic.write_text(args.out, markdown)
        atomic.write_text(args.figures / "report.html", render_html(markdown, args.out.parent))
        atomic.write_json(args.metrics, headline_metrics(args.results, results))
        atomic.write_text(args.models, models_table(results, set_name))
        stage.log_metrics(per_model_metrics(results))
        pipeline = stage.pipeline()
        params, metrics = headline(args.results, results)
        pipeline.log_params(params)
        pipeline.log_metrics(metrics)
        for run_ in (stage, pipeline):
            _log_report(run_, args.out, markdown)
        _register_final(stage, settings, args.results, params, metrics)
    tracking.end_pipeline(settings.tracking, "FINISHED")
    LOG.info("report written to %s", args.out)
    return 0
