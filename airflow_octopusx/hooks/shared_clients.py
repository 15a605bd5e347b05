"""Async HTTP clients shared by all the triggers of one event loop."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from airflow_octopusx.hooks.connection import ApiEndpoint

Opened = tuple[ApiEndpoint, httpx.AsyncClient]


class QueueingAsyncClient(httpx.AsyncClient):
    """An ``AsyncClient`` whose requests queue on a semaphore, so at most ``max_in_flight`` reach its pool.

    httpcore rescans every queued request each time one is queued or a connection frees up. With a
    thousand triggers behind a few connections, a busy loop lets that queue grow and each poll gets
    dearer, until a loop of many waiting videos collapses (docs/performance.md). Waiting here
    instead costs the same per poll however long the queue is. The wait has no timeout of its own:
    each request ahead holds its place for no longer than its own timeouts allow.
    """

    def __init__(self, *, max_in_flight: int, keepalive_expiry: float, **options: Any) -> None:
        limits = httpx.Limits(
            max_connections=max_in_flight,
            max_keepalive_connections=max_in_flight,
            keepalive_expiry=keepalive_expiry,
        )
        super().__init__(limits=limits, **options)
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """Send once one of ``max_in_flight`` places is free, so a queue forms here, not in the pool."""
        async with self._in_flight:
            return await super().send(request, **kwargs)


@dataclass
class _Entry:
    client_future: asyncio.Future[Opened]
    users: int = field(default=0)
    #: Clients that :meth:`SharedAsyncClients.reopen` replaced; closed with the entry, as others may use them.
    replaced: list[httpx.AsyncClient] = field(default_factory=list)


class SharedAsyncClients:
    """One pooled ``httpx.AsyncClient`` per connection id for every trigger in one event loop.

    The triggerer runs all its triggers in one loop: a client per trigger would hold a connection and
    repeat the connection lookup for every waiting video. Here the first trigger of a connection id looks
    it up and opens the client, the rest share both, and the client closes when its last user leaves, so
    a changed connection is read afresh by the next wave of triggers. A key the API refuses is looked up
    again at once (:meth:`reopen`), so a rotated key does not fail the waits that are running.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @classmethod
    def for_running_loop(cls) -> SharedAsyncClients:
        """Return the clients of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        shared = _BY_LOOP.get(loop)
        if shared is None:
            shared = _BY_LOOP[loop] = cls()
        return shared

    async def acquire(self, conn_id: str, open_client: Callable[[], Awaitable[Opened]]) -> Opened:
        """The endpoint and client for ``conn_id``; ``open_client`` runs only if none is open yet."""
        entry = self._entries.get(conn_id)
        if entry is None:
            entry = self._entries[conn_id] = _Entry(asyncio.ensure_future(open_client()))
        elif _failed(entry.client_future):  # while others hold the entry: try the lookup again
            entry.client_future = asyncio.ensure_future(open_client())
        entry.users += 1
        try:
            # Shielded: one caller being cancelled must not cancel the opening that the others wait on.
            return await asyncio.shield(entry.client_future)
        except BaseException:
            await self.release(conn_id)
            raise

    async def reopen(
        self, conn_id: str, refused: httpx.AsyncClient, open_client: Callable[[], Awaitable[Opened]]
    ) -> Opened:
        """The API refused ``refused``'s key: look the connection up again, unless another user already has.

        The refused client stays open until the last user leaves, as other waits may be sending on it.
        """
        entry = self._entries[conn_id]
        current = entry.client_future
        if _failed(current):
            entry.client_future = asyncio.ensure_future(open_client())
        elif current.done() and current.result()[1] is refused:
            entry.replaced.append(refused)
            entry.client_future = asyncio.ensure_future(open_client())
        return await asyncio.shield(entry.client_future)

    async def release(self, conn_id: str) -> None:
        """Leave the connection's client; the last to leave closes it."""
        entry = self._entries[conn_id]
        entry.users -= 1
        if entry.users:
            return
        del self._entries[conn_id]
        for client in entry.replaced:
            await client.aclose()
        if not entry.client_future.done():
            entry.client_future.cancel()
        elif not _failed(entry.client_future):
            await entry.client_future.result()[1].aclose()

    def open_clients(self) -> int:
        """Count the clients open now (for tests and measurements)."""
        return len(self._entries)


def _failed(client_future: asyncio.Future[Opened]) -> bool:
    return client_future.done() and (client_future.cancelled() or client_future.exception() is not None)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SharedAsyncClients] = (
    weakref.WeakKeyDictionary()
)
