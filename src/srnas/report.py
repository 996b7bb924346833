"""The pipeline report: per-scale tables, a PSNR-versus-latency Pareto plot and a visual comparison.

Inputs are the stage outputs under ``results/`` (evaluate, profile_model, train_baseline, prepare_data);
outputs are ``results/report.md``, ``results/report/*.png``, the headline metrics for ``dvc metrics`` and
``dvc exp show`` (``results/metrics.json``) and every model's PSNR and latency for ``dvc plots`` (``results/models.csv``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srnas.atomic import atomic_path
from srnas.errors import DataError
from srnas.metrics import rgb_to_y

REAL_TIME_MS = 33.0  # 30 frames per second
# Marks a latency measured while other processes kept the machine busy (profile_model's ``disturbed``,
# check_budget's ``busy``); the footnote under the table says what it means.
BUSY_MARK = "†"
BUSY_NOTE = (f"{BUSY_MARK} measured while other processes kept the machine busy: the figure is likely inflated; "
             "rerun the stage on a quiet machine before trusting it.")


@dataclass(frozen=True)
class ModelResult:
    """Everything the report knows about one model at one scale."""

    model: str
    scale: int
    metrics: dict[str, float]
    sets: dict[str, dict[str, Any]]
    profile: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def latencies(self) -> dict[str, float]:
        """Median ms per runtime, in the runtime's own precision: the precision its PSNR is scored in (an int8 file's
        latency, ``onnxruntime_int8``, is the deployment table's, beside the PSNR scored through that file)."""
        return {r["runtime"]: float(r["median_ms"]) for r in self.profile.get("results", []) if _native(r)}

    @property
    def disturbed(self) -> set[str]:
        """The runtimes whose latency was measured on a busy machine (profile_model's ``disturbed`` flag)."""
        return {r["runtime"] for r in self.profile.get("results", []) if r.get("disturbed") and _native(r)}

    @property
    def fastest(self) -> tuple[str, float] | None:
        latencies = self.latencies
        if not latencies:
            return None
        runtime = min(latencies, key=latencies.__getitem__)
        return runtime, latencies[runtime]


def _native(result: dict[str, Any]) -> bool:
    """Whether a profile result ran in its runtime's own precision (not a quantized file)."""
    return _label(result) == result["runtime"]


def _label(result: dict[str, Any]) -> str:
    """A profile result's name: its ``label`` (runtime and precision), or the runtime of a result written before."""
    return str(result.get("label") or result["runtime"])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read stage output ({exc})") from None


FINAL_MODEL = "final"  # the searched, pruned, fine-tuned deliverable (stages search_ratio, finetune)


def checkpoint_path(results_dir: Path, model: str, scale: int) -> Path:
    """Where a model's trained weights are: the fine-tuned final model, or a baseline's ``model.pt``."""
    if model == FINAL_MODEL:
        return results_dir / "finetune" / "model.pt"
    return results_dir / "train_baseline" / f"{model}_x{scale}" / "model.pt"


def collect_results(results_dir: Path) -> list[ModelResult]:
    """Join ``results/evaluate/*.json`` with ``results/profile_model/*.json``; sorted by scale, then model."""
    evaluate_dir = results_dir / "evaluate"
    paths = sorted(evaluate_dir.glob("*.json")) if evaluate_dir.is_dir() else []
    if not paths:
        raise DataError(f"{evaluate_dir}: no evaluation results (run the evaluate stage first)")
    found = []
    for path in paths:
        payload = _read_json(path)
        profile_path = results_dir / "profile_model" / path.name
        profile = _read_json(profile_path) if profile_path.is_file() else {}
        training_path = checkpoint_path(results_dir, payload["model"], int(payload["scale"])).parent / "train_metrics.json"
        training = _read_json(training_path) if training_path.is_file() else {}
        found.append(ModelResult(payload["model"], int(payload["scale"]), payload["metrics"], payload["sets"], profile, training))
    return sorted(found, key=lambda r: (r.scale, r.model))


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def supernet_section(train_dir: Path) -> list[str]:
    """Markdown lines on the trained supernet (``train_supernet`` output), or none when it was not trained."""
    path = train_dir / "train_metrics.json"
    if not path.is_file():
        return []
    m = _read_json(path)
    lines = ["## Supernet", "", "| key | value |", "|---|---|"]
    for key, label in (("space_size", "subnets in the space"), ("params", "parameters"), ("largest", "largest subnet"),
                       ("smallest", "smallest subnet"), ("sandwich", "subnets per step"), ("steps", "steps"),
                       ("seconds", "seconds"), ("val_psnr_largest", "largest subnet val PSNR"),
                       ("val_psnr_smallest", "smallest subnet val PSNR")):
        value = m.get(key)
        if isinstance(value, float):
            value = f"{value:.2f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        lines.append(f"| {label} | {'-' if value is None else value} |")
    return lines + [""]


def _timing_sentence(protocol: dict[str, Any]) -> str:
    if protocol.get("kind") != "paired":
        return ""
    return (f" Timed with the paired protocol: every figure is at the target's undisturbed speed, relative to "
            f"`{protocol.get('reference')}` at {protocol.get('reference_ms', float('nan')):.2f} ms.")


def latency_model_section(device_dir: Path) -> list[str]:
    """Markdown lines on each target's latency table and measured pruning schemes (``profile_device`` output)."""
    lines: list[str] = []
    for target_dir in sorted(p for p in device_dir.glob("*") if p.is_dir()) if device_dir.is_dir() else []:
        build = _read_json(target_dir / "build.json") if (target_dir / "build.json").is_file() else {}
        choice = build.get("runtime_choice")
        if isinstance(choice, dict):
            lines += [f"Target `{target_dir.name}` asked for `runtime: auto`; this machine resolved it to "
                      f"`{choice.get('runtime', '?')}` ({choice.get('precision', '?')}): {choice.get('reason', '?')}.", ""]
        if build.get("available", True) and build:
            lines += [f"Latency table of `{target_dir.name}`: {build.get('entries', '?')} layer configurations on the "
                      f"granularity-{build.get('granularity', '?')} channel grid ({build.get('measured', '?')} measured, "
                      f"{build.get('reused', '?')} reused from the cache, {build.get('seconds', 0):.0f} s), overhead "
                      f"model calibration MAPE {100 * build.get('calibration_mape', float('nan')):.1f}%."
                      + _timing_sentence(build.get("protocol", {})), ""]
        schemes = target_dir / "schemes.md"
        if schemes.is_file():
            lines += [schemes.read_text(encoding="utf-8").rstrip(), ""]
    return (["## Latency model and pruning schemes", ""] + lines) if lines else []


def search_section(search_dir: Path, report_dir: Path) -> list[str]:
    """Markdown lines on the stage-2 search (``search_arch`` output): the chosen architecture and the front plot."""
    path = search_dir / "arch.json"
    if not path.is_file():
        return []
    arch = _read_json(path)
    chosen = arch.get("chosen", {})
    measured, error = chosen.get("measured_ms"), chosen.get("latency_error")
    admitted = (f", candidates admitted up to {arch['admit_ms']:.3g} ms predicted, chosen by {arch.get('chosen_by', '?')}"
                if "admit_ms" in arch else " (predicted)")
    lines = ["## Architecture search (stage 2)", "",
             f"{arch.get('strategy', '?')} search, {arch.get('mode', '?')} mode, {arch.get('trials', '?')} trials on "
             f"`{arch.get('target', '?')}`, budget {arch.get('budget_ms', float('nan')):g} ms{admitted}.", "",
             "| key | value |", "|---|---|",
             f"| chosen | `{chosen.get('name', '?')}` |",
             f"| per-layer schemes (head, cells) | {', '.join(chosen.get('schemes', []))} |",
             f"| validation PSNR, inherited weights | {chosen.get('psnr', float('nan')):.2f} dB |",
             f"| predicted latency | {_fmt_ms(chosen.get('predicted_ms'))} ms |",
             f"| measured latency | {_fmt_ms(measured)} ms"
             + (f" ({100 * error:+.1f}% vs predicted)" if isinstance(error, float) else "") + " |", ""]
    if (search_dir / "pareto.png").is_file():
        rel = Path(os.path.relpath(search_dir / "pareto.png", report_dir)).as_posix()
        lines += [f"![search trials and Pareto front]({rel})", ""]
    return lines


# The searches' outputs whose measured candidates the report lists: (stage, file under results/, the chosen name's key).
_MEASURED_BY = (("search_arch", Path("search_arch") / "arch.json"), ("search_ratio", Path("search_ratio") / "ratio.json"))


def _chosen_name(stage: str, payload: dict[str, Any]) -> str:
    return str(payload.get("chosen", {}).get("name", "?")) if stage == "search_arch" else str(payload.get("name", "?"))


def _device_note(verdict: dict[str, Any]) -> str:
    """`` (device http://...)`` when a device agent measured the verdict, else nothing."""
    device = str(verdict.get("device", ""))
    return f" (device {device})" if device.startswith(("http://", "https://")) else ""


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def verification_section(results_dir: Path) -> list[str]:
    """Markdown lines on the searches' closed loop: every candidate stage 2 (``arch.json``) and stage 3
    (``ratio.json``) measured on the target -- predicted against measured latency, the latency model's error, whether
    it fits the whole budget -- and how each stage chose; beside them the latency model's own calibration figure
    (``profile_device``). None when neither search recorded how it chose."""
    found = [(stage, _read_json(results_dir / rel)) for stage, rel in _MEASURED_BY if (results_dir / rel).is_file()]
    found = [(stage, payload) for stage, payload in found if "chosen_by" in payload]
    if not found:
        return []
    first = found[0][1]
    budget, target = first.get("budget_ms", float("nan")), first.get("target", "?")
    lines = ["## Predicted against measured latency", ""]
    if "admit_ms" in first:
        lines += [(f"Both searches admit candidates predicted within {first['admit_ms']:.3g} ms (the {budget:g} ms budget "
                   f"plus its slack), then measure the best of them on `{target}`, best PSNR first (stage 3: the proxy "
                   "PSNR right after pruning), and choose the first whose measured latency fits the whole budget. "
                   "Prediction error: (predicted - measured) / measured."), ""]
    rows = [(stage, m, m.get("name") == _chosen_name(stage, payload))
            for stage, payload in found for m in payload.get("measured", [])]
    if rows:
        lines += ["| stage | candidate | PSNR (dB) | predicted ms | measured ms | prediction error | fits |",
                  "|---|---|---|---|---|---|---|"]
        for stage, m, chosen in rows:
            name = f"**`{m['name']}`** (chosen)" if chosen else f"`{m['name']}`"
            lines.append(f"| {stage} | {name} | {m['psnr']:.2f} | {m['predicted_ms']:.2f} | {m['measured_ms']:.2f} | "
                         f"{_pct((m['predicted_ms'] - m['measured_ms']) / m['measured_ms'])} | {'yes' if m['fits'] else 'no'} |")
        lines.append("")
    for stage, payload in found:
        name, how = _chosen_name(stage, payload), payload["chosen_by"]
        measured = payload.get("measured", [])
        if payload.get("skipped"):
            lines.append(f"- {stage}: stepped aside ({payload.get('skip_reason', 'skipped')}): `{name}`.")
        elif how == "measured":
            median = statistics.median(abs(m["predicted_ms"] - m["measured_ms"]) / m["measured_ms"] for m in measured)
            lines.append(f"- {stage}: chose `{name}` by measurement ({len(measured)} candidate(s) measured; median "
                         f"absolute prediction error {100 * median:.1f}%).")
        else:
            lines.append(f"- {stage}: chose `{name}` by prediction within the budget "
                         f"({payload.get('chosen_by_reason', 'nothing measured')}).")
    build_path = results_dir / "profile_device" / str(target) / "build.json"
    build = _read_json(build_path) if build_path.is_file() else {}
    if isinstance(build.get("calibration_mape"), (int, float)):
        lines.append(f"- the latency model of `{target}`: overhead-model calibration MAPE "
                     f"{100 * build['calibration_mape']:.1f}% (profile_device).")
    return lines + [""]


# What check_budget's verdict figure is (its ``verdict_basis``), for the final model's row.
_VERDICT_BASES = {"normalised_ms": "at the latency table's reference speed ", "wall_clock_ms": "wall clock "}


def final_section(results_dir: Path, results: list[ModelResult]) -> list[str]:
    """Markdown lines on the final model: the pruned network, its measured latency against the budget, the measured
    speedup over its unpruned parent against the prediction, and its PSNR against the baselines that fit the budget."""
    verdict_path, ratio_path = results_dir / "check_budget.json", results_dir / "search_ratio" / "ratio.json"
    final = next((r for r in results if r.model == FINAL_MODEL), None)
    if final is None or not verdict_path.is_file() or not ratio_path.is_file():
        return []
    verdict, ratio = _read_json(verdict_path), _read_json(ratio_path)
    budget = float(verdict["budget_ms"])
    speedup = ratio.get("measured_speedup")
    lines = ["## Final model (stage 3)", "",
             "| key | value |", "|---|---|",
             f"| network | `{ratio['name']}` |",
             f"| per-conv keep ratios | {', '.join(f'{k}={v:.2f}' for k, v in ratio.get('keeps', {}).items()) or 'none pruned'}"
             + (" (stage 3 skipped: search_arch.prune_keep)" if ratio.get("skipped") else "") + " |",
             f"| measured on `{verdict['target']}`{_device_note(verdict)} | **{verdict['verdict_ms']:.1f} ms**{BUSY_MARK if verdict.get('busy') else ''} "
             f"{_VERDICT_BASES.get(verdict['verdict_basis'], '')}"
             f"(budget {budget:g} ms, predicted {verdict['predicted_ms']:.1f} ms; wall clock {verdict['wall_clock_ms']:.1f} ms) |",
             f"| speedup over the unpruned parent | {ratio['predicted_speedup']:.2f}x predicted"
             + (f", {speedup:.2f}x measured ({100 * ratio['speedup_error']:+.1f}%)" if speedup else "") + " |",
             f"| fine-tuning | {final.training.get('steps', '-')} steps, {final.training.get('seconds', 0):.0f} s |", ""]
    if verdict.get("busy"):
        lines += [BUSY_NOTE, ""]
    return lines + budget_comparison_section(results_dir, results, final, verdict)


# The folder holding a baseline's deployed forms and what was measured through them (rules export_deployed,
# profile_deployed, evaluate_deployed): parity.json, profile.json, evaluate.json. The final model's are its export,
# profile_model and evaluate outputs.
DEPLOY_DIR = "deploy"
_DEPLOYED_ORDER = ("onnxruntime_fp32", "onnxruntime_int8", "executorch_xnnpack_fp32", "executorch_xnnpack_int8")
_RUNTIME_NAMES = {"onnxruntime_fp32": "ONNX Runtime", "executorch_xnnpack_fp32": "ExecuTorch/XNNPACK"}


def _deployment_files(results_dir: Path, name: str) -> tuple[Path, Path, Path]:
    """(parity, evaluation, latency) of result ``name`` (``final_x2``, ``plain16_x2``) as deployed."""
    if name.startswith(f"{FINAL_MODEL}_x"):
        return (results_dir / "export" / name / "parity.json", results_dir / "evaluate" / f"{name}.json",
                results_dir / "profile_model" / f"{name}.json")
    folder = results_dir / DEPLOY_DIR / name
    return folder / "parity.json", folder / "evaluate.json", folder / "profile.json"


def _parity_cell(report: dict[str, Any] | None) -> str:
    if not report:
        return "-"
    if report.get("bounded", True):
        return (f"max abs diff {report['max_abs_diff_random']:.1e} ({'ok' if report.get('passed') else 'FAILED'}, "
                f"limit {report['atol']:g})")
    return f"runs; {-report['psnr_loss']:+.2f} dB vs fp32 on {report.get('images', '?')} val image(s)"


def deployment_table(results_dir: Path, name: str) -> list[str]:
    """Markdown lines for one model as deployed: one row per runtime x precision (PyTorch as scored by evaluate, then
    every exported form), PSNR / SSIM per set through it, its measured latency, its parity; then what int8 costs in
    PSNR against fp32 on the same runtime. No lines when the model has no deployed scores."""
    parity_path, evaluation_path, latency_path = _deployment_files(results_dir, name)
    if not evaluation_path.is_file():
        return []
    evaluation = _read_json(evaluation_path)
    deployed = evaluation.get("deployed", {})
    if not deployed:
        return []
    parity = _read_json(parity_path).get("deployed", {}) if parity_path.is_file() else {}
    profile = _read_json(latency_path) if latency_path.is_file() else {}
    latencies = {_label(r): (float(r["median_ms"]), bool(r.get("disturbed"))) for r in profile.get("results", [])}
    sets = list(evaluation.get("sets", {}))
    torch_label = f"torch_{evaluation.get('precision', 'fp32')}"
    rows: list[tuple[str, str, str, dict[str, Any], dict[str, Any] | None]] = [
        (torch_label, "PyTorch (eager)", str(evaluation.get("precision", "fp32")), evaluation.get("sets", {}), None)]
    for label in sorted(deployed, key=lambda k: (_DEPLOYED_ORDER.index(k) if k in _DEPLOYED_ORDER else 99, k)):
        entry = deployed[label]
        runtime = _RUNTIME_NAMES.get(entry["runtime"], entry["runtime"])
        rows.append((label, f"{runtime} (`{Path(entry['file']).name}`)", entry["precision"], entry["sets"],
                     parity.get(label, {}).get("parity")))
    lines = [f"### `{name}` as deployed", "",
             "| runtime | precision | " + " | ".join(f"{n} PSNR / SSIM" for n in sets) + " | latency ms | parity |",
             "|---" * (4 + len(sets)) + "|"]
    busy = False
    for label, runtime, precision, scores, report in rows:
        ms, disturbed = latencies.get(label, (None, False))
        busy |= disturbed
        cells = [runtime, precision]
        cells += [f"{scores[n]['psnr']:.2f} / {scores[n]['ssim']:.4f}" if n in scores else "-" for n in sets]
        cells += [_fmt_ms(ms) + (BUSY_MARK if disturbed else ""), _parity_cell(report)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if busy:
        lines += [BUSY_NOTE, ""]
    costs = []
    by_runtime: dict[str, dict[str, str]] = {}  # runtime -> precision -> label, in the table's order
    for label, *_ in rows[1:]:
        by_runtime.setdefault(deployed[label]["runtime"], {})[deployed[label]["precision"]] = label
    for runtime_name, labels in by_runtime.items():
        if "fp32" in labels and "int8" in labels:
            fp32, int8, runtime = labels["fp32"], labels["int8"], _RUNTIME_NAMES.get(runtime_name, runtime_name)
            per_set = ", ".join(f"{n} {deployed[int8]['sets'][n]['psnr'] - deployed[fp32]['sets'][n]['psnr']:+.2f} dB"
                                for n in sets if n in deployed[int8]["sets"] and n in deployed[fp32]["sets"])
            speed = ""
            if fp32 in latencies and int8 in latencies:
                speed = f", {latencies[fp32][0] / latencies[int8][0]:.2f}x the fp32 speed"
            costs.append(f"{runtime}: {per_set}{speed}")
    if costs:
        lines += [f"int8 against fp32, same network, same runtime: {'; '.join(costs)}.", ""]
    return lines


def deployment_section(results_dir: Path, results: list[ModelResult]) -> list[str]:
    """The final model and the baseline exported like it (``results/deploy/``), each as deployed
    (:func:`deployment_table`): PSNR and latency per runtime and precision side by side."""
    names = [f"{r.model}_x{r.scale}" for r in results if r.model == FINAL_MODEL]
    folder = results_dir / DEPLOY_DIR
    names += sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    tables = [line for name in names for line in deployment_table(results_dir, name)]
    if not tables:
        return []
    return ["## As deployed: runtime x precision", "",
            "Each row scores the model through the file a runtime runs (PSNR / SSIM on every evaluation set, the same "
            "protocol) and times that file (profile_model). The int8 files are calibrated on real training patches "
            "(parity.json, `calibration`); an fp32 file must match PyTorch within the export tolerance, an int8 one "
            "only records what it loses against fp32 on the validation set.", ""] + tables


def _training_compute(results_dir: Path, r: ModelResult) -> str:
    """Steps a row's weights trained for: a baseline's, or the final model's fine-tuning plus the supernet's sandwich
    steps it inherits from (each sandwich step trains several subnets)."""
    steps = r.training.get("steps")
    if r.model != FINAL_MODEL:
        return f"{steps:,}" if steps else "-"
    supernet = results_dir / "train_supernet" / "train_metrics.json"
    sup = _read_json(supernet) if supernet.is_file() else {}
    extra = (f" + {sup['steps']:,} supernet steps (sandwich of {sup.get('sandwich', '?')})"
             if sup.get("steps") else "")
    return (f"{steps:,}" if steps else "-") + extra


def budget_comparison_section(results_dir: Path, results: list[ModelResult], final: ModelResult,
                              verdict: dict[str, Any]) -> list[str]:
    """The final model against every baseline that check_budget timed the same way: measured latency, in budget or
    not, training compute, PSNR / SSIM per set (in the precision each is deployed in); then the final model's lead
    over the best baseline within the budget, per set."""
    budget = float(verdict["budget_ms"])
    by_model = {r.model: r for r in results if r.scale == final.scale}
    timed = [(FINAL_MODEL, verdict["verdict_ms"], bool(verdict["within_budget"]), bool(verdict.get("busy")))]
    timed += [(b["model"], b["verdict_ms"], bool(b["within_budget"]), bool(b.get("disturbed_measurements")))
              for b in verdict.get("baselines", []) if b["model"] in by_model]
    if len(timed) == 1:
        return []
    sets = list(final.sets)
    lines = [f"### Against the baselines at the same measured latency (x{final.scale})", "",
             f"Every row timed on `{verdict['target']}`{_device_note(verdict)} with the same protocol as the final model "
             f"({_VERDICT_BASES.get(verdict['verdict_basis'], '').strip() or verdict['verdict_basis']}) and held against "
             f"the whole {budget:g} ms budget; PSNR / SSIM in the precision each is deployed in.", "",
             "| model | network | measured ms | in budget | training steps | "
             + " | ".join(f"{n} PSNR / SSIM" for n in sets) + " |", "|---" * (5 + len(sets)) + "|"]
    for name, ms, fits, busy in timed:
        r = by_model[name]
        network = r.training.get("model") or r.training.get("pruned") or "-"
        cells = [f"**{name}**" if name == FINAL_MODEL else name, f"`{network}`", f"{ms:.1f}" + (BUSY_MARK if busy else ""),
                 "yes" if fits else "no",
                 _training_compute(results_dir, r)]
        cells += [f"{r.sets[n]['psnr']:.2f} / {r.sets[n]['ssim']:.4f}" if n in r.sets else "-" for n in sets]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if any(busy for *_, busy in timed):
        lines += [BUSY_NOTE, ""]
    fitting = [by_model[name] for name, _, fits, _ in timed[1:] if fits and by_model[name].training.get("steps")]
    if fitting and verdict["within_budget"]:
        leads = []
        for n in sets:
            best = max((r for r in fitting if n in r.sets), key=lambda r: r.sets[n]["psnr"], default=None)
            if best is not None and n in final.sets:
                leads.append(f"{n} {final.sets[n]['psnr'] - best.sets[n]['psnr']:+.2f} dB PSNR, "
                             f"{final.sets[n]['ssim'] - best.sets[n]['ssim']:+.4f} SSIM (vs {best.model})")
        lines += ["Final model against the best trained baseline within the budget, per set: " + "; ".join(leads) + ".", ""]
    return lines


def render_markdown(results: list[ModelResult], figures: dict[str, str] | None = None,
                    sections: list[str] | None = None) -> str:
    """The report: a table per scale, the figures, ``sections`` (extra markdown lines), then the target."""
    figures = figures or {}
    lines = ["# srnas report", ""]
    lines.append(
        "PSNR/SSIM: Y channel (BT.601), both images uint8, a border of `scale` pixels cropped, SSIM with an 11x11 "
        "Gaussian window (sigma 1.5). Bicubic is MATLAB-compatible bicubic. Latency: median ms per frame for a "
        f"720p output, after warm-up; real time is {REAL_TIME_MS:.0f} ms (30 fps)."
    )
    lines.append("")
    for scale in sorted({r.scale for r in results}):
        rows = [r for r in results if r.scale == scale]
        set_names = list(dict.fromkeys(name for r in rows for name in r.sets))
        runtimes = sorted({rt for r in rows for rt in r.latencies})
        lines += [f"## x{scale}", ""]
        sizes = sorted({tuple(r.profile["input_hw"]) for r in rows if "input_hw" in r.profile})
        if sizes:
            shown = ", ".join(f"{h}x{w} in, {h * scale}x{w * scale} out" for h, w in sizes)
            devices = sorted({str(r.profile["device"]) for r in rows if r.profile.get("device")})
            where = f" Latency measured on {', '.join(devices)}." if devices else ""
            lines += [f"Latency and GMAC per frame of {shown}.{where}", ""]
        header = ["model", "params", "GMAC/frame", "train steps (s)"] + [f"{rt} ms" for rt in runtimes] + [f"{name} PSNR / SSIM" for name in set_names]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for r in rows:
            cells = [r.model, f"{r.profile['params']:,}" if "params" in r.profile else "-"]
            cells.append(f"{r.profile['gmacs']:.2f}" if "gmacs" in r.profile else "-")
            steps = r.training.get("steps")
            cells.append(f"{steps} ({r.training['seconds']:.0f})" if steps and "seconds" in r.training else "-")
            cells += [_fmt_ms(r.latencies.get(rt)) + (BUSY_MARK if rt in r.disturbed else "") for rt in runtimes]
            for name in set_names:
                s = r.sets.get(name)
                cells.append(f"{s['psnr']:.2f} / {s['ssim']:.4f}" if s else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any(r.disturbed for r in rows):
            lines += [BUSY_NOTE, ""]
        for key, caption in ((f"pareto_x{scale}", "PSNR versus latency"), (f"comparison_x{scale}", "Visual comparison")):
            if key in figures:
                lines += [f"![{caption} x{scale}]({figures[key]})", ""]
    lines += sections or []
    fingerprint = next((res["fingerprint"] for r in results for res in r.profile.get("results", [])), None)
    if fingerprint:
        lines += ["## Target", "", "| key | value |", "|---|---|"]
        for key, value in sorted(fingerprint.items()):
            if key in ("runtime", "precision"):
                continue
            if isinstance(value, dict):
                value = ", ".join(name for name, present in sorted(value.items()) if present) or "-"
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            lines.append(f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def _set_figures(r: ModelResult) -> dict[str, float]:
    """``psnr_<set>`` and ``ssim_<set>`` for every evaluation set of ``r`` (set names lower-cased)."""
    figures = {}
    for name, values in r.sets.items():
        figures[f"psnr_{name.lower()}"] = float(values["psnr"])
        figures[f"ssim_{name.lower()}"] = float(values["ssim"])
    return figures


def best_baseline_in_budget(verdict: dict[str, Any], results: list[ModelResult],
                            final: ModelResult) -> tuple[ModelResult, float] | None:
    """The best trained baseline that ``check_budget`` (``verdict``) measured within the budget, at the final model's
    scale, and its measured latency: best PSNR on the final model's first evaluation set, the faster one on a tie;
    None when no trained baseline fits."""
    by_model = {r.model: r for r in results if r.scale == final.scale}
    first_set = next(iter(final.sets), None)
    fitting = [(by_model[b["model"]], float(b["verdict_ms"])) for b in verdict.get("baselines", [])
               if b["within_budget"] and b["model"] in by_model and by_model[b["model"]].training.get("steps")
               and first_set in by_model[b["model"]].sets]
    return max(fitting, key=lambda pair: (pair[0].sets[first_set]["psnr"], -pair[1])) if fitting else None


def headline_metrics(results_dir: Path, results: list[ModelResult]) -> dict[str, Any]:
    """``results/metrics.json``, the few figures ``dvc exp show`` and ``dvc metrics diff`` compare between experiments:
    the final model's PSNR / SSIM per set and its latency as check_budget measured it (``verdict_ms``, with the
    ``headroom_ms`` left in the budget), and the same for the best trained baseline that check_budget found within the
    budget (best PSNR on the first set; ``model`` names it). Without the final model's verdict (a report of the
    baselines alone), the best baseline by PSNR, with its fastest runtime's median latency (``fastest_ms``)."""
    verdict_path = results_dir / "check_budget.json"
    final = next((r for r in results if r.model == FINAL_MODEL), None)
    if final is None or not verdict_path.is_file():
        scored = [r for r in results if r.model != FINAL_MODEL and r.sets and r.fastest]
        if not scored:
            return {}
        best = max(scored, key=lambda r: next(iter(r.sets.values()))["psnr"])
        return {"best_baseline": {"model": best.model, "scale": best.scale, **_set_figures(best),
                                  "fastest_ms": best.fastest[1]}}
    verdict = _read_json(verdict_path)
    budget = float(verdict["budget_ms"])
    summary: dict[str, Any] = {
        "budget_ms": budget,
        "final": {"scale": final.scale, **_set_figures(final), "verdict_ms": float(verdict["verdict_ms"]),
                  "headroom_ms": budget - float(verdict["verdict_ms"])},
    }
    best = best_baseline_in_budget(verdict, results, final)
    if best is not None:
        model, ms = best
        summary["best_baseline"] = {"model": model.model, **_set_figures(model), "verdict_ms": ms, "headroom_ms": budget - ms}
    return summary


def per_model_metrics(results: list[ModelResult]) -> dict[str, float]:
    """Every model's metrics and latencies under one key each, ``<model>_x<scale>.<metric>`` (``latency_ms_<runtime>``
    for the latencies): the report's MLflow run keeps every model's value, not only the last one logged."""
    return {f"{r.model}_x{r.scale}.{key}": float(value) for r in results
            for key, value in sorted((dict(r.metrics) | {f"latency_ms_{rt}": ms for rt, ms in r.latencies.items()}).items())}


MODELS_TABLE_FIELDS = ("model", "scale", "set", "psnr", "ssim", "fastest_ms", "runtime")


def models_table(results: list[ModelResult], set_name: str) -> str:
    """``results/models.csv``: PSNR and SSIM on ``set_name`` against the median latency of each model's fastest runtime
    (profile_model), one row per model and scale with a latency: ``dvc plots`` draws PSNR versus latency from it."""
    lines = [",".join(MODELS_TABLE_FIELDS)]
    for r in results:
        if set_name not in r.sets or r.fastest is None:
            continue
        runtime, ms = r.fastest
        row = (r.model, str(r.scale), set_name, f"{r.sets[set_name]['psnr']:.4f}", f"{r.sets[set_name]['ssim']:.5f}",
               f"{ms:.4f}", runtime)
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def render_html(markdown: str, base_dir: Path, title: str = "srnas report") -> str:
    """``markdown`` (the report) as one self-contained HTML page: tables rendered, every image it links (relative to
    ``base_dir``) inlined as a data URI, so the page opens anywhere (the Snakemake report, a mail, an artifact store)."""
    import base64
    import html
    import mimetypes
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        path = base_dir / html.unescape(match.group(2))
        mime = mimetypes.guess_type(path.name)[0]
        if not path.is_file() or mime is None:
            return match.group(0)
        return f'{match.group(1)}data:{mime};base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    body = re.sub(r'(<img src=")([^"]+)"', inline, body)
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .5em}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency and higher PSNR is better), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(results: list[ModelResult], scale: int, set_name: str, path: Path) -> None:
    """PSNR on ``set_name`` versus latency on every runtime, the front over each model's fastest runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.scale == scale and r.latencies and set_name in r.sets]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>p*"
    runtimes = sorted({rt for r in rows for rt in r.latencies})
    for k, runtime in enumerate(runtimes):
        xs = [r.latencies[runtime] for r in rows if runtime in r.latencies]
        ys = [r.sets[set_name]["psnr"] for r in rows if runtime in r.latencies]
        ax.scatter(xs, ys, marker=markers[k % len(markers)], alpha=0.6, label=runtime)
    best = [(r.fastest[1], r.sets[set_name]["psnr"]) for r in rows if r.fastest]
    if best:
        front = pareto_front(best)
        ax.plot([best[i][0] for i in front], [best[i][1] for i in front], "k--", lw=1, label="Pareto front (fastest runtime)")
        for r, (x, y) in zip(rows, best):
            ax.annotate(r.model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(REAL_TIME_MS, color="tab:red", lw=1, ls=":", label=f"{REAL_TIME_MS:.0f} ms (30 fps)")
    ax.set_xscale("log")
    ax.set_xlabel("latency per frame, ms (log scale)")
    ax.set_ylabel(f"PSNR on {set_name} x{scale}, dB")
    ax.set_title(f"PSNR versus latency, x{scale}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _crop_box(hr: np.ndarray, size: int) -> tuple[int, int, int]:
    """Top-left corner and side of the ``size`` crop with the most detail (largest gradient energy)."""
    y = rgb_to_y(hr)
    side = min(size, hr.shape[0], hr.shape[1])
    energy = np.abs(np.diff(y, axis=0))[:, :-1] + np.abs(np.diff(y, axis=1))[:-1, :]
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = energy.shape
    side_e = min(side, h, w)
    sums = integral[side_e:, side_e:] - integral[:-side_e, side_e:] - integral[side_e:, :-side_e] + integral[:-side_e, :-side_e]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), side


def comparison_image(panels: list[tuple[str, np.ndarray]], hr: np.ndarray, path: Path, crop: int = 96, zoom: int = 3) -> None:
    """Side-by-side crops (HR first, then each ``(label, sr)``) of the most detailed region, enlarged ``zoom`` x."""
    from PIL import Image, ImageDraw

    top, left, side = _crop_box(hr, crop)
    tiles = [("HR", hr)] + panels
    tile = side * zoom
    label_h = 18
    canvas = Image.new("RGB", (tile * len(tiles) + 4 * (len(tiles) - 1), tile + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, image) in enumerate(tiles):
        patch = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
        x = k * (tile + 4)
        canvas.paste(patch.resize((tile, tile), Image.NEAREST), (x, label_h))
        draw.text((x + 2, 2), label, fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")


def headline(results_dir: Path, results: list[ModelResult]) -> tuple[dict[str, Any], dict[str, float]]:
    """The pipeline's headline params and metrics (the MLflow pipeline run's summary), read from the stage outputs:
    params ``scale``, ``target``, ``budget_ms``, ``space_size``, ``steps_supernet``, ``steps_finetune`` and
    ``best_baseline``; metrics the final model's ``psnr_<set>_x<scale>`` / ``ssim_<set>_x<scale>`` and measured
    ``latency_ms``, and the same for the best trained baseline within the budget (by PSNR on the first set) prefixed
    ``baseline_``. Whatever a stage did not write is left out."""
    params: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    final = next((r for r in results if r.model == FINAL_MODEL), None)
    if final is None:
        return params, metrics
    params["scale"] = final.scale
    supernet_path = results_dir / "train_supernet" / "train_metrics.json"
    if supernet_path.is_file():
        supernet = _read_json(supernet_path)
        params |= {"space_size": supernet.get("space_size"), "steps_supernet": supernet.get("steps")}
    params["steps_finetune"] = final.training.get("steps")
    metrics |= {key: float(value) for key, value in final.metrics.items()}
    verdict_path = results_dir / "check_budget.json"
    if verdict_path.is_file():
        verdict = _read_json(verdict_path)
        params |= {"target": verdict["target"], "budget_ms": verdict["budget_ms"]}
        metrics["latency_ms"] = float(verdict["verdict_ms"])
        best = best_baseline_in_budget(verdict, results, final)
        if best is not None:
            model, best_ms = best
            params["best_baseline"] = model.model
            metrics |= {f"baseline_{key}": float(value) for key, value in model.metrics.items()}
            metrics["baseline_latency_ms"] = best_ms
    return {key: value for key, value in params.items() if value is not None}, metrics
