"""``VideoTaskSensor``: wait for a video submitted by another task (or another DAG)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_octopusx.exceptions import InvalidVideoRequest, OctopusXError, VideoTimeoutError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.video_watch import VideoWatch
from airflow_octopusx.models import check_video_id
from airflow_octopusx.triggers.octopusx import VideoTaskTrigger, video_id_from_event

if TYPE_CHECKING:
    from airflow.sdk import Context


class VideoTaskSensor(BaseSensorOperator):
    """Succeed when the video is completed and fail when it failed; returns the video id.

    Pokes from the worker, or with ``deferrable=True`` waits in the triggerer with the same trigger as
    ``SubmitVideoOperator``. ``poke_interval`` sets the poll interval, ``timeout`` the deadline.

    :param video_id: the OctopusX video id, e.g. ``submit.output``.
    :param octopusx_conn_id: the ``octopusx`` connection.
    :param deferrable: wait in the triggerer, freeing the worker slot.
    """

    template_fields: Sequence[str] = ("video_id",)

    def __init__(
        self,
        *,
        video_id: str,
        octopusx_conn_id: str = OctopusXHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.video_id = video_id
        self.octopusx_conn_id = octopusx_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> OctopusXHook:
        return OctopusXHook(self.octopusx_conn_id)

    def execute(self, context: Context) -> Any:
        try:
            check_video_id(self.video_id)
        except InvalidVideoRequest as error:
            raise AirflowFailException(str(error)) from error
        with self.hook:
            if not self.deferrable:
                return super().execute(context)
            # Check once first: a video that is already finished needs no trip through the triggerer.
            done = self.poke(context)
        if done:
            return done.xcom_value
        self.defer(
            trigger=VideoTaskTrigger(
                video_id=self.video_id,
                octopusx_conn_id=self.octopusx_conn_id,
                poll_interval=self.poke_interval,
                deadline=time.time() + self.timeout,
            ),
            method_name="execute_complete",
        )

    @cached_property
    def _watch(self) -> VideoWatch:
        # The same progress lines and the same patience with failed polls as the deferred wait.
        return VideoWatch(self.video_id, self.log, self.hook.retry_policy)

    def poke(self, context: Context) -> PokeReturnValue:
        try:
            video = self.hook.get_video(self.video_id)
        except OctopusXError as error:
            self._watch.poll_failed(error)
            return PokeReturnValue(is_done=False)
        self._watch.saw(video)
        video.raise_if_failed()
        return PokeReturnValue(is_done=video.is_completed, xcom_value=video.id)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        try:
            return video_id_from_event(event)
        except VideoTimeoutError as error:
            # The same exception as poke mode's timeout, so soft_fail and never_fail behave alike.
            raise AirflowSensorTimeout(str(error)) from error
