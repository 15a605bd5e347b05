"""Turning what came back over HTTP into a ``VideoTask`` or one of the provider's errors.

Every byte is hostile until parsed: bodies are read up to a cap, anything that is not the documented
shape becomes an ``InvalidResponseError``, and what is quoted from a body in an error or a log line is a
short excerpt with control characters escaped, so an answer cannot forge log lines or flood them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from airflow_octopusx.exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    TransportError,
    excerpt,
)
from airflow_octopusx.hooks.retry import parse_retry_after
from airflow_octopusx.models import VideoTask

#: A status answer is a few hundred bytes; an error page a few KiB. Anything longer is not the API's.
MAX_ANSWER_BYTES = 1024 * 1024
#: The gateway's answer to a submission names the multipliers of its price here, e.g. ``{"seconds": 8}``.
BILLING_RATIOS_HEADER = "x-new-api-other-ratios"
#: Of an error answer only the start is read: its message is quoted in a short excerpt at most.
MAX_ERROR_BYTES = 64 * 1024
_ERROR_CLASSES: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}
#: Error codes that say more than their HTTP status: the gateway answers an unknown id with 400
#: ``task_not_exist``, and an exhausted quota with 403 (OpenAI-style APIs with 429 ``insufficient_quota``).
_CODE_CLASSES: dict[str, type[APIError]] = {
    "task_not_exist": NotFoundError,
    "insufficient_user_quota": QuotaExceededError,
    "insufficient_quota": QuotaExceededError,
}
#: The gateway's own refusals of a submission after it tried every vendor: it refunded and created nothing.
_REFUSED_BEFORE_CREATING = frozenset({(429, "rate_limit_exceeded"), (503, "service_unavailable")})


@dataclass(frozen=True)
class WholeResponse:
    """A whole (capped) HTTP answer: what is parsed, with nothing left open."""

    status_code: int
    headers: httpx.Headers
    body: bytes
    reason: str = ""

    @classmethod
    def read(cls, response: httpx.Response, give_up: float) -> WholeResponse:
        """Read the answer whole, by ``give_up`` (``time.monotonic()``) however slowly it drips."""
        body = _Body(response.is_success, give_up)
        for chunk in response.iter_bytes():
            if body.is_full_after(chunk):
                break
        return cls(response.status_code, response.headers, body.bytes(), response.reason_phrase)

    @classmethod
    async def aread(cls, response: httpx.Response, give_up: float) -> WholeResponse:
        """Async ``read``."""
        body = _Body(response.is_success, give_up)
        async for chunk in response.aiter_bytes():
            if body.is_full_after(chunk):
                break
        return cls(response.status_code, response.headers, body.bytes(), response.reason_phrase)

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status_code < 300


class _Body:
    """Collects a body up to its cap and its time: a success over the cap is refused, an error's start
    is enough; one not whole in time is a broken transfer."""

    def __init__(self, success: bool, give_up: float) -> None:
        self._success = success
        self._give_up = give_up
        self._limit = MAX_ANSWER_BYTES if success else MAX_ERROR_BYTES
        self._data = bytearray()

    def is_full_after(self, chunk: bytes) -> bool:
        """Add ``chunk``; True once an error answer fills its cap. A success answer over its cap, or any
        answer still arriving after ``give_up``, is refused."""
        if time.monotonic() > self._give_up:
            raise TransportError("the answer did not arrive whole in time", request_sent=True)
        self._data += chunk
        if len(self._data) <= self._limit:
            return False
        if self._success:
            raise InvalidResponseError(f"the answer is longer than {self._limit} bytes; not the API's")
        return True

    def bytes(self) -> bytes:
        """Return what was read, at most the cap."""
        return bytes(self._data[: self._limit])


def video_from(answer: WholeResponse, video_id: str | None = None) -> VideoTask:
    """A video from a successful answer; any other answer raises the matching error."""
    raise_for_status(answer, video_id)
    if answer.status_code != 200 and answer.status_code != 201:
        raise InvalidResponseError(f"the API answered HTTP {answer.status_code} without a video")
    return VideoTask.from_api(parse_json(answer.body), asked=video_id)


def submitted_video_from(answer: WholeResponse) -> VideoTask:
    """The video a submission created, with the billing multipliers the gateway named; a redirect is never
    followed, as it would send the body again."""
    if 300 <= answer.status_code < 400:
        raise InvalidResponseError(
            f"the API answered HTTP {answer.status_code}, a redirect to "
            f"{excerpt(answer.headers.get('location', 'nowhere'), 120)}, which a submission never follows "
            "(check the connection's base URL)"
        )
    return video_from(answer).with_billing_ratios(answer.headers.get(BILLING_RATIOS_HEADER))


def parse_json(body: bytes) -> Any:
    """Parse an answer's body as JSON, or raise ``InvalidResponseError`` quoting its start."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise InvalidResponseError(
            f"the answer is not JSON ({type(error).__name__}): {excerpt(body)}"
        ) from None


def raise_for_status(answer: WholeResponse, video_id: str | None = None) -> None:
    """Nothing for a 2xx or 3xx answer; for any other the matching ``APIError``."""
    if answer.status_code < 400:
        return
    message, code, task_error = _error_details(answer)
    status = answer.status_code
    error_class = _CODE_CLASSES.get(code or "") or _ERROR_CLASSES.get(
        status, ServerError if status >= 500 else APIError
    )
    raise error_class(
        message,
        status_code=status,
        code=code,
        request_id=_optional_excerpt(answer.headers.get("x-request-id")),
        video_id=video_id,
        retry_after=parse_retry_after(answer.headers.get("retry-after")),
        nothing_created=task_error and (status, code) in _REFUSED_BEFORE_CREATING,
    )


def _error_details(answer: WholeResponse) -> tuple[str, str | None, bool]:
    """Message and code of an error answer, and whether it is the gateway's task error.

    The doc's (and the gateway middleware's) OpenAI-style ``{"error": {"message", "code"}}``, the
    gateway's task error ``{"code", "message", "data"}`` at the top level, or the start of any other body.
    """
    try:
        payload = json.loads(answer.body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    error = payload.get("error")
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code") or error.get("type")
        return excerpt(error["message"]), _optional_excerpt(code), False
    if isinstance(error, str) and error.strip():
        return excerpt(error), None, False
    code, message = _optional_excerpt(payload.get("code")), payload.get("message")
    if code and isinstance(message, str) and message.strip():
        return excerpt(message), code, True
    text = excerpt(answer.body)
    return text or excerpt(answer.reason) or "HTTP error", None, False


def _optional_excerpt(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else excerpt(value, 100)


def transport_error(error: httpx.HTTPError, what: str) -> TransportError | InvalidResponseError:
    """One of our errors for whatever httpx raised; never with the request's headers in it."""
    if isinstance(error, httpx.LocalProtocolError):
        # h11's message quotes the offending header, which may be the Authorization one.
        return TransportError(
            f"{what}: the request could not be sent ({type(error).__name__})", request_sent=False
        )
    if isinstance(error, (httpx.DecodingError, httpx.TooManyRedirects)):
        return InvalidResponseError(f"{what}: {type(error).__name__}: {excerpt(str(error))}")
    never_sent = isinstance(
        error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
    )
    return TransportError(
        f"{what}: {type(error).__name__}: {excerpt(str(error))}", request_sent=not never_sent
    )
