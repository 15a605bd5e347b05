"""Many videos in one task: the batch counterpart of ``octopusx_e2e_mapped``, with the same prompts.

The number of videos is a run parameter, so the drills (a few videos) and the scale benchmark (hundreds)
share one DAG. One deferral waits for the whole batch in the triggerer. A retry (after a killed worker,
say) resumes the batch from the records the first try left in the task state store.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_octopusx.operators.batch import GenerateVideosOperator

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")

with DAG(
    dag_id="octopusx_e2e_batch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"videos": Param(4, type="integer", minimum=1, maximum=1000)},
):

    @task
    def requests(params: dict[str, int] | None = None) -> list[dict[str, str]]:
        count = (params or {})["videos"]
        return [
            {"prompt": f"Shot {n} of {count}: a lighthouse at dusk, waves breaking, gulls"}
            for n in range(count)
        ]

    GenerateVideosOperator(
        task_id="generate_videos",
        requests=requests(),
        defaults={"seconds": 4},
        destination=OUTPUT_DIR,
        deferrable=True,
        poll_interval=2,
        retries=1,
        # The worker-kill drill waits for the retry; Airflow's default delay is five minutes.
        retry_delay=timedelta(seconds=2),
    )
