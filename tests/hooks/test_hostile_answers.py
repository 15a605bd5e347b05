"""The hook against answers OctopusX documents nowhere, over real sockets (``tests/hostile.py``).

Each test stands for a defect an independent review found: every one failed before the fix.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_octopusx.exceptions import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    OctopusXError,
    ServerError,
    TransportError,
    VideoDownloadError,
    VideoFailedError,
)
from airflow_octopusx.hooks.answers import MAX_ANSWER_BYTES, transport_error
from airflow_octopusx.hooks.connection import ApiEndpoint
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.simulator.media import free_box_header, sample_mp4
from tests.conftest import HOSTILE_KEY, hostile_connection
from tests.hostile import Answer, HostileServer, Request

MP4 = sample_mp4()
VIDEO = "/v1/videos/video_1"


def video(status: str = "completed", **fields: Any) -> Answer:
    return Answer.json(json.dumps({"id": "video_1", "status": status, **fields}))


@pytest.fixture
def server(hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> HostileServer:
    hostile_connection(hostile_server, monkeypatch)
    return hostile_server


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse, and record, any connection this process tries to open to a non-loopback address.

    A safety net for the link tests: were the link rules broken, no packet would leave this machine.
    """
    attempts: list[Any] = []
    connect = socket.create_connection

    def guarded(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        if address[0] not in ("127.0.0.1", "localhost"):
            attempts.append(address)
            raise OSError(f"test guard: no connection to {address[0]}")
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    return attempts


def download(hook: OctopusXHook, **kwargs: Any) -> bytes:
    sink = io.BytesIO()
    hook.download_video("video_1", sink, **kwargs)
    return sink.getvalue()


class TestTheKey:
    @pytest.mark.parametrize("padding", ["\n", "\r\n", "\t", "  "])
    def test_stray_whitespace_around_the_key_is_dropped(
        self, hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch, padding: str
    ) -> None:
        hostile_connection(hostile_server, monkeypatch, password=f"{padding}{HOSTILE_KEY}{padding}")
        hostile_server.script(f"GET {VIDEO}", video("queued"))
        with OctopusXHook() as hook:
            hook.get_video("video_1")
        assert hostile_server.requests[0].headers["authorization"] == f"Bearer {HOSTILE_KEY}"

    @pytest.mark.parametrize("inside", ["\n", "\r\n", "\t", "\x00", " ", "é"])
    def test_a_key_that_cannot_be_a_header_is_refused_naming_the_connection_never_the_key(
        self, hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch, inside: str
    ) -> None:
        hostile_connection(hostile_server, monkeypatch, password=f"sk-secret{inside}part")
        with OctopusXHook() as hook:
            with pytest.raises(OctopusXError, match=r"'octopusx_default'.*'API key' field") as caught:
                hook.get_video("video_1")
            ok, message = hook.test_connection()
        assert not ok
        for text in (str(caught.value), message):
            assert "secret" not in text
            assert "part" not in text
        assert hostile_server.requests == []

    def test_an_error_from_a_header_httpx_refused_never_quotes_it(self) -> None:
        refused = httpx.LocalProtocolError("Illegal header value b'Bearer sk-secret\\n'")
        error = transport_error(refused, "GET /v1/videos/x")
        assert "sk-secret" not in str(error)
        assert isinstance(error, TransportError)
        assert not error.request_sent


class TestSubmissions:
    @pytest.mark.parametrize(
        "answer",
        [
            Answer(200, (("Content-Type", "text/html"),), b"<html>Welcome to the proxy</html>"),
            Answer.json("[]"),
            Answer.json('{"status": "queued"}'),
            Answer.json('{"id": "video_1\\r\\nINFO forged line", "status": "queued"}'),
            Answer.json(json.dumps({"id": "v" * 100_000, "status": "queued"})),
            Answer(200, (("Content-Encoding", "gzip"),), b"not gzip at all"),
            Answer(307, (("Location", "http://127.0.0.2:9/v1/videos"),)),
            Answer(302, (("Location", "/v1/videos/elsewhere"),)),
        ],
    )
    def test_an_answer_that_names_no_video_is_ambiguous_and_never_sent_twice(
        self, server: HostileServer, answer: Answer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hostile_connection(server, monkeypatch, max_attempts=5)
        server.script("POST /v1/videos", answer)
        with OctopusXHook() as hook, pytest.raises(AmbiguousSubmissionError) as caught:
            hook.submit_video(VideoRequest.build({"prompt": "waves"}))
        assert [request.route for request in server.requests] == ["POST /v1/videos"]
        assert "\n" not in str(caught.value)
        assert len(str(caught.value)) < 1000

    def test_a_refusal_up_front_is_still_retried(
        self, server: HostileServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hostile_connection(server, monkeypatch, max_attempts=2)
        server.script(
            "POST /v1/videos",
            Answer.json('{"error": "slow down"}', 429, ("Retry-After", "0")),
            Answer.json('{"id": "video_1", "status": "queued"}'),
        )
        with OctopusXHook() as hook:
            assert hook.submit_video(VideoRequest.build({"prompt": "waves"})).id == "video_1"
        assert len(server.seen("POST /v1/videos")) == 2


class TestMalformedAnswers:
    @pytest.mark.parametrize("body", ["[1, 2]", '"just a string"', "null", "42", '{"error": 7}', "{{{"])
    @pytest.mark.parametrize(("status", "error_class"), [(400, BadRequestError), (500, ServerError)])
    def test_any_error_body_becomes_the_error_of_its_status(
        self, server: HostileServer, body: str, status: int, error_class: type[APIError]
    ) -> None:
        server.script(f"GET {VIDEO}", Answer.json(body, status))
        with OctopusXHook() as hook, pytest.raises(error_class) as caught:
            hook.get_video("video_1")
        assert caught.value.status_code == status

    @pytest.mark.parametrize(
        ("progress", "read"),
        [("NaN", 0), ("Infinity", 0), ("-Infinity", 0), ("1e400", 0), ("9" * 400, 100), ('"50%"', 50)],
    )
    def test_odd_progress_values_are_read_not_raised(
        self, server: HostileServer, progress: str, read: float
    ) -> None:
        server.script(
            f"GET {VIDEO}",
            Answer.json(f'{{"id": "video_1", "status": "in_progress", "progress": {progress}}}'),
        )
        with OctopusXHook() as hook:
            assert hook.get_video("video_1").progress == read

    def test_a_redirect_loop_is_an_invalid_answer(self, server: HostileServer) -> None:
        server.script(f"GET {VIDEO}", Answer(302, (("Location", VIDEO),)))
        with OctopusXHook() as hook, pytest.raises(InvalidResponseError, match="redirects"):
            hook.get_video("video_1")
        assert len(server.requests) == 6

    def test_an_undecodable_body_is_an_invalid_answer(self, server: HostileServer) -> None:
        server.script(f"GET {VIDEO}", Answer(200, (("Content-Encoding", "gzip"),), b"\x1f\x8b garbage"))
        with OctopusXHook() as hook, pytest.raises(InvalidResponseError, match="DecodingError"):
            hook.get_video("video_1")

    def test_an_invalid_answer_to_a_status_check_is_asked_again(
        self, server: HostileServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hostile_connection(server, monkeypatch, max_attempts=3)
        server.script(f"GET {VIDEO}", Answer(200, (), b"<html>proxy</html>"), video("queued"))
        with OctopusXHook() as hook:
            assert hook.get_video("video_1").status == "queued"
        assert len(server.requests) == 2

    @pytest.mark.parametrize("status", ["canceled", "cancelled", "error", "failed"])
    def test_every_spelling_of_the_end_ends_the_wait(self, server: HostileServer, status: str) -> None:
        server.script(f"GET {VIDEO}", video(status, error="The vendor gave up"))
        with OctopusXHook() as hook, pytest.raises(VideoFailedError, match="The vendor gave up"):
            hook.wait_for_video("video_1", poll_interval=60, deadline=float("inf"))
        assert len(server.requests) == 1


class TestUnboundedReads:
    @pytest.mark.parametrize("status", [200, 500])
    def test_a_huge_body_is_not_read_whole(self, server: HostileServer, status: int) -> None:
        sent = []

        def endless() -> Iterator[bytes]:
            for _ in range(150 * 16):  # 150 MiB in 64 KiB chunks
                sent.append(1)
                yield b"<" * 65536

        server.script(f"GET {VIDEO}", Answer(status, (("Content-Length", str(150 * 2**20)),), endless))
        with OctopusXHook() as hook, pytest.raises((InvalidResponseError, ServerError)) as caught:
            hook.get_video("video_1")
        # The client stopped reading near the cap: the rest sits in no buffer of ours.
        assert len(sent) * 65536 < 40 * 2**20
        assert len(str(caught.value)) < 1000
        assert status == 500 or f"longer than {MAX_ANSWER_BYTES}" in str(caught.value)


class TestLinks:
    @pytest.mark.parametrize(
        "link",
        [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://10.1.2.3/video.mp4",
            "http://[fe80::1]/video.mp4",
            "ftp://127.0.0.1/video.mp4",
            "javascript:alert(1)",
        ],
    )
    def test_a_link_to_a_non_public_address_is_not_followed_and_content_is_used(
        self, server: HostileServer, loopback_only: list[Any], link: str
    ) -> None:
        server.script(f"GET {VIDEO}", video(video_url=link))
        server.script(f"GET {VIDEO}/content", Answer(200, (), MP4))
        with OctopusXHook() as hook:
            assert download(hook) == MP4
        assert loopback_only == []
        # Refused before any connection (an http(s) link after one more look-up of the video).
        assert [r.path for r in server.requests][-1] == f"{VIDEO}/content"
        assert {r.path for r in server.requests} == {VIDEO, f"{VIDEO}/content"}

    def test_a_redirect_from_the_cdn_to_a_private_address_falls_back_to_content(
        self, server: HostileServer, loopback_only: list[Any]
    ) -> None:
        server.script(f"GET {VIDEO}", video(video_url=f"{server.url}/cdn/video.mp4"))
        server.script("GET /cdn/*", Answer(302, (("Location", "http://169.254.169.254/latest/"),)))
        server.script(f"GET {VIDEO}/content", Answer(200, (), MP4))
        with OctopusXHook() as hook:
            assert download(hook) == MP4
        assert loopback_only == []
        assert [r.path for r in server.requests] == [VIDEO, "/cdn/video.mp4", VIDEO, f"{VIDEO}/content"]

    def test_content_redirected_to_a_private_address_fails_without_going_there(
        self, server: HostileServer, loopback_only: list[Any]
    ) -> None:
        server.script(f"GET {VIDEO}", video(video_url=""))
        server.script(f"GET {VIDEO}/content", Answer(302, (("Location", "http://192.168.1.1/x.mp4"),)))
        with OctopusXHook() as hook, pytest.raises(VideoDownloadError, match=r"192\.168\.1\.1"):
            download(hook)
        assert loopback_only == []

    def test_the_key_goes_only_to_the_api_origin(self, server: HostileServer) -> None:
        server.script(
            f"GET {VIDEO}", video(video_url=f"http://localhost:{server.url.rsplit(':', 1)[1]}/cdn/v.mp4")
        )
        server.script("GET /cdn/*", Answer(200, (), MP4))
        with OctopusXHook() as hook:
            assert download(hook) == MP4
        keys = [("authorization" in r.headers) for r in server.requests]
        assert keys == [True, False]

    def test_downloads_ask_for_the_bytes_as_stored(self, server: HostileServer) -> None:
        server.script(f"GET {VIDEO}", video(video_url=f"{server.url}/cdn/v.mp4"))
        server.script("GET /cdn/*", Answer(200, (), MP4))
        with OctopusXHook() as hook:
            assert download(hook) == MP4
        [fetch] = server.seen("GET /cdn/*")
        assert fetch.headers.get("accept-encoding") == "identity"

    @pytest.mark.parametrize(
        ("api", "link", "refused"),
        [
            ("https://octopusx.ai", "http://cdn.example.com/v.mp4", "not https"),
            ("https://octopusx.ai", "https://127.0.0.1/v.mp4", "loopback"),
            ("https://octopusx.ai", "https://169.254.169.254/v.mp4", "link-local"),
            ("https://octopusx.ai", "https://[::ffff:10.0.0.1]/v.mp4", "private"),
            ("http://127.0.0.1:8765", "http://10.0.0.1/v.mp4", "private"),
            ("https://octopusx.ai", "https://cdn.example.com/v.mp4", None),
            ("http://127.0.0.1:8765", "http://127.0.0.1:8766/v.mp4", None),
            ("https://10.0.0.5", "https://10.0.0.9/v.mp4", None),
            # Unspecified addresses reach this machine's own listeners: loopback, whatever their spelling.
            ("https://10.0.0.5", "https://0.0.0.0/v.mp4", "loopback"),
            ("https://10.0.0.5", "https://[::]/v.mp4", "loopback"),
            ("https://10.0.0.5", "https://[::ffff:0.0.0.0]/v.mp4", "loopback"),
            ("https://octopusx.ai", "https://0.0.0.0:8080/v.mp4", "loopback"),
        ],
    )
    def test_link_rules(self, api: str, link: str, refused: str | None) -> None:
        reason = ApiEndpoint(api, "k").link_refusal(httpx.URL(link))
        assert reason is None if refused is None else refused in (reason or "")

    def test_the_name_0_is_judged_by_the_address_it_resolves_to(self) -> None:
        from ipaddress import ip_address

        endpoint = ApiEndpoint("https://10.0.0.5", "k")
        url = httpx.URL("https://0/v.mp4")
        assert endpoint.needs_resolving(url)
        assert "loopback" in (endpoint.link_refusal(url, [ip_address("0.0.0.0")]) or "")

    def test_a_host_name_is_judged_by_the_addresses_it_resolves_to(self) -> None:
        endpoint = ApiEndpoint("https://octopusx.ai", "k")
        url = httpx.URL("https://cdn.example.com/v.mp4")
        assert endpoint.needs_resolving(url)
        from ipaddress import ip_address

        assert "link-local" in (endpoint.link_refusal(url, [ip_address("169.254.169.254")]) or "")
        allowed = ApiEndpoint("https://octopusx.ai", "k", allow_private_links=True)
        assert allowed.link_refusal(url, [ip_address("10.0.0.1")]) is None


class TestResumedDownloads:
    def _cut_then(self, resumed: Answer) -> list[Any]:
        def first(request: Request) -> Answer:
            half = len(MP4) // 2
            return Answer(200, (("Content-Length", str(len(MP4))),), MP4[:half], length=False)

        return [first, resumed]

    def test_a_part_from_the_wrong_offset_starts_the_download_over(
        self, server: HostileServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hostile_connection(server, monkeypatch, max_attempts=4)
        server.script(f"GET {VIDEO}", video(video_url=f"{server.url}/cdn/v.mp4"))
        wrong = Answer(206, (("Content-Range", f"bytes 0-{len(MP4) - 1}/{len(MP4)}"),), MP4)
        server.script("GET /cdn/*", *self._cut_then(wrong), Answer(200, (), MP4))
        with OctopusXHook() as hook:
            assert download(hook) == MP4
        ranges = [r.headers.get("range") for r in server.seen("GET /cdn/*")]
        assert ranges[0] is None
        assert ranges[1] == f"bytes={len(MP4) // 2}-"

    @pytest.mark.parametrize("content_range", ["bytes x-y/z", "bytes 10-5/100", "", "bytes */100", "lots"])
    def test_an_unreadable_content_range_is_not_appended(
        self, server: HostileServer, monkeypatch: pytest.MonkeyPatch, content_range: str
    ) -> None:
        hostile_connection(server, monkeypatch, max_attempts=4)
        server.script(f"GET {VIDEO}", video(video_url=f"{server.url}/cdn/v.mp4"))
        odd = Answer(206, (("Content-Range", content_range),), MP4[len(MP4) // 2 :])
        server.script("GET /cdn/*", *self._cut_then(odd), Answer(200, (), MP4))
        with OctopusXHook() as hook:
            assert download(hook) == MP4

    @pytest.mark.parametrize("honours_range", [True, False], ids=["resumed", "started-over"])
    def test_a_video_of_several_mib_cut_at_an_odd_byte_is_stored_byte_exact(
        self, server: HostileServer, monkeypatch: pytest.MonkeyPatch, honours_range: bool
    ) -> None:
        """Chunks reach the file in batches of about 1 MiB: none is lost, doubled or reordered when a
        transfer breaks mid-batch and the next one appends, or starts the file over."""
        hostile_connection(server, monkeypatch, max_attempts=3)
        monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, error: 0.0)
        padding = 3 * 1024 * 1024 + 12_345
        # Every byte depends on its position, so a lost, doubled or moved piece changes the file.
        filler = bytes(range(251)) * (padding // 251) + b"!" * (padding % 251)
        body = MP4 + free_box_header(8 + padding) + filler
        cut = len(body) // 2 + 7
        server.script(f"GET {VIDEO}", video(video_url=f"{server.url}/cdn/v.mp4"))
        rest = (
            Answer(206, (("Content-Range", f"bytes {cut}-{len(body) - 1}/{len(body)}"),), body[cut:])
            if honours_range
            else Answer(200, (), body)
        )
        server.script(
            "GET /cdn/*", Answer(200, (("Content-Length", str(len(body))),), body[:cut], length=False), rest
        )
        with OctopusXHook() as hook:
            assert download(hook) == body
        assert [r.headers.get("range") for r in server.seen("GET /cdn/*")] == [None, f"bytes={cut}-"]

    def test_a_cdn_dripping_bytes_meets_the_download_deadline(self, server: HostileServer) -> None:
        def drip() -> Iterator[bytes]:
            yield MP4[:16]
            while True:
                yield b"\x00"

        server.script(f"GET {VIDEO}", video(video_url=f"{server.url}/cdn/v.mp4"))
        server.script("GET /cdn/*", Answer(200, (("Content-Length", str(10**9)),), drip, pause=0.05))
        with OctopusXHook() as hook, pytest.raises(VideoDownloadError, match="did not finish in time"):
            download(hook, timeout=0.5)


def test_an_auth_error_is_still_an_auth_error(server: HostileServer) -> None:
    server.script(
        f"GET {VIDEO}",
        Answer.json('{"error": {"message": "Invalid API key", "code": "invalid_api_key"}}', 401),
    )
    with OctopusXHook() as hook, pytest.raises(AuthenticationError, match="Invalid API key"):
        hook.get_video("video_1")
