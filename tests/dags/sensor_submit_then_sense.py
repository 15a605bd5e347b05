"""Submit without waiting, then wait with VideoTaskSensor: once poking, once deferred (tests/sensors)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.sensors.octopusx import VideoTaskSensor


def _submit_then_sense(dag_id: str, *, deferrable: bool) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        submit = SubmitVideoOperator(
            task_id="submit_video", prompt="A lighthouse in a storm", wait_for_completion=False
        )
        VideoTaskSensor(
            task_id="wait_for_video",
            video_id=submit.output,
            deferrable=deferrable,
            poke_interval=0.1,
            timeout=30,
        )
    return dag


poke_dag = _submit_then_sense("sensor_submit_then_poke", deferrable=False)
deferrable_dag = _submit_then_sense("sensor_submit_then_defer", deferrable=True)
