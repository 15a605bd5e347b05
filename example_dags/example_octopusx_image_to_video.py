"""Image to video: animate from a first frame, and move from a first frame to a last frame."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")

with DAG(
    dag_id="example_octopusx_image_to_video",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):
    first_frame = SubmitVideoOperator(
        task_id="first_frame",
        prompt="The scene comes alive with gentle wind and drifting clouds",
        first_image_url="https://example.com/first-frame.jpg",
        seconds=8,
        aspect_ratio="16:9",
        resolution="720p",
        deferrable=True,
        poll_interval=5,
    )
    first_and_last_frame = SubmitVideoOperator(
        task_id="first_and_last_frame",
        prompt="A slow dolly shot from the harbour at dawn to the same harbour at night",
        first_image_url="https://example.com/harbour-dawn.jpg",
        last_image_url="https://example.com/harbour-night.jpg",
        seconds=6,
        aspect_ratio="16:9",
        resolution="1080p",
        deferrable=True,
        poll_interval=5,
    )
    for submit in (first_frame, first_and_last_frame):
        DownloadVideoOperator(
            task_id=f"download_{submit.task_id}", video_id=submit.output, destination=OUTPUT_DIR
        )
