"""``srnas models``: the model registry with size and cost per 720p frame."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list registered models with parameters and GMAC per 720p frame")
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="default: %(default)s")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas.models import count_params, create_model, gmacs, list_models, model_info
    from srnas.profiling import lr_size_for_720p

    height, width = lr_size_for_720p(args.scale)
    print(f"{'model':<10} {'params':>9} {'GMAC/720p':>10}  description")
    for name in list_models():
        model = create_model(name, args.scale)
        print(f"{name:<10} {count_params(model):>9,} {gmacs(model, height, width):>10.2f}  {model_info(name).description}")
    return 0
