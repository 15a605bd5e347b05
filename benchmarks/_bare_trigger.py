"""``BarePollTrigger``: the bare httpx loop of ``benchmarks/triggers.py``, as a trigger.

Run through Airflow's runner beside ``VideoTaskTrigger``, it shows what the runner itself costs per poll
(event routing, per-trigger logs, comms), so ours can be compared with the floor in the same machinery.
It reads the simulator's connection from the environment, as the bare loop does: no key in its kwargs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

_CLIENTS: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}


def _client(connections: int) -> httpx.AsyncClient:
    """One keep-alive client per loop for all bare triggers, like the bare loop's; never closed."""
    loop = asyncio.get_running_loop()
    if loop not in _CLIENTS:
        connection = json.loads(os.environ["AIRFLOW_CONN_OCTOPUSX_DEFAULT"])
        _CLIENTS[loop] = httpx.AsyncClient(
            base_url=connection["host"],
            headers={"Authorization": f"Bearer {connection['password']}"},
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=30,
        )
    return _CLIENTS[loop]


class BarePollTrigger(BaseTrigger):
    """GET the video every ``interval`` seconds (the first time anywhere in one interval) until it is done."""

    def __init__(self, video_id: str, interval: float, connections: int) -> None:
        super().__init__()
        self.video_id = video_id
        self.interval = interval
        self.connections = connections

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "video_id": self.video_id,
            "interval": self.interval,
            "connections": self.connections,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client = _client(self.connections)
        await asyncio.sleep(random.uniform(0, self.interval))
        while True:
            response = await client.get(f"/v1/videos/{self.video_id}")
            response.raise_for_status()
            status = str(response.json()["status"])
            if status in ("completed", "failed"):
                yield TriggerEvent({"status": "success" if status == "completed" else status})
                return
            await asyncio.sleep(self.interval)
