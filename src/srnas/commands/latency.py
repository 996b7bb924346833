"""``srnas profile-device`` (stage profile_device) and ``srnas validate-latency``: the compiler-aware latency model.

Exposes two subcommands (``COMMANDS`` entry ``latency``):

- ``profile-device``: per target of ``latency.targets``, measure the pruning schemes and the per-layer lookup table
  (cached by target fingerprint), fit the overhead model on a few calibration networks, write
  ``OUT/<target>/table.json``, ``schemes.json``, ``schemes.md``;
- ``validate-latency``: per target, measure >= 50 random subnets (some pruned) end to end and compare with the
  predictor of ``table.json``: share within +-10%, MAPE, Spearman; writes ``OUT/<target>.json``.

Both log to MLflow through :func:`srnas.tracking.stage_run`. Targets are measured one after another, never in
parallel: two measurements sharing the CPU would each be wrong.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from srnas.commands.common import add_settings_arguments, print_json, settings_from_args

LOG = logging.getLogger("srnas.latency")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    profile = subparsers.add_parser(
        "profile-device",
        help="measure the latency table and pruning schemes of each target (stage profile_device)",
        description="For each target of latency.targets (device, runtime, precision, threads, input size): time every "
        "layer configuration a subnet of supernet.space can contain (block type x input and output width, on the channel "
        "grid of the finest filter-pruning granularity the target accelerates) at the target's input size, in context "
        "(layout and precision as inside a network); measure every pruning scheme (filter pruning rounded to 16/8/4/1 "
        "channels, 50%/90% unstructured zeros, bf16 or int8 precision, 2:4 sparsity where a GPU runtime exists) and keep "
        "those at least latency.min_speedup faster; fit the overhead model on latency.calibration_subnets measured "
        "networks. Measurements are cached in latency.cache_dir by target fingerprint (CPU, flags, runtime, threads, "
        "library versions): a rerun under the same fingerprint measures nothing, a new fingerprint measures again.",
    )
    add_settings_arguments(profile)
    profile.add_argument("--out", type=Path, default=Path("results/profile_device"), help="output folder (default: %(default)s)")
    profile.add_argument("--target", action="append", default=[], help="only this target (repeatable; default: all)")
    profile.add_argument("--cache-dir", type=Path, help="measurement cache (default: latency.cache_dir)")
    profile.add_argument("--json", action="store_true", help="print the figures as JSON")
    profile.set_defaults(handler=run_profile)

    validate = subparsers.add_parser(
        "validate-latency",
        help="validate the latency predictor against end-to-end measurement of random subnets",
        description="For each target: draw latency.validation_subnets distinct random subnets of supernet.space (a share "
        "latency.pruned_share of them filter-pruned on the table's channel grid; none of the calibration networks), "
        "measure each end to end on the target (ONNX Runtime: the exported model), and compare with the predictor of "
        "TABLES/<target>/table.json: share within +-10%, mean absolute percentage error, Spearman rank correlation.",
    )
    add_settings_arguments(validate)
    validate.add_argument("--tables", type=Path, default=Path("results/profile_device"), help="profile_device output (default: %(default)s)")
    validate.add_argument("--out", type=Path, default=Path("results/validate_latency"), help="output folder (default: %(default)s)")
    validate.add_argument("--target", action="append", default=[], help="only this target (repeatable; default: all)")
    validate.add_argument("--count", type=int, help="networks per target (default: latency.validation_subnets)")
    validate.add_argument("--json", action="store_true", help="print the figures as JSON")
    validate.set_defaults(handler=run_validate)


def _sections(settings: Any) -> tuple[Any, Any, int]:
    """(latency config, search space config, scale): the space and scale are the supernet's."""
    return settings.latency, settings.supernet.space, settings.supernet.scale


def run_profile(args: argparse.Namespace) -> int:
    from srnas import tracking
    from srnas.arch.space import SearchSpace
    from srnas.latency.measure import target_available
    from srnas.latency.profile import profile_target, write_unavailable
    from srnas.latency.targets import select_targets

    settings = settings_from_args(args)
    cfg, space_cfg, scale = _sections(settings)
    space = SearchSpace(space_cfg)
    resolved = select_targets(cfg, scale, args.target)
    targets = [r.target for r in resolved]
    params = {"latency": cfg.__dict__ | {"targets": [t.to_dict() for t in targets]}, "space": space.to_dict(), "scale": scale}
    summary: dict[str, Any] = {}
    with tracking.stage_run(settings.tracking, "profile_device", params, {"srnas.scale": str(scale)}) as stage:
        for target, choice in ((r.target, r.choice) for r in resolved):
            out = args.out / target.name
            if choice is not None:
                summary.setdefault(target.name, {})["runtime_choice"] = choice.to_dict()
            if not target_available(target):
                reason = f"runtime {target.runtime} is not available on this machine"
                LOG.warning("%s: %s; writing placeholders", target.name, reason)
                write_unavailable(target, out, reason)
                summary[target.name] = {**summary.get(target.name, {}), "available": False, "reason": reason}
                continue
            result = profile_target(target, space, cfg, out, cache_dir=args.cache_dir, runtime_choice=choice)
            metrics = result.metrics()
            stage.log_metrics(metrics)
            stage.log_artifact(out, f"profile_device/{target.name}")
            summary[target.name] = {**summary.get(target.name, {}), "available": True, "fingerprint_id": result.table.fingerprint_id,
                                    "granularity": result.table.granularity, "entries": len(result.table),
                                    "measured": result.table.measured, "reused": result.table.reused,
                                    "seconds": result.seconds, "accepted_schemes": result.schemes.accepted(),
                                    "calibration_mape": result.predictor.overhead.calibration_mape}
            LOG.info("%s: table of %d layers (%d measured) in %.0f s; schemes kept: %s", target.name, len(result.table),
                     result.table.measured, result.seconds, ", ".join(result.schemes.accepted()) or "none")
    if args.json:
        print_json(summary)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    import numpy as np

    from srnas import atomic, tracking
    from srnas.arch.space import SearchSpace
    from srnas.errors import ConfigError
    from srnas.latency.measure import target_available
    from srnas.latency.profile import calibration_from_table, load_predictor
    from srnas.latency.targets import select_targets
    from srnas.latency.validate import sample_networks, validate_predictor

    settings = settings_from_args(args)
    cfg, space_cfg, scale = _sections(settings)
    count = cfg.validation_subnets if args.count is None else args.count
    if count < 2:
        raise ConfigError(f"--count: need at least 2 networks for a rank correlation, got {count}")
    space = SearchSpace(space_cfg)
    targets = [r.target for r in select_targets(cfg, scale, args.target)]
    params = {"validation_subnets": count, "pruned_share": cfg.pruned_share, "seed": cfg.seed,
              "protocol": cfg.protocol, **{f"net_{k}": v for k, v in cfg.net_timing().items()},
              "targets": [t.name for t in targets]}
    summary: dict[str, Any] = {}
    with tracking.stage_run(settings.tracking, "validate_latency", params, {"srnas.scale": str(scale)}) as stage:
        for target in targets:
            if not target_available(target):
                LOG.warning("%s: runtime %s not available here; skipped", target.name, target.runtime)
                continue
            predictor = load_predictor(args.tables / target.name)
            if predictor.table.fingerprint_id != target.fingerprint_id():
                LOG.warning("%s: the table was measured under fingerprint %s, this machine is %s; rerun profile-device",
                            target.name, predictor.table.fingerprint_id, target.fingerprint_id())
            rng = np.random.default_rng(cfg.seed + 1)
            nets = sample_networks(space, count, rng, pruned_share=cfg.pruned_share, granularity=predictor.table.granularity,
                                   exclude=calibration_from_table(predictor.table))

            def progress(i: int, n: int, name: str, ms: float, target_name: str = target.name) -> None:
                LOG.info("%s: %d/%d %s %.2f ms", target_name, i, n, name, ms)

            report = validate_predictor(predictor, nets, **cfg.net_timing(), progress=progress)
            atomic.write_json(args.out / f"{target.name}.json", report.to_dict())
            s = report.summary()
            stage.log_metrics({f"latency_within10_{target.name}": s["within_10pct"], f"latency_mape_{target.name}": s["mape"],
                               f"latency_spearman_{target.name}": s["spearman"],
                               f"latency_max_error_{target.name}": s["max_abs_error"]})
            stage.log_artifact(args.out / f"{target.name}.json", "validate_latency")
            summary[target.name] = s
            print(report.describe())
    if args.json:
        print_json(summary)
    return 0
