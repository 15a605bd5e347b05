"""Text to video: submit a prompt, wait in the triggerer, store the MP4 in a local folder.

Run it with a prompt of your own: ``airflow dags test example_octopusx_text_to_video -c '{"prompt": "..."}'``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

# A folder (note the trailing slash): each video is stored there as <video_id>.mp4.
OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")

with DAG(
    dag_id="example_octopusx_text_to_video",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "prompt": Param(
            "Ocean waves gently rolling onto a sandy beach at golden hour, cinematic, warm sunlight",
            type="string",
            minLength=1,
        )
    },
    tags=["example", "octopusx"],
    doc_md=__doc__,
):
    submit = SubmitVideoOperator(
        task_id="submit_video",
        prompt="{{ params.prompt }}",
        seconds=8,
        aspect_ratio="16:9",
        resolution="720p",
        deferrable=True,
        poll_interval=5,
    )
    DownloadVideoOperator(task_id="download_video", video_id=submit.output, destination=OUTPUT_DIR)
