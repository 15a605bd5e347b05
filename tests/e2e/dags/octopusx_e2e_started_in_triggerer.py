"""Sensors that start in the triggerer (Airflow 3.3+): no worker runs them until the video is finished.

One reads the id from the submit task's ``XComArg``, the other from a Jinja template (whose
``xcom_pull`` must name ``map_indexes`` for Airflow 3.3.2's triggerer); the triggerer renders both
before the trigger polls. A third names a template the triggerer could not render, and starts on a
worker with a warning. Airflow 3.1 and 3.2 start them all on a worker, with a warning.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.sensors.octopusx import VideoTaskSensor

with DAG(
    dag_id="octopusx_e2e_started_in_triggerer",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    submit = SubmitVideoOperator(
        task_id="submit_video",
        prompt="A lighthouse beam sweeping over a stormy sea at night",
        seconds=4,
        wait_for_completion=False,
    )
    VideoTaskSensor(
        task_id="wait_by_xcom_arg",
        video_id=submit.output,
        deferrable=True,
        start_from_trigger=True,
        poke_interval=1,
        timeout=300,
    )
    VideoTaskSensor(
        task_id="wait_by_template",
        video_id="{{ ti.xcom_pull(task_ids='submit_video', map_indexes=-1) }}",
        deferrable=True,
        start_from_trigger=True,
        poke_interval=1,
        timeout=300,
    )
    # A template the triggerer could not render (no map_indexes): it starts on a worker, and says why.
    submit >> VideoTaskSensor(
        task_id="wait_on_a_worker",
        video_id="{{ ti.xcom_pull(task_ids='submit_video') }}",
        deferrable=True,
        start_from_trigger=True,
        poke_interval=1,
        timeout=300,
    )
