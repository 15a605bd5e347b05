"""``LoopLagTrigger``: measures event-loop lag from inside Airflow's own trigger runner process.

The runner's loop can only be reached through a trigger, so this one runs beside the measured triggers,
samples sleep overshoot until ``stop_file`` appears, then fires its figures as its one event. It imports
Airflow, so only the ``--airflow-runner`` child of ``benchmarks/triggers.py`` imports it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from benchmarks.common.loop_lag import LoopLag


class LoopLagTrigger(BaseTrigger):
    """Sample the loop's lag every ``tick`` seconds until ``stop_file`` exists; fire the percentiles."""

    def __init__(self, stop_file: str, tick: float = 0.01) -> None:
        super().__init__()
        self.stop_file = stop_file
        self.tick = tick

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "stop_file": self.stop_file,
            "tick": self.tick,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        lag = LoopLag(self.tick)
        stop = asyncio.Event()
        sampling = asyncio.create_task(lag.run(stop))
        while not os.path.exists(self.stop_file):
            await asyncio.sleep(0.2)
        stop.set()
        await sampling
        yield TriggerEvent({"probe": True, "samples": len(lag.samples), **lag.summary()})
