"""A submission that waits on the worker and may be retried, for the worker-kill drill.

If the task's process dies mid-wait, the retry must resume the video the first try submitted (the id is
kept in Airflow's task state store) instead of paying for a second one.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import SubmitVideoOperator

with DAG(
    dag_id="octopusx_e2e_resume",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    SubmitVideoOperator(
        task_id="submit_video",
        prompt="A paper boat drifting down a rain-filled gutter, close-up",
        seconds=4,
        deferrable=False,
        poll_interval=1,
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
