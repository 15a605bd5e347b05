"""``QueueingAsyncClient`` against httpx's MockTransport: how many requests it lets through at once.

Over real sockets, ``tests/triggers`` checks that 50 triggers share one client and at most
``ASYNC_MAX_CONNECTIONS`` connections.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from airflow_octopusx.hooks.shared_clients import QueueingAsyncClient


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
