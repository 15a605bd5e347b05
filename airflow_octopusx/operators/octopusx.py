"""Operators that submit an OctopusX video and save the finished MP4."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    XCOM_RETURN_KEY,
    AirflowFailException,
    Asset,
    AssetAlias,
    BaseOperator,
    BaseOperatorLink,
    ObjectStoragePath,
    conf,
    get_hook_lineage_collector,
)

from airflow_octopusx._compat import (
    DEFAULT_MAP_INDEX_TEMPLATE,
    airflow_clears_state_on_success,
    hook_lineage_is_read,
    label_if_mapped,
)
from airflow_octopusx.exceptions import (
    AmbiguousSubmissionError,
    BadRequestError,
    InvalidVideoRequest,
    NotFoundError,
    OctopusXError,
    VideoFailedError,
    VideoTimeoutError,
    excerpt,
)
from airflow_octopusx.hooks.download import DownloadedVideo
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import (
    DEFAULT_MODEL,
    REQUEST_FIELDS,
    UNRENDERED,
    VideoRequest,
    VideoTask,
    check_video_id,
    is_web_link,
    known_at_parse,
)
from airflow_octopusx.storage.input_files import file_reader, with_files_inlined
from airflow_octopusx.storage.video_destination import VideoDestination, plain_uri
from airflow_octopusx.triggers.octopusx import VideoTaskTrigger, video_id_from_event

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

# Generous for a 30 s 4K clip, small enough to stop a runaway or hostile response filling a disk.
DEFAULT_MAX_DOWNLOAD_BYTES = 2 * 1024**3
# A capped video at a slow 1 MB/s takes about 36 minutes; a CDN dripping bytes must not hold a slot forever.
DEFAULT_DOWNLOAD_TIMEOUT = 3600.0
VIDEO_URL_XCOM_KEY = "video_url"
#: What running a submit task that timed out again does: true while it has not succeeded.
RESUMED_BY_RUNNING_AGAIN = (
    "On Airflow 3.3+, running this task again (a retry, or clearing it) resumes this video."
)
#: What the gateway said it billed for the video, where it said anything: ``ratios`` and ``usage``.
BILLING_XCOM_KEY = "billing"
#: The asset alias stored videos are announced through when their path is known only at run time.
DEFAULT_ASSET_ALIAS = "octopusx_videos"
#: Task state store key under which a submitted video id survives between tries.
SUBMISSION_STATE_KEY = "octopusx_submission"


def _label(text: str) -> str:
    return excerpt(" ".join(text.split()), 80)


class OctopusXVideoLink(BaseOperatorLink):
    """Opens the finished MP4 from the task page; OctopusX's links are signed and expire after hours."""

    name = "OctopusX video"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # Airflow asks as each try ends, deferrals included, and stores the answer for the UI. The
        # operator holds the link once the video is done; asking XCom before then logs an ERROR line.
        """Return the finished video's link, or nothing before it is done."""
        link = getattr(operator, "video_link", "")
        return link if is_web_link(link) else ""


class SubmitVideoOperator(BaseOperator):
    """Submit a video to OctopusX and, by default, wait until it is made.

    The video id goes to XCom (key ``video_id``) as soon as the API accepts the request, and is also the
    task's return value, so ``DownloadVideoOperator(video_id=submit.output)`` wires itself. Arguments are
    validated when the DAG is parsed (templated ones after rendering), before any request is sent.

    :param prompt: what the video shows.
    :param seconds: length, 4 to 30, as int or str.
    :param aspect_ratio: ``"16:9"`` or ``"9:16"``.
    :param resolution: ``"720p"``, ``"1080p"``, ``"2k"`` or ``"4k"``.
    :param first_image_url: first frame: an http(s) URL or ``data:image/...;base64,`` URI the API takes as
        it is, or a local path, storage URI (``s3://...``) or ``ObjectStoragePath``, read on the worker
        (up to 10 MB) and sent inline.
    :param last_image_url: last frame, in the same forms; needs ``first_image_url``.
    :param images: up to 5 reference images, in the same forms.
    :param model: ``"omni-fast"``; other models (such as ``"omni-fast-v2v"``) take their extra fields in
        ``extra_body``.
    :param extra_body: further JSON fields sent as they are; for ``omni-fast-v2v`` a reference video
        (``video``, ``video_url`` or ``input_video``) may also be a path or storage URI (up to 15 MB).
        No other field is ever read as a file.
    :param octopusx_conn_id: the ``octopusx`` connection.
    :param input_conn_id: connection for reading images and videos given as storage URIs (e.g. an
        ``aws`` connection for ``s3://``).
    :param wait_for_completion: wait until the video is completed (else return once it is submitted).
    :param deferrable: wait in the triggerer, freeing the worker slot.
    :param poll_interval: seconds between status checks.
    :param timeout: seconds to wait for the video before failing; the video itself is not cancelled.
    :param resubmit_failed: when the API fails the video, let Airflow's retries submit the request again
        (a new, billed video) whatever the reason. By default only failures the API blames on itself
        (``exceptions.TRANSIENT_VIDEO_FAILURES``) are retried; a request it refused (content policy, bad
        input) fails the task at once, as the same request would fail, and be paid for, again.
    :param end_from_trigger: with ``deferrable``, a video that completes ends the task in the triggerer,
        with no worker run to resume it: one task run fewer per video, for many mapped videos. The
        return value (the id) is then pushed before deferring; the ``video_url`` XCom and the extra link
        are not set (``DownloadVideoOperator`` fetches a fresh link anyway), and the submission record is
        kept, so clearing the succeeded task resumes the same video instead of paying for a new one.
    """

    template_fields: Sequence[str] = (*REQUEST_FIELDS, "octopusx_conn_id", "input_conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"extra_body": "json", "images": "json"}
    operator_extra_links = (OctopusXVideoLink(),)
    ui_color = "#7b4fd6"

    def __init__(
        self,
        *,
        prompt: str,
        seconds: int | str | None = None,
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        first_image_url: str | None = None,
        last_image_url: str | None = None,
        images: Sequence[str] | None = None,
        model: str = DEFAULT_MODEL,
        extra_body: dict[str, Any] | None = None,
        octopusx_conn_id: str = OctopusXHook.default_conn_name,
        input_conn_id: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 10,
        timeout: float = 3600,
        resubmit_failed: bool = False,
        end_from_trigger: bool = False,
        map_index_template: str | None = DEFAULT_MAP_INDEX_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.prompt = prompt
        self.seconds = seconds
        self.aspect_ratio = aspect_ratio
        self.resolution = resolution
        self.first_image_url = first_image_url
        self.last_image_url = last_image_url
        self.images = images
        self.model = model
        self.extra_body = extra_body
        self.octopusx_conn_id = octopusx_conn_id
        self.input_conn_id = input_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.resubmit_failed = resubmit_failed
        self.end_from_trigger = end_from_trigger
        self._video_id: str | None = None
        self.video_link = ""  # the finished MP4's link, for the task page (OctopusXVideoLink)
        try:
            VideoRequest.check_known(self._known_fields())
        except InvalidVideoRequest as error:
            raise ValueError(f"{type(self).__name__} {self.task_id!r}: {error}") from error

    @cached_property
    def hook(self) -> OctopusXHook:
        """The hook of ``octopusx_conn_id``, one per task run."""
        return OctopusXHook(self.octopusx_conn_id)

    @property
    def map_index_label(self) -> str:
        """The prompt, on one line and cut short: what tells one mapped video from another."""
        return _label(str(self.prompt))

    def _known_fields(self) -> dict[str, Any]:
        """The request as far as it is known at parse time; files count as unknown until read at run time."""
        fields = with_files_inlined(self._fields(), lambda field, value, video: UNRENDERED)
        return {name: known_at_parse(value) for name, value in fields.items()}

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REQUEST_FIELDS}

    def execute(self, context: Context) -> str:
        """Submit the video (or resume the one an earlier try submitted) and wait for it, or defer."""
        label_if_mapped(context)
        try:
            request = VideoRequest.build(with_files_inlined(self._fields(), file_reader(self.input_conn_id)))
        except InvalidVideoRequest as error:
            raise AirflowFailException(f"Invalid argument after rendering templates: {error}") from error
        with self.hook:
            try:
                return self._submit_and_wait(context, request)
            except (VideoFailedError, VideoTimeoutError) as error:
                raise self._failure(error) from error

    def _submit_and_wait(self, context: Context, request: VideoRequest) -> str:
        video = self._submit_or_resume(context, request)
        self._video_id = video.id
        context["ti"].xcom_push(key="video_id", value=video.id)
        if not self.wait_for_completion:
            _forget_submission(context, succeeding=True)
            return video.id

        deadline = time.time() + self.timeout
        video = self.hook.get_video(video.id)
        if not video.is_finished and self.deferrable:
            if self.end_from_trigger:
                context["ti"].xcom_push(key=XCOM_RETURN_KEY, value=video.id)
            self.defer(
                trigger=VideoTaskTrigger(
                    video_id=video.id,
                    octopusx_conn_id=self.octopusx_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=deadline,
                    end_from_trigger=self.end_from_trigger,
                ),
                method_name="execute_complete",
            )
        if not video.is_finished:
            video = self.hook.wait_for_video(video.id, poll_interval=self.poll_interval, deadline=deadline)
        video.raise_if_failed()
        return self._completed(context, video)

    def _submit_or_resume(self, context: Context, request: VideoRequest) -> VideoTask:
        """Submit, unless an earlier try of this task instance already did: videos are paid per submission.

        The id is kept in Airflow's task state store (3.3+), which, unlike XCom, survives between tries.
        A retry resumes that video unless it failed or the request has changed since. The request is
        marked there before its POST leaves, so a try stopped while it was on its way is not sent again.
        """
        store = context.get("task_state_store")
        fingerprint = request.fingerprint()
        if store is not None:
            earlier = store.get(SUBMISSION_STATE_KEY)
            if isinstance(earlier, dict) and earlier.get("request") == fingerprint:
                if not earlier.get("video_id"):
                    _forget_submission(context)  # the failure says so; running the task again submits
                    raise AirflowFailException(
                        "An earlier try was stopped while this request's submission was on its way: it may "
                        "have created a billed video, so it was not sent again. Look for it among your "
                        "recent videos; running this task again submits it anew."
                    )
                video = self._resumable(str(earlier["video_id"]))
                if video is not None:
                    return video
            store.set(SUBMISSION_STATE_KEY, {"request": fingerprint})
        else:
            self.log.warning(
                "This Airflow has no task state store (it arrived in 3.3): a retry of this task will submit "
                "a new video instead of resuming this one."
            )
        try:
            video = self.hook.submit_video(request)
        except OctopusXError as error:
            # Ended without a video, or (ambiguous) failing the task and saying so: the mark goes.
            _forget_submission(context)
            if isinstance(error, BadRequestError):
                raise AirflowFailException(f"OctopusX refused the request: {error}") from error
            if isinstance(error, AmbiguousSubmissionError):
                # Airflow's own retry would submit again and might pay for a second video.
                raise AirflowFailException(str(error)) from error
            raise
        if store is not None:
            record: dict[str, Any] = {
                "video_id": video.id,
                "request": fingerprint,
                "billing": dict(video.billing),
            }
            store.set(SUBMISSION_STATE_KEY, record)
        self.log.info("Submitted video %s (%s)", video.id, request.describe())
        return video

    def _resumable(self, video_id: str) -> VideoTask | None:
        try:
            video = self.hook.get_video(video_id)
        except NotFoundError:
            self.log.warning(
                "Video %s from an earlier try is unknown to OctopusX; submitting again", video_id
            )
            return None
        if video.is_failed:
            self.log.info("Video %s from an earlier try failed; submitting a new one", video_id)
            return None
        self.log.info(
            "Resuming video %s from an earlier try (%s) instead of submitting again", video_id, video.status
        )
        return video

    def execute_complete(self, context: Context, event: dict[str, Any] | str | None = None) -> str:
        """Resume after the deferral: return the id of the completed video, or fail as it did."""
        label_if_mapped(context)
        if event == "success":
            # What dag.test() hands over when the trigger ended the task (a real triggerer sets its state
            # and resumes nothing): the video completed; its id is the return value pushed at deferral.
            ti = context["ti"]
            event = {
                "status": "success",
                "video_id": ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index),
            }
        try:
            video_id = video_id_from_event(event)
        except (VideoFailedError, VideoTimeoutError) as error:
            raise self._failure(error) from error
        # The event carries no link (it is stored in the metadata DB); one look-up fetches a fresh one.
        with self.hook:
            return self._completed(context, self.hook.get_video(video_id))

    def _failure(self, error: VideoFailedError | VideoTimeoutError) -> Exception:
        """What a failed video does to the task: a retry submits again, so only where that may help.
        A timeout says that running the task again resumes the video."""
        if isinstance(error, VideoTimeoutError):
            return error.with_next_step(RESUMED_BY_RUNNING_AGAIN)
        reason = f"code {error.code!r}" if error.code else "no error code"
        if self.resubmit_failed or error.is_transient:
            self.log.warning(
                "Video %s failed with %s, which may not happen again: a retry of this task submits the "
                "request anew (a new, billed video).",
                error.video_id,
                reason,
            )
            return error
        return AirflowFailException(
            f"{error}. Not retried: OctopusX failed the video with {reason}, which says nothing of a "
            "passing fault, so the same request would most likely fail again, and every submission is "
            "billed. Change the prompt or inputs, or set resubmit_failed=True to submit it again on retry."
        )

    def _completed(self, context: Context, video: VideoTask) -> str:
        link = video.video_url if is_web_link(video.video_url) else ""
        self.log.info(
            "Video %s completed; %s",
            video.id,
            "its signed link is in XCom 'video_url' and in the task's extra link 'OctopusX video'"
            if link
            else "it has no link of its own, so downloads use the API's /content",
        )
        context["ti"].xcom_push(key=VIDEO_URL_XCOM_KEY, value=link)
        self.video_link = link
        billing = {**_recorded_billing(context), **video.billing}
        if billing:
            context["ti"].xcom_push(key=BILLING_XCOM_KEY, value=billing)
        _forget_submission(context, succeeding=True)
        return video.id

    def on_kill(self) -> None:
        """Say that the video goes on rendering: OctopusX cannot cancel one."""
        if self._video_id is not None:
            self.log.warning(
                "Stopped waiting for video %s, which OctopusX may still be rendering: its API has no way "
                "to cancel a video. Running this task again resumes it instead of paying for a new one "
                "(Airflow 3.3+).",
                self._video_id,
            )


def _readable_size(size: float) -> str:
    """``14.0 kB``, ``1.07 GB``: a size a reader takes in at a glance."""
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"


def _recorded_billing(context: Context) -> dict[str, Any]:
    """What the gateway named at submission (its price multipliers), as the submission record keeps it."""
    store = context.get("task_state_store")
    record = store.get(SUBMISSION_STATE_KEY) if store is not None else None
    billing = record.get("billing") if isinstance(record, dict) else None
    return billing if isinstance(billing, dict) else {}


def _forget_submission(context: Context, *, succeeding: bool = False) -> None:
    """Delete the submission record: the task is succeeding (clearing it later must make a new video, not
    resume this one, unless Airflow deletes it as it records the success), or failing without a video."""
    store = context.get("task_state_store")
    if store is not None and not (succeeding and airflow_clears_state_on_success()):
        store.delete(SUBMISSION_STATE_KEY)


class DownloadVideoOperator(BaseOperator):
    """Save a finished video's MP4 to any ``ObjectStoragePath`` (local disk, S3, GCS, ...).

    A partial video is never visible at the destination: the MP4 is checked (byte count, MP4 signature)
    before it appears. On S3 and GCS it is uploaded straight to its key, which the store shows only when
    the upload is committed; a failed download aborts the upload, so an object already there is kept.
    Elsewhere (local disk, ...) it is streamed to a temporary name beside the destination and moved into
    place once whole.

    :param video_id: the OctopusX video id, e.g. ``submit.output``.
    :param destination: a file path or URI; ending in ``/`` (or an existing folder) means a folder, and the
        file is then ``<video_id>.mp4``. An ``ObjectStoragePath`` is a folder unless it ends in ``.mp4``.
    :param destination_conn_id: connection for the destination's object store (e.g. ``aws_default``).
    :param overwrite: replace an existing file instead of failing.
    :param octopusx_conn_id: the ``octopusx`` connection.
    :param max_bytes: refuse a video larger than this, before or while it downloads (``None``: no cap).
    :param timeout: seconds the whole download may take, however slowly the bytes arrive (``None``: no
        limit beyond the connection's per-read timeout).
    :param asset_alias: the stored video is announced as an Airflow asset with its metadata (video id,
        model, prompt, seconds, resolution, bytes), so DAGs can be scheduled on new videos. A fixed
        ``.mp4`` destination is declared as that ``Asset``; any other destination (a folder, a template)
        is only known at run time and is announced through ``AssetAlias(asset_alias)``. ``None``
        announces nothing; given ``outlets`` are kept as they are.
    :return: the destination URI.
    """

    template_fields: Sequence[str] = ("video_id", "destination", "octopusx_conn_id", "destination_conn_id")
    ui_color = "#4f8bd6"

    def __init__(
        self,
        *,
        video_id: str,
        destination: str | ObjectStoragePath,
        destination_conn_id: str | None = None,
        overwrite: bool = False,
        octopusx_conn_id: str = OctopusXHook.default_conn_name,
        max_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
        timeout: float | None = DEFAULT_DOWNLOAD_TIMEOUT,
        asset_alias: str | None = DEFAULT_ASSET_ALIAS,
        map_index_template: str | None = DEFAULT_MAP_INDEX_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        # Empty as well as absent: .partial() passes outlets=[] when none are given.
        if not kwargs.get("outlets") and asset_alias is not None:
            declared = VideoDestination(destination).declared_asset()
            kwargs["outlets"] = [declared or AssetAlias(asset_alias)]
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.video_id = video_id
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.overwrite = overwrite
        self.octopusx_conn_id = octopusx_conn_id
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._prompt: str | None = None

    @property
    def map_index_label(self) -> str:
        """The video's prompt once the API has described it, else its id."""
        return _label(self._prompt or str(self.video_id))

    def execute(self, context: Context) -> str:
        """Download the finished video to its destination, whole or not at all, and announce it."""
        label_if_mapped(context)
        try:
            check_video_id(self.video_id)
        except InvalidVideoRequest as error:
            raise AirflowFailException(str(error)) from error
        destination = VideoDestination(
            self.destination, conn_id=self.destination_conn_id, overwrite=self.overwrite
        )
        target = destination.path_for(self.video_id)
        started = time.monotonic()
        with OctopusXHook(self.octopusx_conn_id) as hook, destination.open(target) as file:
            downloaded = hook.download_video(
                self.video_id, file, max_bytes=self.max_bytes, timeout=self.timeout
            )
        self._prompt = downloaded.video.prompt
        elapsed = max(time.monotonic() - started, 1e-6)
        uri = plain_uri(target)
        if hook_lineage_is_read():
            get_hook_lineage_collector().add_output_asset(context=target, uri=uri)
        self.log.info(
            "Stored video %s at %s (%s in %.2f s, %s/s)",
            self.video_id,
            uri,
            _readable_size(downloaded.size),
            elapsed,
            _readable_size(downloaded.size / elapsed),
        )
        announce(context, self.outlets, uri, _described(uri, downloaded))
        return uri


def announce(context: Context, outlets: Sequence[Any], uri: str, extra: dict[str, Any]) -> None:
    """Attach ``extra`` to the asset event of ``uri``, through each alias among ``outlets`` and on the
    outlet that is that asset.

    Through an alias the event goes to the stored file's own asset, not its folder's: Airflow 3.3.2 fails
    a task whose alias event creates an asset that another task creates at the same moment (a
    unique-constraint race), which two downloads into a new folder hit.
    """
    for outlet in outlets:
        if isinstance(outlet, AssetAlias):
            context["outlet_events"][outlet].add(Asset(uri), extra=extra)
        elif isinstance(outlet, Asset) and outlet.uri == uri:
            context["outlet_events"][outlet].extra.update(extra)


def _described(uri: str, downloaded: DownloadedVideo) -> dict[str, Any]:
    """What a stored video's asset event says of it: its file and what the API said of the video."""
    video = downloaded.video
    described = {
        "uri": uri,
        "video_id": video.id,
        "model": video.model,
        "prompt": video.prompt,
        "seconds": video.seconds,
        "resolution": video.resolution,
        "bytes": downloaded.size,
        "billing": dict(video.billing) or None,
    }
    return {key: value for key, value in described.items() if value is not None}
