"""DAGs for tests/operators/test_submit.py: SubmitVideoOperator waiting in the worker, templated, retried,
and ended from the trigger."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import SubmitVideoOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG("octopusx_test_submit_in_worker", schedule=None, start_date=START) as in_worker:
    SubmitVideoOperator(
        task_id="submit", prompt="A paper boat on a stream", deferrable=False, poll_interval=0.1
    )

with DAG(
    "octopusx_test_submit_templated",
    schedule=None,
    start_date=START,
    params={"prompt": "A fox in the snow", "seconds": "6"},
) as templated:
    SubmitVideoOperator(
        task_id="submit",
        prompt="{{ params.prompt }} at {{ ds }}",
        seconds="{{ params.seconds }}",
        deferrable=True,
        poll_interval=0.1,
    )

with DAG("octopusx_test_submit_retry", schedule=None, start_date=START) as retried:
    SubmitVideoOperator(
        task_id="submit",
        prompt="A hot-air balloon over vineyards",
        deferrable=False,
        poll_interval=0.1,
        retries=2,
        retry_delay=0,
    )

with DAG("octopusx_test_submit_ended_in_triggerer", schedule=None, start_date=START) as ended_in_triggerer:
    SubmitVideoOperator(
        task_id="submit",
        prompt="A kite over the dunes",
        deferrable=True,
        end_from_trigger=True,
        poll_interval=0.1,
    )
