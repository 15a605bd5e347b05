"""Shared fixtures: an isolated Airflow home and metadata DB, and connections to the simulator.

Airflow reads its settings when first imported, so the environment is set here, before any import of
airflow; the ``octopusx_simulator`` fixture comes from the package's own pytest plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="octopusx-tests-airflow-")
os.environ.update(
    {
        "AIRFLOW_HOME": _AIRFLOW_HOME,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # dag.test() only runs DAGs from files inside the dags folder: examples and test modules alike.
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    }
)
os.environ.pop("AIRFLOW_CONN_OCTOPUSX_DEFAULT", None)

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import pytest  # noqa: E402
from airflow import __version__ as AIRFLOW_VERSION  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from packaging.version import Version  # noqa: E402

from tests.hostile import HostileServer  # noqa: E402

# One set of task-context stand-ins for tests and benchmarks alike.
from tests.support.task_context import MemoryTaskStateStore, RecordingTaskInstance  # noqa: E402

AIRFLOW_3_3 = Version(AIRFLOW_VERSION) >= Version("3.3")
#: Runs a test against the simulator answering as the API's doc says, and as its new-api gateway does.
BOTH_FLAVOURS = pytest.mark.parametrize("octopusx_simulator", ["doc", "new-api"], indirect=True)

if TYPE_CHECKING:
    from airflow_octopusx.simulator import Simulator


#: Test files that start a deployment, run DAGs or soak; ``./dev test --fast`` leaves them out.
_SLOW_FILES = ("e2e", "example_dags", "test_soak.py", "test_test_environments.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` what ``./dev test --fast`` leaves out: deployments, DAG runs, soaks, the locks."""
    for item in items:
        parts = item.path.relative_to(REPO / "tests").parts
        if parts[0] in _SLOW_FILES or "airflow_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the metadata tables and serialise the DAGs once; ``dag.test()`` needs both.

    Airflow 3.2+ serialises the DAG in ``dag.test()`` itself; 3.1 expects it in the database already.
    """
    from airflow.utils.db import initdb

    initdb()
    subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True, capture_output=True)


@pytest.fixture
def octopusx_conn(octopusx_simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """Point ``octopusx_default`` at the simulator, as a user would with an environment variable."""
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_simulator))
    return octopusx_simulator


def when_a_fault_fires(simulator: Simulator, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` on a thread as soon as the simulator has fired a fault, such as begun a delay.

    Tied to the request rather than to a timer, so a slow machine cannot move it before or after it.
    """

    def wait_then_act() -> None:
        deadline = time.monotonic() + 30
        while simulator.stats.faults_fired == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def connection_uri(simulator: Simulator, api_key: str | None = None) -> str:
    return json.dumps(
        {"conn_type": "octopusx", "host": simulator.api_url, "password": api_key or simulator.api_key}
    )


@pytest.fixture
def finished_once_seen_rendering(octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each video renders until a wait's status check has seen it rendering, whenever that is; then it
    finishes. "The wait really waited" hangs on that event, not on how fast the machine is. Returns the
    ids seen rendering."""
    from airflow_octopusx.hooks.octopusx import OctopusXHook
    from airflow_octopusx.models import VideoTask

    octopusx_conn.configure(generation_seconds=3600)
    seen: list[str] = []

    def finished_once_seen(poll: Any) -> Any:
        if isinstance(poll, VideoTask) and not poll.is_finished:
            seen.append(poll.id)
            octopusx_conn.finish_videos(poll.id)
        return poll

    poll, apoll = OctopusXHook.poll, OctopusXHook.apoll

    async def apoll_seen(hook: OctopusXHook, *args: Any) -> Any:
        return finished_once_seen(await apoll(hook, *args))

    monkeypatch.setattr(OctopusXHook, "poll", lambda hook, *args: finished_once_seen(poll(hook, *args)))
    monkeypatch.setattr(OctopusXHook, "apoll", apoll_seen)
    return seen


@pytest.fixture
def context() -> dict[str, Any]:
    """The parts of a task's context the operators use, as Airflow 3.3 provides them."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    return {
        "ti": RecordingTaskInstance(),
        "task_state_store": MemoryTaskStateStore(),
        "outlet_events": OutletEventAccessors(),
    }


def xcom_values(run: Any, key: str) -> dict[str, Any]:
    """XCom values of one key in a finished ``dag.test()`` run, by task id (``task[i]`` when mapped)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, key=key)).all()
        return {
            row.task_id
            if row.map_index < 0
            else f"{row.task_id}[{row.map_index}]": XComModel.deserialize_value(row)
            for row in rows
        }


def load_dags(folder: Path) -> Any:
    """A DagBag of ``folder``; it moved from airflow.models to airflow.dag_processing in 3.2."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=str(folder))


# Property tests: the same examples on every run and every machine, a bounded number of them, and no
# per-example time limit (a loaded CI machine is slow, not wrong).
settings.register_profile(
    "octopusx",
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("octopusx")


@pytest.fixture(scope="session")
def hostile_server_session() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture
def hostile_server(hostile_server_session: HostileServer) -> HostileServer:
    """A scripted server for answers the simulator never gives; fresh scripts for each test."""
    hostile_server_session.reset()
    return hostile_server_session


HOSTILE_KEY = "sk-hostile-test-key"


def hostile_connection(server: HostileServer, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    """Point ``octopusx_default`` at ``server``, with one attempt per request unless ``extra`` says."""
    fields = {
        "conn_type": "octopusx",
        "host": server.url,
        "password": extra.pop("password", HOSTILE_KEY),
        "extra": {"max_attempts": 1, "timeout": 10, **extra},
    }
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", json.dumps(fields))


@pytest.fixture
def lineage_reader_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real plugin with a hook-lineage reader, as OpenLineage registers one (Airflow 3.3's plugin
    manager; older Airflow asks its collector whether one is registered, whatever our check says)."""
    if not AIRFLOW_3_3:
        yield
        return
    from airflow.sdk import plugins_manager
    from airflow.sdk.lineage import get_hook_lineage_collector

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "lineage_reader.py").write_text(
        "from airflow.plugins_manager import AirflowPlugin\n"
        "from airflow.sdk.lineage import HookLineageReader\n"
        "class LineageReaderPlugin(AirflowPlugin):\n"
        "    name = 'lineage_reader'\n"
        "    hook_lineage_readers = [HookLineageReader]\n"
    )
    caches = (plugins_manager._get_plugins, plugins_manager.get_hook_lineage_readers_plugins)
    monkeypatch.setattr(plugins_manager.settings, "PLUGINS_FOLDER", str(plugins))
    for cached in (*caches, get_hook_lineage_collector):
        cached.cache_clear()
    yield
    for cached in (*caches, get_hook_lineage_collector):
        cached.cache_clear()
