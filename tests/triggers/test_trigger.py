"""VideoTaskTrigger run in an event loop against the simulator: every event kind, one event per run."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from airflow.triggers.base import TaskSuccessEvent

from airflow_octopusx.exceptions import OctopusXError, VideoFailedError, VideoTimeoutError
from airflow_octopusx.hooks.octopusx import ASYNC_MAX_CONNECTIONS, OctopusXHook
from airflow_octopusx.hooks.shared_clients import SharedAsyncClients
from airflow_octopusx.models import PROGRESS_LOG_STEP, VideoRequest
from airflow_octopusx.simulator import Fault, Simulator
from airflow_octopusx.triggers.octopusx import VideoTaskTrigger, video_id_from_event
from tests.conftest import BOTH_FLAVOURS, connection_uri, hostile_connection
from tests.hostile import Answer, HostileServer

REQUEST = VideoRequest.build({"prompt": "A lighthouse in a storm", "seconds": 6})


def submit(simulator: Simulator, generation_seconds: float = 0.4) -> str:
    simulator.configure(generation_seconds=generation_seconds)
    with OctopusXHook() as hook:
        return hook.submit_video(REQUEST).id


def trigger_for(
    video_id: str, *, poll_interval: float = 0.05, timeout: float = 10, **kwargs: Any
) -> VideoTaskTrigger:
    return VideoTaskTrigger(
        video_id=video_id,
        octopusx_conn_id="octopusx_default",
        poll_interval=poll_interval,
        deadline=time.time() + timeout,
        **kwargs,
    )


@pytest.fixture
def connection_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The conn ids the hooks look up through Airflow's async connection API, in order."""
    lookups: list[str] = []
    real_lookup = OctopusXHook.aget_connection

    async def counting_lookup(conn_id: str) -> Any:
        lookups.append(conn_id)
        return await real_lookup(conn_id)

    monkeypatch.setattr(OctopusXHook, "aget_connection", staticmethod(counting_lookup))
    return lookups


async def events_of(trigger: VideoTaskTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


async def test_timeout_and_attempts_of_the_connection_hold_in_the_triggerer(
    octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    video_id = submit(octopusx_conn)
    conn = {**json.loads(connection_uri(octopusx_conn)), "extra": {"timeout": 0.3, "max_attempts": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", json.dumps(conn))
    octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", kind="delay", delay_seconds=1, times=3))
    [event] = await events_of(trigger_for(video_id, max_poll_errors=2))
    assert event["status"] == "error"
    assert re.search(r"gave up after 2 failed polls: GET /v1/videos/\S+: ReadTimeout", event["message"])
    assert octopusx_conn.stats.gets == 2  # one attempt per poll, as the connection says


def test_serialize_round_trips_plain_values_without_the_key(octopusx_conn: Simulator) -> None:
    trigger = trigger_for("video_1", poll_interval=7, max_poll_errors=3)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_octopusx.triggers.octopusx.VideoTaskTrigger"
    assert kwargs == {
        "video_id": "video_1",
        "octopusx_conn_id": "octopusx_default",
        "poll_interval": 7,
        "deadline": trigger.deadline,
        "max_poll_errors": 3,
        "end_from_trigger": False,
    }
    encoded = json.dumps(kwargs)
    assert octopusx_conn.api_key not in encoded
    assert VideoTaskTrigger(**json.loads(encoded)).serialize() == (classpath, kwargs)


@BOTH_FLAVOURS
async def test_success_is_one_event_after_polling_over_one_connection(
    octopusx_conn: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    video_id = submit(octopusx_conn)
    capsys.readouterr()
    events = await events_of(trigger_for(video_id))
    assert events == [
        {
            "status": "success",
            "video_id": video_id,
            "message": "completed",
            "code": None,
            "progress": 100,
            "deadline": pytest.approx(time.time() + 10, abs=2),
        }
    ]
    assert video_id_from_event(events[0]) == video_id
    stats = octopusx_conn.stats
    assert stats.gets >= 3
    assert stats.api_connections == 2  # the submit's, and the trigger's one for all its polls
    # Airflow's structured logging prints trigger logs to stdout.
    logged = re.findall(rf"Video {video_id}: (\w+), ([\d.]+)%", capsys.readouterr().out)
    # A line per status change or PROGRESS_LOG_STEP of progress, not one per poll.
    milestones = [(status, float(progress) // PROGRESS_LOG_STEP) for status, progress in logged]
    assert len(milestones) == len(set(milestones)) >= 2
    assert len(logged) < stats.gets
    assert logged[-1] == ("completed", "100")


@BOTH_FLAVOURS
async def test_failure_carries_the_api_code_and_message(octopusx_conn: Simulator) -> None:
    octopusx_conn.fail_next(code="content_policy_violation", message="Refused")
    video_id = submit(octopusx_conn)
    [event] = await events_of(trigger_for(video_id))
    assert (event["status"], event["code"], event["message"]) == (
        "failed",
        "content_policy_violation",
        "Refused",
    )
    with pytest.raises(VideoFailedError, match=f"Video {video_id} failed: Refused"):
        video_id_from_event(event)


async def test_ending_from_the_trigger_ends_a_completed_video_task_and_hands_back_anything_else(
    octopusx_conn: Simulator,
) -> None:
    completed = submit(octopusx_conn)
    [ended] = [event async for event in trigger_for(completed, end_from_trigger=True).run()]
    assert isinstance(ended, TaskSuccessEvent)
    assert ended.xcoms is None  # the triggerer would store them JSON-encoded twice (Airflow 3.3.2)

    octopusx_conn.fail_next(code="content_policy_violation", message="Refused")
    failed = submit(octopusx_conn)
    [event] = await events_of(trigger_for(failed, end_from_trigger=True))
    assert (event["status"], event["code"]) == ("failed", "content_policy_violation")


async def test_the_deadline_ends_the_wait_with_a_timeout_event(octopusx_conn: Simulator) -> None:
    video_id = submit(octopusx_conn, generation_seconds=60)
    started = time.monotonic()
    [event] = await events_of(trigger_for(video_id, poll_interval=5, timeout=0.6))
    assert 0.5 < time.monotonic() - started < 4  # the 5 s sleep is cut short at the deadline
    assert event["status"] == "timeout"
    assert event["progress"] is not None
    with pytest.raises(VideoTimeoutError, match="may still complete"):
        video_id_from_event(event)


async def test_a_deadline_already_passed_still_polls_once(octopusx_conn: Simulator) -> None:
    video_id = submit(octopusx_conn, generation_seconds=60)
    [event] = await events_of(trigger_for(video_id, timeout=-5))
    assert event["status"] == "timeout"
    assert octopusx_conn.stats.gets == 1


@BOTH_FLAVOURS
async def test_a_bad_key_ends_the_wait_at_once(
    octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    video_id = submit(octopusx_conn)
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn, "sk-revoked"))
    [event] = await events_of(trigger_for(video_id))
    assert event["status"] == "error"
    assert event["code"] == "invalid_api_key"
    assert "sk-revoked" not in json.dumps(event)
    assert octopusx_conn.stats.gets == 1


async def test_waits_running_when_the_key_is_rotated_carry_on_with_the_new_key(
    octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch, connection_lookups: list[str]
) -> None:
    video_ids = [submit(octopusx_conn, generation_seconds=1.5) for _ in range(20)]

    async def rotate_once_all_have_polled() -> None:
        while octopusx_conn.stats.gets < 20:
            await asyncio.sleep(0.01)
        # As an admin does it: the connection gets the new key, then the old key is revoked.
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn, "sk-rotated"))
        octopusx_conn.rotate_api_key("sk-rotated")

    rotation = asyncio.ensure_future(rotate_once_all_have_polled())
    events = await asyncio.gather(
        *(events_of(trigger_for(video_id, poll_interval=0.1)) for video_id in video_ids)
    )
    await rotation

    assert [event["status"] for [event] in events] == ["success"] * 20
    assert octopusx_conn.stats.unauthorized >= 1
    # The first trigger's lookup, and one more after the first refusal, for all of them.
    assert connection_lookups == ["octopusx_default"] * 2
    assert SharedAsyncClients.for_running_loop().open_clients() == 0


@BOTH_FLAVOURS
async def test_an_unknown_video_ends_the_wait_at_once(octopusx_conn: Simulator) -> None:
    [event] = await events_of(trigger_for("video_missing"))
    unknown_id_code = "not_found" if octopusx_conn.settings.flavour == "doc" else "task_not_exist"
    assert (event["status"], event["code"]) == ("error", unknown_id_code)
    with pytest.raises(OctopusXError, match="video_missing"):
        video_id_from_event(event)


async def test_transient_errors_are_tolerated_up_to_the_bound(octopusx_conn: Simulator) -> None:
    video_id = submit(octopusx_conn)
    # Each failed poll is already the hook's 5 attempts; two failed polls stay under the bound of 3.
    octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", status=503, retry_after=0, times=10))
    [event] = await events_of(trigger_for(video_id, max_poll_errors=3))
    assert event["status"] == "success"


async def test_a_poll_answered_429_waits_for_retry_after(octopusx_conn: Simulator) -> None:
    video_id = submit(octopusx_conn, generation_seconds=0)
    octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", status=429, retry_after=2))
    started = time.monotonic()
    [event] = await events_of(trigger_for(video_id, poll_interval=0.05))
    assert event["status"] == "success"
    assert time.monotonic() - started >= 2  # not the 0.05 s interval, nor the 0.5 s first backoff
    assert octopusx_conn.stats.gets == 2


async def test_persistent_errors_end_with_an_error_event(octopusx_conn: Simulator) -> None:
    video_id = submit(octopusx_conn)
    octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", status=500, retry_after=0, times=100))
    [event] = await events_of(trigger_for(video_id, max_poll_errors=2))
    assert event["status"] == "error"
    assert event["message"].startswith("gave up after 2 failed polls")
    assert octopusx_conn.stats.gets == 10  # 2 polls x 5 attempts each


@pytest.mark.parametrize("event", [None, {}, {"status": "weird", "video_id": "v"}, {"video_id": "v"}])
def test_unknown_events_are_refused(event: dict[str, Any] | None) -> None:
    with pytest.raises(OctopusXError, match="Unexpected event"):
        video_id_from_event(event)


async def test_triggers_in_one_loop_share_one_client_and_one_connection_lookup(
    octopusx_conn: Simulator, connection_lookups: list[str]
) -> None:
    video_ids = [submit(octopusx_conn, generation_seconds=0.6) for _ in range(50)]
    connections_before = octopusx_conn.stats.api_connections

    events = await asyncio.gather(
        *(events_of(trigger_for(video_id, poll_interval=0.2)) for video_id in video_ids)
    )

    assert [event["status"] for [event] in events] == ["success"] * 50
    assert connection_lookups == ["octopusx_default"]
    assert octopusx_conn.stats.api_connections - connections_before <= ASYNC_MAX_CONNECTIONS
    assert SharedAsyncClients.for_running_loop().open_clients() == 0  # closed with the last trigger


async def test_first_polls_are_spread_over_the_interval(
    octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    video_ids = [submit(octopusx_conn, generation_seconds=60) for _ in range(20)]
    first_polls: dict[str, float] = {}
    real_poll = OctopusXHook.aget_video

    async def timed_poll(hook: OctopusXHook, video_id: str, **bounds: Any) -> Any:
        first_polls.setdefault(video_id, time.monotonic())
        return await real_poll(hook, video_id, **bounds)

    monkeypatch.setattr(OctopusXHook, "aget_video", timed_poll)
    started = time.monotonic()
    await asyncio.gather(
        *(events_of(trigger_for(video_id, poll_interval=1, timeout=1)) for video_id in video_ids)
    )
    offsets = sorted(moment - started for moment in first_polls.values())
    assert len(offsets) == 20
    # Uniform over one interval: 20 first polls all within half of it would happen once in ~25,000 runs.
    assert offsets[-1] - offsets[0] > 0.5
    assert offsets[-1] < 1.2


async def test_a_poll_answered_by_a_proxy_page_is_tolerated_like_any_passing_fault(
    hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile_connection(hostile_server, monkeypatch)
    page = Answer(200, (("Content-Type", "text/html"),), b"<html>502 from the proxy</html>")
    done = Answer.json('{"id": "video_1", "status": "completed", "progress": "100%"}')
    hostile_server.script("GET /v1/videos/video_1", page, page, done)
    events = await events_of(trigger_for("video_1", poll_interval=0.01, max_poll_errors=3))
    assert [event["status"] for event in events] == ["success"]
    assert len(hostile_server.requests) == 3


async def test_a_refused_key_ends_the_wait_at_once(
    hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile_connection(hostile_server, monkeypatch)
    refused = Answer.json('{"error": {"message": "Invalid API key", "code": "invalid_api_key"}}', 401)
    hostile_server.script("GET /v1/videos/video_1", refused)
    events = await events_of(trigger_for("video_1", poll_interval=0.01, max_poll_errors=3))
    assert [(event["status"], event["code"]) for event in events] == [("error", "invalid_api_key")]
