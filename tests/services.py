"""Real services for tests, started on this machine and thrown away: a PostgreSQL cluster.

A test that needs a service skips, saying what is missing, when its binaries are not installed (a developer's
machine); CI installs them (``scripts/ci_services.sh``) and sets ``SRNAS_REQUIRE_SERVICES=1``, under which a missing
service fails the test instead. The same holds for an optional package CI installs (ExecuTorch, the ``mobile`` extra
that ``make setup`` installs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

REQUIRE_ENV = "SRNAS_REQUIRE_SERVICES"
POSTGRES_PASSWORD = "pw-s3cret-9f2"  # the test role's: no log line or error may show it


def service_missing(what: str, installer: str = "scripts/ci_services.sh") -> None:
    """Skip the test because ``what`` is missing, or fail it when CI requires the services (:data:`REQUIRE_ENV`);
    ``installer`` is what installs it."""
    message = f"{what} ({installer} installs it)"
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
