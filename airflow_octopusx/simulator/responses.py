"""Responses: OpenAI-style API errors, S3-style CDN errors, the streamed MP4, and fault effects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from xml.sax.saxutils import escape

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from airflow_octopusx.simulator.connection import ConnectionControl
from airflow_octopusx.simulator.faults import Fault
from airflow_octopusx.simulator.media import RangeNotSatisfiable, VideoBody, parse_range

# status -> (error type, code, message) used when a status fault does not say otherwise.
_API_ERROR_DEFAULTS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request", "The request was rejected."),
    401: ("authentication_error", "invalid_api_key", "Invalid API key provided."),
    403: ("permission_error", "forbidden", "You are not allowed to access this resource."),
    404: ("invalid_request_error", "not_found", "The requested resource was not found."),
    408: ("invalid_request_error", "request_timeout", "The request timed out."),
    409: ("invalid_request_error", "conflict", "The request conflicts with the resource state."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached, please retry later."),
    500: ("server_error", "internal_error", "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The service is temporarily overloaded."),
    504: ("server_error", "gateway_timeout", "The upstream server timed out."),
}

# status -> S3 error code, for CDN status faults.
_CDN_ERROR_CODES = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    429: "SlowDown",
    500: "InternalError",
    503: "SlowDown",
}


def api_error(
    status: int,
    message: str,
    *,
    code: str,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in the shape OpenAI-compatible clients parse: ``{"error": {...}}``."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def task_error(
    status: int, message: str, *, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in the new-api gateway's task shape: ``{"code", "message", "data"}`` at the top level."""
    return JSONResponse({"code": code, "message": message, "data": None}, status_code=status, headers=headers)


def cdn_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """An S3/CloudFront-style XML error, which is what a CDN in front of object storage answers."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


def fault_response(fault: Fault, *, cdn: bool, task_shaped: bool = False) -> Response:
    """The answer of a ``status`` fault (or ``status_after_handling``), in the dialect of its origin;
    ``task_shaped``: in the gateway's task-error shape."""
    headers: dict[str, str] = {}
    if isinstance(fault.retry_after, str):
        headers["Retry-After"] = fault.retry_after
    elif fault.retry_after is not None:
        if fault.retry_after_http_date:
            headers["Retry-After"] = formatdate(time.time() + fault.retry_after, usegmt=True)
        else:
            headers["Retry-After"] = str(fault.retry_after)
    family = "server_error" if fault.status >= 500 else "invalid_request_error"
    error_type, code, message = _API_ERROR_DEFAULTS.get(fault.status, (family, family, "Simulated error."))
    if cdn:
        cdn_code = fault.code or _CDN_ERROR_CODES.get(fault.status, "ServiceUnavailable")
        return cdn_error(fault.status, cdn_code, fault.message or message, headers)
    if task_shaped:
        return task_error(fault.status, fault.message or message, code=fault.code or code, headers=headers)
    return api_error(
        fault.status,
        fault.message or message,
        code=fault.code or code,
        error_type=fault.error_type or error_type,
        headers=headers,
    )


async def no_response(scope: Scope, receive: Receive, send: Send) -> None:
    """Send nothing: the connection is already gone (``reset`` fault)."""


class VideoResponse:
    """Streams a :class:`VideoBody` with single-range support, or deliberately cuts it short.

    With ``truncate`` it advertises the full ``Content-Length``, sends half of the bytes and then
    closes the connection, the way an interrupted download looks to a client. ``on_sent`` is told
    the number of body bytes handed to the connection and whether it was a range, once it is over.
    ``cut_after`` > 0 closes the connection after that many body bytes, as a proxy's time limit does.
    """

    def __init__(
        self,
        body: VideoBody,
        *,
        etag: str,
        truncate: bool = False,
        cut_after: int = 0,
        on_sent: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.body = body
        self.etag = etag
        self.truncate = truncate
        self.cut_after = cut_after
        self.on_sent = on_sent

    def truncated(self) -> VideoResponse:
        return VideoResponse(
            self.body, etag=self.etag, truncate=True, cut_after=self.cut_after, on_sent=self.on_sent
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        total = self.body.total
        headers = {"accept-ranges": "bytes", "etag": self.etag, "cache-control": "private, max-age=3600"}
        range_header = _header(scope, b"range")
        try:
            requested = parse_range(range_header, total)
        except RangeNotSatisfiable:
            response = Response(status_code=416, headers={**headers, "content-range": f"bytes */{total}"})
            await response(scope, receive, send)
            return
        start, stop = requested if requested is not None else (0, total)
        status = 200 if requested is None else 206
        if status == 206:
            headers["content-range"] = f"bytes {start}-{stop - 1}/{total}"
        headers["content-type"] = "video/mp4"
        headers["content-length"] = str(stop - start)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            }
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        sent = 0
        try:
            end = start + (stop - start) // 2 if self.truncate else stop
            if self.cut_after:
                end = min(end, start + self.cut_after)
            for chunk in self.body.iter_bytes(start, end):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
            if end < stop:
                await ConnectionControl.of(scope).close()
            else:
                await send({"type": "http.response.body", "body": b""})
        finally:
            if self.on_sent is not None:
                self.on_sent(sent, status == 206)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def serve_with_fault(
    fault: Fault | None,
    scope: Scope,
    handle: Callable[[], Awaitable[ASGIApp]],
    *,
    cdn: bool,
    task_shaped: bool = False,
) -> ASGIApp:
    """Answer a request through ``handle``, misbehaving as ``fault`` says (see :class:`Fault`).

    Faults before handling leave no trace in the service: an error, a reset, or a delay after which a
    departed client's request is dropped. The after-handling kinds run ``handle`` - a submission creates
    its video - and only then lose or hold back the answer. ``task_shaped``: a ``status`` fault answers
    in the gateway's task-error shape, its word that nothing was created; an after-handling one never
    does, as the video exists.
    """
    if fault is None:
        return await handle()
    connection = ConnectionControl.of(scope)
    if fault.kind == "status":
        return fault_response(fault, cdn=cdn, task_shaped=task_shaped)
    if fault.kind == "reset":
        await connection.reset()
        return no_response
    if fault.kind == "delay":
        await asyncio.sleep(fault.delay_seconds)
        return no_response if connection.client_gone else await handle()
    response = await handle()
    if fault.kind == "truncate":
        return response.truncated() if isinstance(response, VideoResponse) else response
    if fault.kind == "status_after_handling":
        return fault_response(fault, cdn=cdn)
    if fault.kind == "reset_after_handling":
        await connection.reset()
        return no_response
    await asyncio.sleep(fault.delay_seconds)  # delay_after_handling
    return response
