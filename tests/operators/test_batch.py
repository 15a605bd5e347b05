"""GenerateVideosOperator against the simulator: checks before any POST, resume without paying twice,
results in request order, failures after storing the rest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AssetAlias,
    TaskDeferred,
)
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_octopusx.exceptions import AuthenticationError, QuotaExceededError
from airflow_octopusx.operators.batch import DEFAULT_BATCH_ASSET_ALIAS, GenerateVideosOperator
from airflow_octopusx.operators.ledger import PAGE_SIZE, RECORDED_CODE_CHARS, RECORDED_MESSAGE_CHARS
from airflow_octopusx.simulator import Fault, Simulator
from airflow_octopusx.storage.video_destination import file_name
from airflow_octopusx.triggers.batch import VideoBatchTrigger
from tests.conftest import BOTH_FLAVOURS, connection_uri
from tests.support.task_context import RecordingTaskInstance

#: The manifest a batch of task ``generate`` writes beside its videos.
MANIFEST = file_name(f"generate.{RecordingTaskInstance().run_id}.jsonl")


def batch(tmp_path: Path, prompts: list[str], **kwargs: Any) -> GenerateVideosOperator:
    arguments: dict[str, Any] = {
        "task_id": "generate",
        "requests": [{"prompt": prompt} for prompt in prompts],
        "defaults": {"seconds": 6, "resolution": "720p"},
        "destination": f"{tmp_path}/videos/",
        "deferrable": False,
        "poll_interval": 0.05,
    }
    return GenerateVideosOperator(**(arguments | kwargs))


@pytest.fixture(autouse=True)
def quick_renders(octopusx_conn: Simulator) -> None:
    octopusx_conn.configure(generation_seconds=0.3)


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"prompt": "waves", "seconds": 99}, "requests[2]: seconds: must be a whole number"),
        ({"prompt": "waves", "colour": "red"}, "requests[2]: colour: is not a request field"),
        ("waves", "requests[2]: must be a dict"),
    ],
)
def test_one_bad_request_fails_the_task_naming_it_before_any_post(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any], bad: Any, named: str
) -> None:
    task = batch(tmp_path, ["a", "b"])
    task.requests = [*task.requests, bad]
    with pytest.raises(AirflowFailException, match=named.replace("[", r"\[").replace("]", r"\]")):
        task.execute(context)
    assert octopusx_conn.stats.posts == 0


@BOTH_FLAVOURS
def test_on_the_worker_every_video_is_stored_and_reported_in_request_order(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    prompts = ["a fox", "a storm [simulate-failure]", "a kite", "a lake"]
    results = batch(tmp_path, prompts, max_failed=1, max_concurrent_requests=2).execute(context)

    assert [result["index"] for result in results] == [0, 1, 2, 3]
    assert [result["status"] for result in results] == ["stored", "failed", "stored", "stored"]
    assert results[1]["error"]["code"] == "content_policy_violation"
    for result in (results[0], results[2], results[3]):
        assert Path(result["uri"].removeprefix("file://")).name == f"{result['video_id']}.mp4"
    assert sorted(path.name for path in (tmp_path / "videos").iterdir()) == sorted(
        [MANIFEST] + [f"{result['video_id']}.mp4" for result in results if result["status"] == "stored"]
    )
    assert octopusx_conn.stats.posts == octopusx_conn.stats.videos_created == 4
    # Done: the records are gone, so clearing the task makes a new batch.
    assert context["task_state_store"].values == {}


def test_more_failures_than_allowed_fail_the_task_after_storing_the_rest(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    prompts = ["a fox", "a storm [simulate-failure]", "a kite"]
    with pytest.raises(AirflowException) as caught:
        batch(tmp_path, prompts).execute(context)
    message = str(caught.value)
    assert "1 of 3 videos were not stored (max_failed=0)" in message
    assert "requests[1] video video_" in message
    assert "content_policy_violation" in message
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2


@BOTH_FLAVOURS
def test_a_retry_after_a_lost_deferral_resumes_every_video_without_a_second_post(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    prompts = ["a fox", "a kite", "a lake"]
    with pytest.raises(TaskDeferred) as deferred:
        batch(tmp_path, prompts, deferrable=True).execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, VideoBatchTrigger)
    assert len(trigger.video_ids) == 3
    assert "key" not in str(trigger.serialize()).lower()

    # The worker died while the batch waited; the retry runs on a worker again.
    results = batch(tmp_path, prompts).execute(context)

    assert [result["status"] for result in results] == ["stored"] * 3
    assert sorted(result["video_id"] for result in results) == sorted(trigger.video_ids)
    assert octopusx_conn.stats.posts == octopusx_conn.stats.videos_created == 3


@BOTH_FLAVOURS
def test_an_ambiguous_submission_is_reported_and_never_sent_again(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    octopusx_conn.inject(Fault(route="POST /v1/videos", kind="status_after_handling", status=502))
    with pytest.raises(AirflowException, match="ambiguous_submission"):
        batch(tmp_path, ["a fox", "a kite"], max_concurrent_requests=1).execute(context)
    assert octopusx_conn.stats.posts == 2

    with pytest.raises(AirflowException, match="ambiguous_submission"):
        batch(tmp_path, ["a fox", "a kite"], max_concurrent_requests=1).execute(context)

    # The retry stored nothing new and sent nothing: the stored video was not fetched again either.
    assert octopusx_conn.stats.posts == 2
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1


def test_a_changed_request_is_a_new_video(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    with pytest.raises(AirflowException):
        batch(tmp_path, ["a fox", "a storm [simulate-failure]"]).execute(context)
    results = batch(tmp_path, ["a fox", "a calm sea"]).execute(context)
    assert [result["status"] for result in results] == ["stored", "stored"]
    assert octopusx_conn.stats.posts == 3  # the fox was stored already; only the new request was sent


def test_a_429_is_waited_out_and_every_video_made_once(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    octopusx_conn.inject(Fault(route="POST /v1/videos", status=429, retry_after=1, times=2))
    results = batch(tmp_path, ["a", "b", "c", "d"], max_concurrent_requests=4).execute(context)
    assert [result["status"] for result in results] == ["stored"] * 4
    assert octopusx_conn.stats.posts == 6
    assert octopusx_conn.stats.videos_created == 4


def test_records_cost_a_few_store_round_trips_however_many_videos(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    store = context["task_state_store"]
    written: list[int] = []
    set_page = store.set

    def set_and_measure(key: str, value: Any) -> None:
        assert isinstance(value, list)
        written.append(len(value))
        set_page(key, value)

    store.set = set_and_measure
    prompts = [f"a paper boat, take {n}" for n in range(2 * PAGE_SIZE + 10)]

    results = batch(tmp_path, prompts, max_concurrent_requests=16).execute(context)

    assert [result["status"] for result in results] == ["stored"] * len(prompts)
    # One delete per page of records, never one per video; the reads find the store empty.
    assert store.calls["get"] == 1
    assert store.calls["delete"] == 3
    assert max(written) <= PAGE_SIZE
    # Writes follow groups of finished submissions and downloads: at most one per page per group.
    assert store.calls["set"] <= 3 * (2 * len(prompts) + 1)
    assert store.values == {}


def test_a_page_of_the_largest_records_fits_the_stores_default_cap() -> None:
    record = {
        "request": "f" * 64,
        "video_id": "v" * 200,  # the longest id the hook accepts
        "status": "not_submitted",
        "error": {"code": "\u00e9" * RECORDED_CODE_CHARS, "message": "\u00e9" * RECORDED_MESSAGE_CHARS},
        "resend": True,
    }
    assert len(json.dumps([record] * PAGE_SIZE)) < 65535


class WorkerKilled(BaseException):
    """Ends a try where it stands, as a killed worker would (no ``except Exception`` catches it)."""


def test_a_video_stored_by_a_try_killed_before_recording_it_is_not_fetched_again(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    store = context["task_state_store"]
    save_page = store.set

    def killed_when_recording_a_stored_video(key: str, value: Any) -> None:
        if any(record and record["status"] == "stored" for record in value):
            raise WorkerKilled
        save_page(key, value)

    store.set = killed_when_recording_a_stored_video
    prompts = ["a fox", "a kite", "a lake"]
    with pytest.raises(WorkerKilled):
        batch(tmp_path, prompts).execute(context)
    stored_files = sorted(path.name for path in (tmp_path / "videos").glob("*.mp4"))
    assert stored_files  # stored, but recorded only as completed
    fetched = octopusx_conn.stats.content_gets + octopusx_conn.stats.cdn_gets

    store.set = save_page
    context["outlet_events"] = OutletEventAccessors()
    results = batch(tmp_path, prompts).execute(context)

    assert [result["status"] for result in results] == ["stored"] * 3
    assert octopusx_conn.stats.posts == 3
    # Files already there were taken as stored, and only the others were downloaded.
    assert octopusx_conn.stats.content_gets + octopusx_conn.stats.cdn_gets == fetched + 3 - len(stored_files)
    # The killed try's asset event died with it; the retry's counts every video it stored or found.
    [event] = context["outlet_events"][AssetAlias(DEFAULT_BATCH_ASSET_ALIAS)].asset_alias_events
    folder = (tmp_path / "videos").as_uri()
    manifest = f"{folder}/{MANIFEST}"
    assert (event.dest_asset_key.uri, event.extra) == (
        manifest,
        {"uri": manifest, "folder": folder, "requests": 3, "videos": 3},
    )


@BOTH_FLAVOURS
def test_an_exhausted_quota_submits_nothing_more_and_a_retry_after_topping_up_sends_the_rest(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    octopusx_conn.configure(quota_videos=1)
    with pytest.raises(QuotaExceededError, match="quota has run out"):
        batch(tmp_path, ["a fox", "a kite"], max_concurrent_requests=1, max_failed=5).execute(context)
    assert octopusx_conn.stats.videos_created == 1
    octopusx_conn.configure(quota_videos=-1)
    results = batch(tmp_path, ["a fox", "a kite"], max_concurrent_requests=1).execute(context)
    assert [result["status"] for result in results] == ["stored", "stored"]
    assert octopusx_conn.stats.videos_created == 2  # the stored one was not submitted again


def test_what_the_gateway_billed_is_in_each_result(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    octopusx_conn.configure(flavour="new-api")
    results = batch(tmp_path, ["a fox", "a kite"]).execute(context)
    assert [result["billing"] for result in results] == [{"ratios": {"seconds": 6, "size": 1}}] * 2


# -- what a user sees of a batch ------------------------------------------------------------------------


@BOTH_FLAVOURS
def test_a_refused_key_fails_the_batch_at_once_whatever_max_failed_says(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn, "sk-wrong"))
    task = batch(tmp_path, ["a fox", "a kite", "a lake"], max_failed=10, max_concurrent_requests=1)
    with pytest.raises(
        AuthenticationError, match="Check the 'API key' field of connection 'octopusx_default'"
    ):
        task.execute(context)
    assert octopusx_conn.stats.posts == 1  # the first refusal stops the batch
    pushed = context["ti"].xcom["return_value"]
    assert [result["status"] for result in pushed] == ["not_submitted"] * 3
    # Nothing was made: once the key is right, a retry sends every request.
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn))
    results = batch(tmp_path, ["a fox", "a kite", "a lake"]).execute(context)
    assert [result["status"] for result in results] == ["stored"] * 3


def test_a_failed_batch_pushes_its_results_and_warns_of_each_unstored_request(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = ["a fox", "a storm [simulate-failure]", "a kite"]
    with pytest.raises(AirflowException):
        batch(tmp_path, prompts).execute(context)
    pushed = context["ti"].xcom["return_value"]
    assert [result["status"] for result in pushed] == ["stored", "failed", "stored"]
    # The manifest beside the videos says the same, with each request's prompt.
    manifest = tmp_path / "videos" / MANIFEST
    assert context["ti"].xcom["manifest"] == manifest.as_uri()
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines == [result | {"prompt": prompt} for result, prompt in zip(pushed, prompts, strict=True)]
    # Airflow's structured logging prints task logs to stdout.
    [warning] = [line for line in capsys.readouterr().out.splitlines() if "not stored:" in line]
    assert "requests[1] (a storm [simulate-failure]) not stored: failed (content_policy_violation:" in warning


def test_the_failure_says_which_videos_a_retry_resumes_pays_for_again_or_cannot_help(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    prompts = [
        "a fox",
        "a storm [simulate-failure]",
        "a flood [simulate-failure]",
        "a quake [simulate-failure:server_error]",
    ]
    with pytest.raises(AirflowException) as caught:
        batch(tmp_path, prompts).execute(context)
    message = str(caught.value)
    assert "3 of 4 videos were not stored" in message
    assert "1 a retry submits these anew, each a new, billed video:\nrequests[3]" in message
    assert (
        "2 these will end the same way on every retry: raise max_failed or change these requests" in message
    )
    assert "without submitting any video twice" not in message


def test_a_video_still_rendering_at_the_deadline_says_so_and_the_wait_names_its_deadline(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    octopusx_conn.configure(generation_seconds=60)
    with pytest.raises(AirflowException) as caught:
        batch(tmp_path, ["a fox"], timeout=0.5).execute(context)
    assert "timeout (timeout: still rendering at the deadline)" in str(caught.value)
    assert "1 a retry resumes these at no new charge" in str(caught.value)
    assert re.search(
        r"Waiting for 1 videos: .* until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", capsys.readouterr().out
    )


def test_the_first_try_taking_up_its_videos_after_the_wait_does_not_call_it_resuming(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    octopusx_conn.configure(generation_seconds=0)
    with pytest.raises(TaskDeferred) as deferred:
        batch(tmp_path, ["a fox"], deferrable=True).execute(context)
    event = {
        "status": "done",
        "videos": {video: {"status": "completed"} for video in deferred.value.trigger.video_ids},
    }
    capsys.readouterr()
    batch(tmp_path, ["a fox"], deferrable=True).execute_complete(context, event)
    assert "Resuming" not in capsys.readouterr().out


def test_a_retry_replaces_the_manifest_with_every_request_as_it_now_stands(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    prompts = ["a fox", "a quake [simulate-failure:server_error]"]
    with pytest.raises(AirflowException):
        batch(tmp_path, prompts).execute(context)
    manifest = tmp_path / "videos" / MANIFEST
    assert [json.loads(line)["status"] for line in manifest.read_text().splitlines()] == ["stored", "failed"]

    batch(tmp_path, ["a fox", "a quake"]).execute(context)

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [(line["prompt"], line["status"]) for line in lines] == [
        ("a fox", "stored"),
        ("a quake", "stored"),
    ]
    assert not list(manifest.parent.glob(".*"))  # written whole, through a partial file beside it


def test_a_named_manifest_for_each_mapped_batch_and_a_bad_name_refused_before_any_post(
    tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    batch(tmp_path, ["a fox"], manifest_name="fox.jsonl").execute(context)
    assert (tmp_path / "videos" / "fox.jsonl").is_file()
    context["ti"].map_index = 2
    batch(tmp_path, ["a kite"]).execute(context)
    assert (tmp_path / "videos" / MANIFEST.replace("generate.", "generate.2.")).is_file()

    posts = octopusx_conn.stats.posts
    with pytest.raises(AirflowFailException, match="manifest_name: must be a file name without '/'"):
        batch(tmp_path, ["a lake"], manifest_name="../escape.jsonl").execute(context)
    assert octopusx_conn.stats.posts == posts
