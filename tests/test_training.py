"""Baseline training on tiny synthetic data: patches, learning, determinism, resume after SIGKILL, bad checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, config_of, kill_at_first_checkpoint, smooth_image

from srnas.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from srnas.config import TrainConfig
from srnas.digests import file_sha256
from srnas.errors import ConfigError, DataError
from srnas.images import write_png
from srnas.loading import load_trained
from srnas.models import create_model
from srnas.training import ImagePairs, PatchSampler, load_pairs, step_generator, train
from srnas.training.loop import LoopSpec, TrainingDiverged, optimizer_and_schedule, run_loop

SCALE = 2
# Tiny but real: 4 x 64x64 training images, LR patches of 8, batch 4.
CFG = TrainConfig(steps=100, batch_size=4, lr_patch_size=8, lr=2e-3, min_lr=1e-4, seed=3, checkpoint_every=0, log_every=25)




def _write_set(root: Path, name: str, count: int, rng: np.random.Generator, size: int = 64) -> None:
    for i in range(count):
        hr = smooth_image(rng, size)
        lr = np.rint(hr.reshape(size // SCALE, SCALE, size // SCALE, SCALE, 3).mean(axis=(1, 3))).astype(np.uint8)
        write_png(root / name / f"x{SCALE}" / "hr" / f"img{i}.png", hr)
        write_png(root / name / f"x{SCALE}" / "lr" / f"img{i}.png", lr)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepare_data")
    rng = np.random.default_rng(0)
    _write_set(root, "train", 4, rng)
    _write_set(root, "val", 2, rng)
    return root


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, dict]]]:
    """One uninterrupted run of CFG: its output folder and the metrics it reported."""
    out = tmp_path_factory.mktemp("reference")
    seen: list[tuple[int, dict]] = []
    train("plain16", SCALE, data_dir, CFG, out, on_metrics=lambda m, s: seen.append((s, dict(m))))
    return out, seen


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "model.pt", weights_only=True)["state_dict"]


# --- patches -----------------------------------------------------------------------------------------


def _pairs(nearest: bool) -> ImagePairs:
    rng = np.random.default_rng(1)
    lrs = tuple(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((9, 13), (12, 10), (20, 8)))
    if nearest:  # every HR 2x2 block repeats its LR pixel, so an aligned LR patch is HR[::2, ::2]
        hrs = tuple(np.repeat(np.repeat(lr, SCALE, 0), SCALE, 1) for lr in lrs)
    else:
        hrs = tuple(rng.integers(0, 256, (lr.shape[0] * SCALE, lr.shape[1] * SCALE, 3), dtype=np.uint8) for lr in lrs)
    return ImagePairs(("a", "b", "c"), lrs, hrs, SCALE)


def test_patches_are_aligned_crops_with_dihedral_augmentation() -> None:
    pairs = _pairs(nearest=True)
    sampler = PatchSampler(pairs, 8)
    assert sampler.positions == (9 - 7) * (13 - 7) + (12 - 7) * (10 - 7) + (20 - 7) * (8 - 7)
    lr, hr = sampler.sample_uint8(200, step_generator(0, 0), augment=True)
    assert lr.shape == (200, 8, 8, 3) and hr.shape == (200, 16, 16, 3) and lr.dtype == torch.uint8
    torch.testing.assert_close(hr[:, ::2, ::2], lr, rtol=0, atol=0)
    torch.testing.assert_close(hr[:, 1::2, 1::2], lr, rtol=0, atol=0)
    # each LR patch is one of the 8 flips/rotations of a crop of some image
    crops = {}
    for img in pairs.lr:
        t = torch.from_numpy(img)
        for y in range(img.shape[0] - 7):
            for x in range(img.shape[1] - 7):
                c = t[y:y + 8, x:x + 8]
                for k in range(4):
                    for v in (torch.rot90(c, k, (0, 1)), torch.rot90(c, k, (0, 1)).flip(1)):
                        crops[v.numpy().tobytes()] = True
    assert all(p.numpy().tobytes() in crops for p in lr)
    # without augmentation: plain crops; HR patch is the HR crop at twice the offset
    lr2, hr2 = PatchSampler(_pairs(nearest=False), 8).sample_uint8(50, step_generator(0, 1), augment=False)
    plain = {pairs.lr[i][y:y + 8, x:x + 8].tobytes() for i in range(3)
             for y in range(pairs.lr[i].shape[0] - 7) for x in range(pairs.lr[i].shape[1] - 7)}
    assert all(p.numpy().tobytes() in plain for p in lr2)


def test_sampling_is_a_pure_function_of_seed_and_step() -> None:
    sampler = PatchSampler(_pairs(nearest=False), 8)
    a = sampler.sample(6, step_generator(7, 11), True, channels_last=True)
    b = sampler.sample(6, step_generator(7, 11), True, channels_last=False)
    c = sampler.sample(6, step_generator(7, 12), True, channels_last=True)
    assert a[0].is_contiguous(memory_format=torch.channels_last) and b[0].is_contiguous()
    assert a[0].dtype == torch.float32 and float(a[1].max()) <= 1.0
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_patch_larger_than_every_image_is_a_data_error() -> None:
    with pytest.raises(DataError, match="lower lr_patch_size"):
        PatchSampler(_pairs(nearest=False), 32)


# --- training ----------------------------------------------------------------------------------------


def test_loss_goes_down_and_outputs_are_written(reference: tuple[Path, list[tuple[int, dict]]], data_dir: Path) -> None:
    out, seen = reference
    losses = [m["train_loss"] for _, m in seen if "train_loss" in m]
    assert [s for s, m in seen if "train_loss" in m] == [25, 50, 75, 100]
    assert losses[-1] < losses[0], losses
    # on a fixed batch, the trained net beats its own initialisation (seeded like train() seeds it) clearly
    sampler = PatchSampler(load_pairs(data_dir / "train" / f"x{SCALE}", SCALE), 8)
    lr, hr = sampler.sample(128, step_generator(99, 0), augment=False, channels_last=False)
    torch.manual_seed(CFG.seed)
    initial = create_model("plain16", SCALE)
    with torch.no_grad():
        before = float((initial(lr) - hr).abs().mean())
        after = float((load_trained(out / "model.pt")(lr) - hr).abs().mean())
    assert after < 0.8 * before, (before, after)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 100 and metrics["model"] == "plain16" and metrics["scale"] == SCALE
    assert metrics["final_loss"] == pytest.approx(losses[-1])
    assert metrics["val_set"] == "val" and metrics["val_images"] == 2
    assert 15 < metrics["val_psnr"] < 60
    assert metrics["steps_per_s"] > 0 and metrics["seconds"] > 0
    with open(out / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [25, 50, 75, 100]
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(losses)
    assert float(rows[-1]["lr"]) == pytest.approx(CFG.min_lr) and float(rows[0]["lr"]) > float(rows[-1]["lr"])
    assert [r["val_psnr"] for r in rows[:-1]] == ["", "", ""] and float(rows[-1]["val_psnr"]) == metrics["val_psnr"]
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["step"] == 100
    model = load_trained(out / "model.pt")
    assert not model.training
    assert_same_weights(model.state_dict(), _weights(out))
    x = torch.rand(1, 3, 10, 12)
    assert model(x).shape == (1, 3, 20, 24)


def test_same_seed_same_weights(reference: tuple[Path, list], data_dir: Path, tmp_path: Path) -> None:
    train("plain16", SCALE, data_dir, dataclasses.replace(CFG, checkpoint_every=7, log_every=4), tmp_path / "again")
    assert_same_weights(_weights(tmp_path / "again"), _weights(reference[0]))
    train("plain16", SCALE, data_dir, dataclasses.replace(CFG, seed=4), tmp_path / "other")
    assert not torch.equal(_weights(tmp_path / "other")["body.0.weight"], _weights(reference[0])["body.0.weight"])


_CHILD = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from srnas.config import TrainConfig
    from srnas.training import train
    torch.set_num_threads(int(sys.argv[3]))
    cfg = TrainConfig(**{k: (float(v) if "." in v or "e-" in v else int(v)) for k, v in (a.split("=") for a in sys.argv[4:])})
    train("plain16", 2, Path(sys.argv[1]), cfg, Path(sys.argv[2]), progress=False)
""")


def test_resume_after_sigkill_matches_uninterrupted(reference: tuple[Path, list], data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    steps = 200  # long enough that the child is still training when its first checkpoint appears
    cfg = dataclasses.replace(CFG, steps=steps, checkpoint_every=5)
    fields = ("steps", "batch_size", "lr_patch_size", "lr", "min_lr", "seed", "checkpoint_every", "log_every")
    args = [f"{k}={getattr(cfg, k)!r}" for k in fields]
    kill_at_first_checkpoint([sys.executable, "-c", _CHILD, str(data_dir), str(out), str(torch.get_num_threads()), *args], out / "last.ckpt")
    killed_at = load_checkpoint(out / "last.ckpt")["step"]
    assert 5 <= killed_at < steps and killed_at % 5 == 0
    assert not (out / "model.pt").exists()

    result = train("plain16", SCALE, data_dir, cfg, out, progress=False)
    assert result.resumed_from_step == killed_at
    train("plain16", SCALE, data_dir, cfg, tmp_path / "straight", resume=False, progress=False)
    assert_same_weights(_weights(out), _weights(tmp_path / "straight"))
    # the same file, byte for byte: where a run resumed is in train_metrics.json, not in the weights file
    assert file_sha256(out / "model.pt") == file_sha256(tmp_path / "straight" / "model.pt")
    assert json.loads((out / "train_metrics.json").read_text())["resumed_from_step"] == killed_at
    # the training curve too: the rows the killed run wrote after its last checkpoint are dropped and written again
    straight_log = (tmp_path / "straight" / "train_log.csv").read_text()
    assert (out / "train_log.csv").read_text() == straight_log and straight_log.count("\n") == 1 + steps // cfg.log_every
    assert list(out.glob(".*tmp*")) == []


def test_the_same_training_writes_the_same_weights_file(reference: tuple[Path, list], data_dir: Path, tmp_path: Path) -> None:
    """Another process, the same training: the same model.pt bytes (no wall clock in it, a deterministic torch.save)."""
    import subprocess

    fields = ("steps", "batch_size", "lr_patch_size", "lr", "min_lr", "seed", "checkpoint_every", "log_every")
    args = [f"{k}={getattr(CFG, k)!r}" for k in fields]
    subprocess.run([sys.executable, "-c", _CHILD, str(data_dir), str(tmp_path / "child"), str(torch.get_num_threads()), *args],
                   check=True, capture_output=True)
    assert file_sha256(tmp_path / "child" / "model.pt") == file_sha256(reference[0] / "model.pt")
    payload = torch.load(reference[0] / "model.pt", weights_only=True)
    assert not {"seconds", "steps_per_s", "resumed_from_step"} & set(payload["metrics"])
    assert payload["metrics"]["final_loss"] == json.loads((reference[0] / "train_metrics.json").read_text())["final_loss"]
    timings = json.loads((tmp_path / "child" / "train_metrics.json").read_text())
    assert timings["seconds"] > 0 and timings["steps_per_s"] > 0  # the run's timings stay in the metrics JSON


def test_resume_ignores_a_checkpoint_for_another_config(data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = dataclasses.replace(CFG, steps=6)
    train("plain16", SCALE, data_dir, cfg, tmp_path)
    again = train("plain16", SCALE, data_dir, cfg, tmp_path)
    assert again.resumed_from_step == 6
    other = train("plain16", SCALE, data_dir, dataclasses.replace(cfg, lr=1e-3), tmp_path)
    assert other.resumed_from_step == 0
    assert "different model, config or data" in caplog.text


def test_a_checkpoint_with_the_older_one_loss_history_resumes(data_dir: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, steps=6, log_every=4)
    first = train("plain16", SCALE, data_dir, cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.ckpt")
    assert list(ckpt["losses"]) == ["train_loss"] and len(ckpt["losses"]["train_loss"]) == 4
    ckpt["losses"] = ckpt["losses"]["train_loss"]  # the format before losses were named: one bare list
    save_checkpoint(tmp_path / "last.ckpt", {k: v for k, v in ckpt.items() if k != "format"})
    again = train("plain16", SCALE, data_dir, cfg, tmp_path)
    assert again.resumed_from_step == 6 and again.final_loss == first.final_loss


@dataclasses.dataclass(frozen=True)
class _FailingStep:
    """A step function whose second loss stops being finite at step index 2."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    is_main: bool = True

    def step(self, index: int) -> dict[str, float]:
        self.optimizer.step()  # no gradients: nothing moves
        self.scheduler.step()
        return {"train_loss": 1.0, "loss_other": float("inf") if index == 2 else 0.5}

    def validate(self) -> dict[str, float]:
        return {}

    def save_model(self, path: Path, metrics: dict) -> None:
        raise AssertionError("a diverged run writes no model")

    def barrier(self) -> None:
        pass

    def share(self, value: object) -> object:
        return value


def test_a_loss_that_is_not_finite_stops_the_loop(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    step_fn = _FailingStep(model, *optimizer_and_schedule(model, CFG))
    spec = LoopSpec(label="toy", summary="a toy", identity={}, describe={}, losses=("train_loss", "loss_other"))
    seen: list[tuple[int, dict]] = []
    with pytest.raises(TrainingDiverged, match=r"toy: training loss became .*loss_other inf at step 3"):
        run_loop(step_fn, spec, dataclasses.replace(CFG, log_every=2, checkpoint_every=1), tmp_path,
                 on_metrics=lambda m, s: seen.append((s, m)), progress=False)
    assert [s for s, _ in seen] == [2] and seen[0][1]["loss_other"] == 0.5
    assert load_checkpoint(tmp_path / "last.ckpt")["step"] == 2
    # no weights nor metrics; the curve up to the last report stays to look at
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "train_log.csv"]
    assert (tmp_path / "train_log.csv").read_text().splitlines()[1:] == [f"2,{seen[0][1]['train_loss']!r},0.5,{seen[0][1]['lr']!r},"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_is_a_clear_error(data_dir: Path, tmp_path: Path, damage: str) -> None:
    cfg = dataclasses.replace(CFG, steps=3)
    train("plain16", SCALE, data_dir, cfg, tmp_path)
    for name in ("last.ckpt", "model.pt"):
        path = tmp_path / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*(truncated or corrupt|expected)"):
        train("plain16", SCALE, data_dir, cfg, tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        load_trained(tmp_path / "model.pt")
    train("plain16", SCALE, data_dir, cfg, tmp_path, resume=False)  # resume=False starts over
    load_trained(tmp_path / "model.pt")


def test_bicubic_and_unknown_models_are_rejected(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'bicubic' has no weights"):
        train("bicubic", SCALE, data_dir, CFG, tmp_path)
    with pytest.raises(ConfigError, match="unknown model"):
        train("srcnn9000", SCALE, data_dir, CFG, tmp_path)
    with pytest.raises(DataError, match=r"x3.*prepare-data"):
        train("plain16", 3, data_dir, CFG, tmp_path)
    with pytest.raises(DataError, match=r"Set5.*not found"):
        train("plain16", SCALE, data_dir, CFG, tmp_path, val_set="Set5")
    assert not any(tmp_path.iterdir())


def test_train_config_validation() -> None:
    assert TrainConfig().batch_size == 32 and TrainConfig().bf16 == "auto"
    cfg = config_of(TrainConfig, {"steps": 10, "lr": 1, "bf16": "off"}, "params.yaml:train_baseline")
    assert cfg.lr == 1.0 and cfg.bf16 == "off"
    with pytest.raises(ConfigError, match=r"params\.yaml:train_baseline\.bf16: expected one of auto, on, off"):
        config_of(TrainConfig, {"bf16": "yes"}, "params.yaml:train_baseline")
    with pytest.raises(ConfigError, match=r"train_baseline\.min_lr"):
        config_of(TrainConfig, {"lr": 1e-4, "min_lr": 1e-3}, "train_baseline")
    with pytest.raises(ConfigError, match=r"train_baseline\.steps"):
        config_of(TrainConfig, {"steps": 0}, "train_baseline")
    with pytest.raises(ConfigError, match=r"train_baseline\.channels_last: expected true or false"):
        config_of(TrainConfig, {"channels_last": "yes"}, "train_baseline")


def test_the_training_history_rewinds_to_its_checkpoint(tmp_path: Path) -> None:
    """Rows written after the last checkpoint are dropped on resume: the resumed run then writes the same file."""
    from srnas.training.history import TrainHistory

    straight = TrainHistory(("train_loss", "lr", "val_psnr"))
    killed = TrainHistory(straight.columns)
    for step in (5, 10, 15):
        for history in (straight, killed):
            history.record(step, {"train_loss": 1.0 / step, "lr": 1e-3, "steps_per_s": 9.0})
    saved = killed.state()  # last.ckpt at step 15
    killed.record(20, {"train_loss": 0.5, "lr": 1e-3})  # written to the CSV, then killed before the next checkpoint
    resumed = TrainHistory(straight.columns)
    resumed.restore(tmp_path / "last.ckpt", saved)
    for history in (straight, resumed):
        history.record(20, {"train_loss": 0.05, "lr": 1e-4})
        history.record(20, {"val_psnr": 30.25})
        history.write(tmp_path / f"{id(history)}.csv")
    assert resumed.to_csv() == straight.to_csv()
    assert straight.to_csv().splitlines() == ["step,train_loss,lr,val_psnr", "5,0.2,0.001,", "10,0.1,0.001,",
                                              f"15,{1 / 15!r},0.001,", "20,0.05,0.0001,30.25"]
    with pytest.raises(CheckpointError, match="last.ckpt: cannot restore the training history"):
        resumed.restore(tmp_path / "last.ckpt", [{"train_loss": 1.0}])
