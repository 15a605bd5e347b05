"""``Simulator``: a real HTTP server on loopback, in a background thread, with a Python control API."""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import uvicorn

from airflow_octopusx.simulator.app import SimulatorApp
from airflow_octopusx.simulator.faults import Fault
from airflow_octopusx.simulator.media import sample_mp4
from airflow_octopusx.simulator.state import (
    DEFAULT_FAILURE_CODE,
    DEFAULT_FAILURE_MESSAGE,
    Settings,
    SimulatorState,
    Stats,
    Video,
)

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_BACKLOG = 2048


class _Server(uvicorn.Server):
    """uvicorn server that reports readiness through an event the starting thread can wait on."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class Simulator:
    """The OctopusX API and its CDN, served on two loopback ports by one uvicorn thread.

    Use it as a context manager (or ``start()``/``stop()``). Point a client at :attr:`api_url`
    with :attr:`api_key`; completed videos link to :attr:`cdn_url`. Steer it with
    :meth:`configure`, :meth:`fail_next` and :meth:`inject`; check traffic with :attr:`stats`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        api_key: str = "sim-key",
        settings: Settings | None = None,
    ) -> None:
        self.host = host
        self._requested_ports = (port, cdn_port)
        self._state = SimulatorState(sample_mp4(), settings=settings, api_key=api_key)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ports: tuple[int, int] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind both ports and return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("Simulator already started")
        api_port, cdn_port = self._requested_ports
        api_socket = _bind(self.host, api_port)
        try:
            cdn_socket = _bind(self.host, cdn_port)
        except OSError:
            api_socket.close()
            raise
        sockets = [api_socket, cdn_socket]
        self._ports = (sockets[0].getsockname()[1], sockets[1].getsockname()[1])
        app = SimulatorApp(self._state, cdn_url=self.cdn_url, cdn_port=self._ports[1])
        config = uvicorn.Config(
            app,
            log_config=None,  # leave the host process's logging setup alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            proxy_headers=False,  # the client address must be the real TCP peer (connection stats)
            server_header=False,
            backlog=_BACKLOG,
            timeout_keep_alive=30,  # outlive clients' usual 5 s idle expiry, avoiding reuse races
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(self._server, sockets), name="octopusx-simulator", daemon=True
        )
        self._thread.start()
        while not self._server.ready.wait(0.05):
            if not self._thread.is_alive():
                self._thread.join()
                for sock in sockets:
                    sock.close()
                self._thread = self._server = self._ports = None
                raise RuntimeError("Simulator failed to start") from self._error
        return self

    def _run(self, server: _Server, sockets: list[socket.socket]) -> None:
        try:
            server.run(sockets=sockets)
        except BaseException as exc:  # report it to start()/stop() instead of dying silently
            self._error = exc

    def stop(self) -> None:
        """Stop serving, close all sockets and join the thread; a no-op if not running."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_STOP_TIMEOUT)
        self._server = self._thread = self._ports = None
        if thread.is_alive():
            raise RuntimeError("Simulator thread did not stop")

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- addresses --------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Base URL of the API origin, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return self._url(0)

    @property
    def cdn_url(self) -> str:
        """Base URL of the CDN origin that completed videos' ``video_url`` points to."""
        return self._url(1)

    def _url(self, index: int) -> str:
        if self._ports is None:
            raise RuntimeError("Simulator is not running")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._ports[index]}"

    # -- controls ---------------------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        """The one key the API accepts now."""
        return self._state.api_key

    def rotate_api_key(self, new_key: str) -> None:
        """Accept ``new_key`` from now on and refuse the old one with ``401``, as a revoked key is."""
        self._state.api_key = new_key

    def reset(self) -> None:
        """Fresh state: no videos, faults, pending failures or stats; default settings and key."""
        self._state.reset()

    def configure(
        self,
        *,
        generation_seconds: float | None = None,
        url_ttl_seconds: float | None = None,
        video_size_bytes: int | None = None,
        empty_video_url: bool | None = None,
        content_redirect: bool | None = None,
        unambiguous_posts: bool | None = None,
        fault_rate: float | None = None,
        fault_seed: int | None = None,
        fault_kinds: Sequence[str] | None = None,
        slow_seconds: float | None = None,
        max_retry_after_seconds: int | None = None,
        flavour: str | None = None,
        quota_videos: int | None = None,
        content_cut_bytes: int | None = None,
    ) -> Settings:
        """Change some settings (until the next :meth:`reset`); returns the settings now in force.

        ``fault_rate`` > 0 turns on random faults: e.g. ``configure(fault_rate=0.2, fault_seed=123)``
        faults one request in five, the same ones on every run with that seed. See :class:`Settings`.
        """
        changes: dict[str, Any] = {
            "generation_seconds": generation_seconds,
            "url_ttl_seconds": url_ttl_seconds,
            "video_size_bytes": video_size_bytes,
            "empty_video_url": empty_video_url,
            "content_redirect": content_redirect,
            "unambiguous_posts": unambiguous_posts,
            "fault_rate": fault_rate,
            "fault_seed": fault_seed,
            "fault_kinds": None if fault_kinds is None else tuple(fault_kinds),
            "slow_seconds": slow_seconds,
            "max_retry_after_seconds": max_retry_after_seconds,
            "flavour": flavour,
            "quota_videos": quota_videos,
            "content_cut_bytes": content_cut_bytes,
        }
        return self._state.configure({k: v for k, v in changes.items() if v is not None})

    @property
    def settings(self) -> Settings:
        return self._state.settings

    def fail_next(
        self, n: int = 1, *, code: str = DEFAULT_FAILURE_CODE, message: str = DEFAULT_FAILURE_MESSAGE
    ) -> None:
        """Make the next ``n`` submitted videos end ``failed`` with this error."""
        self._state.fail_next(n, code, message)

    def finish_videos(self, *video_ids: str) -> None:
        """End the rendering of these videos (every video made so far if none are named), now, so that a
        test moves on an event of its own (a wait seen polling) rather than on a clock."""
        self._state.finish_videos(video_ids)

    def inject(self, *faults: Fault) -> None:
        """Arm faults; each fires on the next ``fault.times`` requests to its route."""
        for fault in faults:
            self._state.inject(fault)

    def clear_faults(self) -> None:
        self._state.clear_faults()

    @property
    def pending_faults(self) -> tuple[Fault, ...]:
        return self._state.pending_faults

    @property
    def videos(self) -> tuple[Video, ...]:
        """Every video created since the last reset, oldest first: who submitted what, for tests."""
        return self._state.videos

    @property
    def stats(self) -> Stats:
        """A snapshot of the traffic seen since the last reset."""
        return self._state.stats()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
