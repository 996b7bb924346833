"""``srnas config``: check or show the merged configuration, its JSON schema, or DVC ``-S`` overrides for a profile."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from srnas.atomic import write_json
from srnas.commands.common import add_settings_arguments
from srnas.config import check_key_path
from srnas.errors import ConfigError
from srnas.settings import Settings, check_overlay, deep_merge, plain, read_yaml_mapping

_PLAIN = re.compile(r"^[A-Za-z0-9_./:-]+$")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show, validate or translate the configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="validate params.yaml and its overlays; exit 2 with one line naming the file and the key",
        description="Every key of params.yaml must be set, with a valid value; an overlay may only set keys that exist; "
        "model names must be in the registry (or plain_fit / ecbsr_fit), budget.target one of latency.targets "
        "(srnas.preflight). Snakemake runs this when it parses the Snakefile, before any job; DVC runs it as the "
        "validate_config stage, before every other stage.")
    add_settings_arguments(check)
    check.add_argument("--out", type=Path, help="on success, write this marker file (DVC's validate_config stage output); "
                       "removed first, so a failed check leaves none")
    check.set_defaults(handler=run_check)
    show = actions.add_parser("show", help="validate and print the merged configuration as YAML")
    add_settings_arguments(show)
    show.set_defaults(handler=run_show)
    schema = actions.add_parser("schema", help="print the JSON schema of params.yaml (YAML)")
    schema.set_defaults(handler=run_schema)
    dvc_args = actions.add_parser(
        "dvc-args",
        help="print `-S ++key=value` arguments that select a profile with `dvc exp run`",
        description="Example: dvc exp run $(srnas config dvc-args config/benchmark.yaml --set data.root=../shared/data). "
        "Several profiles stack in order, as repeated --overlay options do: config/smoke.yaml config/smoke_xnnpack.yaml.",
    )
    dvc_args.add_argument("overlay", type=Path, nargs="+", help="profile YAML, e.g. config/smoke.yaml (several: merged in order)")
    dvc_args.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override (repeatable)")
    dvc_args.set_defaults(handler=run_dvc_args)


CHECK_FORMAT = "srnas-config-check/1"


def _checked(args: argparse.Namespace) -> Settings:
    # imports the model registry (torch): not for `srnas --help`
    from srnas.preflight import load_checked

    return load_checked(args.params, tuple(args.overlay), args.config_json)


def run_check(args: argparse.Namespace) -> int:
    if args.out is not None:
        args.out.unlink(missing_ok=True)
    _checked(args)
    if args.out is not None:
        # the same bytes for every valid configuration: the stages after validate_config rerun for their own params only
        write_json(args.out, {"format": CHECK_FORMAT, "valid": True})
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(plain(_checked(args)), sort_keys=False), end="")
    return 0


def run_schema(args: argparse.Namespace) -> int:
    from srnas.schema import settings_schema

    print(yaml.safe_dump(settings_schema(), sort_keys=False), end="")
    return 0


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # e.g. an item of latency.targets
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if _PLAIN.match(text) else "'" + text.replace("'", "\\'") + "'"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def dvc_overrides(overlay: Mapping[str, Any], extra: list[str]) -> list[str]:
    """``-S ++key=value`` for every key ``overlay`` sets and every ``KEY=VALUE`` of ``extra``; ConfigError naming a
    ``--set`` key that is not a key of params.yaml (``++`` would add it to params.yaml silently)."""
    pairs = {key: _override_value(value) for key, value in flatten(overlay).items()}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        check_key_path(Settings, key, "--set:")
        pairs[key] = value
    # ++: override or add (a key the profile sets may be absent from params.yaml, e.g. train.steps_by_model.fsrcnn)
    return [f"-S ++{key}={value}" for key, value in pairs.items()]


def run_dvc_args(args: argparse.Namespace) -> int:
    overlay: dict[str, Any] = {}
    for path in args.overlay:
        layer = read_yaml_mapping(path)
        check_overlay(layer, str(path))  # `-S ++key=value` would add a typo'd key to params.yaml silently
        overlay = deep_merge(overlay, layer)
    print(" ".join(dvc_overrides(overlay, args.set)))
    return 0
