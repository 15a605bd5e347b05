"""Hook behaviour against httpx's MockTransport: error mapping, retry decisions, where the key goes.

The same behaviours are exercised over real sockets against the simulator in ``test_hook.py``.
"""

from __future__ import annotations

import email.utils
import io
import json
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_octopusx.exceptions import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    OctopusXError,
    RateLimitError,
    ServerError,
    TransportError,
    VideoDownloadError,
)
from airflow_octopusx.hooks.connection import ApiEndpoint
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy, parse_retry_after
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.simulator.media import sample_mp4

API = "https://api.octopusx.test"
KEY = "sk-unit-test-key"
FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002)


@pytest.fixture(autouse=True)
def connection_of_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection ``make_hook``'s endpoint stands for: a refused key makes the hook look it up."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_OCTOPUSX_DEFAULT", json.dumps({"conn_type": "octopusx", "host": API, "password": KEY})
    )


def make_hook(handler: Callable[[httpx.Request], httpx.Response]) -> OctopusXHook:
    return OctopusXHook(retry_policy=FAST, transport=httpx.MockTransport(handler))


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Recorder:
    """A MockTransport handler that answers from a script and keeps every request."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer


VIDEO = {"id": "video_1", "task_id": "video_1", "status": "in_progress", "progress": 40}
REQUEST = VideoRequest.build({"prompt": "waves", "seconds": 8})


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (422, BadRequestError),
        (409, APIError),
    ],
)
def test_error_statuses_map_to_error_classes_with_code_message_and_ids(
    status: int, error_class: type[APIError]
) -> None:
    answer = httpx.Response(status, json=error_body("Nope", "some_code"), headers={"x-request-id": "req_9"})
    hook = make_hook(Recorder(answer))
    with pytest.raises(error_class) as caught:
        hook.get_video("video_1")
    error = caught.value
    assert type(error) is error_class
    assert (error.status_code, error.code, error.message, error.request_id, error.video_id) == (
        status,
        "some_code",
        "Nope",
        "req_9",
        "video_1",
    )
    said = f"Nope (HTTP {status}, code=some_code, video_id=video_1, request_id=req_9)"
    if error_class is AuthenticationError:
        # A refused key also says what to fix in Airflow.
        said = (
            f"OctopusX refused the API key: {said}. "
            "Check the 'API key' field of connection 'octopusx_default' (Admin > Connections)."
        )
    assert str(error) == said


def test_non_json_error_body_is_shown_shortened() -> None:
    hook = make_hook(Recorder(httpx.Response(502, text="<html>Bad gateway</html>" + "x" * 500)))
    with pytest.raises(ServerError) as caught:
        hook.get_video("video_1")
    assert caught.value.message.startswith("<html>Bad gateway</html>")
    assert len(caught.value.message) == 200


def test_get_is_retried_on_5xx_429_and_transport_errors_then_succeeds() -> None:
    recorder = Recorder(
        httpx.Response(503, json=error_body("busy", "overloaded")),
        httpx.Response(429, json=error_body("slow down", "rate_limit")),
        httpx.ReadTimeout("read timed out"),
        httpx.Response(200, json=VIDEO),
    )
    video = make_hook(recorder).get_video("video_1")
    assert video.progress == 40
    assert len(recorder.requests) == 4


def test_get_gives_up_after_max_attempts() -> None:
    recorder = Recorder(httpx.Response(500, json=error_body("boom", "server_error")))
    with pytest.raises(ServerError):
        make_hook(recorder).get_video("video_1")
    assert len(recorder.requests) == FAST.max_attempts


@pytest.mark.parametrize("status", [400, 401, 404])
def test_get_is_not_retried_on_client_errors(status: int) -> None:
    recorder = Recorder(httpx.Response(status, json=error_body("no", "x")))
    with pytest.raises(APIError):
        make_hook(recorder).get_video("video_1")
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json=error_body("boom", "server_error")),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(503, json=error_body("busy", "overloaded")),
    ],
)
def test_post_is_not_retried_when_the_server_may_have_started_work(answer: httpx.Response) -> None:
    recorder = Recorder(answer)
    with pytest.raises(ServerError):
        make_hook(recorder).submit_video(REQUEST)
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(429, json=error_body("slow down", "rate_limit"), headers={"Retry-After": "0"}),
        httpx.Response(503, json=error_body("busy", "overloaded"), headers={"Retry-After": "0"}),
        httpx.ConnectError("connection refused"),
    ],
)
def test_post_is_retried_when_the_server_provably_did_no_work(refusal: httpx.Response | Exception) -> None:
    recorder = Recorder(refusal, httpx.Response(200, json={**VIDEO, "status": "queued", "progress": 0}))
    video = make_hook(recorder).submit_video(REQUEST)
    assert video.id == "video_1"
    assert len(recorder.requests) == 2
    assert recorder.requests[0].content == recorder.requests[1].content


def test_post_read_timeout_is_ambiguous_and_never_sent_again() -> None:
    recorder = Recorder(httpx.ReadTimeout("read timed out"))
    with pytest.raises(AmbiguousSubmissionError) as caught:
        make_hook(recorder).submit_video(REQUEST)
    assert len(recorder.requests) == 1
    assert "may have reached OctopusX" in str(caught.value)
    assert caught.value.request_sent


def test_post_connect_errors_that_persist_end_as_transport_errors() -> None:
    recorder = Recorder(httpx.ConnectError("connection refused"))
    with pytest.raises(TransportError) as caught:
        make_hook(recorder).submit_video(REQUEST)
    assert not isinstance(caught.value, AmbiguousSubmissionError)
    assert len(recorder.requests) == FAST.max_attempts


def test_submit_sends_bearer_json_to_the_api() -> None:
    recorder = Recorder(httpx.Response(200, json={**VIDEO, "status": "queued"}))
    make_hook(recorder).submit_video(REQUEST)
    sent = recorder.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == f"{API}/v1/videos"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert b'"seconds":"8"' in sent.content


def test_key_goes_only_to_the_api_origin() -> None:
    recorder = Recorder(httpx.Response(200, content=sample_mp4()))
    hook = make_hook(recorder)
    for url in (
        "https://cdn.octopusx.test/v.mp4",
        "http://api.octopusx.test/v1/videos",
        "https://api.octopusx.test:8443/v1/videos",
    ):
        hook.client.get(url)
    hook.client.get("/v1/videos/x")
    assert [("Authorization" in r.headers) for r in recorder.requests] == [False, False, False, True]


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(200, text="<html>maintenance</html>"), httpx.Response(200, json={"status": "queued"})],
)
def test_a_malformed_answer_is_an_octopusx_error(answer: httpx.Response) -> None:
    with pytest.raises(InvalidResponseError, match=r"not JSON|no valid video id"):
        make_hook(Recorder(answer)).get_video("video_1")


def test_a_video_url_that_is_not_http_is_skipped_for_the_content_proxy() -> None:
    mp4 = sample_mp4()
    recorder = Recorder(
        httpx.Response(200, json={"id": "video_1", "status": "completed", "video_url": "file:///etc/passwd"}),
        httpx.Response(200, content=mp4),
    )
    sink = io.BytesIO()
    assert make_hook(recorder).download_video("video_1", sink).size == len(mp4)
    assert [str(r.url) for r in recorder.requests] == [
        f"{API}/v1/videos/video_1",
        f"{API}/v1/videos/video_1/content",
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>not a video</html>", "not an MP4"),
        (b"\x00\x00", "inside an MP4 box"),
        (sample_mp4()[:-100], "inside an MP4 box"),
        (sample_mp4()[:32], "no moov or mdat box"),  # ends right after the ftyp box
    ],
)
def test_downloads_are_checked_for_the_mp4_signature(body: bytes, problem: str) -> None:
    status = {"id": "video_1", "status": "completed", "video_url": "https://cdn.test/v.mp4"}
    # Each attempt looks the video up again, then gets the same body.
    recorder = Recorder(*[httpx.Response(200, json=status), httpx.Response(200, content=body)] * 10)
    with pytest.raises((VideoDownloadError, TransportError), match=problem):
        make_hook(recorder).download_video("video_1", io.BytesIO())


def test_a_body_shorter_than_its_content_length_is_fetched_again() -> None:
    mp4 = sample_mp4()
    short = httpx.Response(200, content=mp4, headers={"Content-Length": str(len(mp4) + 10)})
    recorder = Recorder(httpx.Response(200, json=COMPLETED), short, httpx.Response(200, json=COMPLETED), mp4)
    recorder.answers[-1] = lambda: httpx.Response(200, content=mp4)
    sink = io.BytesIO()
    assert make_hook(recorder).download_video("video_1", sink).size == len(mp4)
    assert sink.getvalue() == mp4


class CutStream(httpx.SyncByteStream):
    """A body that breaks after ``cut`` bytes, as a dropped connection does."""

    def __init__(self, body: bytes, cut: int) -> None:
        self.body, self.cut = body, cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.body[: self.cut]
        raise httpx.ReadError("connection reset by peer")


MP4 = sample_mp4()
COMPLETED = {"id": "video_1", "status": "completed", "video_url": "https://cdn.test/v.mp4"}


def cut_answer() -> httpx.Response:
    return httpx.Response(200, headers={"Content-Length": str(len(MP4))}, stream=CutStream(MP4, 100))


def test_a_cut_transfer_resumes_with_a_range_request() -> None:
    recorder = Recorder(
        httpx.Response(200, json=COMPLETED),
        cut_answer(),
        httpx.Response(200, json=COMPLETED),
        httpx.Response(
            206, content=MP4[100:], headers={"Content-Range": f"bytes 100-{len(MP4) - 1}/{len(MP4)}"}
        ),
    )
    sink = io.BytesIO()
    # Small chunks, so the 100 bytes before the cut reach the file rather than a half-filled chunk.
    assert make_hook(recorder).download_video("video_1", sink, chunk_size=20).size == len(MP4)
    assert sink.getvalue() == MP4
    assert recorder.requests[3].headers["Range"] == "bytes=100-"


def test_a_server_that_ignores_range_gets_a_clean_restart() -> None:
    recorder = Recorder(
        httpx.Response(200, json=COMPLETED),
        cut_answer(),
        httpx.Response(200, json=COMPLETED),
        httpx.Response(200, content=MP4),
    )
    sink = io.BytesIO()
    assert make_hook(recorder).download_video("video_1", sink, chunk_size=20).size == len(MP4)
    assert sink.getvalue() == MP4
    assert recorder.requests[3].headers["Range"] == "bytes=100-"


def test_a_body_growing_past_the_cap_is_stopped() -> None:
    unannounced = httpx.ByteStream(MP4)  # no Content-Length to check up front
    recorder = Recorder(httpx.Response(200, json=COMPLETED), httpx.Response(200, stream=unannounced))
    with pytest.raises(VideoDownloadError, match="over the cap of 500"):
        make_hook(recorder).download_video("video_1", io.BytesIO(), max_bytes=500)


def test_a_download_gives_up_after_the_attempt_budget() -> None:
    recorder = Recorder(*[lambda: httpx.Response(200, json=COMPLETED), cut_answer] * FAST.max_attempts)
    with pytest.raises(TransportError, match="broke after"):
        make_hook(recorder).download_video("video_1", io.BytesIO())
    assert len(recorder.requests) == 2 * FAST.max_attempts


def test_video_ids_are_escaped_in_paths() -> None:
    recorder = Recorder(httpx.Response(200, json=VIDEO))
    with pytest.raises(InvalidResponseError, match="describes video"):  # it answers about another video
        make_hook(recorder).get_video("a/../b")
    assert recorder.requests[0].url.raw_path == b"/v1/videos/a%2F..%2Fb"


class TestRetryPolicy:
    def test_retry_after_is_honoured_and_capped(self) -> None:
        policy = RetryPolicy(max_retry_after=30)
        limited = RateLimitError("slow", status_code=429, retry_after=7)
        assert policy.delay(1, limited) == 7
        assert policy.delay(1, RateLimitError("slow", status_code=429, retry_after=999)) == 30

    def test_backoff_grows_is_capped_and_jittered(self) -> None:
        policy = RetryPolicy(base_delay=1, max_delay=8)
        delays = {attempt: [policy.delay(attempt, None) for _ in range(200)] for attempt in (1, 2, 3, 6)}
        assert all(0.5 <= d <= 1 for d in delays[1])
        assert all(1 <= d <= 2 for d in delays[2])
        assert all(2 <= d <= 4 for d in delays[3])
        assert all(4 <= d <= 8 for d in delays[6])
        assert len(set(delays[6])) > 100

    def test_retry_after_parses_seconds_and_http_dates(self) -> None:
        assert parse_retry_after("3") == 3
        assert parse_retry_after("1.5") == 1.5
        later = email.utils.formatdate(time.time() + 20, usegmt=True)
        assert 18 <= (parse_retry_after(later) or 0) <= 20
        assert parse_retry_after(email.utils.formatdate(time.time() - 50, usegmt=True)) == 0
        assert parse_retry_after("soon") is None
        assert parse_retry_after(None) is None


def connection(**fields: Any) -> Any:
    values = {"conn_id": "octopusx_default", "host": None, "password": KEY, "port": None, "extra_dejson": {}}
    return SimpleNamespace(**{**values, **fields})


class TestApiEndpoint:
    def test_host_defaults_to_octopusx(self) -> None:
        assert ApiEndpoint.from_connection(connection()).base_url == "https://octopusx.ai"

    def test_host_without_scheme_gets_https_and_port_is_applied(self) -> None:
        endpoint = ApiEndpoint.from_connection(connection(host="api.example.com/", port=8443))
        assert endpoint.base_url == "https://api.example.com:8443"

    def test_plain_http_is_refused_except_on_loopback_or_when_allowed(self) -> None:
        with pytest.raises(OctopusXError, match="must use https"):
            ApiEndpoint.from_connection(connection(host="http://api.example.com"))
        assert ApiEndpoint.from_connection(connection(host="http://127.0.0.1:9000")).base_url
        assert ApiEndpoint.from_connection(connection(host="http://localhost:9000")).base_url
        allowed = connection(host="http://gateway.internal", extra_dejson={"allow_insecure_http": True})
        assert ApiEndpoint.from_connection(allowed).base_url == "http://gateway.internal"

    def test_missing_key_is_a_clear_error(self) -> None:
        with pytest.raises(OctopusXError, match="has no API key: fill in its 'API key' field"):
            ApiEndpoint.from_connection(connection(password=""))

    def test_port_is_applied_to_ipv6_hosts_too(self) -> None:
        endpoint = ApiEndpoint.from_connection(connection(host="http://[::1]", port=8765))
        assert endpoint.base_url == "http://[::1]:8765"

    @pytest.mark.parametrize("flag", [False, "false", "False", None])
    def test_insecure_http_stays_refused_unless_the_flag_is_true(self, flag: Any) -> None:
        conn = connection(host="http://gateway.internal", extra_dejson={"allow_insecure_http": flag})
        with pytest.raises(OctopusXError, match="must use https"):
            ApiEndpoint.from_connection(conn)

    def test_key_is_not_in_repr(self) -> None:
        assert KEY not in repr(ApiEndpoint.from_connection(connection()))

    def test_timeout_and_attempts_default_and_come_from_the_extra(self) -> None:
        default = ApiEndpoint.from_connection(connection())
        assert (default.timeout, default.max_attempts) == (30.0, 5)
        for extra in ({"timeout": 2.5, "max_attempts": 2}, {"timeout": "2.5", "max_attempts": "2"}):
            endpoint = ApiEndpoint.from_connection(connection(extra_dejson=extra))
            assert (endpoint.timeout, endpoint.max_attempts) == (2.5, 2)
            assert isinstance(endpoint.max_attempts, int)
        empty = ApiEndpoint.from_connection(connection(extra_dejson={"timeout": "", "max_attempts": None}))
        assert (empty.timeout, empty.max_attempts) == (30.0, 5)

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            ({"timeout": 0}, "extra 'timeout' must be a number of seconds > 0, got 0"),
            ({"timeout": "soon"}, "extra 'timeout' must be a number of seconds > 0, got 'soon'"),
            ({"timeout": "inf"}, "extra 'timeout' must be a number of seconds > 0, got 'inf'"),
            ({"timeout": True}, "extra 'timeout' must be a number of seconds > 0, got True"),
            ({"max_attempts": 0}, "extra 'max_attempts' must be a whole number >= 1, got 0"),
            ({"max_attempts": 2.5}, "extra 'max_attempts' must be a whole number >= 1, got 2.5"),
            ({"max_attempts": [3]}, "extra 'max_attempts' must be a whole number >= 1, got \\[3\\]"),
        ],
    )
    def test_bad_timeout_or_attempts_name_the_extra_and_the_allowed_values(
        self, extra: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(OctopusXError, match=f"Connection 'octopusx_default': {message}"):
            ApiEndpoint.from_connection(connection(extra_dejson=extra))

    def test_the_hook_takes_attempts_from_the_connection_unless_given_a_policy(self) -> None:
        hook = OctopusXHook()
        hook._endpoint = ApiEndpoint(API, KEY, max_attempts=2)
        assert hook.retry_policy.max_attempts == 2
        assert OctopusXHook(retry_policy=FAST).retry_policy is FAST
