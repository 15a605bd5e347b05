"""``OctopusXHook``: the only place that speaks HTTP to OctopusX."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import httpx
from airflow.providers.common.compat.sdk import BaseHook
from tenacity import AsyncRetrying, Retrying

from airflow_octopusx import __version__
from airflow_octopusx.exceptions import (
    AccountError,
    AmbiguousSubmissionError,
    AuthenticationError,
    InvalidResponseError,
    NotFoundError,
    OctopusXError,
    QuotaExceededError,
    TransportError,
    VideoTimeoutError,
    excerpt,
)
from airflow_octopusx.hooks.answers import (
    WholeResponse,
    raise_for_status,
    submitted_video_from,
    transport_error,
    video_from,
)
from airflow_octopusx.hooks.connection import (
    Address,
    ApiEndpoint,
    ApiOnlyBearerAuth,
    LinkRefused,
    ip_address,
    video_path,
)
from airflow_octopusx.hooks.download import DownloadedVideo, Mp4Sink, download_into
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.hooks.shared_clients import QueueingAsyncClient, SharedAsyncClients
from airflow_octopusx.hooks.video_watch import DEFAULT_MAX_POLL_ERRORS, BatchWatch, VideoWatch
from airflow_octopusx.models import VideoRequest, VideoTask

# None passes chunks on as the socket delivers them (the measurements are in docs/performance.md).
DOWNLOAD_CHUNK_SIZE: int | None = None
# Connections of the async client that every trigger of one event loop shares: a poll is one short GET,
# so a handful of keep-alive connections serve a thousand waiting videos.
ASYNC_MAX_CONNECTIONS = 8
# Longer than the usual poll interval (10 s), so waiting videos keep reusing the same connections instead
# of reconnecting after httpx's default 5 s idle expiry.
ASYNC_KEEPALIVE_SECONDS = 20.0
# What a poll at or past its wait's deadline still gets: its last look at the video.
MIN_POLL_SECONDS = 1.0
# How logs and errors name a submission.
_SUBMISSION = "POST /v1/videos"
# Redirects followed for one GET (a CDN may redirect once or twice); a submission follows none.
MAX_REDIRECTS = 5


class OctopusXHook(BaseHook):
    """Talks to the OctopusX video API with sync (worker) and async (triggerer) httpx clients.

    Every answer is read up to a cap and parsed here or in :mod:`~airflow_octopusx.hooks.answers`, so
    callers get a ``VideoTask`` or an ``OctopusXError``, never a raw httpx or parsing error. Redirects are
    followed by hand, each hop checked against the connection's link rules (:meth:`ApiEndpoint.link_refusal`).

    :param octopusx_conn_id: an ``octopusx`` connection: host is the base URL (default
        ``https://octopusx.ai``), password is the API key.
    :param timeout: seconds allowed for each HTTP read, write and connect; default: the connection's
        extra ``timeout``, else 30.
    :param retry_policy: when and how to retry; see :class:`RetryPolicy`. Default: the standard policy
        with the connection's extra ``max_attempts`` (else 5).
    :param transport: the worker-side client's httpx transport (tests pass an ``httpx.MockTransport``).
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.octopusx_conn_id = octopusx_conn_id
        self.timeout = timeout
        self._retry_policy = retry_policy
        self._transport = transport
        self._endpoint: ApiEndpoint | None = None
        self._client: httpx.Client | None = None
        self._async_client: httpx.AsyncClient | None = None
        self._shared_clients: SharedAsyncClients | None = None

    # -- connection and clients -------------------------------------------------------------------

    @property
    def endpoint(self) -> ApiEndpoint:
        """The connection's API address, key and settings, read once."""
        if self._endpoint is None:
            self._endpoint = ApiEndpoint.from_connection(self.get_connection(self.octopusx_conn_id))
        return self._endpoint

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy given, else the standard one with the connection's ``max_attempts``."""
        if self._retry_policy is None:
            self._retry_policy = RetryPolicy(max_attempts=self.endpoint.max_attempts)
        return self._retry_policy

    def _client_options(self, endpoint: ApiEndpoint) -> dict[str, Any]:
        return {
            "base_url": endpoint.base_url,
            "auth": ApiOnlyBearerAuth(endpoint),
            "timeout": httpx.Timeout(endpoint.timeout if self.timeout is None else self.timeout),
            "headers": {"User-Agent": f"airflow-provider-octopusx/{__version__}"},
            # Followed by hand (_send): each hop is checked, and a redirect's body is never read.
            "follow_redirects": False,
        }

    @property
    def client(self) -> httpx.Client:
        """The worker-side client, kept for the hook's life so polls reuse one connection."""
        if self._client is None:
            self._client = httpx.Client(transport=self._transport, **self._client_options(self.endpoint))
        return self._client

    def get_conn(self) -> httpx.Client:
        """The worker-side client, under the name every Airflow hook gives it."""
        return self.client

    def close(self) -> None:
        """Close the worker-side client; the next call opens a new one."""
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

    # -- sending: one request, its redirects, its answer ----------------------------------------------

    def _send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and follow a GET's redirects; the answer's body is still to be read."""
        for _ in range(MAX_REDIRECTS + 1):
            self._check_link(request.url, _resolve(request.url) if self._must_resolve(request.url) else ())
            response = self.client.send(request, stream=True)
            redirect = _redirect_of(self.client, request, response)
            if redirect is None:
                return response
            response.close()
            request = redirect
        raise _too_many_redirects(request)

    async def _asend(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        """Async ``_send``."""
        for _ in range(MAX_REDIRECTS + 1):
            url = request.url  # resolved in a thread, as the event loop's own getaddrinfo is
            self._check_link(url, await asyncio.to_thread(_resolve, url) if self._must_resolve(url) else ())
            response = await client.send(request, stream=True)
            redirect = _redirect_of(client, request, response)
            if redirect is None:
                return response
            await response.aclose()
            request = redirect
        raise _too_many_redirects(request)

    def _must_resolve(self, url: httpx.URL) -> bool:
        return self.endpoint.link_refusal(url) is None and self.endpoint.needs_resolving(url)

    def _check_link(self, url: httpx.URL, addresses: Iterable[Address]) -> None:
        reason = self.endpoint.link_refusal(url, addresses)
        if reason is not None:
            shown = excerpt(str(url.copy_with(query=None)), 120)
            raise LinkRefused(f"{shown} is not followed: {reason}", permanent=True)

    def _exchange(self, method: str, path: str, give_up: float | None = None) -> WholeResponse:
        """One request to the API and its whole (capped) answer; any failure is one of our errors.

        The answer must be whole within the request timeout, and by ``give_up`` (``time.monotonic()``)
        when a wait's deadline sets one: an answer dripping a byte at a time holds nothing longer.
        """
        with _as_our_errors(f"{method} {path}"):
            request = self.client.build_request(method, path, **self._bounded(give_up))
            with contextlib.closing(self._send(request)) as response:
                return WholeResponse.read(response, self._answer_by(give_up))

    async def _aexchange(
        self, client: httpx.AsyncClient, method: str, path: str, give_up: float | None = None
    ) -> WholeResponse:
        """Async ``_exchange``."""
        with _as_our_errors(f"{method} {path}"):
            response = await self._asend(client, client.build_request(method, path, **self._bounded(give_up)))
            try:
                return await WholeResponse.aread(response, self._answer_by(give_up))
            finally:
                await response.aclose()

    @property
    def _request_seconds(self) -> float:
        return self.endpoint.timeout if self.timeout is None else self.timeout

    def _bounded(self, give_up: float | None) -> dict[str, Any]:
        """A request's timeouts, cut to the time left before ``give_up``."""
        if give_up is None:
            return {}
        return {"timeout": httpx.Timeout(max(min(self._request_seconds, give_up - time.monotonic()), 0.01))}

    def _answer_by(self, give_up: float | None) -> float:
        whole_by = time.monotonic() + self._request_seconds
        return whole_by if give_up is None else min(whole_by, give_up)

    # -- API calls ----------------------------------------------------------------------------------

    def submit_video(self, request: VideoRequest) -> VideoTask:
        """Create a video. Retried only where the API provably did no work, so no video is paid twice."""
        policy = self.retry_policy.tenacity_arguments(idempotent=False, what=_SUBMISSION)
        with self._naming_connection_on_refused_key():
            return Retrying(**policy)(self._submit_once, request)

    def _submit_once(self, request: VideoRequest) -> VideoTask:
        try:
            # Built here, not through _send: a submission never follows a redirect.
            body = request.body_parts()
            headers = {"Content-Type": "application/json", "Content-Length": str(sum(map(len, body)))}
            sent = self.client.build_request("POST", "/v1/videos", content=body, headers=headers)
            with contextlib.closing(self.client.send(sent, stream=True)) as response:
                answer = self.read_whole(response)
            raise_for_status(answer)
            return submitted_video_from(answer)
        except httpx.HTTPError as error:
            raise _submission_error(transport_error(error, _SUBMISSION)) from error
        except InvalidResponseError as error:
            raise _submission_error(error) from None

    def get_video(self, video_id: str, *, time_left: float | None = None) -> VideoTask:
        """The video's current state; retried on transport errors, unreadable answers, 429 and 5xx.

        ``time_left`` (seconds) bounds the whole call, retries included, so a wait never overruns its
        deadline by more than ``MIN_POLL_SECONDS``. A refused key is looked up again once, and the request
        repeated if the connection now has another key or URL: rotating the key does not fail a wait or a
        download that is running.
        """
        give_up = _give_up(time_left)
        with self._naming_connection_on_refused_key():
            try:
                return self._get_video(video_id, give_up)
            except AuthenticationError:
                if not self._reconnect_with_fresh_connection():
                    raise
                return self._get_video(video_id, give_up)

    def _get_video(self, video_id: str, give_up: float | None = None) -> VideoTask:
        path = video_path(video_id)
        policy = self.retry_policy.tenacity_arguments(idempotent=True, what=f"GET {path}", give_up=give_up)
        return Retrying(**policy)(lambda: video_from(self._exchange("GET", path, give_up), video_id))

    async def aget_video(self, video_id: str, *, time_left: float | None = None) -> VideoTask:
        """Async ``get_video``, for the triggerer; call inside ``async with hook:``.

        A refused key is looked up again once, and the poll repeated if the connection now has another
        key or URL: rotating the key does not fail the waits already in the triggerer.
        """
        give_up = _give_up(time_left)
        with self._naming_connection_on_refused_key():
            try:
                return await self._aget_video(video_id, give_up)
            except AuthenticationError:
                if not await self._reopen_with_fresh_connection():
                    raise
                return await self._aget_video(video_id, give_up)

    async def _aget_video(self, video_id: str, give_up: float | None) -> VideoTask:
        client = self._async_client
        if client is None:
            raise RuntimeError("aget_video needs the async client: use it inside `async with hook:`")
        path = video_path(video_id)
        policy = self.retry_policy.tenacity_arguments(idempotent=True, what=f"GET {path}", give_up=give_up)

        async def poll_once() -> VideoTask:
            return video_from(await self._aexchange(client, "GET", path, give_up), video_id)

        return await AsyncRetrying(**policy)(poll_once)

    @contextlib.contextmanager
    def _naming_connection_on_refused_key(self) -> Iterator[None]:
        try:
            yield
        except AccountError as error:
            error.name_connection(self.octopusx_conn_id)
            raise

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

    def wait_for_video(
        self,
        video_id: str,
        *,
        poll_interval: float,
        deadline: float,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
    ) -> VideoTask:
        """Poll from the worker until completed; raise if it failed or the ``deadline`` (epoch) passed.

        Waits as ``VideoTaskTrigger`` does in the triggerer: the same progress lines, and the same
        tolerance of ``max_poll_errors`` failed polls in a row.
        """
        watch = VideoWatch(video_id, self.log, self.retry_policy, max_poll_errors)
        watch.starts(poll_interval, deadline)
        while True:
            video = watch.take_poll(self.poll(video_id, deadline))
            if video is not None:
                video.raise_if_failed()
                return video
            remaining = deadline - time.time()
            if remaining <= 0:
                raise VideoTimeoutError(video_id, deadline, watch.last.progress if watch.last else None)
            time.sleep(min(poll_interval, remaining))

    def wait_for_videos(
        self,
        video_ids: list[str],
        *,
        poll_interval: float,
        deadline: float,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
    ) -> dict[str, dict[str, Any]]:
        """Poll many videos from the worker until all are finished or the ``deadline`` (epoch) passed.

        Waits as ``VideoBatchTrigger`` does in the triggerer, and returns what its event would hold.
        """
        watch = BatchWatch(video_ids, self.log, self.retry_policy, max_poll_errors)
        while True:
            unfinished = watch.unfinished
            watch.take_round(unfinished, [self.poll(video_id, deadline) for video_id in unfinished])
            remaining = deadline - time.time()
            if not watch.unfinished or remaining <= 0:
                return watch.result()
            time.sleep(min(poll_interval, remaining))

    def poll(self, video_id: str, deadline: float | None = None) -> VideoTask | OctopusXError:
        """One status check of a wait, within its ``deadline`` (epoch): the video, or the error it met."""
        try:
            return self.get_video(video_id, time_left=_time_left(deadline))
        except OctopusXError as error:
            return error

    async def apoll(self, video_id: str, deadline: float | None = None) -> VideoTask | OctopusXError:
        """Async ``poll``, for the triggerer; call inside ``async with hook:``."""
        try:
            return await self.aget_video(video_id, time_left=_time_left(deadline))
        except OctopusXError as error:
            return error

    def download_video(
        self,
        video_id: str,
        file: IO[bytes],
        *,
        chunk_size: int | None = DOWNLOAD_CHUNK_SIZE,
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> DownloadedVideo:
        """Stream the finished MP4 into ``file``; nothing is buffered whole.

        Each attempt looks the video up afresh for a new signed ``video_url``. A refused link (expired, or
        one the link rules do not allow) is asked for once more, then the authenticated
        ``/v1/videos/{id}/content`` proxy is used (also when there is no link, or the link is that proxy's
        own). A transfer cut short resumes with a ``Range`` request, or starts over if the server cannot;
        an attempt that added bytes costs no attempt, since the gateway's proxy cuts every transfer at 60
        s. ``timeout`` bounds the whole download in seconds, however slowly the bytes arrive.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._naming_connection_on_refused_key(), Mp4Sink(video_id, file, max_bytes, deadline) as sink:
            return download_into(self, sink, chunk_size)

    @contextlib.contextmanager
    def stream(self, url: str, headers: Mapping[str, str]) -> Iterator[httpx.Response]:
        """GET ``url`` (the API's, or a link off it) following its checked redirects, its body left to read;
        a link or redirect that the link rules refuse raises ``LinkRefused``."""
        request = self.client.build_request("GET", url, headers=headers)
        with contextlib.closing(self._send(request)) as response:
            yield response

    def read_whole(self, response: httpx.Response) -> WholeResponse:
        """Read an answer whole (capped), within the request timeout."""
        return WholeResponse.read(response, self._answer_by(None))

    def test_connection(self) -> tuple[bool, str]:
        """Check URL and key by asking for a video id that cannot exist: "no such video" proves both, free.

        The UI's Test button runs this under a throwaway connection id, so messages say "this connection".
        """
        try:
            self._endpoint = ApiEndpoint.from_connection(
                self.get_connection(self.octopusx_conn_id), name="This connection"
            )
            raise_for_status(self._exchange("GET", video_path("octopusx-connection-test")))
            return True, f"Connected to {self.endpoint.base_url}."
        except NotFoundError:
            return True, f"Connected to {self.endpoint.base_url}; the API key was accepted."
        except QuotaExceededError as error:
            return True, (
                f"Connected to {self.endpoint.base_url}; the API key was accepted, but its account's quota "
                f"has run out: {error}"
            )
        except AuthenticationError as error:
            return False, f"OctopusX refused the API key: {error}. Check the 'API key' field."
        except OctopusXError as error:
            return False, str(error)


def _time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (epoch); None for a wait without one."""
    return None if deadline is None else deadline - time.time()


def _give_up(time_left: float | None) -> float | None:
    """When a call given ``time_left`` seconds gives up (``time.monotonic()``); one at or past its deadline
    still gets ``MIN_POLL_SECONDS``, so a wait polls once more."""
    return None if time_left is None else time.monotonic() + max(time_left, MIN_POLL_SECONDS)


def _redirect_of(
    client: httpx.Client | httpx.AsyncClient, request: httpx.Request, response: httpx.Response
) -> httpx.Request | None:
    """The next hop of a GET that was answered with a redirect; None for any other answer."""
    if request.method != "GET" or not response.has_redirect_location:
        return None
    url = request.url.join(response.headers["location"])
    headers = {"Range": request.headers["range"]} if "range" in request.headers else {}
    return client.build_request("GET", url, headers=headers)


def _resolve(url: httpx.URL) -> list[Address]:
    """The addresses the link's host name resolves to; none if it does not resolve."""
    try:
        found = socket.getaddrinfo(url.host, url.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []  # the connection will fail on its own, and say why
    return [address for *_, sockaddr in found if (address := ip_address(str(sockaddr[0])))]


@contextlib.contextmanager
def _as_our_errors(what: str) -> Iterator[None]:
    """Turn httpx's errors and a refused redirect of one API request into ours (sync and async alike)."""
    try:
        yield
    except httpx.HTTPError as error:
        raise transport_error(error, what) from error
    except LinkRefused as refused:
        raise InvalidResponseError(f"{what} was redirected off the API: {refused}") from None


def _submission_error(error: OctopusXError) -> OctopusXError:
    """After the request left, a lost or unreadable answer means a video may exist: say so, never resend."""
    if isinstance(error, TransportError) and not error.request_sent:
        return error
    return AmbiguousSubmissionError(
        f"{error} - the submission may have reached OctopusX and created a billed video. It was not sent "
        "again; look for it among your recent videos before submitting once more.",
        request_sent=True,
    )


def _too_many_redirects(request: httpx.Request) -> InvalidResponseError:
    return InvalidResponseError(
        f"{request.method} {excerpt(request.url.path, 120)}: more than {MAX_REDIRECTS} redirects"
    )
