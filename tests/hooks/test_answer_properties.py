"""Properties of every answer the network can send, over real sockets (``tests/hostile.py``).

Hypothesis makes the answers, in the doc's shapes and in the new-api gateway's (docs/answers.md): arbitrary
JSON in every field of a status answer, its gateway spellings and envelope, arbitrary status codes,
headers and bodies, arbitrary ``Content-Range``/``Content-Length`` and chunking of a download. Whatever
comes, the hook ends with a parsed ``VideoTask`` or an ``OctopusXError``; a trigger yields exactly one
event; a download stores exactly the served bytes or nothing at all. The examples are the same on every
run (the ``octopusx`` profile in conftest), so a failure here is reproducible, not a flake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_octopusx.exceptions import OctopusXError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.operators.octopusx import DownloadVideoOperator
from airflow_octopusx.simulator.media import sample_mp4
from airflow_octopusx.triggers.batch import VideoBatchTrigger
from airflow_octopusx.triggers.octopusx import (
    EVENT_STATUSES,
    VideoTaskTrigger,
    checked_event,
    video_id_from_event,
)
from tests.conftest import hostile_connection
from tests.hostile import Answer, HostileServer
from tests.support.task_context import MemoryTaskStateStore, RecordingTaskInstance

VIDEO = "/v1/videos/video_1"
MP4 = sample_mp4()


# The hostile server is one for the session and the connection one for the test: neither changes
# between examples, so sharing them is what is wanted.
def examples(count: int) -> settings:
    return settings(
        max_examples=count, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
links = st.sampled_from(
    ["https://cdn.test/v.mp4", "javascript:x", "", "http://[::1", "/v1/videos/video_1/content"]
)
billing = st.dictionaries(st.text(max_size=12), json_values, max_size=20) | json_values
status_payloads = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["video_1", "", "../x", "a\r\nb", "v" * 300]) | json_values,
        "task_id": st.just("video_1") | json_values,
        "status": st.sampled_from(
            [
                *("queued", "in_progress", "completed", "failed", "canceled", "error", "?"),
                # the gateway's spellings, its internal task states among them
                *("unknown", "SUCCESS", "FAILURE", "NOT_START", "SUBMITTED", "IN_PROGRESS", "Succeeded"),
            ]
        )
        | json_values,
        "progress": st.sampled_from([50, "50", "50%", "30%", 1e400, -1, 10**400]) | json_values,
        "video_url": links | json_values,
        "error": st.fixed_dictionaries({}, optional={"message": json_values, "code": json_values})
        | json_values,
        "created_at": json_values,
        "model": json_values,
        "prompt": json_values,
        # the gateway's fields: the link in metadata.url or result_url, fail_reason, what was billed
        "metadata": st.fixed_dictionaries({}, optional={"url": links | json_values, "usage": billing})
        | json_values,
        "result_url": links | json_values,
        "url": links | json_values,
        "fail_reason": json_values,
        "usage": billing,
    },
)
# The gateway's envelope around its internal task record, as one of its releases answered.
enveloped_payloads = st.builds(lambda data, code: {"code": code, "data": data}, status_payloads, json_values)
# The gateway's task errors: {"code", "message", "data"} at the top level.
task_errors = st.fixed_dictionaries(
    {},
    optional={
        "code": st.sampled_from(["task_not_exist", "insufficient_user_quota", "rate_limit_exceeded"])
        | json_values,
        "message": json_values,
        "data": json_values,
    },
)
header_names = st.sampled_from(
    [
        *("Content-Type", "Content-Length", "Content-Encoding", "Retry-After", "X-Request-Id"),
        *("Location", "Transfer-Encoding", "Content-Range", "X-Anything", "X-New-Api-Other-Ratios"),
    ]
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"))
headers = st.lists(st.tuples(header_names, header_values), max_size=4).map(tuple)
bodies = st.one_of(
    status_payloads.map(lambda payload: json.dumps(payload).encode()),
    enveloped_payloads.map(lambda payload: json.dumps(payload).encode()),
    task_errors.map(lambda payload: json.dumps(payload).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.sampled_from([b"<html>proxy</html>", b"[" * 5000, b'{"error": {"message": "x\\ny"}}']),
)
statuses = st.sampled_from([200, 201, 204, 301, 302, 307, 400, 401, 404, 429, 500, 503]) | st.integers(
    100, 599
)
# Every answer closes its connection after the body, so a wrong Content-Length ends the read at once.
answers = st.builds(Answer, status=statuses, headers=headers, body=bodies, length=st.just(False))


@pytest.fixture
def server(hostile_server_session: HostileServer, monkeypatch: pytest.MonkeyPatch) -> HostileServer:
    hostile_connection(hostile_server_session, monkeypatch, timeout=5)
    return hostile_server_session


@examples(200)
@given(payload=status_payloads | enveloped_payloads)
def test_any_status_answer_ends_as_a_video_or_our_error(
    server: HostileServer, payload: dict[str, Any]
) -> None:
    server.reset()
    server.script(f"GET {VIDEO}", Answer.json(json.dumps(payload)))
    with OctopusXHook() as hook:
        try:
            video = hook.get_video("video_1")
        except OctopusXError:
            return
    assert 0 <= video.progress <= 100
    assert video.id.isprintable()
    assert video.video_url == "" or video.video_url.startswith(("http://", "https://"))
    json.dumps(video.billing, allow_nan=False)  # what is kept for XCom and asset events is plain JSON
    video.milestone  # noqa: B018 - computing it must not raise either


@examples(200)
@given(answer=answers)
def test_any_answer_at_all_ends_as_a_video_or_our_error(server: HostileServer, answer: Answer) -> None:
    server.reset()
    server.script(f"GET {VIDEO}*", answer)
    with OctopusXHook() as hook:
        outcome: Any
        try:
            outcome = hook.get_video("video_1")
        except OctopusXError as error:
            outcome = error
    # One line, whatever the answer held: no forged log lines from an error either.
    assert "\n" not in str(outcome)


@examples(100)
@given(served=st.lists(answers, min_size=1, max_size=3))
def test_a_submission_ends_as_a_video_or_our_error_and_is_sent_again_only_after_a_refusal(
    server: HostileServer, served: list[Answer]
) -> None:
    server.reset()
    server.script("POST /v1/videos", *served)
    policy = RetryPolicy(max_attempts=3, base_delay=0, max_delay=0, max_retry_after=0)
    with OctopusXHook(retry_policy=policy) as hook:
        try:
            video = hook.submit_video(VideoRequest.build({"prompt": "A kite"}))
        except OctopusXError:
            pass
        else:
            json.dumps(video.billing, allow_nan=False)  # what is kept for XCom is plain JSON
    posts = len(server.seen("POST /v1/videos"))
    # Each POST but the last got an answer saying no video was made: a 429, or a 503 that says so.
    answered = [served[min(index, len(served) - 1)] for index in range(posts - 1)]
    assert all(answer.status in (429, 503) for answer in answered)


@examples(60)
@given(
    polls=st.lists(
        answers | status_payloads.map(lambda p: Answer.json(json.dumps(p))), min_size=1, max_size=4
    )
)
def test_a_trigger_yields_exactly_one_event_whatever_the_polls_get(
    server: HostileServer, polls: list[Answer]
) -> None:
    server.reset()
    server.script(f"GET {VIDEO}*", *polls)
    trigger = VideoTaskTrigger("video_1", "octopusx_default", poll_interval=0.01, deadline=time.time() + 0.3)

    async def run() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(run())
    assert len(events) == 1
    assert events[0]["status"] in EVENT_STATUSES
    with contextlib.suppress(OctopusXError):  # an event that is not a success raises ours, nothing else
        video_id_from_event(events[0])


@examples(40)
@given(
    polls=st.lists(
        answers | status_payloads.map(lambda p: Answer.json(json.dumps(p))), min_size=1, max_size=4
    )
)
def test_a_batch_trigger_yields_exactly_one_event_of_the_shared_vocabulary(
    server: HostileServer, polls: list[Answer]
) -> None:
    server.reset()
    server.script(f"GET {VIDEO}*", *polls)
    trigger = VideoBatchTrigger(
        ["video_1"], "octopusx_default", poll_interval=0.01, deadline=time.time() + 0.3
    )

    async def run() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    [event] = asyncio.run(run())
    assert checked_event(event)["status"] in ("done", "error")
    if event["status"] == "done":
        assert event["videos"]["video_1"]["status"] in ("completed", "failed", "timeout")


def _content_ranges() -> st.SearchStrategy[str]:
    numbers = st.integers(0, len(MP4) * 2).map(str) | st.sampled_from(["x", "-1", "9" * 30, "*"])
    return st.builds(lambda a, b, c: f"bytes {a}-{b}/{c}", numbers, numbers, numbers) | st.text(max_size=20)


cdn_answers = st.builds(
    lambda status, content_range, length, cut, split: Answer(
        status,
        tuple(
            header
            for header in (
                ("Content-Range", content_range) if content_range is not None else None,
                ("Content-Length", length) if length is not None else None,
            )
            if header
        ),
        lambda: _chunks(MP4[: cut if cut is not None else len(MP4)], split),
        length=False,
    ),
    status=st.sampled_from([200, 206, 206, 403, 416, 500]),
    content_range=st.none() | _content_ranges(),
    length=st.none() | st.integers(0, len(MP4) * 2).map(str) | st.just("abc"),
    cut=st.none() | st.integers(0, len(MP4)),
    split=st.integers(1, 4096),
)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def resuming(server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> HostileServer:
    """Four attempts per download, with no pause between them: resumes and restarts, quickly."""
    hostile_connection(server, monkeypatch, timeout=5, max_attempts=4)
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, error: 0.0)
    return server


@examples(120)
@given(served=st.lists(cdn_answers, min_size=1, max_size=4))
def test_a_download_stores_exactly_the_served_bytes_or_nothing(
    resuming: HostileServer, served: list[Answer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = resuming
    server.reset()
    video = {"id": "video_1", "status": "completed", "video_url": f"{server.url}/cdn/v.mp4"}
    server.script(f"GET {VIDEO}", Answer.json(json.dumps(video)))
    server.script("GET /cdn/*", *served)
    server.script(f"GET {VIDEO}/content", *served)
    folder: Path = tmp_path_factory.mktemp("videos")
    context: dict[str, Any] = {"ti": RecordingTaskInstance(), "task_state_store": MemoryTaskStateStore()}
    download = DownloadVideoOperator(
        task_id="d", video_id="video_1", destination=f"{folder}/", asset_alias=None
    )
    try:
        download.execute(context)
    except OctopusXError:
        assert list(folder.iterdir()) == []
        return
    assert [path.name for path in folder.iterdir()] == ["video_1.mp4"]
    assert (folder / "video_1.mp4").read_bytes() == MP4
