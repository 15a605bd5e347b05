"""``GenerateVideosOperator``: many videos in one task, at two task runs however many there are."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    Asset,
    AssetAlias,
    BaseOperator,
    conf,
)

from airflow_octopusx.exceptions import (
    AccountError,
    BadRequestError,
    InvalidVideoRequest,
    OctopusXError,
    RateLimitError,
    VideoFailedError,
)
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy, is_transient_failure
from airflow_octopusx.models import VideoRequest, VideoTask
from airflow_octopusx.operators.octopusx import (
    DEFAULT_ASSET_ALIAS,
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    REQUEST_FIELDS,
    file_reader,
    with_files_inlined,
)
from airflow_octopusx.storage.video_destination import VideoDestination, plain_uri
from airflow_octopusx.triggers.batch import VideoBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

#: Task state store key of a page of records; the page number follows. A thousand videos take 40 reads
#: and a few dozen writes where a key per record took thousands of round trips through the supervisor, and
#: a page of the largest records stays under the 64 KB Airflow advises for a value.
BATCH_STATE_KEY = "octopusx_batch_page_"
PAGE_SIZE = 25
#: A recorded error code and message are cut to this many characters (the task log has them whole).
RECORDED_CODE_CHARS = 64
RECORDED_MESSAGE_CHARS = 200
#: Where the records wait out a deferral on Airflow without a task state store (before 3.3).
RECORDS_XCOM_KEY = "octopusx_batch_records"
#: Failures listed in full in the task's error; the rest are counted.
SHOWN_FAILURES = 5


class GenerateVideosOperator(BaseOperator):
    """Submit a list of videos, wait for all of them in one deferral, and store each MP4 in a folder.

    Two task runs whatever the number of videos (submit and defer, then download), where mapping
    ``SubmitVideoOperator`` costs three per video. Every request is checked before the first is sent.
    Accepted ids are recorded at once in the task state store (Airflow 3.3+), so a retry or a killed
    worker resumes: accepted videos are not submitted again, ambiguous submissions are reported and not
    resent, stored videos are not downloaded again. Only videos the API failed for a reason it blames on
    itself (``hooks.retry.TRANSIENT_VIDEO_FAILURES``) are submitted anew by a retry: a new, billed video.

    :param requests: a list of dicts with ``SubmitVideoOperator``'s request fields (``prompt``,
        ``seconds``, ``aspect_ratio``, ``resolution``, ``first_image_url``, ``last_image_url``, ``images``,
        ``model``, ``extra_body``). Templated; an ``XComArg`` works.
    :param defaults: fields used where a request leaves them out.
    :param destination: the folder (path, URI or ``ObjectStoragePath``) the videos are stored in, as
        ``<video_id>.mp4``.
    :param destination_conn_id: connection for the destination's object store.
    :param overwrite: replace existing files instead of counting them as failed.
    :param octopusx_conn_id: the ``octopusx`` connection.
    :param input_conn_id: connection for images given as storage URIs.
    :param max_failed: videos that may end unstored before the task fails (after storing the rest).
    :param max_concurrent_requests: submissions and downloads in flight at once; a 429 slows them all.
    :param deferrable: wait in the triggerer (one trigger for the whole batch), freeing the worker slot.
    :param poll_interval: seconds between rounds of status checks.
    :param timeout: seconds to wait for the videos; those still rendering then count as ``timeout``.
    :param max_bytes: refuse a video larger than this.
    :param asset_alias: the folder is announced through ``AssetAlias(asset_alias)``, one event per try
        that stored videos, with its ``uri`` and how many; ``None`` announces nothing.
    :return: one result per request, in request order: ``index``, ``video_id``, ``status`` (``stored``,
        ``failed``, ``timeout`` or ``not_submitted``), ``uri``, ``error`` (``code``, ``message``) and
        ``billing`` (what the gateway said it billed, e.g. ``{"ratios": {"seconds": 8, "size": 1}}``).
    """

    template_fields: Sequence[str] = ("requests", "defaults", "destination")
    template_fields_renderers: ClassVar[dict[str, str]] = {"requests": "json", "defaults": "json"}
    ui_color = "#7b4fd6"

    def __init__(
        self,
        *,
        requests: list[dict[str, Any]] | Any,
        defaults: dict[str, Any] | None = None,
        destination: str | ObjectStoragePath,
        destination_conn_id: str | None = None,
        overwrite: bool = False,
        octopusx_conn_id: str = OctopusXHook.default_conn_name,
        input_conn_id: str | None = None,
        max_failed: int = 0,
        max_concurrent_requests: int = 8,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 10,
        timeout: float = 3600,
        max_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
        asset_alias: str | None = DEFAULT_ASSET_ALIAS,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("outlets") and asset_alias is not None:
            kwargs["outlets"] = [AssetAlias(asset_alias)]
        super().__init__(**kwargs)
        if max_concurrent_requests < 1:
            raise ValueError(
                f"{type(self).__name__} {self.task_id!r}: max_concurrent_requests must be 1 or more"
            )
        self.requests = requests
        self.defaults = defaults
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.overwrite = overwrite
        self.octopusx_conn_id = octopusx_conn_id
        self.input_conn_id = input_conn_id
        self.max_failed = max_failed
        self.max_concurrent_requests = max_concurrent_requests
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.max_bytes = max_bytes

    # -- first run: check, submit (or resume), wait ---------------------------------------------------

    def execute(self, context: Context) -> list[dict[str, Any]]:
        requests = self._checked_requests()
        records = _Records(context, [request.fingerprint() for request in requests], self.log)
        records.forget_failed()
        self._submit(requests, records)
        rendering = records.rendering()
        deadline = time.time() + self.timeout
        if rendering and self.deferrable:
            if context.get("task_state_store") is None:
                # Before Airflow 3.3 the records cross the deferral in XCom (of this try only).
                context["ti"].xcom_push(key=RECORDS_XCOM_KEY, value=records.as_list())
            self.defer(
                trigger=VideoBatchTrigger(
                    video_ids=rendering,
                    octopusx_conn_id=self.octopusx_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=deadline,
                ),
                method_name="execute_complete",
            )
        with OctopusXHook(self.octopusx_conn_id) as hook:
            waited = (
                hook.wait_for_videos(rendering, poll_interval=self.poll_interval, deadline=deadline)
                if rendering
                else {}
            )
        return self._store(context, records, waited)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if not event or event.get("status") != "done" or not isinstance(event.get("videos"), dict):
            # A retry resumes every recorded video; nothing is submitted twice.
            raise AirflowException(f"Waiting for the batch failed: {(event or {}).get('message', event)!r}")
        carried = None
        if context.get("task_state_store") is None:
            ti = context["ti"]
            carried = ti.xcom_pull(task_ids=ti.task_id, key=RECORDS_XCOM_KEY, map_indexes=ti.map_index)
        fingerprints = [request.fingerprint() for request in self._checked_requests()]
        return self._store(context, _Records(context, fingerprints, self.log, carried), event["videos"])

    def _checked_requests(self) -> list[VideoRequest]:
        """Every request checked before any is sent; the first bad one fails the task, naming it."""
        if isinstance(self.requests, (str, bytes, Mapping)) or not isinstance(self.requests, Sequence):
            raise AirflowFailException(
                f"requests: must be a list of dicts, got {type(self.requests).__name__}"
            )
        if self.defaults is not None and not isinstance(self.defaults, Mapping):
            raise AirflowFailException("defaults: must be a dict of request fields")
        checked = []
        for index, request in enumerate(self.requests):
            if not isinstance(request, Mapping):
                raise AirflowFailException(
                    f"requests[{index}]: must be a dict of request fields, got {type(request).__name__}; "
                    "nothing was submitted"
                )
            try:
                fields = {**(self.defaults or {}), **request}
                unknown = sorted(set(fields) - set(REQUEST_FIELDS))
                if unknown:
                    raise InvalidVideoRequest(
                        unknown[0], f"is not a request field; the fields are {', '.join(REQUEST_FIELDS)}"
                    )
                fields = with_files_inlined(fields, file_reader(self.input_conn_id))
                checked.append(VideoRequest.build(**fields))
            except (InvalidVideoRequest, TypeError) as error:
                raise AirflowFailException(f"requests[{index}]: {error}; nothing was submitted") from error
        return checked

    def _submit(self, requests: list[VideoRequest], records: _Records) -> None:
        """Submit what no earlier try did, ``max_concurrent_requests`` at a time over one client."""
        missing = [index for index in range(len(requests)) if records.needs_submitting(index)]
        if not missing:
            return
        self.log.info("Submitting %d of %d videos", len(missing), len(requests))
        # One attempt per call: the batch retries, so that a 429 pauses every submission, not one.
        with (
            OctopusXHook(self.octopusx_conn_id, retry_policy=RetryPolicy(max_attempts=1)) as hook,
            ThreadPoolExecutor(self.max_concurrent_requests, thread_name_prefix="octopusx-submit") as pool,
        ):
            gate = _SubmitGate(RetryPolicy(max_attempts=hook.endpoint.max_attempts))
            futures = {pool.submit(gate.submit, hook, requests[index]): index for index in missing}
            for done in _finished_in_groups(futures):
                for future in done:
                    records.submitted(futures[future], future)
                records.save()

    # -- second run (or the same, on a worker): store what completed -----------------------------------

    def _store(
        self, context: Context, records: _Records, waited: Mapping[str, Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        destination = VideoDestination(
            self.destination if _is_folder(self.destination) else f"{self.destination}/",
            conn_id=self.destination_conn_id,
            overwrite=self.overwrite,
        )
        records.finished(waited)
        records.save()
        completed = records.completed()
        if completed:
            self.log.info("Downloading %d videos", len(completed))
        with (
            OctopusXHook(self.octopusx_conn_id) as hook,
            ThreadPoolExecutor(self.max_concurrent_requests, thread_name_prefix="octopusx-download") as pool,
        ):
            futures = {
                pool.submit(self._download, hook, destination, video_id): index
                for index, video_id in completed
            }
            stored = []
            for done in _finished_in_groups(futures):
                stored += [target for future in done if (target := records.stored(futures[future], future))]
                records.save()
        if stored:
            self._announce(context, stored)
        results = records.results(lambda video_id: plain_uri(destination.location(video_id)))
        self._report(results)
        records.forget_all()
        return results

    def _download(
        self, hook: OctopusXHook, destination: VideoDestination, video_id: str
    ) -> ObjectStoragePath:
        target = destination.location(video_id)
        if not self.overwrite and target.exists():
            # Named after its id, so it is this video: an earlier try stored it and was stopped before
            # recording that.
            self.log.info("Video %s is already stored at %s (by an earlier try)", video_id, plain_uri(target))
            return target
        with destination.open(target) as file:
            hook.download_video(video_id, file, max_bytes=self.max_bytes, timeout=DEFAULT_DOWNLOAD_TIMEOUT)
        return target

    def _announce(self, context: Context, stored: list[ObjectStoragePath]) -> None:
        """One asset event for the folder, however many videos this try stored.

        Not one per video as ``DownloadVideoOperator`` does: Airflow records a task's asset events in the
        call that marks it successful, at about 10 ms each here, and a call slower than the worker's
        ``[workers] execution_api_timeout`` (5 s) is sent again and the task marked failed. The videos
        themselves are this task's ``return_value``.
        """
        folder = plain_uri(stored[0].parent)
        extra: dict[str, Any] = {"uri": folder, "videos": len(stored)}
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias):
                context["outlet_events"][outlet].add(Asset(folder), extra=extra)
            elif isinstance(outlet, Asset) and outlet.uri == folder:
                context["outlet_events"][outlet].extra.update(extra)

    def _report(self, results: list[dict[str, Any]]) -> None:
        unstored = [result for result in results if result["status"] != "stored"]
        self.log.info("Stored %d of %d videos", len(results) - len(unstored), len(results))
        if len(unstored) <= self.max_failed:
            return
        lines = [
            f"requests[{result['index']}] video {result['video_id'] or '-'}: {result['status']}"
            + (f" ({result['error']['code']}: {result['error']['message']})" if result["error"] else "")
            for result in unstored[:SHOWN_FAILURES]
        ]
        more = f"\n... and {len(unstored) - SHOWN_FAILURES} more" if len(unstored) > SHOWN_FAILURES else ""
        raise AirflowException(
            f"{len(unstored)} of {len(results)} videos were not stored (max_failed={self.max_failed}); the "
            "stored ones stay, and a retry resumes the rest without submitting any video twice:\n"
            + "\n".join(lines)
            + more
        )


def _finished_in_groups(futures: Iterable[Future[Any]]) -> Iterator[set[Future[Any]]]:
    """Futures as they finish, each time all that have finished by then, so one save covers them all."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield done


def _is_folder(destination: str | ObjectStoragePath) -> bool:
    return not isinstance(destination, str) or destination.endswith("/")


class _SubmitGate:
    """Submissions of one batch share one pace: a 429 holds back every submission, not only its own."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._lock = threading.Lock()
        self._not_before = 0.0

    def submit(self, hook: OctopusXHook, request: VideoRequest) -> VideoTask:
        for attempt in range(1, self._policy.max_attempts + 1):
            with self._lock:
                pause = self._not_before - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                return hook.submit_video(request)
            except OctopusXError as error:
                if attempt == self._policy.max_attempts or not self._policy.is_retryable(
                    error, idempotent=False
                ):
                    raise
                delay = self._policy.delay(attempt, error)
                if isinstance(error, RateLimitError):
                    with self._lock:
                        self._not_before = max(self._not_before, time.monotonic() + delay)
                else:
                    time.sleep(delay)
        raise AssertionError("unreachable: the last attempt re-raises")


class _Records:
    """Each request's state, kept in the task state store, so any try can resume.

    A record: ``request`` (the fingerprint of the request it was made for), ``video_id``, ``status``
    (``rendering``, ``completed``, ``stored``, ``failed``, ``timeout``, ``not_submitted``) and ``error``
    (``code``, ``message``, cut short). A record made for another request than the one now at its index
    is ignored. ``carried`` are the records a deferral passed on to its resumption in XCom (the only copy
    before Airflow 3.3).

    Records live in pages of ``PAGE_SIZE`` under one key each. Changes are kept in memory until
    ``save()``, which the operator calls as soon as each group of submissions or downloads is in.
    """

    def __init__(
        self, context: Context, fingerprints: list[str], log: Any, carried: list[Any] | None = None
    ) -> None:
        self._store = context.get("task_state_store")
        self._log = log
        self._fingerprints = fingerprints
        self._records: list[dict[str, Any] | None] = [None] * len(fingerprints)
        self._unsaved_pages: set[int] = set()
        found = carried if carried is not None else recorded(self._store, len(fingerprints))
        for index, (fingerprint, record) in enumerate(zip(fingerprints, found, strict=False)):
            if isinstance(record, dict) and record.get("request") == fingerprint:
                self._records[index] = record
        if self._store is None and carried is None:
            log.warning(
                "This Airflow has no task state store (it arrived in 3.3): a retry of this task will submit "
                "the whole batch again."
            )
        resumed = sum(record is not None for record in self._records)
        if resumed and carried is None:
            log.info("Resuming %d of %d videos from an earlier try", resumed, len(fingerprints))

    def save(self) -> None:
        """Write the pages changed since the last save (a few round trips, however many records)."""
        if self._store is not None:
            for page in sorted(self._unsaved_pages):
                records: list[Any] = self._records[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
                self._store.set(f"{BATCH_STATE_KEY}{page}", records)
        self._unsaved_pages.clear()

    def as_list(self) -> list[dict[str, Any] | None]:
        return list(self._records)

    def _set(self, index: int, video_id: str | None, status: str, **more: Any) -> None:
        earlier = self._records[index]
        record = {"request": self._fingerprints[index], "video_id": video_id, "status": status, "error": None}
        if earlier and earlier["video_id"] == video_id and earlier.get("billing"):
            record["billing"] = earlier["billing"]
        self._records[index] = record | more
        self._unsaved_pages.add(index // PAGE_SIZE)

    def forget_failed(self) -> None:
        """Drop records of videos the API failed for a passing reason, so that they are submitted anew."""
        for index, record in enumerate(self._records):
            if record is None or record["status"] != "failed" or not record["video_id"]:
                continue
            error = record["error"] or {}
            failure = VideoFailedError(record["video_id"], error.get("message", ""), error.get("code"))
            if is_transient_failure(failure):
                self._log.info(
                    "Video %s failed in an earlier try (%s); submitting anew", failure.video_id, failure.code
                )
                self._records[index] = None

    def needs_submitting(self, index: int) -> bool:
        record = self._records[index]
        return record is None or bool(record.get("resend"))

    def submitted(self, index: int, future: Future[VideoTask]) -> None:
        try:
            video = future.result()
            self._set(
                index, video.id, "rendering", **({"billing": dict(video.billing)} if video.billing else {})
            )
        except BadRequestError as error:
            self._set(index, None, "not_submitted", error=_error(error.code, error))
        except AccountError as error:
            # Refused before any video was made (a key, a quota): a retry, once that is fixed, sends it.
            self._set(index, None, "not_submitted", error=_error(error.code, error), resend=True)
        except OctopusXError as error:
            if RetryPolicy().is_retryable(error, idempotent=False):
                # Provably never reached the API (no connection, 429): a retry may send it.
                self._set(
                    index,
                    None,
                    "not_submitted",
                    error=_error(getattr(error, "code", None), error),
                    resend=True,
                )
            else:
                # It may exist and be billed: reported, never sent again by this or a later try.
                self._set(index, None, "not_submitted", error=_error("ambiguous_submission", error))

    def rendering(self) -> list[str]:
        return [
            r["video_id"] for r in self._records if r is not None and r["status"] in ("rendering", "timeout")
        ]

    def finished(self, outcomes: Mapping[str, Mapping[str, Any]]) -> None:
        """Take how each waited-for video ended: ``completed``, ``failed`` or ``timeout``."""
        for index, record in enumerate(self._records):
            outcome = outcomes.get(record["video_id"]) if record and record["video_id"] else None
            if record is None or outcome is None or record["status"] == "stored":
                continue
            status = str(outcome.get("status"))
            error = None if status == "completed" else _error(outcome.get("code"), outcome.get("message"))
            self._set(index, record["video_id"], status, error=error)

    def completed(self) -> list[tuple[int, str]]:
        return [
            (i, r["video_id"])
            for i, r in enumerate(self._records)
            if r is not None and r["status"] == "completed"
        ]

    def stored(self, index: int, future: Future[ObjectStoragePath]) -> ObjectStoragePath | None:
        video_id = self._records[index]["video_id"]  # type: ignore[index]
        try:
            target = future.result()
        except (OctopusXError, AirflowFailException) as error:
            self._log.warning("Video %s was not stored: %s", video_id, error)
            # Left "completed": a retry downloads it again, and never submits it again.
            self._set(index, video_id, "completed", error=_error("download_failed", error))
            return None
        self._set(index, video_id, "stored")
        return target

    def results(self, uri_of: Callable[[str], str]) -> list[dict[str, Any]]:
        """One per request, in order; a video left completed but unstored is reported ``failed``."""
        results = []
        for index, record in enumerate(self._records):
            record = record or {"video_id": None, "status": "not_submitted", "error": None}
            status = {"rendering": "timeout", "completed": "failed"}.get(record["status"], record["status"])
            results.append(
                {
                    "index": index,
                    "video_id": record["video_id"],
                    "status": status,
                    "uri": uri_of(record["video_id"]) if status == "stored" else None,
                    "error": record["error"],
                    "billing": record.get("billing", {}),
                }
            )
        return results

    def forget_all(self) -> None:
        """The task succeeded: clearing it later makes a new batch, as with ``SubmitVideoOperator``."""
        if self._store is not None:
            for page in range(_page_count(len(self._records))):
                self._store.delete(f"{BATCH_STATE_KEY}{page}")


def recorded(store: Any, count: int) -> list[Any]:
    """The records of a batch of ``count`` requests in a task state store, ``None`` where there is none."""
    found: list[Any] = []
    for page in range(_page_count(count) if store is not None else 0):
        records = store.get(f"{BATCH_STATE_KEY}{page}")
        found += ((records if isinstance(records, list) else []) + [None] * PAGE_SIZE)[:PAGE_SIZE]
    return found[:count]


def _page_count(count: int) -> int:
    return -(-count // PAGE_SIZE)


def _error(code: Any, message: Any) -> dict[str, Any]:
    """An error as recorded and returned: cut short, so a page of records stays small."""
    return {
        "code": None if code is None else str(code)[:RECORDED_CODE_CHARS],
        "message": None if message is None else str(message)[:RECORDED_MESSAGE_CHARS],
    }
