"""One wait for one video, alike on a worker, in the triggerer and in a sensor's pokes."""

from __future__ import annotations

from typing import Any, Protocol

from airflow_octopusx.exceptions import OctopusXError, utc_text
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoTask

#: Consecutive status checks that may fail (each after the hook's own retries) before a wait gives up.
DEFAULT_MAX_POLL_ERRORS = 5


class _Log(Protocol):
    """Airflow's task, trigger and hook loggers alike."""

    def info(self, event: str, *args: Any) -> Any: ...

    def warning(self, event: str, *args: Any) -> Any: ...


class VideoWatch:
    """What a wait has seen of a video: it logs progress, and decides which failed polls to sit out.

    A progress line is logged when the status changes and each time progress passes a multiple of
    ``PROGRESS_LOG_STEP``, not on every poll (in the triggerer each line costs a trip to its supervisor;
    see docs/performance.md). A failed poll is sat out if the retry policy calls its error transient, up
    to ``max_poll_errors`` in a row; anything else (a refused key, an unknown video) ends the wait.
    """

    def __init__(
        self,
        video_id: str,
        log: _Log,
        policy: RetryPolicy,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
    ) -> None:
        self.video_id = video_id
        self.last: VideoTask | None = None
        self._log = log
        self._policy = policy
        self._max_poll_errors = max_poll_errors
        self._poll_errors = 0

    def starts(self, poll_interval: float, deadline: float) -> None:
        self._log.info(
            "Waiting for video %s: a status check every %g s, until %s",
            self.video_id,
            poll_interval,
            utc_text(deadline),
        )

    def saw(self, video: VideoTask) -> None:
        self._poll_errors = 0
        if self.last is None or video.milestone != self.last.milestone:
            self._log.info("Video %s: %s, %g%%", self.video_id, video.status, video.progress)
        self.last = video

    def poll_failed(self, error: OctopusXError) -> None:
        """Return if the wait should go on; raise if waiting will not help or the budget is spent."""
        if not self._policy.is_retryable(error, idempotent=True):
            raise error
        self._poll_errors += 1
        self._log.warning("Poll %d of video %s failed: %s", self._poll_errors, self.video_id, error)
        if self._poll_errors >= self._max_poll_errors:
            raise OctopusXError(f"gave up after {self._poll_errors} failed polls: {error}") from error
