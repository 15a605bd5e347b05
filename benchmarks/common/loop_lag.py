"""Event-loop lag, as every trigger in a loop feels it."""

from __future__ import annotations

import asyncio

from benchmarks.common.tables import percentile


class LoopLag:
    """Measures event-loop lag as the overshoot of a short ``asyncio.sleep``, the way a blocked loop shows
    up to every trigger in it."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self.samples: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(self.tick)
            self.samples.append(max(0.0, loop.time() - started - self.tick))

    def summary(self) -> dict[str, float]:
        return {
            "lag_p50_ms": percentile(self.samples, 50) * 1000,
            "lag_p99_ms": percentile(self.samples, 99) * 1000,
            "lag_max_ms": max(self.samples, default=float("nan")) * 1000,
        }
