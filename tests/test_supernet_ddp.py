"""Supernet training under torchrun: two CPU processes (gloo) keep identical replicas and learn."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from test_supernet import write_prepared

from srnas.arch.space import SearchSpace
from srnas.config import SearchSpaceConfig, SupernetConfig, SupernetTrainConfig
from srnas.supernet import SRSupernet

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import torch
    from srnas.config import SupernetConfig, from_mapping
    from srnas.supernet.train import train_supernet

    data_dir, out_dir, dump_dir, cfg_json = sys.argv[1:5]
    cfg = from_mapping(SupernetConfig, json.loads(cfg_json), "ddp-test")
    seen = []
    result = train_supernet(data_dir, cfg, out_dir, on_metrics=lambda m, s: seen.append([s, m]), progress=False)
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().cpu().clone() for k, v in result.supernet.state_dict().items()}, Path(dump_dir) / f"rank{rank}.pt")
    (Path(dump_dir) / f"rank{rank}.json").write_text(json.dumps({"world_size": result.world_size, "metrics": seen}))
""")

CFG = SupernetConfig(
    scale=2,
    space=SearchSpaceConfig(num_cells=3, widths=(8, 16), blocks=("conv", "wdsr", "skip"), expansions=(2,)),
    train=SupernetTrainConfig(steps=40, batch_size=8, lr_patch_size=8, lr=2e-3, min_lr=1e-4, seed=1, checkpoint_every=20,
                              log_every=10, num_random=1, device="cpu"),
)


def test_two_cpu_processes_keep_identical_replicas_and_learn(tmp_path: Path) -> None:
    data_dir = write_prepared(tmp_path / "prepare_data", {"train": 4, "val": 1})
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    script = tmp_path / "ddp_train.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    cfg_json = json.dumps(json.loads(json.dumps(dataclasses.asdict(CFG))))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(data_dir), str(out), str(dump), cfg_json],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"replicas differ in {key}"
    torch.manual_seed(CFG.train.seed)
    initial = SRSupernet(SearchSpace(CFG.space), CFG.scale).state_dict()
    assert not torch.equal(initial["head.weight"], ranks[0]["head.weight"])

    logs = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert logs[0]["world_size"] == logs[1]["world_size"] == 2
    assert logs[1]["metrics"] == []  # only rank 0 reports
    losses = [m["train_loss"] for _, m in logs[0]["metrics"] if "train_loss" in m]
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0], losses

    # rank 0 wrote the outputs; they hold the replicas' weights
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 40
    saved = torch.load(out / "supernet.pt", weights_only=True)["state_dict"]
    for key in saved:
        assert torch.equal(saved[key], ranks[0][key].float().contiguous())
    assert sorted(p.name for p in out.iterdir()) == ["last.ckpt", "supernet.pt", "train_log.csv", "train_metrics.json"]
