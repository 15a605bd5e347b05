"""OctopusXHook against the simulator over real sockets: lifecycle, errors, retries, where the key goes."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator

import pytest

from airflow_octopusx.exceptions import (
    AmbiguousSubmissionError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    ServerError,
    TransportError,
    VideoDownloadError,
    VideoFailedError,
    VideoTimeoutError,
)
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.simulator import Fault, Simulator
from airflow_octopusx.simulator.media import sample_mp4
from tests.conftest import BOTH_FLAVOURS, connection_uri

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
REQUEST = VideoRequest.build({"prompt": "Ocean waves at golden hour", "seconds": 8, "resolution": "720p"})


@pytest.fixture
def hook(octopusx_conn: Simulator) -> Iterator[OctopusXHook]:
    octopusx_conn.configure(generation_seconds=0.3)
    with OctopusXHook(timeout=2, retry_policy=FAST) as hook:
        yield hook


def wait_completed(hook: OctopusXHook, video_id: str) -> None:
    hook.wait_for_video(video_id, poll_interval=0.05, deadline=time.time() + 10)


class TestLifecycle:
    @BOTH_FLAVOURS
    def test_submit_then_poll_until_completed(self, hook: OctopusXHook, octopusx_conn: Simulator) -> None:
        submitted = hook.submit_video(REQUEST)
        assert submitted.status == "queued"
        assert submitted.model == "omni-fast"
        seen = []
        while not (video := hook.get_video(submitted.id)).is_finished:
            seen.append((video.status, video.progress))
            time.sleep(0.02)
        assert video.is_completed
        assert video.progress == 100
        assert video.video_url.startswith(octopusx_conn.cdn_url)
        assert {status for status, _ in seen} <= {"queued", "in_progress"}
        progresses = [progress for _, progress in seen]
        assert progresses == sorted(progresses)

    def test_one_connection_serves_the_hooks_life(self, hook: OctopusXHook, octopusx_conn: Simulator) -> None:
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        assert octopusx_conn.stats.gets >= 3
        assert octopusx_conn.stats.api_connections == 1

    def test_wait_for_video_raises_the_api_failure(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.fail_next(code="content_policy_violation", message="The prompt was refused")
        video = hook.submit_video(REQUEST)
        with pytest.raises(VideoFailedError) as caught:
            wait_completed(hook, video.id)
        assert caught.value.code == "content_policy_violation"
        assert str(caught.value) == (
            f"Video {video.id} failed: The prompt was refused (code=content_policy_violation)"
        )

    def test_wait_for_video_times_out_naming_the_video(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.configure(generation_seconds=30)
        video = hook.submit_video(REQUEST)
        started = time.monotonic()
        with pytest.raises(VideoTimeoutError) as caught:
            hook.wait_for_video(video.id, poll_interval=0.1, deadline=time.time() + 0.5)
        assert time.monotonic() - started < 10  # ends at the deadline, not with the 30 s generation
        assert caught.value.video_id == video.id
        assert "may still complete" in str(caught.value)


class TestErrors:
    @BOTH_FLAVOURS
    def test_wrong_key_is_an_authentication_error_that_does_not_show_the_key(
        self, octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn, "sk-wrong-key"))
        with OctopusXHook(retry_policy=FAST) as hook, pytest.raises(AuthenticationError) as caught:
            hook.submit_video(REQUEST)
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        assert "sk-wrong-key" not in str(caught.value)
        assert octopusx_conn.stats.posts == 1
        # What to fix, in the words of Airflow's connection form, not of HTTP headers.
        assert "'API key' field of connection 'octopusx_default'" in str(caught.value)
        assert "Bearer" not in str(caught.value)

    def test_api_validation_errors_surface_the_api_message_and_are_not_retried(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        # Built without VideoRequest.build's checks, as if our rules had missed something.
        unchecked = VideoRequest(prompt="waves", seconds="99")
        with pytest.raises(BadRequestError) as caught:
            hook.submit_video(unchecked)
        assert caught.value.status_code == 400
        assert "seconds" in caught.value.message
        assert octopusx_conn.stats.posts == 1
        assert octopusx_conn.stats.videos_created == 0

    @BOTH_FLAVOURS
    def test_unknown_video_is_not_found(self, hook: OctopusXHook) -> None:
        with pytest.raises(NotFoundError) as caught:
            hook.get_video("video_does_not_exist")
        assert caught.value.video_id == "video_does_not_exist"

    def test_unreachable_api_is_a_transport_error_after_retries(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        conn = {"conn_type": "octopusx", "host": f"http://127.0.0.1:{closed_port}", "password": "k"}
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", json.dumps(conn))
        with OctopusXHook(retry_policy=FAST) as hook, pytest.raises(TransportError) as caught:
            hook.submit_video(REQUEST)
        assert not caught.value.request_sent


class TestRotatedKey:
    def test_a_rotated_key_is_picked_up_by_a_wait_that_is_running(
        self, hook: OctopusXHook, octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        video = hook.submit_video(REQUEST)
        hook.get_video(video.id)
        # As an admin does it: the connection gets the new key, then the old key is revoked.
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn, "sk-rotated"))
        octopusx_conn.rotate_api_key("sk-rotated")

        wait_completed(hook, video.id)

        assert octopusx_conn.stats.unauthorized == 1
        assert hook.endpoint.api_key == "sk-rotated"

    def test_a_revoked_key_still_in_the_connection_fails_after_one_lookup(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        video = hook.submit_video(REQUEST)
        octopusx_conn.rotate_api_key("sk-elsewhere")
        gets = octopusx_conn.stats.gets
        with pytest.raises(AuthenticationError) as caught:
            hook.get_video(video.id)
        assert caught.value.status_code == 401
        assert octopusx_conn.stats.gets == gets + 1
        assert str(caught.value).count("'API key' field of connection 'octopusx_default'") == 1


class TestRetries:
    def test_timeout_and_attempts_come_from_the_connection_extra(
        self, octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        conn = {**json.loads(connection_uri(octopusx_conn)), "extra": {"timeout": 0.3, "max_attempts": 2}}
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", json.dumps(conn))
        with OctopusXHook() as hook:
            video = hook.submit_video(REQUEST)
            # Each poll would be answered after 1 s: in time for the default 30 s timeout, not for 0.3 s.
            octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", kind="delay", delay_seconds=1, times=3))
            with pytest.raises(TransportError, match="ReadTimeout"):
                hook.get_video(video.id)
        assert octopusx_conn.stats.gets == 2

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    def test_polls_are_retried_on_server_errors(
        self, hook: OctopusXHook, octopusx_conn: Simulator, status: int
    ) -> None:
        video = hook.submit_video(REQUEST)
        octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", status=status, times=2))
        assert hook.get_video(video.id).id == video.id
        assert octopusx_conn.stats.gets == 3

    def test_polls_survive_a_reset_connection(self, hook: OctopusXHook, octopusx_conn: Simulator) -> None:
        video = hook.submit_video(REQUEST)
        octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", kind="reset"))
        assert hook.get_video(video.id).id == video.id
        assert octopusx_conn.stats.gets == 2

    def test_polls_survive_an_answer_slower_than_the_client_timeout(
        self, octopusx_conn: Simulator, hook: OctopusXHook
    ) -> None:
        video = hook.submit_video(REQUEST)
        octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", kind="delay", delay_seconds=3))
        assert hook.get_video(video.id).id == video.id
        assert octopusx_conn.stats.gets == 2

    @pytest.mark.parametrize("http_date", [False, True])
    def test_retry_after_is_honoured(
        self, hook: OctopusXHook, octopusx_conn: Simulator, http_date: bool
    ) -> None:
        video = hook.submit_video(REQUEST)
        octopusx_conn.inject(
            Fault(route="GET /v1/videos/{id}", status=429, retry_after=2, retry_after_http_date=http_date)
        )
        started = time.monotonic()
        hook.get_video(video.id)
        # An HTTP date has whole-second precision, so the wait may be up to a second shorter.
        assert time.monotonic() - started >= (1.0 if http_date else 2.0)
        assert octopusx_conn.stats.gets == 2

    @pytest.mark.parametrize(
        "refusal",
        [
            Fault(route="POST /v1/videos", status=429, retry_after=0),
            Fault(route="POST /v1/videos", status=503, retry_after=0),
        ],
    )
    @BOTH_FLAVOURS
    def test_refused_submissions_are_sent_again_and_create_one_video(
        self, hook: OctopusXHook, octopusx_conn: Simulator, refusal: Fault
    ) -> None:
        octopusx_conn.inject(refusal)
        hook.submit_video(REQUEST)
        assert octopusx_conn.stats.posts == 2
        assert octopusx_conn.stats.videos_created == 1

    @pytest.mark.parametrize("status", [500, 502, 504])
    def test_submissions_that_may_have_started_are_not_sent_again(
        self, hook: OctopusXHook, octopusx_conn: Simulator, status: int
    ) -> None:
        octopusx_conn.inject(Fault(route="POST /v1/videos", status=status))
        with pytest.raises(ServerError):
            hook.submit_video(REQUEST)
        assert octopusx_conn.stats.posts == 1

    def test_a_submission_whose_answer_is_lost_is_ambiguous_and_not_sent_again(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.inject(Fault(route="POST /v1/videos", kind="delay", delay_seconds=3))
        with pytest.raises(AmbiguousSubmissionError, match="may have reached OctopusX"):
            hook.submit_video(REQUEST)
        assert octopusx_conn.stats.posts == 1


class TestDownload:
    @BOTH_FLAVOURS
    def test_streams_the_mp4_from_the_cdn_without_the_key(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        sink = io.BytesIO()
        assert hook.download_video(video.id, sink).size == len(sample_mp4())
        assert sink.getvalue() == sample_mp4()
        stats = octopusx_conn.stats
        assert stats.cdn_gets == 1
        assert stats.content_gets == 0
        assert all(octopusx_conn.api_key not in header for header in stats.cdn_authorization_headers)

    def test_large_videos_arrive_whole_in_chunks(self, hook: OctopusXHook, octopusx_conn: Simulator) -> None:
        octopusx_conn.configure(video_size_bytes=9 * 1024 * 1024 + 17)
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        chunks: list[int] = []

        class Sink(io.RawIOBase):
            def write(self, data: bytes) -> int:  # type: ignore[override]
                chunks.append(len(data))
                return len(data)

        assert hook.download_video(video.id, Sink(), chunk_size=1024 * 1024).size == 9 * 1024 * 1024 + 17
        assert max(chunks) <= 1024 * 1024
        assert len(chunks) >= 10

    @BOTH_FLAVOURS
    def test_empty_video_url_falls_back_to_the_content_proxy(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.configure(empty_video_url=True)
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        sink = io.BytesIO()
        hook.download_video(video.id, sink)
        assert sink.getvalue() == sample_mp4()
        assert (octopusx_conn.stats.cdn_gets, octopusx_conn.stats.content_gets) == (0, 1)

    @pytest.mark.parametrize(
        ("refusals", "cdn_gets", "content_gets", "video_gets"),
        [(1, 2, 0, 3), (2, 2, 1, 4)],
        ids=["fresh-link", "content-proxy"],
    )
    def test_a_refused_signed_link_is_renewed_then_replaced_by_the_content_proxy(
        self,
        hook: OctopusXHook,
        octopusx_conn: Simulator,
        refusals: int,
        cdn_gets: int,
        content_gets: int,
        video_gets: int,
    ) -> None:
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        octopusx_conn.inject(Fault(route="GET cdn", status=403, times=refusals))
        before = octopusx_conn.stats.gets
        sink = io.BytesIO()
        hook.download_video(video.id, sink)
        assert sink.getvalue() == sample_mp4()
        stats = octopusx_conn.stats
        assert (stats.cdn_gets, stats.content_gets) == (cdn_gets, content_gets)
        assert stats.gets - before == video_gets - 1  # the video is looked up afresh for every attempt

    def test_the_key_is_dropped_when_content_redirects_to_the_cdn(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.configure(empty_video_url=True, content_redirect=True)
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        octopusx_conn.inject(Fault(route="GET cdn", status=403))  # the first redirect's link is refused
        sink = io.BytesIO()
        hook.download_video(video.id, sink)
        assert sink.getvalue() == sample_mp4()
        stats = octopusx_conn.stats
        assert (stats.content_gets, stats.cdn_gets) == (2, 2)
        assert stats.cdn_authorization_headers == ()

    @BOTH_FLAVOURS
    @pytest.mark.parametrize("route", ["GET cdn", "GET /v1/videos/{id}/content"])
    def test_a_cut_transfer_resumes_where_it_stopped(
        self, hook: OctopusXHook, octopusx_conn: Simulator, route: str
    ) -> None:
        octopusx_conn.configure(video_size_bytes=3 * 1024 * 1024, empty_video_url=route != "GET cdn")
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        octopusx_conn.inject(Fault(route=route, kind="truncate"))
        sink = io.BytesIO()
        assert hook.download_video(video.id, sink).size == 3 * 1024 * 1024
        assert sink.getvalue().startswith(sample_mp4())
        assert octopusx_conn.stats.cdn_gets + octopusx_conn.stats.content_gets == 2

    def test_a_video_over_the_size_cap_is_refused_before_its_body_is_read(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.configure(video_size_bytes=5 * 1024 * 1024)
        video = hook.submit_video(REQUEST)
        wait_completed(hook, video.id)
        sink = io.BytesIO()
        with pytest.raises(VideoDownloadError, match="over the cap of 1048576"):
            hook.download_video(video.id, sink, max_bytes=1024 * 1024)
        assert sink.getvalue() == b""

    def test_an_unfinished_video_cannot_be_downloaded(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        octopusx_conn.configure(generation_seconds=30)
        video = hook.submit_video(REQUEST)
        with pytest.raises(VideoDownloadError, match="not completed"):
            hook.download_video(video.id, io.BytesIO())
        assert octopusx_conn.stats.cdn_gets == 0


class TestConnection:
    @BOTH_FLAVOURS
    def test_a_good_connection_passes_without_creating_a_video(
        self, hook: OctopusXHook, octopusx_conn: Simulator
    ) -> None:
        ok, message = hook.test_connection()
        assert ok, message
        assert octopusx_conn.stats.videos_created == 0
        assert octopusx_conn.stats.posts == 0

    @BOTH_FLAVOURS
    def test_a_wrong_key_fails_with_the_api_message(
        self, octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_conn, "sk-wrong"))
        ok, message = OctopusXHook().test_connection()
        assert not ok
        assert "HTTP 401" in message
        assert "sk-wrong" not in message
        assert "Check the 'API key' field" in message

    def test_messages_do_not_name_the_throwaway_id_of_the_ui_test(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The Test button stores the form under a random connection id; naming it would only puzzle.
        monkeypatch.setenv(
            "AIRFLOW_CONN_RANDOM_TEST_ID",
            '{"conn_type": "octopusx", "host": "http://example.com", "password": "key"}',
        )
        ok, message = OctopusXHook("random_test_id").test_connection()
        assert not ok
        assert message.startswith("This connection: base URL 'http://example.com' must use https://")
        assert "random_test_id" not in message


class TestAsync:
    @BOTH_FLAVOURS
    async def test_aget_video_polls_over_one_connection(self, octopusx_conn: Simulator) -> None:
        octopusx_conn.configure(generation_seconds=0.3)
        with OctopusXHook() as sync_hook:
            video = sync_hook.submit_video(REQUEST)
        async with OctopusXHook(retry_policy=FAST) as hook:
            for _ in range(5):
                latest = await hook.aget_video(video.id)
            assert latest.id == video.id
        assert octopusx_conn.stats.gets == 5
        assert octopusx_conn.stats.api_connections == 2  # one for the submit, one for all async polls

    async def test_aget_video_needs_the_async_context(self, octopusx_conn: Simulator) -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await OctopusXHook().aget_video("video_x")
