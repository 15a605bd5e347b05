"""The hook against the simulator's gateway flavours: OctopusX as its new-api gateway answers.

Each test here failed before the provider read these shapes (docs/answers.md has the table).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from airflow_octopusx.exceptions import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    QuotaExceededError,
    VideoFailedError,
)
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.simulator import Fault, Simulator
from airflow_octopusx.simulator.faults import ROUTE_CREATE
from airflow_octopusx.simulator.media import sample_mp4
from tests.conftest import HOSTILE_KEY, hostile_connection
from tests.hostile import Answer, HostileServer, Request

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
REQUEST = VideoRequest.build({"prompt": "Ocean waves at golden hour", "seconds": 8, "resolution": "720p"})


@pytest.fixture
def gateway(octopusx_conn: Simulator) -> Simulator:
    octopusx_conn.configure(flavour="new-api", generation_seconds=0.3)
    return octopusx_conn


@pytest.fixture
def hook(gateway: Simulator) -> Iterator[OctopusXHook]:
    with OctopusXHook(timeout=2, retry_policy=FAST) as hook:
        yield hook


def completed(hook: OctopusXHook) -> str:
    video = hook.submit_video(REQUEST)
    hook.wait_for_video(video.id, poll_interval=0.05, deadline=time.time() + 10)
    return video.id


def test_an_unknown_id_answered_400_task_not_exist_is_not_found(hook: OctopusXHook) -> None:
    with pytest.raises(NotFoundError) as raised:
        hook.get_video("video_gone")
    assert (raised.value.status_code, raised.value.code) == (400, "task_not_exist")


def test_the_connection_test_accepts_a_good_key_that_the_gateway_answers_with_400(
    hook: OctopusXHook, gateway: Simulator
) -> None:
    ok, message = hook.test_connection()
    assert ok, message
    assert "the API key was accepted" in message
    assert gateway.stats.videos_created == 0


def test_a_wait_for_many_ends_a_vanished_id_alone(hook: OctopusXHook) -> None:
    kept = completed(hook)
    outcomes = hook.wait_for_videos(["video_vanished", kept], poll_interval=0.05, deadline=time.time() + 10)
    assert outcomes[kept] == {"status": "completed"}
    assert outcomes["video_vanished"]["code"] == "not_found"


def test_a_task_error_keeps_the_gateways_code_and_message(hook: OctopusXHook, gateway: Simulator) -> None:
    gateway.inject(Fault(ROUTE_CREATE, status=400, code="invalid_request", message="prompt is required"))
    with pytest.raises(BadRequestError) as raised:
        hook.submit_video(REQUEST)
    assert (raised.value.code, raised.value.message) == ("invalid_request", "prompt is required")
    assert '"data"' not in str(raised.value)


def test_an_exhausted_quota_is_its_own_error_and_never_blames_the_key(
    hook: OctopusXHook, gateway: Simulator
) -> None:
    gateway.configure(quota_videos=0)
    with pytest.raises(QuotaExceededError) as raised:
        hook.submit_video(REQUEST)
    assert not isinstance(raised.value, AuthenticationError)
    message = str(raised.value)
    assert "quota" in message
    assert "'octopusx_default'" in message
    assert "refused the API key" not in message
    assert gateway.stats.posts == 1  # not retried: a retry cannot pass until the account is topped up


def test_the_link_in_metadata_url_is_downloaded_without_the_key(
    hook: OctopusXHook, gateway: Simulator
) -> None:
    video_id = completed(hook)
    assert hook.download_video(video_id, io.BytesIO()).size == len(sample_mp4())
    stats = gateway.stats
    assert (stats.cdn_gets, stats.content_gets) == (1, 0)
    assert stats.cdn_authorization_headers == ()


def test_the_internal_task_record_of_one_gateway_release_is_read(
    hook: OctopusXHook, gateway: Simulator
) -> None:
    gateway.configure(flavour="new-api-task-dto")
    video = hook.submit_video(REQUEST)
    finished = hook.wait_for_video(video.id, poll_interval=0.05, deadline=time.time() + 10)
    assert (finished.status, finished.progress) == ("completed", 100)
    assert finished.video_url.startswith(gateway.cdn_url)  # its result_url


def test_fail_reason_is_the_failure_message(hook: OctopusXHook, gateway: Simulator) -> None:
    gateway.configure(flavour="new-api-task-dto")
    gateway.fail_next(message="upstream refused the prompt")
    video = hook.submit_video(REQUEST)
    with pytest.raises(VideoFailedError, match="upstream refused the prompt"):
        hook.wait_for_video(video.id, poll_interval=0.05, deadline=time.time() + 10)


def test_a_new_task_reads_unknown_and_is_waited_on_without_a_warning(
    hook: OctopusXHook, gateway: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.configure(generation_seconds=30)
    video = hook.submit_video(REQUEST)
    with caplog.at_level(logging.WARNING):
        seen = hook.get_video(video.id)
    assert seen.status == "queued"
    assert not seen.is_finished
    assert "unknown status" not in caplog.text


def test_a_content_proxy_that_cuts_every_transfer_is_resumed_while_bytes_come(
    hook: OctopusXHook, gateway: Simulator
) -> None:
    size = 1024 * 1024
    gateway.configure(empty_video_url=True, video_size_bytes=size, content_cut_bytes=64 * 1024)
    video_id = completed(hook)
    sink = io.BytesIO()
    assert hook.download_video(video_id, sink, timeout=60).size == size
    assert sink.getvalue().startswith(sample_mp4())
    assert gateway.stats.content_gets == size // (64 * 1024)  # far more than FAST's 4 attempts


@pytest.mark.parametrize("status", [429, 503])
def test_a_refusal_that_created_nothing_is_sent_again(
    hook: OctopusXHook, gateway: Simulator, status: int
) -> None:
    code = {429: "rate_limit_exceeded", 503: "service_unavailable"}[status]
    gateway.inject(Fault(ROUTE_CREATE, status=status, code=code))
    hook.submit_video(REQUEST)
    assert (gateway.stats.posts, gateway.stats.videos_created) == (2, 1)


def test_what_the_gateway_billed_is_kept_on_the_video(hook: OctopusXHook, gateway: Simulator) -> None:
    submitted = hook.submit_video(REQUEST)
    assert submitted.billing == {"ratios": {"seconds": 8, "size": 1}}
    finished = hook.wait_for_video(submitted.id, poll_interval=0.05, deadline=time.time() + 10)
    assert finished.billing == {"usage": {"seconds": 8}}


@pytest.mark.parametrize("field", ["video_url", "metadata"])
def test_a_link_to_the_gateways_own_content_is_fetched_from_the_api_with_the_key_at_once(
    hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """The gateway builds such links from its own configured address, which may not be the connection's."""
    hostile_connection(hostile_server, monkeypatch, max_attempts=3)
    port = hostile_server.url.rsplit(":", 1)[1]
    link = f"http://localhost:{port}/v1/videos/video_1/content"
    video = {"id": "video_1", "status": "completed", field: {"url": link} if field == "metadata" else link}

    def content(request: Request) -> Answer:
        if request.headers.get("authorization") != f"Bearer {HOSTILE_KEY}":
            return Answer.json('{"error": {"message": "no key", "code": "unauthorized"}}', 401)
        return Answer(200, (("Content-Type", "video/mp4"),), sample_mp4())

    hostile_server.script("GET /v1/videos/video_1", Answer.json(json.dumps(video)))
    hostile_server.script("GET /v1/videos/video_1/content", content)
    with OctopusXHook() as hook:
        assert hook.download_video("video_1", io.BytesIO()).size == len(sample_mp4())
    assert len(hostile_server.seen("GET /v1/videos/video_1")) == 1
    [fetched] = hostile_server.seen("GET /v1/videos/video_1/content")
    assert fetched.headers.get("host") == hostile_server.url.removeprefix("http://")
