"""The API key never shows: not in logs, XCom, rendered fields, task log files or errors of a full run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import redact

from airflow_octopusx.hooks.connection import ApiEndpoint
from airflow_octopusx.simulator import Simulator
from tests.conftest import REPO, connection_uri, load_dags

SECRET = "sk-live-7f3c9d2e-never-print-me"


@pytest.fixture
def secret_simulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A simulator that only accepts SECRET, with the default connection pointing at it."""
    with Simulator(api_key=SECRET) as simulator:
        simulator.configure(generation_seconds=1.5)
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(simulator, SECRET))
        yield simulator


def rows_of_run(run: Any) -> list[str]:
    """Every XCom value and rendered template field the run stored, as text."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id)).all()
        rendered = session.scalars(
            select(RenderedTaskInstanceFields).where(RenderedTaskInstanceFields.run_id == run.run_id)
        ).all()
        return [json.dumps(XComModel.deserialize_value(x), default=str) for x in xcoms] + [
            json.dumps(r.rendered_fields, default=str) for r in rendered
        ]


@pytest.mark.usefixtures("airflow_db")
def test_a_full_dag_run_never_shows_the_key(
    secret_simulator: Simulator,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OCTOPUSX_OUTPUT_DIR", f"{tmp_path}/")
    dag = load_dags(REPO / "example_dags").get_dag("example_octopusx_text_to_video")

    run = dag.test()

    assert run.state == "success"
    assert secret_simulator.stats.posts == 1  # the key really was used
    printed = capfd.readouterr()
    logged = [record.getMessage() for record in caplog.records]
    log_files = [p.read_text(errors="replace") for p in Path(os.environ["AIRFLOW_HOME"]).rglob("*.log")]
    stored = rows_of_run(run)
    assert stored, "the run stored no XCom or rendered fields to check"
    for where, texts in {
        "stdout": [printed.out],
        "stderr": [printed.err],
        "log records": logged,
        "task log files": log_files,
        "XCom and rendered fields": stored,
    }.items():
        assert not [text for text in texts if SECRET in text], f"the API key appears in {where}"
    assert secret_simulator.stats.cdn_authorization_headers == ()


def test_the_key_is_registered_with_the_secrets_masker() -> None:
    key = "sk-masker-check-5b1e"
    conn = type("Conn", (), {"conn_id": "c", "host": None, "password": key, "port": None, "extra_dejson": {}})
    ApiEndpoint.from_connection(conn)
    assert key not in str(redact(f"Authorization: Bearer {key}"))
