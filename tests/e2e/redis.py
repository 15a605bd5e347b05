"""A private, throw-away Redis server on loopback, as the Celery broker of a real deployment.

It runs the ``redis-server`` of Debian's package in the foreground, in a folder of its own, with
persistence off (no snapshots, no append-only file): the broker's queues live and die with the test
module. Redis runs as root without complaint, so unlike PostgreSQL it needs no other user.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from importlib.util import find_spec
from pathlib import Path

from tests.e2e.deployment import Component, free_port, start_component, wait_until

#: Python packages a Celery deployment needs: Airflow's Celery provider, and the client its broker
#: transport (kombu) speaks Redis with.
PACKAGES = ("airflow.providers.celery", "redis")


def server_binary() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def unavailable_reason() -> str | None:
    """Why a Redis broker for Celery cannot be started here, or None if it can."""
    if server_binary() is None:
        return "redis-server not found (apt-get install -y redis-server)"
    missing = [name for name in PACKAGES if find_spec(name) is None]
    if missing:
        return (
            f"Celery packages not installed: {', '.join(missing)} "
            "(pip install apache-airflow-providers-celery redis)"
        )
    return None


class RedisServer:
    """``redis-server`` with its settings on the command line (no config file), in its own session."""

    def __init__(self) -> None:
        binary = server_binary()
        if binary is None:
            raise RuntimeError("redis-server not found")
        self.binary = binary
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="octopusx-e2e-redis-"))
        self.server: Component | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        server = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root)]
        # A throw-away broker: nothing is written to disk.
        server += ["--save", "", "--appendonly", "no"]
        self.server = start_component("redis", server, {}, self.root / "logs", cwd=self.root)
        wait_until(self._ready, timeout=30, what="Redis to answer PING", diagnostics=self._tail)
        return self

    def stop(self) -> None:
        """SIGTERM (Redis exits at once: there is nothing to save), then remove its folder."""
        if self.server is not None:
            self.server.stop(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _ready(self) -> bool:
        if self.server is not None and not self.server.alive:
            raise RuntimeError(f"redis-server exited:\n{self._tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _tail(self) -> str:
        return self.server.tail() if self.server else ""
