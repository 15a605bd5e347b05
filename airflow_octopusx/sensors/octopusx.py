"""``VideoTaskSensor``: wait for a video submitted by another task (or another DAG)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import airflow
from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)
from airflow.providers.common.compat.version_compat import AIRFLOW_V_3_3_PLUS
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR
from airflow.sdk.definitions.xcom_arg import PlainXComArg
from airflow.triggers.base import StartTriggerArgs

from airflow_octopusx.exceptions import InvalidVideoRequest, VideoTimeoutError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.video_watch import VideoWatch
from airflow_octopusx.models import check_video_id
from airflow_octopusx.triggers.octopusx import VideoTaskTrigger, video_id_from_event

if TYPE_CHECKING:
    from airflow.sdk import Context

#: What running the sensor again does; the task that submitted the video succeeded, so clearing it pays.
SENSED_AGAIN = (
    "Running this sensor again waits for the same video; clearing the task that submitted it, which "
    "succeeded, would pay for a new one."
)


def _for_the_triggerer(video_id: Any) -> str | None:
    """``video_id`` in a form Airflow's triggerer can render, or None where it cannot.

    Airflow 3.3.2's triggerer leaves an ``XComArg`` unresolved, and never answers the request that
    ``xcom_pull`` sends without ``map_indexes`` (the trigger would hang): a task's output becomes a
    template that pulls its one value, and such templates are refused. Older triggerers render nothing.
    """
    if not AIRFLOW_V_3_3_PLUS:
        return None
    if isinstance(video_id, PlainXComArg):
        task_id, key = video_id.operator.task_id, video_id.key
        return f"{{{{ ti.xcom_pull(task_ids={task_id!r}, key={key!r}, map_indexes=-1) }}}}"
    if not isinstance(video_id, str) or ("xcom_pull" in video_id and "map_indexes" not in video_id):
        return None
    return video_id


class VideoTaskSensor(BaseSensorOperator):
    """Succeed when the video is completed and fail when it failed; returns the video id.

    Pokes from the worker, or with ``deferrable=True`` waits in the triggerer with the same trigger as
    ``SubmitVideoOperator``. ``poke_interval`` sets the poll interval, ``timeout`` the deadline.

    :param video_id: the OctopusX video id, e.g. ``submit.output``.
    :param octopusx_conn_id: the ``octopusx`` connection.
    :param deferrable: wait in the triggerer, freeing the worker slot.
    :param start_from_trigger: with ``deferrable=True`` on Airflow 3.3+, start in the triggerer (which
        renders ``video_id``): a worker runs the task once, when the video is finished, instead of twice.
        Where the triggerer cannot render ``video_id``, or on older Airflow, it warns and starts on a
        worker; a mapped sensor starts on a worker.
    """

    template_fields: Sequence[str] = ("video_id",)

    def __init__(
        self,
        *,
        video_id: str,
        octopusx_conn_id: str = OctopusXHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        start_from_trigger: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.video_id = video_id
        self.octopusx_conn_id = octopusx_conn_id
        self.deferrable = deferrable
        if start_from_trigger and not deferrable:
            raise ValueError("VideoTaskSensor: start_from_trigger=True needs deferrable=True")
        trigger_video_id = _for_the_triggerer(video_id) if start_from_trigger else None
        if start_from_trigger and trigger_video_id is None:
            # Airflow logs it where the DAG is parsed: the dag-processor, and the top of the task's log.
            warnings.warn(
                f"VideoTaskSensor {self.task_id}: start_from_trigger needs Airflow 3.3+ (this is "
                f"{airflow.__version__}) and a video_id its triggerer can render: a plain id, a task's "
                "output, or a template whose xcom_pull names map_indexes. The task starts on a worker.",
                UserWarning,
                stacklevel=2,
            )
        self.start_from_trigger = trigger_video_id is not None
        if trigger_video_id is not None:
            # The triggerer renders video_id (the sensor's template field) before the trigger runs;
            # Airflow's trigger timeout, counted from the start, stands in for the trigger's deadline.
            self.start_trigger_args = StartTriggerArgs(
                trigger_cls=f"{VideoTaskTrigger.__module__}.{VideoTaskTrigger.__qualname__}",
                trigger_kwargs={
                    "video_id": trigger_video_id,
                    "octopusx_conn_id": octopusx_conn_id,
                    "poll_interval": self.poke_interval,
                    "deadline": None,
                },
                next_method="execute_complete",
                next_kwargs=None,
                timeout=timedelta(seconds=self.timeout),
            )

    @cached_property
    def hook(self) -> OctopusXHook:
        """The hook of ``octopusx_conn_id``, one per task run."""
        return OctopusXHook(self.octopusx_conn_id)

    def execute(self, context: Context) -> Any:
        """Check the video once, then poke from the worker or defer to the triggerer."""
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
        """Check the video once: done when completed, an error when failed."""
        video = self._watch.take_poll(self.hook.poll(self.video_id))
        if video is None:
            return PokeReturnValue(is_done=False)
        video.raise_if_failed()
        return PokeReturnValue(is_done=True, xcom_value=video.id)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after the trigger's event: the video id, or the failure or timeout it reports."""
        try:
            return video_id_from_event(event)
        except VideoTimeoutError as error:
            # The same exception as poke mode's timeout, so soft_fail and never_fail behave alike.
            raise AirflowSensorTimeout(str(error.with_next_step(SENSED_AGAIN))) from error

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Say Airflow's own trigger timeout as the sensor's timeout, with what running it again does."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout as error:
            if next_method != TRIGGER_FAIL_REPR:
                raise
            # Airflow's trigger timeout beat the trigger's own timeout event: say what it means here.
            message = (
                f"Video {self.video_id} was not finished when the sensor's timeout ({self.timeout:g} s) "
                f"ran out (Airflow: {error}). It may still complete. {SENSED_AGAIN}"
            )
            # Airflow 3.1 and 3.2 fail it even with soft_fail; 3.3 skips it before this.
            raise (AirflowSkipException if self.soft_fail else AirflowSensorTimeout)(message) from error
