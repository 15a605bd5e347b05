"""The one retry policy of the provider: what is safe to send again, and how long to wait first."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.stop import stop_base

from airflow_octopusx.exceptions import (
    APIError,
    InvalidResponseError,
    RateLimitError,
    ServerError,
    TransportError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter that honours ``Retry-After``.

    A read (``idempotent=True``) is retried on transport errors, unreadable answers, 429 and 5xx. A
    submission creates a billed video, so it is retried only when the server provably did no work: the
    connection was never made, or the server refused up front (429, 503 with ``Retry-After``, or the
    gateway's own word that it created nothing: ``APIError.nothing_created``).

    A video the API failed is a different matter: see ``VideoFailedError.is_transient``.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def is_retryable(self, error: BaseException, *, idempotent: bool) -> bool:
        """Whether ``error`` may be retried: a read on passing faults, a submission if no work was done."""
        if isinstance(error, APIError) and error.nothing_created:
            return True
        if isinstance(error, TransportError):
            return idempotent or not error.request_sent
        if isinstance(error, InvalidResponseError):
            return idempotent
        if isinstance(error, RateLimitError):
            return True
        if isinstance(error, ServerError):
            return idempotent or (error.status_code == 503 and error.retry_after is not None)
        return False

    def delay(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self.max_retry_after))
        backoff: float = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return backoff * random.uniform(0.5, 1.0)

    def tenacity_arguments(
        self, *, idempotent: bool, what: str, give_up: float | None = None
    ) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` / ``AsyncRetrying``, so sync and async share one policy.

        ``give_up`` (``time.monotonic()``) ends the retries when it passes, and no pause outlasts it.
        """

        def wait(state: RetryCallState) -> float:
            delay = self.delay(state.attempt_number, _error_of(state))
            return delay if give_up is None else max(min(delay, give_up - time.monotonic()), 0.0)

        stop: stop_base = stop_after_attempt(self.max_attempts)
        if give_up is not None:
            stop = stop | stop_after_delay(max(give_up - time.monotonic(), 0.0))

        def before_sleep(state: RetryCallState) -> None:
            log.warning(
                "%s failed (%s); retrying in %.1f s (attempt %d of %d)",
                what,
                _error_of(state),
                state.upcoming_sleep,
                state.attempt_number + 1,
                self.max_attempts,
            )

        return {
            "stop": stop,
            "wait": wait,
            "retry": retry_if_exception(lambda error: self.is_retryable(error, idempotent=idempotent)),
            "before_sleep": before_sleep,
            "reraise": True,
        }


def _error_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now; it may be a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
