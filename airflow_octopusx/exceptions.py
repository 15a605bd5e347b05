"""Errors raised by the OctopusX provider.

One flat hierarchy, named after what happened, so callers can catch exactly what they can handle.
Messages carry the API's own ``code`` and ``message`` and the video id where known, and never a secret.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


class OctopusXError(Exception):
    """Base class of every error this provider raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt as it is: pickle and copy would otherwise call __init__ with the message alone.
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[OctopusXError], args: tuple[Any, ...], state: dict[str, Any]) -> OctopusXError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidVideoRequest(OctopusXError, ValueError):
    """A request argument was refused before anything was sent."""

    def __init__(self, field: str, problem: str, value: object = None) -> None:
        self.field = field
        self.problem = problem
        shown = "" if value is None else f" (got {_short_repr(value)})"
        super().__init__(f"{field}: {problem}{shown}")


class APIError(OctopusXError):
    """The API answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        request_id: str | None = None,
        video_id: str | None = None,
        retry_after: float | None = None,
        nothing_created: bool = False,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.video_id = video_id
        self.retry_after = retry_after
        # The gateway's word that it refunded and created no video (a refusal after trying every vendor).
        self.nothing_created = nothing_created
        named = {"code": code, "video_id": video_id, "request_id": request_id}
        details = [f"HTTP {status_code}", *(f"{name}={value}" for name, value in named.items() if value)]
        super().__init__(f"{message} ({', '.join(details)})")


class AccountError(APIError):
    """The account behind the connection was refused: no request on it passes, whatever the video."""

    def name_connection(self, conn_id: str) -> None:
        """Say what to fix, and where in Airflow: the API's own words speak of HTTP, not of connections."""
        if not getattr(self, "_connection_named", False):
            self._connection_named = True
            self.args = (self._explained(conn_id),)

    def _explained(self, conn_id: str) -> str:
        return f"{self.args[0]}. Check connection {conn_id!r} (Admin > Connections)."


class AuthenticationError(AccountError):
    """401/403: the API key is missing, wrong or lacks access."""

    def _explained(self, conn_id: str) -> str:
        return (
            f"OctopusX refused the API key: {self.args[0]}. Check the 'API key' field of connection "
            f"{conn_id!r} (Admin > Connections)."
        )


class QuotaExceededError(AccountError):
    """The account's quota ran out (the gateway's 403 ``insufficient_user_quota``); the key is fine."""

    def _explained(self, conn_id: str) -> str:
        return (
            f"OctopusX has no quota left for this account: {self.args[0]}. The API key of connection "
            f"{conn_id!r} was accepted, but its account's quota has run out: top it up, then run the task "
            "again."
        )


class BadRequestError(APIError):
    """400/422: the API refused the request; sending it again will not help."""


class NotFoundError(APIError):
    """404: no such video (wrong id, or another account's)."""


class RateLimitError(APIError):
    """429: too many requests or not enough quota right now."""


class ServerError(APIError):
    """5xx: the API failed on its side."""


class TransportError(OctopusXError):
    """The request did not get a complete HTTP answer (connect error, timeout, reset)."""

    def __init__(self, message: str, *, request_sent: bool) -> None:
        # False only when the connection was never made, so the server provably saw nothing.
        self.request_sent = request_sent
        super().__init__(message)


class InvalidResponseError(OctopusXError):
    """An answer that is not what the API documents: not JSON, no video id, too long, undecodable.

    Often a proxy's page or a broken gateway; a status check is asked again, a submission is not.
    """


class AmbiguousSubmissionError(TransportError):
    """A submission may or may not have reached the API: a video may exist and be billed."""


#: Error codes of failed videos that another submission of the same request may well get past.
TRANSIENT_VIDEO_FAILURES = frozenset(
    {"internal_error", "server_error", "service_unavailable", "timeout", "upstream_error"}
)


class VideoFailedError(OctopusXError):
    """The API finished the video with a failed status (``failed``, ``cancelled``, ``error`` ...)."""

    def __init__(self, video_id: str, message: str, code: str | None = None) -> None:
        self.video_id = video_id
        self.code = code
        self.message = message
        suffix = f" (code={code})" if code else ""
        super().__init__(f"Video {video_id} failed: {message}{suffix}")

    @property
    def is_transient(self) -> bool:
        """Whether submitting the same request again (a new, billed video) may succeed where this failed:
        only when the API blames itself, since a refused prompt would be refused, and paid for, again."""
        return self.code in TRANSIENT_VIDEO_FAILURES


class VideoTimeoutError(OctopusXError):
    """The wait ran past its deadline; the video itself may still finish."""

    def __init__(
        self, video_id: str, deadline: float, progress: float | None = None, next_step: str = ""
    ) -> None:
        self.video_id = video_id
        self.deadline = deadline
        self.progress = progress
        by = utc_text(deadline)
        at = "" if progress is None else f" (last progress {progress:g}%)"
        super().__init__(
            f"Video {video_id} did not finish by the deadline {by}{at}. It may still complete: wait for it "
            f"with VideoTaskSensor(video_id={video_id!r}) or fetch it with "
            f"DownloadVideoOperator(video_id={video_id!r}) rather than submitting it again.{next_step}"
        )

    def with_next_step(self, next_step: str) -> VideoTimeoutError:
        """The same timeout, saying what running the task that waited would do (it depends on the task)."""
        return VideoTimeoutError(self.video_id, self.deadline, self.progress, f" {next_step}")


class VideoDownloadError(OctopusXError):
    """The MP4 could not be fetched whole, or what arrived is not an MP4."""

    def __init__(self, video_id: str, problem: str) -> None:
        self.video_id = video_id
        super().__init__(f"Download of video {video_id} failed: {problem}")


def excerpt(value: object, limit: int = 200) -> str:
    """The start of a text from the network, fit for a log line or a message.

    Control and other unprintable characters are shown escaped, so a body or an id cannot start a
    forged log line; the length is capped, so it cannot flood one.
    """
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    text = text[: limit + 1].strip()
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return shown if len(shown) <= limit else f"{shown[: limit - 3]}..."


def utc_text(epoch: float) -> str:
    """An epoch as a UTC time a reader can compare with the UI; an out-of-range one as "no deadline"."""
    try:
        return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "no deadline"


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
