"""Real services for tests, started on this machine and thrown away: a PostgreSQL cluster, an MLflow tracking server,
a one-node SLURM cluster.

A test that needs a service skips, saying what is missing, when its binaries are not installed (a developer's
machine); CI installs them (``scripts/ci_services.sh``) and sets ``SRNAS_REQUIRE_SERVICES=1``, under which a missing
service fails the test instead. The same holds for an optional package CI installs (ExecuTorch, the ``mobile`` extra
that ``make setup`` installs).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REQUIRE_ENV = "SRNAS_REQUIRE_SERVICES"
POSTGRES_PASSWORD = "pw-s3cret-9f2"  # the test role's: no log line or error may show it


def service_missing(what: str, installer: str = "scripts/ci_services.sh", how: str | None = None) -> None:
    """Skip the test because ``what`` is missing, or fail it when CI requires the services (:data:`REQUIRE_ENV`);
    ``installer`` is what installs it (``how``, when given, replaces that remark)."""
    message = f"{what} ({how or f'{installer} installs it'})"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {message}", pytrace=False)
    pytest.skip(message)


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries installed (Debian's ``/usr/lib/postgresql/<major>/bin``), or the folder
    of an ``initdb`` on PATH; None when there are none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A throwaway PostgreSQL cluster: its own data folder and port, a unix socket in that folder, password logins
    over TCP on 127.0.0.1 only. Run as the ``postgres`` user when this process is root (the server refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="srnas-pg-"))  # short: a socket path has a length limit
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.user = "postgres" if self.as_postgres else os.environ.get("USER", "postgres")

    def _run(self, tool: str, *args: str) -> str:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
        return done.stdout

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--no-instructions")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run ``statement`` as the superuser over the unix socket; its output, unaligned."""
        return self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", self.user, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-Atqc", statement)

    def database(self, name: str) -> str:
        """A new database ``name`` owned by a new role of the same name with :data:`POSTGRES_PASSWORD`; its URL."""
        self.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{POSTGRES_PASSWORD}'")
        self.sql(f"CREATE DATABASE {name} OWNER {name}")
        return f"postgresql://{name}:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_mlflow_server() -> tuple[list[str], dict[str, str]]:
    """README's "An MLflow tracking server" commands for the server host: the ``mlflow server`` command line, and the
    variables its ``export`` line sets."""
    section = README.read_text(encoding="utf-8").split("### An MLflow tracking server", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    (command,) = [words for words in lines if words[:2] == ["mlflow", "server"]]
    (exported,) = [words for words in lines if words[:1] == ["export"]]
    return command, dict(word.split("=", 1) for word in exported[1:])


class MlflowServer:
    """``mlflow server`` (this venv's MLflow) on a free port of 127.0.0.1, started with README's command: runs and
    registered models in the PostgreSQL database ``backend`` (its URL; the password goes to the server in PGPASSWORD,
    not on its command line), artifacts served by the server (clients upload through it, ``mlflow-artifacts:/``) from
    a folder of its own, MLflow's job runner off. README's placeholders become this machine's values, and one worker
    serves (MLflow's default is 4). Its own process group, so :meth:`stop` ends all of it."""

    def __init__(self, backend: str) -> None:
        parts = urlsplit(backend)
        self.password = parts.password or ""
        netloc = parts.netloc.replace(f":{self.password}@", "@") if self.password else parts.netloc
        self.backend = urlunsplit(parts._replace(netloc=netloc))
        self.root = Path(tempfile.mkdtemp(prefix="srnas-mlflow-"))
        self.artifacts = self.root / "artifacts"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def tracking(self, experiment: str) -> dict:
        """The ``tracking`` section of a configuration overlay that sends a project's runs to this server, into
        ``experiment`` (one per test: the server is shared by the session)."""
        return {"tracking": {"uri": self.uri, "experiment": experiment, "enabled": True}}

    def command(self) -> tuple[list[str], dict[str, str]]:
        """README's command and environment with this server's database, folder, address and port."""
        readme, exported = readme_mlflow_server()
        values = {"--backend-store-uri": self.backend, "--artifacts-destination": str(self.artifacts),
                  "--host": "127.0.0.1", "--port": str(self.port),
                  "--allowed-hosts": "127.0.0.1:*,localhost:*"}  # README's MLHOST is 127.0.0.1, on any port (a relay's)
        cmd = [sys.executable, "-m", "mlflow", "server"]
        words = iter(readme[2:])
        for word in words:
            cmd.append(word)
            if word in values:
                next(words)
                cmd.append(values.pop(word))
        assert not values, f"README's mlflow server command has no {', '.join(values)}"
        return [*cmd, "--workers", "1"], {**exported, "PGPASSWORD": self.password}

    def start(self, timeout_s: float = 120) -> None:
        cmd, exported = self.command()
        env = {**os.environ, **exported}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(name, None)
        with self.log.open("wb") as log:  # the server keeps its own handle
            self._proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self._proc.returncode}): {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server: no answer on {self.uri}/health within {timeout_s:.0f} s: "
                                   f"{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        """Whether ``/health`` answers OK."""
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:  # noqa: S310 (our own http URL)
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                os.killpg(self._proc.pid, signal.SIGTERM)  # the group this object started: the server, its worker
                try:
                    self._proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(20)
            if self._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)  # a worker the server left behind
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scontrol", "sinfo", "scancel")
SLURM_JOB_FIELDS = {"id": "%i", "name": "%j", "comment": "%k", "state": "%T", "start": "%S", "end": "%e", "cpus": "%C",
                    "oversubscribe": "%h", "nodes": "%N"}


def slurm_missing() -> list[str]:
    """The SLURM and MUNGE programs :data:`SLURM_SCRIPT` needs that are not installed (daemons live in sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [tool for tool in SLURM_TOOLS if shutil.which(tool, path=path) is None]


class SlurmCluster:
    """A throwaway one-node SLURM cluster (:data:`SLURM_SCRIPT`): this machine is its controller and its one node;
    munge key, configuration, state and logs in a temporary folder. Needs root (slurmd starts jobs as their user).
    :meth:`env` points a process's ``sbatch``, ``squeue``, ``srun`` ... at it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="srnas-slurm-"))
        self.conf = self.root / "slurm.conf"

    def _script(self, action: str) -> None:
        done = subprocess.run(["bash", str(SLURM_SCRIPT), action, str(self.root)], check=False, capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"slurm_cluster.sh {action} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout)[-2000:]}")

    def start(self) -> None:
        self._script("start")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this cluster's SLURM_CONF, and its client wrappers first on PATH (the executor plugin's job
        step drops SLURM_CONF before it calls ``srun``: see :data:`SLURM_SCRIPT`)."""
        return base | {"SLURM_CONF": str(self.conf), "PATH": f"{self.root / 'bin'}{os.pathsep}{base.get('PATH', '')}"}

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows, finished ones included (it keeps them an hour), oldest first: the fields of
        :data:`SLURM_JOB_FIELDS` (start and end: ISO times to the second; oversubscribe ``NO``: an exclusive job)."""
        fmt = "|".join(SLURM_JOB_FIELDS.values())
        done = subprocess.run(["squeue", "--states=all", "--noheader", "--sort=i", f"--format={fmt}"], check=True,
                              capture_output=True, text=True, timeout=60, env=self.env(dict(os.environ)))
        return [dict(zip(SLURM_JOB_FIELDS, line.split("|"))) for line in done.stdout.splitlines() if line.strip()]

    def log(self, daemon: str, lines: int = 20) -> str:
        """The last ``lines`` of ``daemon``'s log (slurmctld, slurmd, munged), for an error message."""
        path = self.root / "log" / f"{daemon}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        try:
            self._script("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
