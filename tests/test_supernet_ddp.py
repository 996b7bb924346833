"""`srnas train-supernet` under torchrun (gloo on CPU): one node with two processes, and two nodes with one process each
joined by a c10d rendezvous (README's "Multi-node supernet training" command), train the same weights, bit for bit;
replicas stay identical; a restarted two-node run whose second node has no checkpoint of its own resumes from the
first node's."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import params_overlay
from test_supernet import write_prepared

from srnas.arch.space import SearchSpace
from srnas.config import SearchSpaceConfig, SupernetConfig, SupernetTrainConfig
from srnas.supernet import SRSupernet

# One process of a run: `srnas train-supernet ARGS...` (srnas.cli.main, what `-m srnas.cli` runs) that also dumps its
# replica's final weights and what it reported to DUMP/rank<RANK>.{pt,json}. With SNAPSHOT_AT, at that step every
# process shares rank 0's last.ckpt (DistContext.share: what a resumed run does) and dumps what it got to
# DUMP/rank<RANK>_ckpt.pt.
_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import torch
    from srnas.checkpoint import load_checkpoint
    from srnas.cli import main
    from srnas.supernet import train as train_module

    dump_dir, snapshot_at, *args = sys.argv[1:]
    rank = int(os.environ["RANK"])
    out = Path(args[args.index("--out") + 1])

    step = train_module.SandwichStep.step
    def snapshotting(self, index):
        if snapshot_at and index == int(snapshot_at):
            shared = self.dist.share(load_checkpoint(out / "last.ckpt") if rank == 0 else None)
            torch.save(shared, Path(dump_dir) / f"rank{rank}_ckpt.pt")
        return step(self, index)
    train_module.SandwichStep.step = snapshotting

    train_supernet = train_module.train_supernet
    def recording(*args, on_metrics, **kwargs):
        seen = []
        def record(metrics, step):
            seen.append([step, metrics])
            on_metrics(metrics, step)
        result = train_supernet(*args, on_metrics=record, **kwargs)
        torch.save({k: v.detach().cpu().clone() for k, v in result.supernet.state_dict().items()}, Path(dump_dir) / f"rank{rank}.pt")
        (Path(dump_dir) / f"rank{rank}.json").write_text(json.dumps(
            {"world_size": result.world_size, "resumed_from_step": result.resumed_from_step, "metrics": seen}))
        return result
    train_module.train_supernet = recording
    sys.exit(main(args))
""")

CFG = SupernetConfig(
    scale=2,
    space=SearchSpaceConfig(num_cells=3, widths=(8, 16), blocks=("conv", "wdsr", "skip"), expansions=(2,)),
    train=SupernetTrainConfig(steps=40, batch_size=8, lr_patch_size=8, lr=2e-3, min_lr=1e-4, seed=1, checkpoint_every=20,
                              log_every=10, num_random=1, device="cpu"),
)
OUTPUTS = ["last.ckpt", "supernet.pt", "train_log.csv", "train_metrics.json"]
CHECKPOINTED = 20  # the step of the first last.ckpt
NODE_ADDRS = ("127.0.0.1", "127.0.0.2")  # c10d gives rank 0 to the node whose address sorts first
TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Run:
    """One torchrun job: what its ranks dumped (``rank<r>``: final weights, ``rank<r>_ckpt``: the shared checkpoint),
    each rank's report, the launchers' exit codes and output."""

    weights: dict[str, dict[str, Any]]
    reports: dict[int, dict]
    returncodes: list[int]
    output: list[str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_args(tmp_path: Path, name: str, out: Path, snapshot_at: int | None = None) -> list[str]:
    """The training script, dumping to ``tmp_path/name/dump``, then ``train-supernet`` with ``CFG`` on the prepared data."""
    data_dir = tmp_path / "prepare_data"
    if not data_dir.exists():
        write_prepared(data_dir, {"train": 4, "val": 1})
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    dump = tmp_path / name / "dump"
    dump.mkdir(parents=True, exist_ok=True)
    settings = params_overlay(tmp_path, {"tracking": {"enabled": False}, "supernet": dataclasses.asdict(CFG)})
    return [str(script), str(dump), "" if snapshot_at is None else str(snapshot_at), "train-supernet", "--data-dir", str(data_dir), "--out", str(out), *settings]


def readme_launcher(port: int, addr: str) -> tuple[list[str], list[str]]:
    """README's "Multi-node supernet training" command for one node of this machine, split into torchrun's arguments
    (one process per node, this machine's free ``port`` for ``HOST:29400``, ``--local-addr addr``) and the arguments
    after ``-m srnas.cli``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("### Multi-node supernet training", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    args = shlex.split(block.replace("\\\n", " "), comments=True)
    cut = args.index("-m")
    assert args[0] == "torchrun" and args[cut:cut + 3] == ["-m", "srnas.cli", "train-supernet"], args
    launcher = [{"N": "1", "HOST:29400": f"127.0.0.1:{port}"}.get(a, a) for a in args[1:cut]]
    assert launcher[:2] == ["--nnodes", "2"] and "c10d" in launcher and f"127.0.0.1:{port}" in launcher, launcher
    return [*launcher, "--local-addr", addr], args[cut + 2:]


def two_nodes(tmp_path: Path, name: str, outs: tuple[Path, Path]) -> Run:
    """README's command on two one-process "nodes" of this machine, each writing to its own folder in ``outs`` (machines
    without a shared disk)."""
    port, launches = _free_port(), []
    for addr, out in zip(NODE_ADDRS, outs):
        launcher, program = readme_launcher(port, addr)
        args = train_args(tmp_path, name, out)
        assert program == ["train-supernet", "--out", "results/train_supernet"], program
        launches.append([*launcher, *args])
    return run_torchrun(tmp_path, name, launches)


def run_torchrun(tmp_path: Path, name: str, launches: list[list[str]]) -> Run:
    """Start ``python -m torch.distributed.run <launch>`` for every launch at once (one per "node"), each in its own
    process group in ``tmp_path``; wait for them all, killing every group after ``TIMEOUT_S`` or 30 s after one failed."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    procs, logs = [], []
    try:
        for index, launch in enumerate(launches):
            log = (tmp_path / name / f"node{index}.log").open("w+")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launch], cwd=tmp_path, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline, failed_at = time.monotonic() + TIMEOUT_S, None
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() > failed_at + 30:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    output = []
    for log in logs:
        log.seek(0)
        output.append(log.read()[-4000:])
        log.close()
    dump = tmp_path / name / "dump"
    return Run({p.stem: torch.load(p, weights_only=True) for p in dump.glob("rank*.pt")},
               {int(p.stem.removeprefix("rank")): json.loads(p.read_text()) for p in dump.glob("rank*.json")},
               [p.returncode for p in procs], output)


def assert_succeeded(run: Run) -> None:
    assert run.returncodes == [0] * len(run.returncodes), "\n".join(run.output)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{what} differ in {key}: max |diff| {(value - b[key]).abs().max():.3g}"


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """The documented single-node DDP run: two processes, global batch ``CFG.train.batch_size``."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "one_node_out"
    args = train_args(tmp, "one_node", out, snapshot_at=CHECKPOINTED)
    return run_torchrun(tmp, "one_node", [["--standalone", "--nproc-per-node", "2", *args]]), out


def test_two_cpu_processes_keep_identical_replicas_and_learn(one_node: tuple[Run, Path]) -> None:
    run, out = one_node
    assert_succeeded(run)
    assert_same_weights(run.weights["rank0"], run.weights["rank1"], "replicas")
    torch.manual_seed(CFG.train.seed)
    initial = SRSupernet(SearchSpace(CFG.space), CFG.scale).state_dict()
    assert not torch.equal(initial["head.weight"], run.weights["rank0"]["head.weight"])

    assert run.reports[0]["world_size"] == run.reports[1]["world_size"] == 2
    assert run.reports[1]["metrics"] == []  # only rank 0 reports
    losses = [m["train_loss"] for _, m in run.reports[0]["metrics"] if "train_loss" in m]
    assert len(losses) == 4 and losses[-1] < 0.85 * losses[0], losses

    # rank 0 wrote the outputs; they hold the replicas' weights
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 40
    saved = torch.load(out / "supernet.pt", weights_only=True)["state_dict"]
    for key in saved:
        assert torch.equal(saved[key], run.weights["rank0"][key].float().contiguous())
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS

    # what a resumed run does: rank 1 gets rank 0's last.ckpt whole, without reading a file of its own
    sent, received = run.weights["rank0_ckpt"], run.weights["rank1_ckpt"]
    assert sent["step"] == received["step"] == CHECKPOINTED and sent["identity"] == received["identity"]
    assert sent["optimizer"]["param_groups"] == received["optimizer"]["param_groups"]
    assert_same_weights(sent["model"], received["model"], "shared checkpoints")


def test_two_nodes_with_c10d_rendezvous_train_the_weights_of_one_node(one_node: tuple[Run, Path], tmp_path: Path) -> None:
    """README's command on two one-process nodes, each with its own output folder (no shared disk). The second node
    holds a last.ckpt of this very training (step 20) from an earlier job in which it had rank 0; the first, rank 0 now,
    has none, so the run starts from scratch on both (a node resuming alone would hang the job or train other
    weights). Both replicas end with the one-node run's weights."""
    reference, reference_out = one_node
    assert_succeeded(reference)
    outs = (tmp_path / "node0_out", tmp_path / "node1_out")
    outs[1].mkdir()
    stale = outs[1] / "last.ckpt"
    shutil.copyfile(reference_out.parent / "one_node" / "dump" / "rank0_ckpt.pt", stale)  # the one-node run's, step 20
    stale_bytes = stale.read_bytes()

    run = two_nodes(tmp_path, "two_nodes", outs)
    assert_succeeded(run)
    assert run.reports[0]["world_size"] == run.reports[1]["world_size"] == 2
    assert run.reports[0]["resumed_from_step"] == run.reports[1]["resumed_from_step"] == 0
    assert_same_weights(run.weights["rank0"], run.weights["rank1"], "replicas")
    assert_same_weights(run.weights["rank0"], reference.weights["rank0"], "two nodes and one node")
    assert [[s, m.get("train_loss")] for s, m in run.reports[0]["metrics"]] == [
        [s, m.get("train_loss")] for s, m in reference.reports[0]["metrics"]]
    # only global rank 0 writes: the first node has every output, the second node's folder is as it was
    assert sorted(p.name for p in outs[0].iterdir()) == OUTPUTS
    assert_same_weights(torch.load(outs[0] / "supernet.pt", weights_only=True)["state_dict"],
                        torch.load(reference_out / "supernet.pt", weights_only=True)["state_dict"], "the supernet.pt files")
    assert [p.name for p in outs[1].iterdir()] == ["last.ckpt"] and stale.read_bytes() == stale_bytes
    # the second node's checkpoint was one this run would resume: the same training, data and process count
    assert torch.load(stale, weights_only=True)["identity"] == torch.load(outs[0] / "last.ckpt", weights_only=True)["identity"]
