"""Fan out: one video per prompt with dynamic task mapping, then one download per video.

Every mapped submission waits in the triggerer, so ten (or a thousand) waiting videos hold no worker
slot. The downloads start once all submissions are done (mapping over ``submit.output`` waits for the
whole mapped task); put submit and download in a mapped task group to store each video as it finishes.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")
PROMPTS = [
    "A paper boat drifting down a rain gutter",
    "Sunrise over a misty pine forest, drone shot",
    "A cat watching snowflakes through a window",
    "Neon signs flickering in a rainy alley at night",
    "Waves crashing against a lighthouse in a storm",
    "A hot-air balloon rising over vineyards",
    "Time-lapse of clouds over a mountain ridge",
    "A street musician playing violin at dusk",
    "Autumn leaves swirling in a city park",
    "A vintage train crossing a stone viaduct",
]

with DAG(
    dag_id="example_octopusx_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):
    submit = SubmitVideoOperator.partial(
        task_id="submit_video",
        seconds=6,
        aspect_ratio="16:9",
        resolution="720p",
        deferrable=True,
        poll_interval=2,
    ).expand(prompt=PROMPTS)
    DownloadVideoOperator.partial(task_id="download_video", destination=OUTPUT_DIR).expand(
        video_id=submit.output
    )
