"""DownloadVideoOperator announces each stored video as an Airflow asset, with the video's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import Asset, AssetAlias

from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.operators.octopusx import DEFAULT_ASSET_ALIAS, DownloadVideoOperator
from airflow_octopusx.simulator import Simulator
from airflow_octopusx.simulator.media import sample_mp4


@pytest.fixture
def video_id(octopusx_conn: Simulator) -> str:
    octopusx_conn.configure(generation_seconds=0)
    with OctopusXHook() as hook:
        return hook.submit_video(
            VideoRequest.build({"prompt": "A red kite", "seconds": 6, "resolution": "720p"})
        ).id


def test_a_folder_destination_is_announced_through_the_alias(
    video_id: str, context: dict[str, Any], tmp_path: Path
) -> None:
    task = DownloadVideoOperator(task_id="store", video_id=video_id, destination=f"{tmp_path}/")
    assert task.outlets == [AssetAlias(DEFAULT_ASSET_ALIAS)]

    uri = task.execute(context)

    [event] = context["outlet_events"][AssetAlias(DEFAULT_ASSET_ALIAS)].asset_alias_events
    assert event.dest_asset_key.uri == uri == (tmp_path / f"{video_id}.mp4").as_uri()
    assert event.extra == {
        "uri": uri,
        "video_id": video_id,
        "model": "omni-fast",
        "prompt": "A red kite",
        "seconds": "6",
        "resolution": "720p",
        "bytes": len(sample_mp4()),
    }


def test_a_fixed_file_destination_is_declared_as_that_asset(
    video_id: str, context: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "clips" / "kite.mp4"
    task = DownloadVideoOperator(task_id="store", video_id=video_id, destination=str(target))
    assert task.outlets == [Asset(target.as_uri())]

    task.execute(context)

    extra = context["outlet_events"][Asset(target.as_uri())].extra
    assert extra["video_id"] == video_id
    assert extra["bytes"] == len(sample_mp4())


def test_templated_destinations_use_the_alias_and_given_outlets_are_kept(tmp_path: Path) -> None:
    templated = DownloadVideoOperator(task_id="a", video_id="v", destination="{{ params.out }}/clip.mp4")
    assert templated.outlets == [AssetAlias(DEFAULT_ASSET_ALIAS)]
    custom = DownloadVideoOperator(
        task_id="b", video_id="v", destination=f"{tmp_path}/", asset_alias="teasers"
    )
    assert custom.outlets == [AssetAlias("teasers")]
    silent = DownloadVideoOperator(task_id="c", video_id="v", destination=f"{tmp_path}/", asset_alias=None)
    assert silent.outlets == []
    chosen = DownloadVideoOperator(task_id="d", video_id="v", destination="/x/", outlets=[Asset("s3://b/k")])
    assert chosen.outlets == [Asset("s3://b/k")]
    # A relative path depends on the worker's directory; an upper-case suffix is still an MP4.
    relative = DownloadVideoOperator(task_id="e", video_id="v", destination="videos/clip.mp4")
    assert relative.outlets == [AssetAlias(DEFAULT_ASSET_ALIAS)]
    upper = DownloadVideoOperator(task_id="f", video_id="v", destination="s3://bucket/CLIP.MP4")
    assert upper.outlets == [Asset("s3://bucket/CLIP.MP4")]


def test_what_the_gateway_billed_goes_with_the_asset_event(
    octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    octopusx_conn.configure(flavour="new-api", generation_seconds=0)
    with OctopusXHook() as hook:
        video_id = hook.submit_video(VideoRequest.build({"prompt": "A red kite", "seconds": 6})).id
    DownloadVideoOperator(task_id="store", video_id=video_id, destination=f"{tmp_path}/").execute(context)
    [event] = context["outlet_events"][AssetAlias(DEFAULT_ASSET_ALIAS)].asset_alias_events
    assert event.extra["billing"] == {"usage": {"seconds": 6}}
