"""A local, real-HTTP simulator of the OctopusX video API and its CDN, for tests and demos.

Exports are loaded lazily so that importing this package (e.g. by the pytest plugin) does not
require the optional ``simulator`` extra until a simulator is actually used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_octopusx.simulator.faults import Fault
    from airflow_octopusx.simulator.server import Simulator
    from airflow_octopusx.simulator.state import Settings, Stats

__all__ = ["Fault", "Settings", "Simulator", "Stats"]

_EXPORTS = {
    "Fault": "airflow_octopusx.simulator.faults",
    "Settings": "airflow_octopusx.simulator.state",
    "Simulator": "airflow_octopusx.simulator.server",
    "Stats": "airflow_octopusx.simulator.state",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_EXPORTS[name]), name)
