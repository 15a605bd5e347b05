"""``QueueingAsyncClient`` against httpx's MockTransport: how many requests it lets through at once;
``SharedAsyncClients``: who opens, replaces and closes the shared clients.

Over real sockets, ``tests/triggers`` checks that 50 triggers share one client and at most
``ASYNC_MAX_CONNECTIONS`` connections.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from airflow_octopusx.exceptions import OctopusXError
from airflow_octopusx.hooks.connection import ApiEndpoint
from airflow_octopusx.hooks.shared_clients import Opened, QueueingAsyncClient, SharedAsyncClients


class Counter:
    """An async handler that notes how many requests it serves at the same moment."""

    def __init__(self, fail_first: int = 0) -> None:
        self.now = 0
        self.most = 0
        self.served = 0
        self.fail_first = fail_first

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.005)
            self.served += 1
            if self.served <= self.fail_first:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"n": self.served})
        finally:
            self.now -= 1


def client_for(handler: Counter, max_in_flight: int) -> QueueingAsyncClient:
    return QueueingAsyncClient(
        max_in_flight=max_in_flight,
        keepalive_expiry=20,
        base_url="https://api.octopusx.test",
        transport=httpx.MockTransport(handler),
    )


async def test_at_most_max_in_flight_requests_run_at_once_and_all_are_answered() -> None:
    handler = Counter()
    async with client_for(handler, max_in_flight=4) as client:
        answers = await asyncio.gather(*(client.get(f"/v1/videos/{n}") for n in range(40)))
    assert [answer.status_code for answer in answers] == [200] * 40
    assert handler.most == 4


async def test_a_failed_request_gives_its_place_back() -> None:
    handler = Counter(fail_first=3)
    async with client_for(handler, max_in_flight=1) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("/v1/videos/1")
        answer = await asyncio.wait_for(client.get("/v1/videos/1"), timeout=5)
    assert answer.json() == {"n": 4}


async def test_a_cancelled_request_gives_its_place_back() -> None:
    handler = Counter()
    async with client_for(handler, max_in_flight=1) as client:
        waiting = asyncio.ensure_future(client.get("/v1/videos/1"))
        await asyncio.sleep(0.001)  # inside the handler, holding the only place
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        answer = await asyncio.wait_for(client.get("/v1/videos/2"), timeout=5)
    assert answer.status_code == 200


class Opener:
    """An ``open_client`` that counts lookups; the ones numbered in ``failing`` fail like a missing key."""

    def __init__(self, failing: tuple[int, ...] = ()) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.lookups = 0
        self.failing = failing

    async def __call__(self) -> Opened:
        self.lookups += 1
        await asyncio.sleep(0)  # a real lookup yields to the loop
        if self.lookups in self.failing:
            raise OctopusXError("Connection 'octopusx_default' has no API key")
        client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
        self.clients.append(client)
        return ApiEndpoint("https://api.octopusx.test", f"sk-{self.lookups}"), client


async def test_a_refused_client_is_replaced_once_and_closed_with_the_last_user() -> None:
    shared, opener = SharedAsyncClients(), Opener()
    _, refused = await shared.acquire("octopusx_default", opener)
    await shared.acquire("octopusx_default", opener)

    # Both users were refused at the same moment: one new lookup serves both.
    renewed = await asyncio.gather(*(shared.reopen("octopusx_default", refused, opener) for _ in range(2)))

    assert opener.lookups == 2
    assert renewed[0] == renewed[1]
    assert renewed[0][0].api_key == "sk-2"
    assert renewed[0][1] is opener.clients[1]
    # A user still holding the refused client gets the new one too, without another lookup.
    assert await shared.reopen("octopusx_default", refused, opener) == renewed[0]
    assert opener.lookups == 2
    await shared.release("octopusx_default")
    assert not refused.is_closed  # the other user may still be sending on it
    await shared.release("octopusx_default")
    assert [client.is_closed for client in opener.clients] == [True, True]
    assert shared.open_clients() == 0


async def test_a_failed_lookup_is_tried_again_while_the_entry_is_held() -> None:
    shared, opener = SharedAsyncClients(), Opener(failing=(2,))
    _, refused = await shared.acquire("octopusx_default", opener)

    with pytest.raises(OctopusXError, match="has no API key"):
        await shared.reopen("octopusx_default", refused, opener)
    endpoint, client = await shared.acquire("octopusx_default", opener)

    assert (opener.lookups, endpoint.api_key) == (3, "sk-3")
    assert client is opener.clients[1]
    await shared.release("octopusx_default")
    await shared.release("octopusx_default")
    assert [client.is_closed for client in opener.clients] == [True, True]
