"""One wait for one video, alike on a worker, in the triggerer and in a sensor's pokes."""

from __future__ import annotations

from typing import Any, Protocol

from airflow_octopusx.exceptions import (
    APIError,
    AuthenticationError,
    NotFoundError,
    OctopusXError,
    excerpt,
    utc_text,
)
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoTask

#: Consecutive status checks that may fail (each after the hook's own retries) before a wait gives up.
DEFAULT_MAX_POLL_ERRORS = 5


class _Log(Protocol):
    """Airflow's task, trigger and hook loggers alike."""

    def info(self, event: str, *args: Any) -> Any:
        """Log at INFO."""

    def warning(self, event: str, *args: Any) -> Any:
        """Log at WARNING."""


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

    def starts(self, poll_interval: float, deadline: float | None) -> None:
        """Log what the wait does: how often it checks, and until when."""
        self._log.info(
            "Waiting for video %s: a status check every %g s, until %s",
            self.video_id,
            poll_interval,
            "the task's trigger timeout" if deadline is None else utc_text(deadline),
        )

    def take_poll(self, poll: VideoTask | OctopusXError) -> VideoTask | None:
        """Take one poll (the video, or the error it ended with); return the video once it is finished."""
        if isinstance(poll, OctopusXError):
            self.poll_failed(poll)
            return None
        self.record_status(poll)
        return poll if poll.is_finished else None

    def record_status(self, video: VideoTask) -> None:
        """Record a status read, logging it when its status or progress step changed."""
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


class BatchWatch:
    """What a wait for many videos has seen: how each ended, and one line whenever the counts move.

    Alike in ``VideoBatchTrigger`` and in ``GenerateVideosOperator``'s wait on a worker. Failing to read a
    status never ends a video: it stays rendering (a warning after ``max_poll_errors`` failed polls in a
    row), and at the deadline it is a ``timeout`` that a retry polls again. An answer about one video ends
    that video alone: the API no longer knows it (``not_found``) or refuses it with another 4xx (its
    code). Only a refused key (401) ends the whole wait: it is about the connection, not a video.
    """

    def __init__(
        self,
        video_ids: list[str],
        log: _Log,
        policy: RetryPolicy,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
    ) -> None:
        self.video_ids = video_ids
        self.outcomes: dict[str, dict[str, Any]] = {}
        self._log = log
        self._policy = policy
        self._max_poll_errors = max_poll_errors
        self._poll_errors: dict[str, int] = {}
        self._counts: tuple[int, int] | None = None

    @property
    def unfinished(self) -> list[str]:
        """The videos still rendering, in the batch's order."""
        return [video_id for video_id in self.video_ids if video_id not in self.outcomes]

    def take_round(self, video_ids: list[str], polls: list[VideoTask | OctopusXError]) -> None:
        """Take one round of polls (a video, or the error its poll ended with), then log the counts."""
        for video_id, poll in zip(video_ids, polls, strict=True):
            if isinstance(poll, VideoTask):
                self.record_status(poll)
            else:
                self.poll_failed(video_id, poll)
        self.log_counts()

    def record_status(self, video: VideoTask) -> None:
        """Record a status read: a finished video's outcome is kept, a rendering one is polled again."""
        self._poll_errors.pop(video.id, None)
        if video.is_completed:
            self.outcomes[video.id] = {"status": "completed"}
        elif video.is_failed:
            self.outcomes[video.id] = _failed(video.failure.code, video.failure.message)

    def poll_failed(self, video_id: str, error: OctopusXError) -> None:
        """Decide what a failed poll means: that video's end, nothing yet, or (a 401) the wait's end."""
        if isinstance(error, AuthenticationError) and error.status_code == 401:
            raise error
        if isinstance(error, NotFoundError):
            self.outcomes[video_id] = _failed("not_found", str(error))
        elif self._policy.is_retryable(error, idempotent=True):
            failures = self._poll_errors[video_id] = self._poll_errors.get(video_id, 0) + 1
            if failures == self._max_poll_errors:
                self._log.warning(
                    "Video %s: %d status checks in a row failed (%s); still waiting for it",
                    video_id,
                    failures,
                    error,
                )
        elif isinstance(error, APIError):
            self.outcomes[video_id] = _failed(error.code or f"http_{error.status_code}", str(error))
        else:
            raise error

    def log_counts(self) -> None:
        """Log how many are completed, failed and rendering, when those counts change."""
        completed = sum(outcome["status"] == "completed" for outcome in self.outcomes.values())
        counts = (completed, len(self.outcomes) - completed)
        if counts != self._counts:
            self._counts = counts
            self._log.info(
                "%d/%d completed, %d failed, %d rendering",
                completed,
                len(self.video_ids),
                counts[1],
                len(self.video_ids) - len(self.outcomes),
            )

    def result(self) -> dict[str, dict[str, Any]]:
        """How each video ended; those still rendering at the deadline as ``timeout``."""
        return {video_id: self.outcomes.get(video_id, {"status": "timeout"}) for video_id in self.video_ids}


def _failed(code: str | None, message: str) -> dict[str, Any]:
    return {"status": "failed", "code": code, "message": excerpt(message, 500)}
