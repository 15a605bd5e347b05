"""Submit and wait in separate tasks: the submit task ends as soon as OctopusX accepts the prompt, a
deferrable sensor waits for the video, and the download runs once it is ready.

Useful when the wait has its own timeout, retries or pool, or when another DAG does the waiting.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator
from airflow_octopusx.sensors.octopusx import VideoTaskSensor

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")

with DAG(
    dag_id="example_octopusx_submit_then_sense",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):
    submit = SubmitVideoOperator(
        task_id="submit_video",
        prompt="A woman walking through a neon-lit Tokyo street at night, rain reflections, cinematic",
        seconds=8,
        aspect_ratio="9:16",
        resolution="720p",
        wait_for_completion=False,
    )
    wait = VideoTaskSensor(
        task_id="wait_for_video",
        video_id=submit.output,
        deferrable=True,
        poke_interval=5,
        timeout=3600,
    )
    DownloadVideoOperator(task_id="download_video", video_id=wait.output, destination=OUTPUT_DIR)
