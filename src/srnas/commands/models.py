"""``srnas models``: the model registry (fixed models, family examples, families) with size and cost per 720p frame."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list registered models and families with parameters and GMAC per 720p frame")
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="default: %(default)s")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from srnas.models import (
        count_params,
        create_model,
        deployed_form,
        family_info,
        gmacs,
        list_families,
        list_models,
        model_info,
    )
    from srnas.profiling import lr_size_for_720p

    height, width = lr_size_for_720p(args.scale)
    names = list_models()
    column = max(10, *(len(n) for n in names))
    print(f"{'model':<{column}} {'params':>9} {'GMAC/720p':>10}  description")
    for name in names:
        model = deployed_form(create_model(name, args.scale))
        print(f"{name:<{column}} {count_params(model):>9,} {gmacs(model, height, width):>10.2f}  {model_info(name).description}")
    print("(params and GMAC of the deployed form: ecbsr_* trains multi-branch blocks and deploys as plain_*)")
    print()
    print("families (any M and C in bounds, e.g. `srnas train --model ecbsr_m8c24`):")
    for prefix in list_families():
        info = family_info(prefix)
        print(f"  {info.describe():<38} examples: {', '.join(info.examples)}  {info.reference}")
    return 0
