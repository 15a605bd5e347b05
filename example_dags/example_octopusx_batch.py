"""Many videos in one task: ``GenerateVideosOperator`` submits every prompt, waits for all of them in
one deferral and stores each MP4 in one folder, at two task runs however many prompts there are.

Prompts come from an upstream task here; in a real pipeline, from a file, a table or an API. One
prompt asks the bundled simulator to fail its video, so the result shows a failure as well, and
``max_failed=1`` lets the task succeed with it. Beside the videos, a manifest lists every request's
result; the batch announces it through the ``octopusx_video_batches`` asset alias.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from airflow_octopusx.operators.batch import GenerateVideosOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")
PROMPTS = [
    "A paper boat drifting down a rain gutter",
    "Sunrise over a misty pine forest, drone shot",
    "A cat watching snowflakes through a window",
    "Neon signs flickering in a rainy alley at night [simulate-failure]",
]

with DAG(
    dag_id="example_octopusx_batch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):

    @task
    def requests() -> list[dict[str, str]]:
        return [{"prompt": prompt} for prompt in PROMPTS]

    GenerateVideosOperator(
        task_id="generate_videos",
        requests=requests(),
        defaults={"seconds": 6, "aspect_ratio": "16:9", "resolution": "720p"},
        destination=OUTPUT_DIR,
        max_failed=1,
        deferrable=True,
        poll_interval=2,
    )
