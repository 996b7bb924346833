"""``srnas upscale``: super-resolve images or folders with an exported model."""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

LOG = logging.getLogger("srnas.upscale")
MODEL_SUFFIXES = (".onnx", ".pte")  # exported files --model takes as they are (anything else: a result name)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upscale",
        help="upscale images or folders with an exported model",
        description="Upscale every image given (files, or folders of images) with an exported model and write "
        "OUT/<name>.png. MODEL is a .onnx file (run by ONNX Runtime; model.int8.onnx, static QDQ, too), a .pte file "
        "(ExecuTorch with XNNPACK, as `srnas export` writes it with export.executorch: true or --deploy; "
        "model.int8.pte, PT2E int8, too; LR images up to the size it was exported for, 720x1280 or more) or a pipeline result name such as plain32_x2 (results/export/plain32_x2/model.onnx). An unreadable file is reported and skipped; the exit status is 1 "
        "when any file failed. --fail-fast stops at the first one. Before anything is written, the batch is refused "
        "(exit status 2) when OUT is an input folder, when two inputs would write the same OUT/<name>.png (a.png and "
        "a.jpg, or x/a.png and y/a.png), when an output would replace an input, or when an output already exists "
        "and --overwrite is not given; a model whose output is not 2, 3 or 4 times its input is refused too.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    parser.add_argument("--model", required=True, help="model.onnx or model.pte path, or result name (e.g. plain32_x2)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder for result names (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime / ExecuTorch threads (default: all cores)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first unreadable image")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs already in OUT (never an input)")
    parser.set_defaults(handler=run)


def _result_scale(model: str) -> int | None:
    """The scale a result name promises (``plain32_x2`` -> 2); None for a .onnx / .pte path."""
    match = re.search(r"_x([234])$", model)
    return int(match.group(1)) if match and Path(model).suffix not in MODEL_SUFFIXES else None


def resolve_model(model: str, results: Path) -> Path:
    from srnas.errors import ConfigError

    path = Path(model)
    if path.suffix in MODEL_SUFFIXES:
        if not path.is_file():
            raise ConfigError(f"--model: {path} does not exist")
        return path
    candidate = results / "export" / model / "model.onnx"
    if not candidate.is_file():
        raise ConfigError(f"--model: {model!r} is neither a .onnx / .pte file nor an exported result ({candidate} not found)")
    return candidate


def collect_inputs(inputs: list[Path]) -> tuple[list[Path], list[Path]]:
    """The image files to upscale (folders expanded, in order) and the folders given."""
    from srnas.errors import DataError
    from srnas.images import list_images

    files: list[Path] = []
    folders: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise DataError(f"{item}: no image files in this folder")
            files.extend(found)
            folders.append(item)
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return files, folders


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from srnas.errors import ImageError
    from srnas.export import exported_upscaler
    from srnas.images import read_rgb, write_png
    from srnas.outputs import plan_outputs

    model = resolve_model(args.model, args.results)
    files, folders = collect_inputs(args.inputs)
    plan = plan_outputs(files, args.out, ".png", input_dirs=folders, overwrite=args.overwrite)
    upscale = exported_upscaler(model, args.threads, _result_scale(args.model))
    failed: list[str] = []
    done, seconds = 0, 0.0
    with tqdm(plan, desc="upscale", unit="img", disable=None) as bar:
        for path, target in bar:
            try:
                lr = read_rgb(path)
            except ImageError as exc:
                if args.fail_fast:
                    raise
                LOG.error("skipped: %s", exc)
                failed.append(str(path))
                continue
            start = time.perf_counter()
            sr = upscale(lr)
            seconds += time.perf_counter() - start
            write_png(target, sr)
            done += 1
            bar.set_postfix(fps=f"{done / seconds:.2f}" if seconds else "-")
    fps = done / seconds if seconds else 0.0
    print(f"upscaled {done} image(s) into {args.out} at {fps:.2f} frames/s (model time only)")
    if failed:
        print(f"{len(failed)} file(s) failed: {', '.join(failed)}")
        return 1
    return 0
