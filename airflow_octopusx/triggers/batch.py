"""``VideoBatchTrigger``: one deferral waits for a whole batch of videos in the triggerer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import TriggerEvent

from airflow_octopusx.exceptions import OctopusXError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.video_watch import DEFAULT_MAX_POLL_ERRORS, BatchWatch
from airflow_octopusx.triggers.octopusx import PollingTrigger


class VideoBatchTrigger(PollingTrigger):
    """Poll every unfinished video of a batch until all are finished or the deadline passes; one event.

    Finished videos are not polled again. All polls go through the triggerer's shared client for the
    connection, whose queue bounds the requests in flight. The event holds, per video id, ``status``
    (``completed``, ``failed``, ``timeout``) and for failures ``code`` and ``message``: no links, no key.

    :param video_ids: the videos to wait for.
    :param octopusx_conn_id: the ``octopusx`` connection; the key is looked up in the triggerer.
    :param poll_interval: seconds between rounds of polls.
    :param deadline: Unix time after which the wait ends; unfinished videos are reported as ``timeout``.
    """

    serialized_fields = ("video_ids", *PollingTrigger.serialized_fields)

    def __init__(
        self,
        video_ids: list[str],
        octopusx_conn_id: str,
        poll_interval: float,
        deadline: float,
        max_poll_errors: int = DEFAULT_MAX_POLL_ERRORS,
    ) -> None:
        super().__init__(octopusx_conn_id, poll_interval, deadline, max_poll_errors)
        self.video_ids = list(video_ids)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the unfinished videos in rounds until all are finished or the deadline passes; one event."""
        try:
            async with OctopusXHook(self.octopusx_conn_id) as hook:
                watch = BatchWatch(self.video_ids, self.log, hook.retry_policy, self.max_poll_errors)
                while True:
                    unfinished = watch.unfinished
                    polls = (hook.apoll(video_id, self.deadline) for video_id in unfinished)
                    watch.take_round(unfinished, await asyncio.gather(*polls))
                    remaining = self._remaining()
                    if not watch.unfinished or remaining <= 0:
                        break
                    await asyncio.sleep(min(self.poll_interval, remaining))
            event: dict[str, Any] = {"status": "done", "videos": watch.result()}
        except OctopusXError as error:
            event = {"status": "error", "message": str(error)}
        yield TriggerEvent(event)

    async def on_kill(self) -> None:
        """A user marked the task failed or cleared it while it waited (Airflow 3.3+)."""
        self.log.warning(
            "Stopped waiting for %d videos, which OctopusX may still be rendering: its API has no way to "
            "cancel a video. Running the task again resumes them from its ledger instead of paying for new "
            "ones (Airflow 3.3+).",
            len(self.video_ids),
        )
