"""``VideoTaskTrigger``: waits for a video in the triggerer, so no worker slot is held while it renders."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from airflow_octopusx.exceptions import OctopusXError, VideoFailedError, VideoTimeoutError, excerpt
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.video_watch import DEFAULT_MAX_POLL_ERRORS, VideoWatch
from airflow_octopusx.models import VideoTask, check_video_id

#: Seconds before Airflow's trigger timeout that a wait started in the triggerer ends: a triggerer
#: heartbeat (5 s by default), the time its event may take to be stored before the scheduler's check.
AIRFLOW_TIMEOUT_LEAD: Final = 5.0
#: Every status an OctopusX trigger's event can carry: one video's (``success``, ``failed``, ``timeout``),
#: a batch's (``done``), and either's ``error``. ``checked_event`` refuses anything else.
EVENT_STATUSES: Final = ("success", "failed", "timeout", "done", "error")


class PollingTrigger(BaseTrigger):
    """What every OctopusX trigger holds: plain values only, never the key, so that it survives
    serialisation and triggerer restarts (the deadline is absolute for the same reason).

    ``serialized_fields`` names the attributes that are its serialised form, and its constructor's arguments.
    """

    serialized_fields: ClassVar[tuple[str, ...]] = (
        "octopusx_conn_id",
        "poll_interval",
        "deadline",
        "max_poll_errors",
    )

    def __init__(
        self,
        octopusx_conn_id: str,
        poll_interval: float,
        deadline: float | None,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
    ) -> None:
        super().__init__()
        self.octopusx_conn_id = octopusx_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.max_poll_errors = max_poll_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the classpath and the plain values the trigger is rebuilt from."""
        classpath = f"{type(self).__module__}.{type(self).__qualname__}"
        return classpath, {name: getattr(self, name) for name in self.serialized_fields}

    def _remaining(self) -> float:
        """Seconds left before the deadline."""
        return math.inf if self.deadline is None else self.deadline - time.time()


class VideoTaskTrigger(PollingTrigger):
    """Poll one video until it is completed or failed, or the deadline passes, then fire one event.

    Holds only plain values (never the key), so it survives serialisation and triggerer restarts; the
    deadline is absolute for the same reason. One HTTP client serves the whole run.

    :param video_id: the OctopusX video id.
    :param octopusx_conn_id: the ``octopusx`` connection; the key is looked up in the triggerer.
    :param poll_interval: seconds between polls.
    :param deadline: Unix time after which the wait ends with a ``timeout`` event; None for a task
        started in the triggerer, which has no time to start from: the deadline is then
        ``AIRFLOW_TIMEOUT_LEAD`` seconds before Airflow's trigger timeout.
    :param max_poll_errors: consecutive failed polls (after the hook's own retries) tolerated before giving
        up; authentication and not-found errors end the wait at once.
    :param end_from_trigger: end the task as successful here when the video completes, without a worker
        resuming it; any other outcome still goes back to the task.
    """

    serialized_fields = ("video_id", *PollingTrigger.serialized_fields, "end_from_trigger")

    def __init__(
        self,
        video_id: str,
        octopusx_conn_id: str,
        poll_interval: float,
        deadline: float | None,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
        end_from_trigger: bool = False,
    ) -> None:
        super().__init__(octopusx_conn_id, poll_interval, deadline, max_poll_errors)
        self.video_id = video_id
        self.end_from_trigger = end_from_trigger

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the video until it is finished or the deadline passes, and fire one event."""
        watch: VideoWatch | None = None
        try:
            # Rendered here when the task started in the triggerer: check it before it goes in a URL.
            check_video_id(self.video_id)
            timeout_after = getattr(self, "timeout_after", None)
            if self.deadline is None and timeout_after is not None:
                # Started in the triggerer: the wait ends just before Airflow's trigger timeout (handed
                # over by 3.3+), so that its own timeout event, with the last progress, gets there first.
                self.deadline = timeout_after.timestamp() - AIRFLOW_TIMEOUT_LEAD
            async with OctopusXHook(self.octopusx_conn_id) as hook:
                watch = VideoWatch(self.video_id, self.log, hook.retry_policy, self.max_poll_errors)
                watch.starts(self.poll_interval, self.deadline)
                event = await self._poll(hook, watch)
        except OctopusXError as error:
            last = watch.last if watch else None
            event = self._event("error", str(error), last, code=getattr(error, "code", None))
        if self.end_from_trigger and event["status"] == "success":
            # No XComs in the event: Airflow 3.3.2's triggerer stores them JSON-encoded twice. The task
            # pushed its return value before deferring.
            yield TaskSuccessEvent()
        else:
            yield TriggerEvent(event)

    async def _poll(self, hook: OctopusXHook, watch: VideoWatch) -> dict[str, Any]:
        """Poll until there is something to report, and return that one event's payload."""
        # Triggers deferred together would poll in lock-step; the first poll lands anywhere in one
        # interval (the deferring task has just checked the video anyway), the rest drift apart.
        await asyncio.sleep(random.uniform(0, max(0.0, min(self.poll_interval, self._remaining()))))
        while True:
            video = watch.take_poll(await hook.apoll(self.video_id, self.deadline))
            if video is not None and video.is_completed:
                return self._event("success", "completed", video)
            if video is not None:
                return self._event("failed", video.failure.message, video, code=video.failure.code)
            remaining = self._remaining()
            if remaining <= 0:
                return self._event("timeout", "deadline passed", watch.last)
            await asyncio.sleep(min(self.poll_interval * random.uniform(0.9, 1.1), remaining))

    async def on_kill(self) -> None:
        """A user marked the task failed or cleared it while it waited (Airflow 3.3+)."""
        self.log.warning(
            "Stopped waiting for video %s, which OctopusX may still be rendering: its API has no way to "
            "cancel a video. Running the submitting task again resumes this video instead of paying for "
            "a new one (Airflow 3.3+).",
            self.video_id,
        )

    def _event(
        self, status: str, message: str, video: VideoTask | None, code: str | None = None
    ) -> dict[str, Any]:
        return {
            "status": status,
            "video_id": self.video_id,
            "message": message,
            "code": code,
            "progress": video.progress if video else None,
            "deadline": self.deadline,
        }


def checked_event(event: Any) -> dict[str, Any]:
    """The event, if it is one an OctopusX trigger fires; an ``OctopusXError`` for anything else."""
    if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
        raise OctopusXError(f"Unexpected event from an OctopusX trigger: {excerpt(repr(event))}")
    return event


def video_id_from_event(event: Any) -> str:
    """Turn a ``VideoTaskTrigger`` event into the video id, or the error it stands for."""
    event = checked_event(event)
    if event["status"] == "done" or not isinstance(event.get("video_id"), str):
        raise OctopusXError(f"Unexpected event from VideoTaskTrigger: {excerpt(repr(event))}")
    video_id: str = event["video_id"]
    status = event["status"]
    if status == "success":
        return video_id
    if status == "failed":
        raise VideoFailedError(video_id, event.get("message") or "no message", event.get("code"))
    if status == "timeout":
        raise VideoTimeoutError(video_id, float(event["deadline"]), event.get("progress"))
    raise OctopusXError(f"Waiting for video {video_id} failed: {event.get('message')}")
