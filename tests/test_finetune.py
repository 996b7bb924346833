"""Fine-tuning the pruned network on tiny synthetic data: it learns and saves a loadable pruned network, distill 0 needs
no teacher, a run killed after a checkpoint resumes to the same weights, a changed config or input starts over, bad
inputs are clear errors, and the ``finetune`` command runs through its ``add_parser``/``run``."""

from __future__ import annotations


import argparse
import copy
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, kill_at_first_checkpoint, params_overlay, write_prepared_set

from srnas.arch.network import load_network, save_network
from srnas.arch.space import CellConfig, SearchSpace, SubnetConfig
from srnas.checkpoint import CheckpointError, load_checkpoint
from srnas.config import FinetuneConfig, SearchSpaceConfig, SupernetConfig, SupernetTrainConfig
from srnas.errors import ConfigError
from srnas.models.ecbsr import with_ecb_training_form
from srnas.finetune import FinetuneResult, finetune
from srnas.models import count_params
from srnas.pruning import prunable_convs, prune_subnet, pruned_from_keep
from srnas.supernet import SRSupernet, save_supernet
from srnas.supernet.train import train_supernet
from srnas.training.patches import PatchSampler, load_pairs, step_generator

SCALE = 2
SPACE = SearchSpaceConfig(num_cells=2, widths=(8, 16), expansions=(2,))
# A stage-2 architecture from SPACE (a wdsr cell then a conv cell), pruned to about half its filters.
SUBNET = SubnetConfig(16, (CellConfig("wdsr", 2), CellConfig("conv")))
CFG = FinetuneConfig(steps=40, batch_size=4, lr_patch_size=12, lr=2e-3, min_lr=1e-4, seed=3, checkpoint_every=0,
                     log_every=10, distill=0.5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepare_data")
    rng = np.random.default_rng(0)
    write_prepared_set(root, "train", 4, rng, scale=SCALE)
    write_prepared_set(root, "val", 1, rng, scale=SCALE)
    return root


def _supernet(space: SearchSpaceConfig = SPACE, scale: int = SCALE, seed: int = 0) -> SRSupernet:
    torch.manual_seed(seed)
    return SRSupernet(space, scale)


@pytest.fixture(scope="module")
def inputs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(pruned.pt, supernet.pt)`` as ``search_ratio`` and ``train_supernet`` leave them: a briefly trained supernet
    (so the teacher is worth distilling from) and SUBNET pruned from it with inherited weights."""
    root = tmp_path_factory.mktemp("inputs")
    train = SupernetTrainConfig(steps=60, batch_size=4, lr_patch_size=12, lr=2e-3, min_lr=1e-4, seed=3, checkpoint_every=0,
                                log_every=60, num_random=1, device="cpu")
    supernet = train_supernet(data_dir, SupernetConfig(scale=SCALE, space=SPACE, train=train), root, progress=False).supernet
    keep = [0.5] * len(prunable_convs(SUBNET))
    pruned = prune_subnet(supernet.get_active_subnet(SUBNET), pruned_from_keep(SUBNET, keep, 4))
    assert pruned.pruned.is_pruned
    save_network(root / "pruned.pt", pruned, extra={"importance": "l1"})
    return root / "pruned.pt", root / "supernet.pt"


@pytest.fixture(scope="module")
def reference(inputs: tuple[Path, Path], data_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[FinetuneResult, list[tuple[int, dict]]]:
    """One uninterrupted fine-tuning run of CFG and the metrics it reported."""
    seen: list[tuple[int, dict]] = []
    result = finetune(*inputs, data_dir, CFG, tmp_path_factory.mktemp("reference"),
                      on_metrics=lambda m, s: seen.append((s, dict(m))), progress=False)
    return result, seen


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _l1_on_fixed_batch(model: torch.nn.Module, data_dir: Path) -> float:
    sampler = PatchSampler(load_pairs(data_dir / "train" / f"x{SCALE}", SCALE), 12)
    lr, hr = sampler.sample(64, step_generator(99, 0), augment=False, channels_last=False)
    with torch.no_grad():
        return float((model.eval()(lr) - hr).abs().mean())


# --- learning and outputs ---------------------------------------------------------------------------------


def test_finetuning_learns_and_writes_a_loadable_pruned_network(reference: tuple[FinetuneResult, list], inputs: tuple[Path, Path],
                                                               data_dir: Path) -> None:
    result, seen = reference
    losses = [m["train_loss"] for _, m in seen if "train_loss" in m]
    assert [s for s, m in seen if "train_loss" in m] == [10, 20, 30, 40]
    assert losses[-1] < losses[0], losses
    start, tuned = load_network(inputs[0]), load_network(result.model_path)
    assert tuned.pruned == start.pruned and tuned.scale == SCALE and not tuned.training
    assert any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), tuned.state_dict().values()))
    assert _l1_on_fixed_batch(tuned, data_dir) < 0.95 * _l1_on_fixed_batch(start, data_dir)
    assert tuned(torch.rand(1, 3, 10, 12)).shape == (1, 3, 20, 24)

    largest = SearchSpace(SPACE).largest().name
    assert (result.pruned, result.teacher, result.distill, result.steps, result.resumed_from_step) == (
        start.pruned.name, largest, 0.5, 40, 0)
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["pruned"] == start.pruned.name and metrics["teacher"] == largest and metrics["distill"] == 0.5
    assert metrics["steps"] == 40 and metrics["resumed_from_step"] == 0 and metrics["scale"] == SCALE
    assert metrics["final_loss"] == pytest.approx(losses[-1]) == pytest.approx(result.final_loss)
    # the trained form (reparam: ecb) has ECBSR's extra branches; what is deployed has start's parameters
    assert metrics["params"] == count_params(with_ecb_training_form(copy.deepcopy(start))) > count_params(start) == result.params
    assert metrics["val_set"] == "val" and 10 < metrics["val_psnr"] < 60 and metrics["val_psnr"] == result.val_psnr
    assert metrics["seconds"] > 0
    payload = torch.load(result.model_path, weights_only=True)
    assert payload["metrics"]["pruned"] == start.pruned.name and payload["config"]["distill"] == 0.5
    assert load_checkpoint(result.checkpoint_path)["step"] == 40
    assert sorted(p.name for p in result.model_path.parent.iterdir()) == ["last.ckpt", "model.pt", "train_log.csv", "train_metrics.json"]


def test_distill_zero_builds_no_teacher(inputs: tuple[Path, Path], data_dir: Path, tmp_path: Path,
                                        reference: tuple[FinetuneResult, list], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: object) -> None:
        raise AssertionError(f"the teacher was built from {path}")

    monkeypatch.setattr("srnas.supernet.supernet.load_supernet", refuse)
    cfg = dataclasses.replace(CFG, distill=0.0)
    result = finetune(inputs[0], tmp_path / "no-supernet.pt", data_dir, cfg, tmp_path / "out", progress=False)
    assert result.teacher is None and result.distill == 0.0
    assert json.loads(result.metrics_path.read_text())["teacher"] is None
    assert _l1_on_fixed_batch(load_network(result.model_path), data_dir) < 0.95 * _l1_on_fixed_batch(load_network(inputs[0]), data_dir)
    # the teacher's term changes the result
    assert any(not torch.equal(a, b) for a, b in zip(_weights(result.model_path).values(),
                                                       _weights(reference[0].model_path).values()))


# --- resume -------------------------------------------------------------------------------------------------


_CHILD = textwrap.dedent("""
    import json, sys, torch
    from srnas.config import FinetuneConfig
    from srnas.finetune import finetune
    torch.set_num_threads(int(sys.argv[5]))
    finetune(sys.argv[1], sys.argv[2], sys.argv[3], FinetuneConfig(**json.loads(sys.argv[6])), sys.argv[4], progress=False)
""")


def test_resume_after_sigkill_matches_uninterrupted(inputs: tuple[Path, Path], data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    steps = 300  # long enough that the child is still training when its first checkpoint appears
    cfg = dataclasses.replace(CFG, steps=steps, checkpoint_every=5)
    kill_at_first_checkpoint([sys.executable, "-c", _CHILD, *map(str, inputs), str(data_dir), str(out),
                              str(torch.get_num_threads()), json.dumps(dataclasses.asdict(cfg))], out / "last.ckpt")
    killed_at = load_checkpoint(out / "last.ckpt")["step"]
    assert 5 <= killed_at < steps and killed_at % 5 == 0
    assert not (out / "model.pt").exists()

    resumed = finetune(*inputs, data_dir, cfg, out, progress=False)
    assert resumed.resumed_from_step == killed_at
    straight = finetune(*inputs, data_dir, cfg, tmp_path / "straight", resume=False, progress=False)
    assert_same_weights(_weights(out / "model.pt"), _weights(tmp_path / "straight" / "model.pt"))
    assert resumed.final_loss == pytest.approx(straight.final_loss, abs=1e-6)
    assert list(out.glob(".*tmp*")) == []


def test_a_changed_config_or_input_is_not_resumed(inputs: tuple[Path, Path], data_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cfg = dataclasses.replace(CFG, steps=4, bf16="on")  # bf16: the teacher runs under the student's autocast
    out = tmp_path / "out"
    assert finetune(*inputs, data_dir, cfg, out, progress=False).resumed_from_step == 0
    # cadence fields do not change the weights: resumed
    assert finetune(*inputs, data_dir, dataclasses.replace(cfg, log_every=2, checkpoint_every=1), out,
                    progress=False).resumed_from_step == 4
    assert "different model, config or data" not in caplog.text
    assert finetune(*inputs, data_dir, dataclasses.replace(cfg, distill=0.25), out, progress=False).resumed_from_step == 0
    assert "different model, config or data" in caplog.text
    caplog.clear()
    assert finetune(*inputs, data_dir, cfg, out, progress=False).resumed_from_step == 0  # last.ckpt is distill 0.25's now
    other = tmp_path / "supernet.pt"
    save_supernet(other, _supernet(seed=1))  # same space, other weights: another teacher
    assert finetune(inputs[0], other, data_dir, cfg, out, progress=False).resumed_from_step == 0
    assert "different model, config or data" in caplog.text
    assert finetune(inputs[0], other, data_dir, cfg, out, resume=False, progress=False).resumed_from_step == 0


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(inputs: tuple[Path, Path], data_dir: Path, tmp_path: Path) -> None:
    pruned, supernet = inputs
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        finetune(tmp_path / "missing.pt", supernet, data_dir, CFG, out)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        finetune(pruned, tmp_path / "missing.pt", data_dir, CFG, out)
    with pytest.raises(CheckpointError, match=r"supernet\.pt: expected a 'srnas-subnet/1' or 'srnas-pruned/1' file, found 'srnas-supernet/1'"):
        finetune(supernet, supernet, data_dir, CFG, out)
    x3 = tmp_path / "supernet_x3.pt"
    save_supernet(x3, _supernet(scale=3))
    with pytest.raises(ConfigError, match=r"supernet_x3\.pt: the supernet is x3 but the pruned network .*pruned\.pt is x2"):
        finetune(pruned, x3, data_dir, CFG, out)
    narrow = tmp_path / "supernet_narrow.pt"
    save_supernet(narrow, _supernet(space=dataclasses.replace(SPACE, widths=(8, 12))))
    with pytest.raises(ConfigError, match=r"supernet_narrow\.pt: the pruned network .*pruned\.pt does not come from"):
        finetune(pruned, narrow, data_dir, CFG, out)
    with pytest.raises(ConfigError, match=r"distill"):
        FinetuneConfig(distill=1.5)
    assert not out.exists()


# --- the command --------------------------------------------------------------------------------------------


def test_finetune_command(inputs: tuple[Path, Path], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from srnas.commands import finetune as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    defaults = parser.parse_args(["finetune"])
    assert defaults.handler is command.run and not defaults.no_resume and not defaults.json
    assert (defaults.pruned, defaults.supernet, defaults.data_dir, defaults.out) == (
        Path("results/search_ratio/pruned.pt"), Path("results/train_supernet/supernet.pt"), Path("results/prepare_data"),
        Path("results/finetune"))

    section = json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(CFG, steps=4, log_every=2))))
    params = params_overlay(tmp_path, {"tracking": {"enabled": False}, "finetune": section})
    out = tmp_path / "results" / "finetune"
    args = parser.parse_args(["finetune", *params, "--pruned", str(inputs[0]), "--supernet", str(inputs[1]),
                              "--data-dir", str(data_dir), "--out", str(out), "--json"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 4 and printed["model_path"] == str(out / "model.pt") and printed["distill"] == 0.5
    assert sorted(p.name for p in out.iterdir()) == ["last.ckpt", "model.pt", "train_log.csv", "train_metrics.json"]
    assert load_network(out / "model.pt").pruned == load_network(inputs[0]).pruned
    args.no_resume, args.json = True, False
    assert command.run(args) == 0
    assert json.loads((out / "train_metrics.json").read_text())["resumed_from_step"] == 0
