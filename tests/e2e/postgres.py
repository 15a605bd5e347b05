"""A private, throw-away PostgreSQL cluster on loopback, as the metadata database of a real deployment.

It uses the server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``),
which are not on ``PATH``. PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user the package creates, and lives in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from importlib.util import find_spec
from pathlib import Path

from tests.e2e.deployment import Component, free_port, start_component, wait_until

#: Python drivers Airflow needs for PostgreSQL: psycopg2 for its sync engine, asyncpg for its async one.
DRIVERS = ("psycopg2", "asyncpg")


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def unavailable_reason() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or None if it can."""
    if server_binaries() is None:
        return "PostgreSQL server binaries not found (apt-get install -y postgresql)"
    missing = [name for name in DRIVERS if find_spec(name) is None]
    if missing:
        return f"PostgreSQL drivers not installed: {', '.join(missing)} (pip install psycopg2-binary asyncpg)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as"
    return None


class PostgresCluster:
    """``initdb`` into a fresh folder, then ``postgres`` in the foreground in its own session."""

    user = "airflow"
    database = "airflow"

    def __init__(self) -> None:
        bin_dir = server_binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="octopusx-e2e-postgres-"))
        self.data = self.root / "data"
        self.server: Component | None = None
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        server = [*self._as_owner, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        # Loopback TCP only; the socket goes in the cluster's own folder, not /var/run/postgresql.
        server += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}"]
        # A throw-away cluster: durability is not worth the fsyncs.
        server += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.server = start_component("postgres", server, os.environ, self.root / "logs")
        wait_until(self._ready, timeout=60, what="PostgreSQL to accept connections", diagnostics=self._tail)
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, no waiting), then remove the cluster."""
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGINT)
            self.server.stop(30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _ready(self) -> bool:
        if self.server is not None and not self.server.alive:
            raise RuntimeError(f"PostgreSQL exited:\n{self._tail()}")
        probe = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0

    def _tail(self) -> str:
        return self.server.tail() if self.server else ""

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_owner, str(self.bin / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
