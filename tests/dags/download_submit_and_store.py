"""Submit a video, wait for it on the worker, and store it where the run's conf says (tests/operators)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

with DAG(
    dag_id="download_submit_and_store",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"destination": "/tmp/octopusx-tests/unset/"},
) as dag:
    submit = SubmitVideoOperator(
        task_id="submit_video", prompt="A paper boat on a rainy street", poll_interval=0.1, timeout=30
    )
    DownloadVideoOperator(
        task_id="download_video", video_id=submit.output, destination="{{ params.destination }}"
    )
