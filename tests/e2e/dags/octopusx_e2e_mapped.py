"""Many videos in one run: mapped deferrable submissions, then mapped downloads.

The number of videos is a run parameter, so the triggerer drills (a few videos) and the scale benchmark
(hundreds) share one DAG. Each submission hands its wait to the triggerer, freeing its worker slot.
``octopusx_e2e_mapped_ended_in_triggerer`` is the same DAG with ``end_from_trigger=True``: a completed
video ends its submit task in the triggerer, with no worker run to resume it.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")

for dag_id, end_from_trigger in (
    ("octopusx_e2e_mapped", False),
    ("octopusx_e2e_mapped_ended_in_triggerer", True),
):
    with DAG(
        dag_id=dag_id,
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
            task_id="submit_video",
            seconds=4,
            deferrable=True,
            poll_interval=2,
            end_from_trigger=end_from_trigger,
        ).expand(prompt=prompts())
        DownloadVideoOperator.partial(task_id="download_video", destination=OUTPUT_DIR).expand(
            video_id=submit.output
        )
