"""Fixtures that start real Airflow deployments, one process per component, beside a simulator process.

These tests run in the normal suite, but only on Airflow 3.3 and later: they rely on its process layout
(``airflow worker -- <ti id>`` titles, ``.trigger.<job id>.log`` files) and on the task state store.
Each deployment lives for one test module, so no Airflow process outlives the module that needed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from airflow import __version__ as airflow_version
from packaging.version import Version

from tests.e2e import postgres, redis
from tests.e2e.deployment import Deployment, DeploymentSettings, SimulatorProcess
from tests.e2e.postgres import PostgresCluster
from tests.e2e.redis import RedisServer

#: Seconds the simulator takes per video unless a test asks for longer.
GENERATION_SECONDS = 4


@pytest.fixture(scope="module")
def simulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    if Version(airflow_version).release < (3, 3):
        pytest.skip(f"real-deployment tests need Airflow >= 3.3 (this is {airflow_version})")
    simulator = SimulatorProcess.start(
        tmp_path_factory.mktemp("simulator"), generation_seconds=GENERATION_SECONDS
    )
    yield simulator
    simulator.stop()


@pytest.fixture
def simulator(simulator_process: SimulatorProcess) -> SimulatorProcess:
    """The module's simulator with no videos, zeroed stats and default settings."""
    simulator_process.reset()
    return simulator_process


@pytest.fixture(scope="module")
def deployment(
    simulator_process: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """Airflow on SQLite with one triggerer."""
    airflow = Deployment(tmp_path_factory.mktemp("airflow"), simulator_process, DeploymentSettings())
    airflow.start()
    yield airflow
    airflow.stop()


@pytest.fixture(scope="module")
def postgres_deployment(
    simulator_process: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """Airflow on a private PostgreSQL cluster with two triggerers (triggerer HA needs a real database)."""
    reason = postgres.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        settings = DeploymentSettings(database_url=cluster.url)
        airflow = Deployment(tmp_path_factory.mktemp("airflow-postgres"), simulator_process, settings)
        airflow.start(triggerers=2)
        try:
            yield airflow
        finally:
            airflow.stop()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def celery_deployment(
    simulator_process: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """Airflow on CeleryExecutor: PostgreSQL as metadata database and result backend, Redis as broker,
    two Celery workers (two task processes each) and two triggerers."""
    reason = postgres.unavailable_reason() or redis.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster()
    broker = RedisServer()
    try:
        cluster.start()
        broker.start()
        settings = DeploymentSettings(database_url=cluster.url, celery_broker_url=broker.url)
        airflow = Deployment(tmp_path_factory.mktemp("airflow-celery"), simulator_process, settings)
        airflow.start(triggerers=2, celery_workers=2)
        try:
            yield airflow
        finally:
            airflow.stop()
    finally:
        broker.stop()
        cluster.stop()


@pytest.fixture
def videos(request: pytest.FixtureRequest) -> Path:
    """The deployment's (empty) video folder; the example DAGs read it when they are parsed."""
    servers = ("celery_deployment", "postgres_deployment")
    fixture = next((name for name in servers if name in request.fixturenames), "deployment")
    folder: Path = request.getfixturevalue(fixture).videos
    for path in folder.iterdir():
        path.unlink()
    return folder


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def assert_one_post_per_playable_video(simulator: SimulatorProcess, videos: Path, count: int) -> None:
    """Every video was submitted exactly once, and each one's MP4 is stored and decodes."""
    stats = simulator.stats()
    assert stats["posts"] == stats["videos_created"] == count
    stored = sorted(videos.glob("*.mp4"))
    assert len(stored) == count
    assert all(decoded_frames(path) > 0 for path in stored)
    assert not list(videos.glob(".*"))  # no partial downloads left behind
