"""``OctopusXHook``: the only place that speaks HTTP to OctopusX."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote, urlsplit

import httpx
from airflow.providers.common.compat.sdk import BaseHook, mask_secret
from tenacity import AsyncRetrying, Retrying

from airflow_octopusx import __version__
from airflow_octopusx.exceptions import (
    AmbiguousSubmissionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    OctopusXError,
    RateLimitError,
    ServerError,
    TransportError,
    VideoDownloadError,
    VideoTimeoutError,
)
from airflow_octopusx.hooks.download import Mp4Sink, announced_total
from airflow_octopusx.hooks.retry import RetryPolicy, parse_retry_after
from airflow_octopusx.hooks.shared_clients import QueueingAsyncClient, SharedAsyncClients
from airflow_octopusx.models import VideoRequest, VideoTask

DEFAULT_BASE_URL = "https://octopusx.ai"
# Seconds allowed for each HTTP connect, read and write, unless the connection's extra ``timeout`` says.
DEFAULT_TIMEOUT = 30.0
# None passes chunks on as the socket delivers them: on 1 GiB it measured 0.90-0.95x curl, against
# 0.48-0.69x for 256 KiB and 0.31-0.39x for 1 MiB (benchmarks/download.py); memory stays flat either way.
DOWNLOAD_CHUNK_SIZE: int | None = None
# Connections of the async client that every trigger of one event loop shares: a poll is one short GET,
# so a handful of keep-alive connections serve a thousand waiting videos.
ASYNC_MAX_CONNECTIONS = 8
# Longer than the usual poll interval (10 s), so waiting videos keep reusing the same connections instead
# of reconnecting after httpx's default 5 s idle expiry.
ASYNC_KEEPALIVE_SECONDS = 20.0
# A CDN answers these when a signed link has expired or was revoked; the API's /content proxy still works.
_EXPIRED_LINK_STATUSES = frozenset({401, 403, 404, 410})
_ERROR_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API is, the key for it and how patiently to talk to it, as the connection says.

    The key is kept out of ``repr`` so it cannot leak into logs. ``timeout`` and ``max_attempts`` come
    from the connection rather than the operators because a deferred wait rebuilds its hook in the
    triggerer from the connection id alone, and there all waits of one connection share one client.
    """

    base_url: str
    api_key: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    max_attempts: int = RetryPolicy.max_attempts

    @classmethod
    def from_connection(cls, conn: Any) -> ApiEndpoint:
        if not conn.password:
            raise OctopusXError(
                f"Connection {conn.conn_id!r} has no API key: put it in the connection's password field"
            )
        mask_secret(conn.password)
        host = (conn.host or DEFAULT_BASE_URL).strip().rstrip("/")
        url = httpx.URL(host if "://" in host else f"https://{host}")
        if conn.port and url.port is None:
            url = url.copy_with(port=conn.port)
        allow_http = str(conn.extra_dejson.get("allow_insecure_http", False)).lower() == "true"
        if url.scheme != "https" and not (url.scheme == "http" and (allow_http or _is_loopback(url.host))):
            raise OctopusXError(
                f"Connection {conn.conn_id!r}: base URL {str(url)!r} must use https:// (http:// is allowed "
                "only for loopback hosts, or with extra {'allow_insecure_http': true})"
            )
        extra = conn.extra_dejson
        return cls(
            base_url=str(url).rstrip("/"),
            api_key=conn.password,
            timeout=_positive_extra(conn.conn_id, extra, "timeout", DEFAULT_TIMEOUT),
            max_attempts=int(
                _positive_extra(conn.conn_id, extra, "max_attempts", RetryPolicy.max_attempts, whole=True)
            ),
        )

    @functools.cached_property
    def _origin(self) -> tuple[str, str, int | None]:
        # Parsed once: every request of every waiting video is checked against it.
        own = httpx.URL(self.base_url)
        return own.scheme, own.host, own.port

    def is_api_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == self._origin


def _positive_extra(
    conn_id: str, extra: dict[str, Any], name: str, default: float, *, whole: bool = False
) -> float:
    """A number > 0 (a whole one if ``whole``) from the connection's extra; ``default`` if it is absent.

    A connection URI or the UI may give the number as a string.
    """
    value = extra.get(name)
    if value is None or value == "":
        return default
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0) or (whole and not number.is_integer()):
        allowed = "a whole number >= 1" if whole else "a number of seconds > 0"
        raise OctopusXError(f"Connection {conn_id!r}: extra {name!r} must be {allowed}, got {value!r}")
    return number


class _ApiOnlyBearerAuth(httpx.Auth):
    """Adds the key only to requests for the API's own origin, never to a CDN link or a redirect target."""

    def __init__(self, endpoint: ApiEndpoint) -> None:
        self._endpoint = endpoint

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._endpoint.is_api_origin(request.url):
            request.headers["Authorization"] = f"Bearer {self._endpoint.api_key}"
        yield request


class OctopusXHook(BaseHook):
    """Talks to the OctopusX video API with sync (worker) and async (triggerer) httpx clients.

    :param octopusx_conn_id: an ``octopusx`` connection: host is the base URL (default
        ``https://octopusx.ai``), password is the API key.
    :param timeout: seconds allowed for each HTTP read, write and connect; default: the connection's
        extra ``timeout``, else 30.
    :param retry_policy: when and how to retry; see :class:`RetryPolicy`. Default: the standard policy
        with the connection's extra ``max_attempts`` (else 5).
    """

    conn_name_attr = "octopusx_conn_id"
    default_conn_name = "octopusx_default"
    conn_type = "octopusx"
    hook_name = "OctopusX"

    def __init__(
        self,
        octopusx_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self.octopusx_conn_id = octopusx_conn_id
        self.timeout = timeout
        self._retry_policy = retry_policy
        self._endpoint: ApiEndpoint | None = None
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._shared_clients: SharedAsyncClients | None = None

    # -- connection and clients -------------------------------------------------------------------

    @property
    def endpoint(self) -> ApiEndpoint:
        if self._endpoint is None:
            self._endpoint = ApiEndpoint.from_connection(self.get_connection(self.octopusx_conn_id))
        return self._endpoint

    @property
    def retry_policy(self) -> RetryPolicy:
        if self._retry_policy is None:
            self._retry_policy = RetryPolicy(max_attempts=self.endpoint.max_attempts)
        return self._retry_policy

    def _client_options(self, endpoint: ApiEndpoint) -> dict[str, Any]:
        return {
            "base_url": endpoint.base_url,
            "auth": _ApiOnlyBearerAuth(endpoint),
            "timeout": httpx.Timeout(endpoint.timeout if self.timeout is None else self.timeout),
            "headers": {"User-Agent": f"airflow-provider-octopusx/{__version__}"},
            "follow_redirects": True,
        }

    @property
    def client(self) -> httpx.Client:
        """The worker-side client, kept for the hook's life so polls reuse one connection."""
        if self._client is None:
            self._client = httpx.Client(**self._client_options(self.endpoint))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> OctopusXHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> OctopusXHook:
        """Join this event loop's shared client for the connection, opening it if it is the first."""
        self._shared_clients = SharedAsyncClients.for_running_loop()
        self._endpoint, self._async_client = await self._shared_clients.acquire(
            self.octopusx_conn_id, self._open_async_client
        )
        return self

    async def _open_async_client(self) -> tuple[ApiEndpoint, httpx.AsyncClient]:
        # Airflow's async connection API: no blocking database or secrets-backend call in the loop.
        endpoint = ApiEndpoint.from_connection(await self.aget_connection(self.octopusx_conn_id))
        client = QueueingAsyncClient(
            max_in_flight=ASYNC_MAX_CONNECTIONS,
            keepalive_expiry=ASYNC_KEEPALIVE_SECONDS,
            **self._client_options(endpoint),
        )
        return endpoint, client

    async def __aexit__(self, *exc_info: object) -> None:
        if self._shared_clients is not None:
            await self._shared_clients.release(self.octopusx_conn_id)
            self._shared_clients = None
            self._async_client = None

    # -- API calls ----------------------------------------------------------------------------------

    def submit_video(self, request: VideoRequest) -> VideoTask:
        """Create a video. Retried only where the API provably did no work, so no video is paid twice."""
        what = "POST /v1/videos"
        for attempt in Retrying(**self.retry_policy.tenacity_arguments(idempotent=False, what=what)):
            with attempt:
                try:
                    response = self.client.post("/v1/videos", json=request.to_json())
                except httpx.TransportError as error:
                    raise _submission_transport_error(error) from error
                return _video_from(response)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def get_video(self, video_id: str) -> VideoTask:
        """The video's current state; retried on transport errors, 429 and 5xx.

        A refused key is looked up again once, and the request repeated if the connection now has another
        key or URL: rotating the key does not fail a wait or a download that is running.
        """
        try:
            return self._get_video(video_id)
        except AuthenticationError:
            if not self._reconnect_with_fresh_connection():
                raise
            return self._get_video(video_id)

    def _get_video(self, video_id: str) -> VideoTask:
        path = _video_path(video_id)
        for attempt in Retrying(**self.retry_policy.tenacity_arguments(idempotent=True, what=f"GET {path}")):
            with attempt:
                try:
                    response = self.client.get(path)
                except httpx.TransportError as error:
                    raise _transport_error(error, f"GET {path}") from error
                return _video_from(response, video_id)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def aget_video(self, video_id: str) -> VideoTask:
        """Async ``get_video``, for the triggerer; call inside ``async with hook:``.

        A refused key is looked up again once, and the poll repeated if the connection now has another
        key or URL: rotating the key does not fail the waits already in the triggerer.
        """
        try:
            return await self._aget_video(video_id)
        except AuthenticationError:
            if not await self._reopen_with_fresh_connection():
                raise
            return await self._aget_video(video_id)

    async def _aget_video(self, video_id: str) -> VideoTask:
        client = self._async_client
        if client is None:
            raise RuntimeError("aget_video needs the async client: use it inside `async with hook:`")
        path = _video_path(video_id)
        retrying = AsyncRetrying(**self.retry_policy.tenacity_arguments(idempotent=True, what=f"GET {path}"))
        async for attempt in retrying:
            with attempt:
                try:
                    response = await client.get(path)
                except httpx.TransportError as error:
                    raise _transport_error(error, f"GET {path}") from error
                return _video_from(response, video_id)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _reconnect_with_fresh_connection(self) -> bool:
        """Switch to a new client if the connection has changed since its key was refused."""
        fresh = ApiEndpoint.from_connection(self.get_connection(self.octopusx_conn_id))
        if fresh == self._endpoint:
            return False
        self.close()
        self._endpoint = fresh
        self.log.info("Connection %r changed since its key was refused; asking again", self.octopusx_conn_id)
        return True

    async def _reopen_with_fresh_connection(self) -> bool:
        """Switch to the shared client of the connection as it is now; False if nothing changed."""
        if self._shared_clients is None or self._async_client is None:
            return False
        refused = self._endpoint
        self._endpoint, self._async_client = await self._shared_clients.reopen(
            self.octopusx_conn_id, self._async_client, self._open_async_client
        )
        if self._endpoint == refused:
            return False
        self.log.info("Connection %r changed since its key was refused; asking again", self.octopusx_conn_id)
        return True

    def wait_for_video(self, video_id: str, *, poll_interval: float, deadline: float) -> VideoTask:
        """Poll from the worker until completed; raise if it failed or the ``deadline`` (epoch) passed."""
        logged: tuple[str, int] | None = None
        while True:
            video = self.get_video(video_id)
            if video.milestone != logged:
                self.log.info("Video %s: %s, %g%%", video_id, video.status, video.progress)
                logged = video.milestone
            video.raise_if_failed()
            if video.is_completed:
                return video
            remaining = deadline - time.time()
            if remaining <= 0:
                raise VideoTimeoutError(video_id, deadline, video.progress)
            time.sleep(min(poll_interval, remaining))

    def download_video(
        self,
        video_id: str,
        file: IO[bytes],
        *,
        chunk_size: int | None = DOWNLOAD_CHUNK_SIZE,
        max_bytes: int | None = None,
    ) -> DownloadedVideo:
        """Stream the finished MP4 into ``file``; nothing is buffered whole.

        Each attempt looks the video up afresh for a new signed ``video_url``. A refused link is asked for
        once more, then the authenticated ``/v1/videos/{id}/content`` proxy is used (also when the link is
        empty). A transfer cut short resumes with a ``Range`` request, or starts over if the server cannot.
        """
        with Mp4Sink(video_id, file, max_bytes) as sink:
            return self._download_into(sink, chunk_size)

    def _download_into(self, sink: Mp4Sink, chunk_size: int | None) -> DownloadedVideo:
        video_id = sink.video_id
        refused_links = 0
        for attempt in range(1, self.retry_policy.max_attempts + 1):
            video = self.get_video(video_id)
            video.raise_if_failed()
            if not video.is_completed:
                raise VideoDownloadError(video_id, f"the video is {video.status!r}, not completed yet")
            use_link = _is_http_url(video.video_url) and refused_links < 2
            source = video.video_url if use_link else f"{_video_path(video_id)}/content"
            try:
                self._transfer(source, sink, chunk_size)
                return DownloadedVideo(video=video, size=sink.finish())
            except _LinkRefused as refused:
                refused_links += 1
                self.log.info(
                    "The signed link of video %s was refused (HTTP %d); %s",
                    video_id,
                    refused.status_code,
                    "asking for a fresh one" if refused_links == 1 else "using the API's /content download",
                )
            except OctopusXError as error:
                if attempt == self.retry_policy.max_attempts or not self.retry_policy.is_retryable(
                    error, idempotent=True
                ):
                    raise
                delay = self.retry_policy.delay(attempt, error)
                self.log.warning(
                    "Download of video %s interrupted at %d bytes (%s); resuming in %.1f s",
                    video_id,
                    sink.written,
                    error,
                    delay,
                )
                time.sleep(delay)
        raise VideoDownloadError(video_id, f"gave up after {self.retry_policy.max_attempts} attempts")

    def _transfer(self, url: str, sink: Mp4Sink, chunk_size: int | None) -> None:
        """One GET of the video into ``sink``, from where the last attempt stopped."""
        headers = {"Range": f"bytes={sink.written}-"} if sink.written else {}
        request = self.client.build_request("GET", url, headers=headers)
        what = f"download of video {sink.video_id}"
        try:
            response = self.client.send(request, stream=True)
        except httpx.TransportError as error:
            raise _transport_error(error, what) from error
        with contextlib.closing(response):
            # response.url, not request.url: /content may redirect to the CDN, whose refusal is a link's.
            if response.status_code in _EXPIRED_LINK_STATUSES and not self.endpoint.is_api_origin(
                response.url
            ):
                raise _LinkRefused(response.status_code)
            _checked(response, sink.video_id, stream=True)
            if response.status_code != 206:
                sink.restart()  # a full answer: the server ignored or could not honour the Range
            total = announced_total(response, sink.written)
            sink.check_size(total)
            try:
                for chunk in response.iter_bytes(chunk_size):
                    sink.write(chunk)
            except httpx.TransportError as error:
                raise TransportError(
                    f"{what} broke after {sink.written} bytes: {error}", request_sent=True
                ) from error
        if total is not None and sink.written != total:
            raise TransportError(f"{what} ended at {sink.written} of {total} bytes", request_sent=True)

    def test_connection(self) -> tuple[bool, str]:
        """Check URL and key by asking for a video id that cannot exist: a 404 proves both, for free."""
        try:
            response = self.client.get(_video_path("octopusx-connection-test"))
            if response.status_code == 404:
                return True, f"Connected to {self.endpoint.base_url}; the API key was accepted."
            _checked(response)
            return True, f"Connected to {self.endpoint.base_url}."
        except httpx.TransportError as error:
            return False, f"Could not reach {self.endpoint.base_url}: {error}"
        except OctopusXError as error:
            return False, str(error)


@dataclass(frozen=True)
class DownloadedVideo:
    """What a download stored: the video as the API last described it, and its size in bytes."""

    video: VideoTask
    size: int


class _LinkRefused(Exception):
    """The CDN refused a signed link (expired or revoked); a fresh link or /content will do."""

    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.status_code = status_code


def _video_from(response: httpx.Response, video_id: str | None = None) -> VideoTask:
    """Parse a video answer; a malformed one is an ``OctopusXError``, like any other API failure."""
    _checked(response, video_id)
    try:
        return VideoTask.from_api(response.json())
    except (ValueError, AttributeError) as error:
        raise OctopusXError(
            f"OctopusX sent an answer that is not a video (HTTP {response.status_code}): {error}"
        ) from error


def _video_path(video_id: str) -> str:
    return f"/v1/videos/{quote(video_id, safe='')}"


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _is_http_url(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _checked(
    response: httpx.Response, video_id: str | None = None, *, stream: bool = False
) -> httpx.Response:
    """Return a successful response; turn any other into the matching ``APIError``."""
    if response.is_success:
        return response
    if stream:
        response.read()
    message, code = _error_details(response)
    status = response.status_code
    error_class = _ERROR_CLASSES.get(status, ServerError if status >= 500 else APIError)
    raise error_class(
        message,
        status_code=status,
        code=code,
        request_id=response.headers.get("x-request-id"),
        video_id=video_id,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def _error_details(response: httpx.Response) -> tuple[str, str | None]:
    """The API's OpenAI-style ``{"error": {"message", "code"}}``, or the start of a non-JSON body."""
    try:
        error = response.json().get("error")
    except ValueError:
        error = None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code") or error.get("type")
        return str(error["message"]), None if code is None else str(code)
    text = response.text.strip()[:200]
    return text or response.reason_phrase or "HTTP error", None


def _transport_error(error: httpx.TransportError, what: str) -> TransportError:
    never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    return TransportError(f"{what}: {type(error).__name__}: {error}", request_sent=not never_sent)


def _submission_transport_error(error: httpx.TransportError) -> TransportError:
    """After the request left, a lost answer means a video may exist: say so instead of sending it again."""
    plain = _transport_error(error, "POST /v1/videos")
    if not plain.request_sent:
        return plain
    return AmbiguousSubmissionError(
        f"{plain} - the submission may have reached OctopusX and created a billed video. It was not sent "
        "again; look for it among your recent videos before submitting once more.",
        request_sent=True,
    )
