from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The standard benchmark HR images (``../shared/data``: T91, Set5, Set14, B100); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


def smooth_image(rng, size: int):
    """A smooth, deterministic RGB uint8 test image (sums of random sinusoids): SR models can learn it quickly."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(3):
            fy, fx = rng.uniform(1, 6, 2)
            img[..., c] += np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 6.3))
    return np.rint((img - img.min()) / (np.ptp(img) + 1e-9) * 255).astype(np.uint8)


def write_prepared_set(root: Path, name: str, count: int, rng, size: int = 48, scale: int = 2) -> None:
    """``count`` smooth HR images and their MATLAB-bicubic LR in the prepared-data layout ``root/name/x<scale>/``."""
    from srnas.images import write_png
    from srnas.imresize import imresize

    for i in range(count):
        hr = smooth_image(rng, size)
        write_png(root / name / f"x{scale}" / "hr" / f"img{i}.png", hr)
        write_png(root / name / f"x{scale}" / "lr" / f"img{i}.png", imresize(hr, 1 / scale))


def assert_same_weights(a, b) -> None:
    """Two state dicts hold the same tensors (within 1e-6), key by key."""
    import torch

    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def kill_when(cmd: list[str], ready, what: str, timeout_s: float = 120) -> None:
    """Run ``cmd`` (a child process) and SIGKILL it as soon as ``ready()`` is true; ``what`` names that moment."""
    import signal
    import subprocess
    import time

    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert child.poll() is None, f"child exited early: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL


def kill_at_first_checkpoint(cmd: list[str], ckpt: Path, timeout_s: float = 120) -> None:
    """Run ``cmd`` (a training child process) and SIGKILL it as soon as ``ckpt`` appears."""
    kill_when(cmd, ckpt.exists, "checkpoint", timeout_s)


def config_of(cls, overrides: dict, where: str = "params.yaml:section"):
    """Section ``cls`` built by :func:`srnas.config.from_mapping` (every check a params.yaml section goes through) from
    its defaults -- params.yaml's values -- with ``overrides`` merged in (nested sections merge, the rest replaces)."""
    from srnas.config import from_mapping
    from srnas.settings import deep_merge, plain

    return from_mapping(cls, deep_merge(plain(cls()), overrides), where)


def params_overlay(tmp_path: Path, overlay: dict, name: str = "overlay.yaml") -> list[str]:
    """CLI arguments selecting the repository's params.yaml with ``overlay`` (written to ``tmp_path/name``) on top."""
    import json

    path = tmp_path / name
    path.write_text(json.dumps(overlay), encoding="utf-8")
    return ["--params", str(Path(__file__).resolve().parents[1] / "params.yaml"), "--overlay", str(path)]


def killed_writer_prefix(name: str) -> str:
    """The prefix :mod:`srnas.atomic` gives a temporary of target ``name`` written by a process of this machine that
    is gone (a killed run's): ``.<name>.<dead pid>-<host tag>.``."""
    import subprocess
    import sys

    from srnas import atomic

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f".{name}.{child.pid}-{atomic._host_tag()}."


def _running(service):
    """Start ``service`` (a :mod:`services` class), hand it to the session's tests, stop it whatever happened."""
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on this machine (:class:`services.PostgresCluster`) for the session; its
    ``database(name)`` gives a fresh database's URL. Skips when PostgreSQL is not installed, unless
    SRNAS_REQUIRE_SERVICES=1 (CI), when that fails the test."""
    from services import PostgresCluster, postgres_bin, service_missing

    bindir = postgres_bin()
    if bindir is None:
        service_missing("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin")
    cluster = PostgresCluster(bindir)
    yield from _running(cluster)


@pytest.fixture(scope="session")
def mlflow_server(postgres):
    """An MLflow tracking server for the session (:class:`services.MlflowServer`): runs and registered models in a
    database of the ``postgres`` cluster, artifacts uploaded through the server. Point a project at it with
    ``mlflow_server.tracking("<experiment>")`` as a configuration overlay (``{"tracking": {"uri": ..., ...}}``), one
    experiment per test. Skips (fails under SRNAS_REQUIRE_SERVICES=1) when PostgreSQL is not installed."""
    from services import MlflowServer

    server = MlflowServer(postgres.database("mlflow"))
    yield from _running(server)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """The folder ``name`` that ``build(folder)`` filled, built once for the whole test session whichever
    pytest-xdist worker asks first: the others wait for it and get the same folder (a session fixture is otherwise
    built once per worker). Under a file lock in the session's shared temporary root, as pytest-xdist documents; a
    build that raised leaves no mark, so the next worker that asks builds it again (and fails the same way)."""
    import os
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # every worker's basetemp lies in the one root of this session
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def smoke_latency_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's measured latency cache (``.srnas/latency``: profile_device's layer timings), measured once
    for the session by the smoke DAG up to profile_device without native bf16. Every Snakemake smoke run of the suite
    (the uninterrupted one, the killed-and-resumed one, the SLURM one) starts from a copy of it: the measured layer
    table is the one measured input that may change a search, so runs compared output for output share it."""
    from test_pipeline import BIN, HIDDEN_BF16, SMOKE, _copy_project, _run

    def build(project: Path) -> None:
        _copy_project(project)
        _run([str(BIN / "snakemake"), "profile_device", *SMOKE], project, HIDDEN_BF16)  # before --configfile's list

    return built_once(tmp_path_factory, "smoke_latency", build) / ".srnas" / "latency"


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory: pytest.TempPathFactory, smoke_latency_cache: Path) -> Path:
    """One uninterrupted Snakemake run of the smoke DAG on this machine (tests/test_pipeline.py's ``SMOKE`` command,
    without native bf16, from ``smoke_latency_cache``), built once for the session and shared by the tests that read it
    or compare another run with it: test_pipeline.py, test_pipeline_resume.py and test_slurm.py, on whichever workers
    run them."""
    from test_pipeline import BIN, HIDDEN_BF16, SMOKE, _copy_project, _run

    def build(project: Path) -> None:
        _copy_project(project, smoke_latency_cache)
        _run([str(BIN / "snakemake"), *SMOKE], project, HIDDEN_BF16)

    return built_once(tmp_path_factory, "smoke", build)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A throwaway one-node SLURM cluster on this machine (:class:`services.SlurmCluster`) for the session. Skips
    when SLURM or MUNGE is not installed or this process is not root, unless SRNAS_REQUIRE_SERVICES=1 (CI), when that
    fails the test."""
    import os

    from services import SlurmCluster, service_missing, slurm_missing

    missing = slurm_missing()
    if missing:
        service_missing(f"SLURM / MUNGE programs not found: {', '.join(missing)}")
    if os.geteuid() != 0:
        service_missing("root: a one-node SLURM cluster's slurmd starts every job as its user", how="run as root")
    cluster = SlurmCluster()
    yield from _running(cluster)

# ----------------------------------------------------------------------------------------- two workers
# `make test` runs the suite on two pytest-xdist workers (`-n auto --maxprocesses 2 --dist loadfile`): a file is one
# work unit, so its module-scoped fixtures are built once. The four files that run the smoke DAG (PIPELINE_FILES)
# come first, in this order (`--no-loadscope-reorder` keeps it), because pytest-xdist hands each worker its first
# file, then a second one at once to a worker with at most two tests pending: worker 1 gets test_pipeline.py, which
# builds smoke_project (after smoke_latency_cache), then test_pipeline_dvc.py; worker 2 gets test_slurm.py, which
# needs the cache first and the uninterrupted run only to compare with at its end, then test_pipeline_resume.py. Two
# DAG runs a worker, none waiting on the other's; both fixtures are built once for the session (built_once). (Not
# `--dist loadgroup`: pytest-xdist 3.8 cannot tag a test with its group under pytest 9, whose node ids are no longer
# an attribute it can rewrite.)
PIPELINE_FILES = ("test_pipeline.py", "test_slurm.py", "test_pipeline_dvc.py", "test_pipeline_resume.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {name: rank for rank, name in enumerate(PIPELINE_FILES)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: the files' order otherwise
