"""Many videos in one run: mapped deferrable submissions, then mapped downloads.

The number of videos is a run parameter, so the triggerer drills (a few videos) and the scale benchmark
(hundreds) share one DAG. Each submission hands its wait to the triggerer, freeing its worker slot.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")

with DAG(
    dag_id="octopusx_e2e_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"videos": Param(4, type="integer", minimum=1, maximum=1000)},
):

    @task
    def prompts(params: dict[str, int] | None = None) -> list[str]:
        count = (params or {})["videos"]
        return [f"Shot {n} of {count}: a lighthouse at dusk, waves breaking, gulls" for n in range(count)]

    submit = SubmitVideoOperator.partial(
        task_id="submit_video", seconds=4, deferrable=True, poll_interval=2
    ).expand(prompt=prompts())
    DownloadVideoOperator.partial(task_id="download_video", destination=OUTPUT_DIR).expand(
        video_id=submit.output
    )
