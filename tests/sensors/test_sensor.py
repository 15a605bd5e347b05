"""VideoTaskSensor against the simulator over real sockets: poking, deferring (the trigger it hands over
runs for real), resuming from trigger events, and whole DAG runs in both modes."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
    timezone,
)
from airflow.sdk import DAG
from airflow.sdk.module_loading import import_string

from airflow_octopusx.exceptions import OctopusXError, VideoFailedError, VideoTimeoutError, utc_text
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import VideoRequest, VideoTask
from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.sensors.octopusx import SENSED_AGAIN, VideoTaskSensor
from airflow_octopusx.simulator import Simulator, Stats
from airflow_octopusx.triggers.octopusx import AIRFLOW_TIMEOUT_LEAD, VideoTaskTrigger
from tests.conftest import AIRFLOW_3_3, BOTH_FLAVOURS, xcom_values

POKE_INTERVAL = 0.1


def submit(simulator: Simulator, generation_seconds: float) -> VideoTask:
    simulator.configure(generation_seconds=generation_seconds)
    with OctopusXHook() as hook:
        return hook.submit_video(VideoRequest.build({"prompt": "A lighthouse in a storm"}))


def sensor(video_id: str, **kwargs: Any) -> VideoTaskSensor:
    kwargs.setdefault("poke_interval", POKE_INTERVAL)
    kwargs.setdefault("timeout", 10)
    return VideoTaskSensor(task_id="wait_for_video", video_id=video_id, **kwargs)


async def run_trigger(trigger: VideoTaskTrigger) -> list[dict[str, Any]]:
    """Run a trigger rebuilt from its serialised form, as the triggerer would, and collect its events."""
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_octopusx.triggers.octopusx.VideoTaskTrigger"
    return [event.payload async for event in VideoTaskTrigger(**kwargs).run()]


# -- poke mode ---------------------------------------------------------------------------------------


@BOTH_FLAVOURS
def test_poke_is_false_while_rendering_then_true_with_the_id(
    octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    video = submit(octopusx_conn, generation_seconds=0.5)
    waiting = sensor(video.id)

    first = waiting.poke(context)
    assert first.is_done is False
    pokes = 1
    deadline = time.monotonic() + 5
    while not (result := waiting.poke(context)).is_done:
        pokes += 1
        assert time.monotonic() < deadline, "poke never became true"
        time.sleep(POKE_INTERVAL)

    assert result.xcom_value == video.id
    assert pokes >= 2
    assert octopusx_conn.stats.gets == pokes + 1


def test_poke_mode_execute_waits_and_returns_the_id(
    octopusx_conn: Simulator, context: dict[str, Any], finished_once_seen_rendering: list[str]
) -> None:
    video = submit(octopusx_conn, generation_seconds=3600)
    started = time.monotonic()

    assert sensor(video.id).execute(context) == video.id

    assert time.monotonic() - started < 10  # a generous bound: only a hang should trip it
    assert finished_once_seen_rendering == [video.id]  # it really had to poke more than once


@BOTH_FLAVOURS
def test_failed_video_raises_from_poke_and_execute(octopusx_conn: Simulator, context: dict[str, Any]) -> None:
    octopusx_conn.fail_next(code="nsfw_blocked", message="Blocked by the safety system.")
    video = submit(octopusx_conn, generation_seconds=0.2)
    time.sleep(0.15)  # a failing video stops half-way through its generation time

    with pytest.raises(VideoFailedError, match="Blocked by the safety system") as raised:
        sensor(video.id).poke(context)
    assert (raised.value.video_id, raised.value.code) == (video.id, "nsfw_blocked")

    with pytest.raises(VideoFailedError, match="nsfw_blocked"):
        sensor(video.id).execute(context)


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
@pytest.mark.parametrize("bad_id", ["../x", "a/b", ""])
def test_bad_video_id_fails_before_any_request(
    bad_id: str, deferrable: bool, octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    with pytest.raises(AirflowFailException, match="video_id"):
        sensor(bad_id, deferrable=deferrable).execute(context)

    assert octopusx_conn.stats == Stats()


# -- deferrable mode ---------------------------------------------------------------------------------


async def test_deferrable_execute_hands_a_keyless_trigger_to_the_triggerer(
    octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    video = submit(octopusx_conn, generation_seconds=0.5)
    waiting = sensor(video.id, deferrable=True, poke_interval=0.2, timeout=120)

    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context)
    after = time.time()

    trigger = deferred.value.trigger
    assert isinstance(trigger, VideoTaskTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert (trigger.video_id, trigger.octopusx_conn_id) == (video.id, "octopusx_default")
    assert trigger.poll_interval == 0.2
    assert before + 120 <= trigger.deadline <= after + 120
    serialized = json.dumps(trigger.serialize())
    assert octopusx_conn.api_key not in serialized
    assert octopusx_conn.api_url not in serialized  # the connection is looked up in the triggerer
    assert octopusx_conn.stats.gets == 1  # one check before deferring

    # The trigger it handed over finishes the job, and the sensor resumes with the video id.
    events = await run_trigger(trigger)
    assert [event["status"] for event in events] == ["success"]
    assert waiting.execute_complete(context, events[0]) == video.id


@pytest.mark.skipif(not AIRFLOW_3_3, reason="the triggerer renders templates from Airflow 3.3")
async def test_a_sensor_started_in_the_triggerer_hands_it_a_keyless_trigger_with_no_deadline(
    octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    video = submit(octopusx_conn, generation_seconds=0.5)
    waiting = sensor(video.id, deferrable=True, start_from_trigger=True, poke_interval=0.2, timeout=120)

    start = waiting.start_trigger_args
    assert waiting.start_from_trigger
    assert start is not None
    assert (start.next_method, start.timeout) == ("execute_complete", timedelta(seconds=120))
    assert octopusx_conn.api_key not in json.dumps(start.trigger_kwargs)
    # What the triggerer builds (after rendering video_id): it waits until Airflow's trigger timeout.
    trigger = import_string(start.trigger_cls)(**start.trigger_kwargs)
    assert isinstance(trigger, VideoTaskTrigger)
    assert trigger.deadline is None
    events = await run_trigger(trigger)
    assert [event["status"] for event in events] == ["success"]
    assert waiting.execute_complete(context, events[0]) == video.id
    assert octopusx_conn.stats.posts == 1


@pytest.mark.skipif(not AIRFLOW_3_3, reason="the triggerer renders templates from Airflow 3.3")
async def test_started_in_the_triggerer_the_wait_names_airflows_trigger_timeout_and_ends_by_it(
    octopusx_conn: Simulator, context: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    video = submit(octopusx_conn, generation_seconds=60)
    waiting = sensor(video.id, deferrable=True, start_from_trigger=True, poke_interval=0.1, timeout=1)
    start = waiting.start_trigger_args
    assert start is not None
    trigger = import_string(start.trigger_cls)(**start.trigger_kwargs)
    # What Airflow 3.3's triggerer sets on every trigger it starts: the task's trigger timeout.
    trigger.timeout_after = timezone.utcnow() + timedelta(seconds=AIRFLOW_TIMEOUT_LEAD + 1)

    events = [event.payload async for event in trigger.run()]

    # A little before Airflow's timeout, so that the trigger's own event, with the progress, comes first.
    deadline = trigger.timeout_after.timestamp() - AIRFLOW_TIMEOUT_LEAD
    assert [(event["status"], event["deadline"]) for event in events] == [("timeout", deadline)]
    assert f"Waiting for video {video.id}: a status check every 0.1 s, until {utc_text(deadline)}" in (
        capsys.readouterr().out
    )
    with pytest.raises(AirflowSensorTimeout) as raised:
        waiting.execute_complete(context, events[0])
    assert f"did not finish by the deadline {utc_text(deadline)}" in str(raised.value)
    assert SENSED_AGAIN in str(raised.value)


def test_airflows_own_trigger_timeout_reads_as_the_sensors_timeout(context: dict[str, Any]) -> None:
    # What a worker runs when Airflow's trigger timeout fires before the trigger's own timeout event.
    waiting = sensor("video_123", deferrable=True, timeout=300)
    with pytest.raises(AirflowSensorTimeout) as raised:
        waiting.resume_execution("__fail__", {"error": "Trigger timeout"}, context)
    assert str(raised.value) == (
        "Video video_123 was not finished when the sensor's timeout (300 s) ran out (Airflow: Trigger "
        f"timeout). It may still complete. {SENSED_AGAIN}"
    )
    with pytest.raises(AirflowSkipException):
        sensor("video_123", deferrable=True, soft_fail=True).resume_execution(
            "__fail__", {"error": "Trigger timeout"}, context
        )


async def test_a_trigger_refuses_a_rendered_id_that_is_not_a_video_id_before_any_request(
    octopusx_conn: Simulator,
) -> None:
    trigger = VideoTaskTrigger(
        video_id="../v1/videos", octopusx_conn_id="octopusx_default", poll_interval=1, deadline=None
    )

    [event] = await run_trigger(trigger)

    assert event["status"] == "error"
    assert "video_id" in event["message"]
    assert octopusx_conn.stats.gets == 0


@pytest.mark.skipif(not AIRFLOW_3_3, reason="the triggerer renders templates from Airflow 3.3")
def test_a_tasks_output_reaches_the_triggerer_as_a_template_pulling_its_one_value() -> None:
    with DAG("sensor_output", schedule=None):
        submit = SubmitVideoOperator(task_id="submit_video", prompt="A kite", wait_for_completion=False)
        waiting = sensor(submit.output, deferrable=True, start_from_trigger=True)

    assert waiting.upstream_task_ids == {"submit_video"}
    assert waiting.start_trigger_args is not None
    assert waiting.start_trigger_args.trigger_kwargs["video_id"] == (
        "{{ ti.xcom_pull(task_ids='submit_video', key='return_value', map_indexes=-1) }}"
    )


@pytest.mark.skipif(not AIRFLOW_3_3, reason="the triggerer renders templates from Airflow 3.3")
def test_a_template_the_triggerer_would_never_answer_starts_the_sensor_on_a_worker() -> None:
    # Airflow 3.3.2's triggerer does not answer xcom_pull without map_indexes: the trigger would hang.
    with pytest.warns(UserWarning, match="xcom_pull names map_indexes"):
        waiting = sensor(
            "{{ ti.xcom_pull(task_ids='submit_video') }}", deferrable=True, start_from_trigger=True
        )
    assert not waiting.start_from_trigger


def test_start_from_trigger_needs_a_deferrable_sensor() -> None:
    with pytest.raises(ValueError, match="start_from_trigger=True needs deferrable=True"):
        sensor("video_1", deferrable=False, start_from_trigger=True)


@pytest.mark.skipif(AIRFLOW_3_3, reason="Airflow 3.3 starts the sensor in the triggerer")
def test_before_airflow_3_3_start_from_trigger_warns_and_starts_on_a_worker() -> None:
    with pytest.warns(UserWarning, match="start_from_trigger needs Airflow 3.3"):
        waiting = sensor("video_1", deferrable=True, start_from_trigger=True)
    assert not waiting.start_from_trigger


async def test_deferred_wait_past_its_timeout_fails_with_a_timeout(
    octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    video = submit(octopusx_conn, generation_seconds=60)
    waiting = sensor(video.id, deferrable=True, poke_interval=0.1, timeout=0.3)

    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context)
    started = time.monotonic()
    events = await run_trigger(deferred.value.trigger)

    assert time.monotonic() - started < 10  # the 0.3 s timeout, not the 60 s generation
    assert [event["status"] for event in events] == ["timeout"]
    # The same exception as a poke-mode timeout, so soft_fail and never_fail work alike.
    with pytest.raises(AirflowSensorTimeout, match=video.id):
        waiting.execute_complete(context, events[0])


async def test_deferred_wait_for_a_failing_video_fails_with_its_code(
    octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    octopusx_conn.fail_next(code="nsfw_blocked", message="Blocked by the safety system.")
    video = submit(octopusx_conn, generation_seconds=0.6)
    waiting = sensor(video.id, deferrable=True)

    with pytest.raises(TaskDeferred) as deferred:
        waiting.execute(context)
    events = await run_trigger(deferred.value.trigger)

    assert [event["status"] for event in events] == ["failed"]
    with pytest.raises(VideoFailedError) as raised:
        waiting.execute_complete(context, events[0])
    assert (raised.value.video_id, raised.value.code) == (video.id, "nsfw_blocked")


def test_deferrable_sensor_returns_a_completed_video_without_deferring(
    octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    video = submit(octopusx_conn, generation_seconds=0)

    assert sensor(video.id, deferrable=True).execute(context) == video.id

    assert octopusx_conn.stats.gets == 1


def test_execute_complete_success_returns_the_id(context: dict[str, Any]) -> None:
    event = {"status": "success", "video_id": "video_123", "message": "completed", "progress": 100}

    assert sensor("video_123", deferrable=True).execute_complete(context, event) == "video_123"


def test_execute_complete_failed_raises_with_message_and_code(context: dict[str, Any]) -> None:
    event = {"status": "failed", "video_id": "video_123", "message": "Blocked.", "code": "nsfw_blocked"}

    with pytest.raises(
        VideoFailedError, match=r"video_123 failed: Blocked\. \(code=nsfw_blocked\)"
    ) as raised:
        sensor("video_123", deferrable=True).execute_complete(context, event)

    assert raised.value.code == "nsfw_blocked"


def test_execute_complete_timeout_raises_with_the_deadline(context: dict[str, Any]) -> None:
    event = {"status": "timeout", "video_id": "video_123", "deadline": 1767225600.0, "progress": 42}

    with pytest.raises(
        AirflowSensorTimeout, match=r"2026-01-01 00:00:00 UTC \(last progress 42%\)"
    ) as raised:
        sensor("video_123", deferrable=True).execute_complete(context, event)

    assert isinstance(raised.value.__cause__, VideoTimeoutError)
    assert raised.value.__cause__.video_id == "video_123"
    # Not the submit task's advice: that task succeeded, and clearing it pays for a new video.
    assert "clearing the task that submitted it, which succeeded, would pay for a new one" in str(
        raised.value
    )
    assert "resumes this video" not in str(raised.value)


def test_execute_complete_error_raises_with_the_message(context: dict[str, Any]) -> None:
    event = {"status": "error", "video_id": "video_123", "message": "gave up after 5 failed polls"}

    with pytest.raises(OctopusXError, match=r"video_123.*gave up after 5 failed polls"):
        sensor("video_123", deferrable=True).execute_complete(context, event)


@pytest.mark.parametrize(
    "event",
    [None, {}, {"status": "done", "video_id": "video_123"}, {"video_id": "video_123"}, {"status": None}],
    ids=["none", "empty", "unknown-status", "no-status", "null-status"],
)
def test_execute_complete_refuses_garbage_events(event: Any, context: dict[str, Any]) -> None:
    with pytest.raises(OctopusXError, match="Unexpected event"):
        sensor("video_123", deferrable=True).execute_complete(context, event)


# -- whole DAG runs ----------------------------------------------------------------------------------


@BOTH_FLAVOURS
@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_dag_submit_then_sense(
    deferrable: bool,
    octopusx_conn: Simulator,
    caplog: pytest.LogCaptureFixture,
    finished_once_seen_rendering: list[str],
) -> None:
    from tests.dags.sensor_submit_then_sense import deferrable_dag, poke_dag

    run = (deferrable_dag if deferrable else poke_dag).test()

    assert run.state == "success"
    submitted = xcom_values(run, "video_id")["submit_video"]
    returned = xcom_values(run, "return_value")
    assert returned == {"submit_video": submitted, "wait_for_video": submitted}
    stats = octopusx_conn.stats
    assert stats.posts == stats.videos_created == 1
    assert finished_once_seen_rendering == [submitted]  # the sensor saw it rendering, then finished
    deferred = [r for r in caplog.records if "running trigger in line" in r.getMessage()]
    assert len(deferred) == (1 if deferrable else 0)
