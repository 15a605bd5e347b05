"""A task context for calling an operator's ``execute()`` directly, outside a task run.

The tests and the benchmarks use these same stand-ins.
"""

from __future__ import annotations

import collections
import json
from typing import Any


class RecordingTaskInstance:
    """Stands in for ``context["ti"]``: keeps what the operator pushes to XCom."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}
        self.run_id = "manual__2026-01-01T00:00:00+00:00"
        self.map_index = -1

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class MemoryTaskStateStore:
    """Stands in for Airflow 3.3's ``context["task_state_store"]``, which outlives a task's tries.

    Values go through JSON as in Airflow, and each call is counted: in a task run each is a round trip
    through the task's supervisor to the API server.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.calls: collections.Counter[str] = collections.Counter()

    def get(self, key: str, default: Any = None) -> Any:
        self.calls["get"] += 1
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any) -> None:
        self.calls["set"] += 1
        self.values[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.values.pop(key, None)


class RecordingOutletEvent:
    """Stands in for one entry of ``context["outlet_events"]``."""

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}
        self.added: list[tuple[Any, dict[str, Any] | None]] = []

    def add(self, asset: Any, extra: dict[str, Any] | None = None) -> None:
        self.added.append((asset, extra))


def minimal_context() -> dict[str, Any]:
    """The least an operator's ``execute()`` reads when called outside a task run."""
    return {
        "ti": RecordingTaskInstance(),
        "task_state_store": MemoryTaskStateStore(),
        "outlet_events": collections.defaultdict(RecordingOutletEvent),
    }
