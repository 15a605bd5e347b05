"""pytest plugin (entry point ``octopusx``): a real OctopusX simulator for each test.

It deliberately imports neither Airflow nor the server at load time: pytest loads plugins before
a project's conftest sets up Airflow, and the ``simulator`` extra may not be installed at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow_octopusx.simulator.server import Simulator


@pytest.fixture(scope="session")
def octopusx_simulator_session() -> Iterator[Simulator]:
    """One simulator for the whole session: starting it is cheap, but there is no need to repeat it."""
    from airflow_octopusx.simulator.server import Simulator

    with Simulator() as simulator:
        yield simulator


@pytest.fixture
def octopusx_simulator(octopusx_simulator_session: Simulator, request: pytest.FixtureRequest) -> Simulator:
    """The running session simulator, reset to fresh state and default settings for this test.

    Parametrize it indirectly with a flavour to run a test against the new-api gateway's shapes too:
    ``@pytest.mark.parametrize("octopusx_simulator", ["doc", "new-api"], indirect=True)``.
    """
    octopusx_simulator_session.reset()
    flavour = getattr(request, "param", None)
    if flavour is not None:
        octopusx_simulator_session.configure(flavour=flavour)
    return octopusx_simulator_session
