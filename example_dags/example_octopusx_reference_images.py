"""Multi-reference video: up to five images steer the character and the style.

Images may be public URLs or inline ``data:image/...;base64,`` URIs; both are shown.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")
# A 1x1 PNG, inline: small images need no public hosting.
STYLE_SWATCH = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)

with DAG(
    dag_id="example_octopusx_reference_images",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):
    submit = SubmitVideoOperator(
        task_id="submit_video",
        prompt="Use the first image as the character reference and the second as the visual style.",
        images=["https://example.com/character.jpg", STYLE_SWATCH],
        seconds=8,
        aspect_ratio="9:16",
        resolution="720p",
        deferrable=True,
        poll_interval=5,
    )
    DownloadVideoOperator(task_id="download_video", video_id=submit.output, destination=OUTPUT_DIR)
