"""Stage 2's study shared beyond one process: ``search_arch.storage`` (a database URL), worker jobs
(``srnas search-arch --worker K``) and exactly ``trials`` completed trials however many processes run them.

The two-worker test runs against a real PostgreSQL started on this machine (the ``postgres`` fixture: skipped where
PostgreSQL is not installed, failed instead under SRNAS_REQUIRE_SERVICES=1, as in CI). It never relies on timing:
the workers are held at chosen points by table locks the test takes in the database, and released from there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from conftest import config_of
from services import POSTGRES_PASSWORD
from test_search import SPACE, _cfg, _cli, _params, inputs  # noqa: F401  (inputs: the module's fixture)

from srnas.config import SearchArchConfig, redact_url
from srnas.errors import ConfigError
from srnas.search import study as studies

# ---------------------------------------------------------------------------------------------- configuration


def test_storage_is_empty_or_a_database_url_and_its_password_never_shows() -> None:
    assert redact_url("postgresql://srnas:pa55@db.lab:5432/srnas") == "postgresql://srnas:***@db.lab:5432/srnas"
    assert redact_url("postgresql://srnas@db.lab/srnas") == "postgresql://srnas@db.lab/srnas"
    assert redact_url("sqlite:///results/study.db") == "sqlite:///results/study.db"
    for url in ("", "postgresql://srnas:pa55@db.lab:5432/srnas", "postgresql+psycopg2://db.lab/srnas",
                "sqlite:///tmp/study.db", "mysql+pymysql://u@h/db?charset=utf8mb4"):
        assert config_of(SearchArchConfig, {"storage": url}, "search_arch").storage == url
    for bad in ("db.lab/srnas", "postgresql:/db", "postgresql://srnas:pa55@db lab/srnas", "PostgreSQL://h/db"):
        with pytest.raises(ConfigError) as error:
            config_of(SearchArchConfig, {"storage": bad}, "search_arch")
        message = str(error.value)
        assert message.startswith("search_arch.storage: expected empty") and "\n" not in message
        assert "pa55" not in message


def test_a_database_that_cannot_be_opened_is_one_line_naming_the_key(tmp_path) -> None:
    """No server at the URL: one line naming search_arch.storage and the URL, the password masked."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://srnas:{POSTGRES_PASSWORD}@127.0.0.1:{port}/srnas"
    with pytest.raises(ConfigError) as error:
        studies.open_study(url, "s", _cfg(), 0)
    message = str(error.value)
    assert message.startswith(f"search_arch.storage: cannot open the study at postgresql://srnas:***@127.0.0.1:{port}/srnas: ")
    assert "\n" not in message and POSTGRES_PASSWORD not in message
    assert "Connection refused" in message or "connection" in message.lower()


# ------------------------------------------------------------------------------- exactly `trials` trials


def _foreign_trial(url: str, name: str, attrs: dict, value: float | None = None) -> int:
    """A trial of ``name`` made by another process (a plain sampler, so it records nothing itself): its user
    attributes ``attrs``, completed with ``value`` or left RUNNING; its number."""
    import warnings

    study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler(seed=len(attrs)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize() with a heartbeat storage warns
        trial = study.ask()
    studies.suggest_candidate(trial, SPACE, ["filter_g8"], 0.5)
    for key, val in attrs.items():
        trial.set_user_attr(key, val)
    if value is not None:
        study.tell(trial, value)
    return trial.number


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_search_runs_only_the_missing_trials_and_takes_over_a_dead_process_trial(tmp_path) -> None:
    """Two trials completed elsewhere and one left RUNNING by a process of this host that died: with ``trials`` 5,
    this process fails the dead one and completes exactly the 3 missing (no more: the count is exact)."""
    import socket

    url = studies.storage_url("", tmp_path / "study.db")
    cfg = _cfg(trials=5)
    study = studies.open_study(url, "s", cfg, 0)
    for value in (20.0, 21.0):
        _foreign_trial(url, "s", {"host": socket.gethostname(), "pid": os.getpid()}, value)
    dead = _foreign_trial(url, "s", {"host": socket.gethostname(), "pid": _dead_pid()})
    evaluated = []

    def evaluate(candidate):
        evaluated.append(candidate)
        return 25.0, 1.0

    ran = studies.run_trials(study, cfg, 10.0, SPACE, ["filter_g8"], evaluate, worker="0:1")
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert ran == 3 == len(evaluated)
    assert states.count("COMPLETE") == 5 and states.count("RUNNING") == 0 and states[dead] == "FAIL"
    assert studies.run_trials(study, cfg, 10.0, SPACE, ["filter_g8"], evaluate, worker="0:1") == 0  # nothing missing


def test_a_trial_started_beyond_the_count_is_failed_unrun_and_quietly(tmp_path, monkeypatch, caplog) -> None:
    """Two processes that see the study one trial short at the same moment both start a trial: the one numbered
    after the count is failed before it samples or evaluates anything, marked surplus, and Optuna's failed-trial
    warning is kept out of the log. Here the other process's running trial is hidden from this one's first look."""
    url = studies.storage_url("", tmp_path / "study.db")
    cfg = _cfg(trials=2)
    study = studies.open_study(url, "s", cfg, 0)
    _foreign_trial(url, "s", {"host": "elsewhere", "pid": 1}, 20.0)
    _foreign_trial(url, "s", {"host": "elsewhere", "pid": 1})  # running in a live process of another host
    real_counts, looks = studies._counts, []

    def first_look_misses_it(s):
        looks.append(1)
        done, running = real_counts(s)
        return (done, 0) if len(looks) == 1 else (done, running)

    monkeypatch.setattr(studies, "_counts", first_look_misses_it)

    def surplus_seen() -> bool:
        return any(t.user_attrs.get(studies.SURPLUS_ATTR) for t in study.get_trials(deepcopy=False))

    def evaluate(candidate):
        raise AssertionError("a surplus trial must not be evaluated")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            optuna_said.append(record.getMessage())

    optuna_said: list[str] = []
    collect = Collect()
    logging.getLogger("optuna").addHandler(collect)  # Optuna's own handler does not propagate to pytest's
    try:
        with caplog.at_level(logging.INFO):
            assert studies.run_trials(study, cfg, 10.0, SPACE, ["filter_g8"], evaluate, worker="0:1",
                                      stop=surplus_seen) == 0
    finally:
        logging.getLogger("optuna").removeHandler(collect)
    extra = study.get_trials(deepcopy=False)[2]
    assert extra.state.name == "FAIL" and extra.user_attrs[studies.SURPLUS_ATTR] and not extra.params
    assert [t.state.name for t in study.get_trials(deepcopy=False)[:2]] == ["COMPLETE", "RUNNING"]
    assert not [m for m in optuna_said if "Trial 2 failed" in m]
    assert any("trial 2 was not needed" in r.getMessage() for r in caplog.records)


def test_worker_seeds_differ_and_worker_zero_is_the_plain_command() -> None:
    assert studies.worker_seed(7, 0) == 7
    seeds = {studies.worker_seed(7, k) for k in range(1, 9)}
    assert len(seeds) == 8 and 7 not in seeds
    assert studies.worker_seed(7, 3) == studies.worker_seed(7, 3) != studies.worker_seed(8, 3)


# ------------------------------------------------------------------ two worker jobs on one PostgreSQL study


@contextmanager
def _locked(url: str, table: str) -> Iterator[None]:
    """Hold ``table`` of the study's database in EXCLUSIVE mode (others may read it, not write it) until the block
    ends: a worker that writes to it waits there."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        conn.cursor().execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        yield
    finally:
        conn.commit()
        conn.close()


def _lock_waiters(url: str, statement: str = "") -> int:
    """Sessions of the database waiting for a lock (running a statement that starts with ``statement``)."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE %s", (statement + "%",))
        count = cur.fetchone()[0]
    conn.close()
    return int(count)


def _wait_for(condition: Callable[[], bool], procs: dict[int, subprocess.Popen], logs: Path, what: str) -> None:
    deadline = time.monotonic() + 180
    while not condition():
        for k, p in procs.items():
            if p.poll() is not None:
                pytest.fail(f"worker {k} exited ({p.returncode}) before {what}: {(logs / f'w{k}.log').read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within 180 s"
        time.sleep(0.05)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """The worker processes a test starts: any still running at its end (a failed test) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _start_worker(started: list[subprocess.Popen], search_inputs, params: list[str], out: Path, logs: Path, k: int,
                  tag: str = "", env: dict[str, str] | None = None) -> subprocess.Popen:
    """``srnas search-arch ... --worker K``, as a SLURM array task (or a second host) would run it."""
    cmd = [sys.executable, "-m", "srnas.cli", *_cli(search_inputs, params, out), "--worker", str(k)]
    with (logs / f"w{k}{tag}.log").open("w") as log:  # the child keeps its own handle
        started.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}))
    return started[-1]


def _study_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    (name,) = optuna.get_all_study_names(url)
    return sorted(optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False), key=lambda t: t.number)


def _duplicated_numbers(url: str) -> list[tuple[int, int]]:
    """Trial numbers stored more than once (Optuna's schema has no unique key on them: this is what could go wrong)."""
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT number, count(*) FROM trials GROUP BY study_id, number HAVING count(*) > 1")
        rows = cur.fetchall()
    conn.close()
    return rows


@pytest.mark.slow
def test_two_worker_jobs_share_one_postgresql_study_and_a_killed_one_is_resumed(inputs, postgres, started, tmp_path) -> None:  # noqa: F811
    """Worker jobs 1 and 2 share one study on PostgreSQL, logging in as the README says (the URL without the
    password, the password in PGPASSWORD): both held until both wait to create their first trial (so each completes
    at least one), 4 trials in all, every number once. Then (the password in the URL now) the study grows to 8: both
    are held again while completing a trial, job 1 is SIGKILLed there, job 2 goes on and fails job 1's trial (its
    process is gone), job 1 is started again, and the study ends with exactly 8 completed trials, no trial numbered
    twice, the killed trial failed. The plain command then writes the outputs from every worker's trials and runs
    none; no output shows the database password."""
    from srnas.cli import main

    url = postgres.database("shared")
    # Optuna's tables: the first worker creates them; here the test does, to hold them
    optuna.storages.RDBStorage(url).engine.dispose()
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()

    params = _params(tmp_path, trials=4, seed=1, storage=url.replace(f":{POSTGRES_PASSWORD}@", "@"))
    with _locked(url, "trials"):
        procs = {k: _start_worker(started, inputs, params, out, logs, k, env={"PGPASSWORD": POSTGRES_PASSWORD}) for k in (1, 2)}
        _wait_for(lambda: _lock_waiters(url) == 2, procs, logs, "both workers wait to create a trial")
    assert [procs[k].wait(180) for k in (1, 2)] == [0, 0]
    first = _study_trials(url)
    done = [t for t in first if t.state.name == "COMPLETE"]
    assert len(done) == 4 and {t.user_attrs["worker"].split(":")[0] for t in done} == {"1", "2"}
    assert [t.number for t in first] == list(range(len(first))) and not _duplicated_numbers(url)
    assert all(t.user_attrs.get("surplus") for t in first if t.state.name != "COMPLETE")
    assert not (out / "arch.json").exists()  # worker jobs write nothing

    params = _params(tmp_path, trials=8, seed=1, storage=url)  # more trials: the same study
    with _locked(url, "trial_values"):
        with _locked(url, "trials"):
            procs = {k: _start_worker(started, inputs, params, out, logs, k, "b") for k in (1, 2)}
            _wait_for(lambda: _lock_waiters(url) == 2, procs, logs, "both workers wait to create a trial")
        _wait_for(lambda: _lock_waiters(url, "INSERT INTO trial_values") == 2, procs, logs,
                  "both workers wait to complete a trial")
        killed = procs[1]
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL
    again = _start_worker(started, inputs, params, out, logs, 1, "c")  # the job started again (a requeued array task)
    assert procs[2].wait(180) == 0 and again.wait(180) == 0

    trials = _study_trials(url)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 8 and states.count("RUNNING") == 0
    dead = [t for t in trials if t.state.name == "FAIL" and not t.user_attrs.get("surplus")]
    assert [t.user_attrs["pid"] for t in dead] == [killed.pid]  # the killed job's trial, failed, not completed
    assert [t.number for t in trials] == list(range(len(trials))) and not _duplicated_numbers(url)
    assert [t.params for t in trials if t.state.name == "COMPLETE"][:4] == [t.params for t in done]  # kept

    assert main(_cli(inputs, params, out) + ["--log", str(logs / "plain.log")]) == 0
    assert len(_study_trials(url)) == len(trials)  # nothing left to run
    arch = json.loads((out / "arch.json").read_text())
    assert arch["trials"] == 8
    assert arch["study"]["storage"] == f"postgresql://shared:***@127.0.0.1:{postgres.port}/shared"
    texts = [p.read_text() for p in logs.iterdir()] + [(out / name).read_text() for name in ("arch.json", "trials.csv")]
    assert not [t for t in texts if POSTGRES_PASSWORD in t]
    assert f"in postgresql://shared@127.0.0.1:{postgres.port}/shared" in (logs / "w1.log").read_text()
    assert f"in postgresql://shared:***@127.0.0.1:{postgres.port}/shared" in (logs / "w1b.log").read_text()
