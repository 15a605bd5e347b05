"""A scripted HTTP server for the answers our own simulator never gives: any status line, header or body.

The simulator behaves like OctopusX; this one behaves like whatever sits between a worker and OctopusX on
a bad day: a proxy's HTML page, a redirect loop, a ``Content-Range`` from the wrong offset, a body that
never ends. It speaks HTTP/1.1 by hand on a real socket, so nothing on the server side tidies the answer
up. Each route is scripted with :class:`Answer` values (or functions of the request that return one);
the last answer of a route repeats, and every request is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import http
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: A server that streams or drips stops by itself after this long, whatever the client does.
MAX_ANSWER_SECONDS = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Answer:
    """One answer. ``body`` may be bytes or a function returning chunks (sent as they come).

    ``headers`` are sent as given; ``Content-Length`` is added for a bytes body unless ``length`` is
    False or the headers already have one. ``raw`` replaces the whole answer with exactly those bytes.
    ``pause`` seconds are slept before each chunk. ``keep_open`` holds the connection after the body
    until the client goes (a body that never ends).
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | Callable[[], Iterable[bytes]] = b""
    length: bool = True
    raw: bytes | None = None
    pause: float = 0.0
    keep_open: bool = False

    @classmethod
    def json(cls, text: str, status: int = 200, *headers: tuple[str, str]) -> Answer:
        return cls(status, (("Content-Type", "application/json"), *headers), text.encode())


Script = Answer | Callable[[Request], Answer]


@dataclass
class HostileServer:
    """Listens on 127.0.0.1 in a thread of its own; use as a context manager."""

    requests: list[Request] = field(default_factory=list)
    _scripts: dict[str, list[Script]] = field(default_factory=dict)
    _port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def script(self, route: str, *answers: Script) -> None:
        """Answer requests matching ``route`` (``"GET /v1/videos/*"``; fnmatch) with ``answers`` in turn."""
        self._scripts[route] = list(answers)

    def reset(self) -> None:
        self._scripts.clear()
        self.requests.clear()

    def seen(self, route: str) -> list[Request]:
        return [request for request in self.requests if fnmatch.fnmatchcase(request.route, route)]

    def __enter__(self) -> HostileServer:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the hostile server did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self, started: threading.Event) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
            self._port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await self._stop.wait()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())

    def _answer_for(self, request: Request) -> Answer:
        for route, answers in self._scripts.items():
            if fnmatch.fnmatchcase(request.route, route):
                script = answers.pop(0) if len(answers) > 1 else answers[0]
                return script(request) if callable(script) else script
        return Answer.json('{"error": {"message": "not scripted", "code": "not_found"}}', 404)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                answer = self._answer_for(request)
                await _send(writer, reader, answer)
                if answer.raw is not None or not answer.length:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


async def _send(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, answer: Answer) -> None:
    if answer.raw is not None:
        writer.write(answer.raw)
        await writer.drain()
        return
    body = answer.body
    headers = list(answer.headers)
    names = {name.lower() for name, _ in headers}
    if isinstance(body, bytes) and answer.length and "content-length" not in names:
        headers.append(("Content-Length", str(len(body))))
    if not answer.length:
        headers.append(("Connection", "close"))
    try:
        reason = http.HTTPStatus(answer.status).phrase
    except ValueError:
        reason = "Whatever"
    head = f"HTTP/1.1 {answer.status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    writer.write(head.encode("latin-1") + b"\r\n")
    await writer.drain()
    give_up = time.monotonic() + MAX_ANSWER_SECONDS
    for chunk in [body] if isinstance(body, bytes) else body():
        if answer.pause:
            await asyncio.sleep(answer.pause)
        writer.write(chunk)
        await writer.drain()
        if time.monotonic() > give_up:
            return
    if answer.keep_open:
        # Until the client hangs up (read returns b"") or the server's own limit passes.
        remaining = give_up - time.monotonic()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), max(remaining, 0))
