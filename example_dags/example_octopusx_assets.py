"""Asset-driven post-processing: every stored video is announced through the ``octopusx_videos`` asset
alias as an event of the file's own asset, with its URI and the video's metadata; every batch through
``octopusx_video_batches``, as an event of its manifest (one JSON line per request). A second DAG,
scheduled on either alias, writes a JSON sidecar next to each new MP4 (where a real pipeline would
transcode, caption or publish it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pendulum
from airflow.sdk import DAG, AssetAlias, ObjectStoragePath, task

from airflow_octopusx.operators.batch import DEFAULT_BATCH_ASSET_ALIAS
from airflow_octopusx.operators.octopusx import (
    DEFAULT_ASSET_ALIAS,
    DownloadVideoOperator,
    SubmitVideoOperator,
)

OUTPUT_DIR = os.environ.get("OCTOPUSX_OUTPUT_DIR", "/tmp/octopusx/videos/")
START = pendulum.datetime(2026, 1, 1, tz="UTC")

with DAG(
    dag_id="example_octopusx_asset_producer",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):
    submit = SubmitVideoOperator(
        task_id="submit_video",
        prompt="A lighthouse beam sweeping over a stormy sea",
        seconds=6,
        resolution="720p",
        deferrable=True,
        poll_interval=5,
    )
    DownloadVideoOperator(task_id="download_video", video_id=submit.output, destination=OUTPUT_DIR)


def new_videos(events_by_asset: Mapping[Any, Iterable[Any]]) -> list[dict[str, Any]]:
    """What is known of each new video: an event's extra, or a batch manifest's line for a stored video.

    Airflow lists an event under its asset and again under the alias it came through: one entry per uri.
    """
    videos: dict[str, dict[str, Any]] = {}
    for events in events_by_asset.values():
        for event in events:
            if "video_id" in event.extra:  # one video, stored by DownloadVideoOperator or a submit
                videos[event.extra["uri"]] = event.extra
            else:  # a batch's manifest: one line per request, stored or not
                lines = ObjectStoragePath(event.extra["uri"]).read_text().splitlines()
                results = [json.loads(line) for line in lines]
                videos.update((result["uri"], result) for result in results if result["status"] == "stored")
    return list(videos.values())


def write_sidecars(events_by_asset: Mapping[Any, Iterable[Any]]) -> list[str]:
    """Write ``<video>.json`` beside each new video, from what its event or its batch's manifest says."""
    written = []
    for video in new_videos(events_by_asset):
        sidecar = ObjectStoragePath(video["uri"]).with_suffix(".json")
        sidecar.write_text(json.dumps(video, indent=2, sort_keys=True))
        written.append(str(sidecar))
    return written


with DAG(
    dag_id="example_octopusx_asset_consumer",
    # Either alias: a list would wait for an event of each.
    schedule=AssetAlias(DEFAULT_ASSET_ALIAS) | AssetAlias(DEFAULT_BATCH_ASSET_ALIAS),
    start_date=START,
    catchup=False,
    tags=["example", "octopusx"],
    doc_md=__doc__,
):

    @task
    def annotate_new_videos(triggering_asset_events: Any = None) -> list[str]:
        return write_sidecars(triggering_asset_events or {})

    annotate_new_videos()
