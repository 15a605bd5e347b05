"""``GenerateVideosOperator``: many videos in one task, at two task runs however many there are."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    XCOM_RETURN_KEY,
    AirflowException,
    AirflowFailException,
    AssetAlias,
    BaseOperator,
    conf,
    get_hook_lineage_collector,
)

from airflow_octopusx._compat import hook_lineage_is_read
from airflow_octopusx.exceptions import (
    AccountError,
    InvalidVideoRequest,
    OctopusXError,
    RateLimitError,
    excerpt,
    utc_text,
)
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoRequest, VideoTask, refuse_unknown_fields
from airflow_octopusx.operators.ledger import Ledger
from airflow_octopusx.operators.octopusx import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_DOWNLOAD_BYTES, announce
from airflow_octopusx.storage.input_files import file_reader, with_files_inlined
from airflow_octopusx.storage.video_destination import VideoDestination, file_name, plain_uri
from airflow_octopusx.triggers.batch import VideoBatchTrigger
from airflow_octopusx.triggers.octopusx import checked_event

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

#: The asset alias a batch's manifest is announced through: one event per batch, not one per video.
DEFAULT_BATCH_ASSET_ALIAS = "octopusx_video_batches"
#: Where the ledger waits out a deferral on Airflow without a task state store (before 3.3).
RECORDS_XCOM_KEY = "octopusx_batch_records"
#: Failures listed in full in the task's error; the rest are counted.
SHOWN_FAILURES = 5


class GenerateVideosOperator(BaseOperator):
    """Submit a list of videos, wait for all of them in one deferral, and store each MP4 in a folder.

    Two task runs whatever the number of videos (submit and defer, then download), where mapping
    ``SubmitVideoOperator`` costs three per video. Every request is checked before the first is sent.
    Its ledger (:mod:`~airflow_octopusx.operators.ledger`) is kept in the task state store (Airflow
    3.3+), each request marked before its POST leaves, so a retry or a killed worker resumes: nothing is
    submitted twice, ambiguous submissions are reported and not resent, stored videos are not downloaded
    again. Only videos the API failed for a reason it blames on itself
    (``exceptions.TRANSIENT_VIDEO_FAILURES``), or any with ``resubmit_failed``, are submitted anew by a
    retry: a new, billed video.

    :param requests: a list of dicts of request fields, as ``SubmitVideoOperator`` takes them
        (``models.REQUEST_FIELDS``: ``prompt``, ``seconds``, ``images`` ...). Templated; an ``XComArg`` works.
    :param defaults: fields used where a request leaves them out.
    :param destination: the folder (path, URI or ``ObjectStoragePath``) the videos are stored in, as
        ``<video_id>.mp4``.
    :param destination_conn_id: connection for the destination's object store.
    :param overwrite: replace existing files instead of counting them as failed.
    :param octopusx_conn_id: the ``octopusx`` connection.
    :param input_conn_id: connection for images given as storage URIs.
    :param max_failed: videos that may end unstored before the task fails (after storing the rest).
    :param resubmit_failed: let a retry submit anew every request whose video the API failed.
    :param max_concurrent_requests: submissions and downloads in flight at once; a 429 slows them all.
    :param deferrable: wait in the triggerer (one trigger for the whole batch), freeing the worker slot.
    :param poll_interval: seconds between rounds of status checks.
    :param timeout: seconds to wait for the videos; those still rendering then count as ``timeout``.
    :param max_bytes: refuse a video larger than this.
    :param manifest_name: the file name, in the folder, of the manifest: one JSON line per request, its
        result and its prompt, written whole at the end of every try that gets that far (a retry
        replaces it). By default ``<task_id>[.<map_index>].<run_id>.jsonl``, characters other than
        letters, digits, ``.``, ``_`` and ``-`` as ``_``.
    :param asset_alias: a successful batch announces its manifest through ``AssetAlias(asset_alias)``
        (the manifest's asset, with its ``uri``, ``folder``, ``requests`` and how many ``videos`` are
        stored); ``None`` announces nothing.
    :return: one result per request, in request order: ``index``, ``video_id``, ``status`` (``stored``,
        ``failed``, ``timeout`` or ``not_submitted``), ``uri``, ``error`` (``code``, ``message``) and
        ``billing`` (what the gateway said it billed, e.g. ``{"ratios": {"seconds": 8, "size": 1}}``).
        The manifest's URI is pushed as XCom ``manifest``.
    """

    template_fields: Sequence[str] = (
        "requests",
        "defaults",
        "destination",
        "manifest_name",
        "octopusx_conn_id",
        "destination_conn_id",
        "input_conn_id",
    )
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
        resubmit_failed: bool = False,
        max_concurrent_requests: int = 8,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 10,
        timeout: float = 3600,
        max_bytes: int | None = DEFAULT_MAX_DOWNLOAD_BYTES,
        manifest_name: str | None = None,
        asset_alias: str | None = DEFAULT_BATCH_ASSET_ALIAS,
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
        self.resubmit_failed = resubmit_failed
        # Each input file's text, read once per try and shared by the requests that name it.
        self._inlined: dict[tuple[str, bool], str] = {}
        self.max_concurrent_requests = max_concurrent_requests
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.manifest_name = manifest_name

    # -- first run: check, submit (or resume), wait ---------------------------------------------------

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Check every request, submit those not yet sent, then wait here or defer, and store."""
        declared = self._declared_requests()
        self._manifest(context)  # a bad manifest_name fails the task before anything is sent
        ledger = Ledger(
            context.get("task_state_store"), [fingerprint(fields) for fields in declared], self.log
        )
        ledger.forget_failures(self.resubmit_failed)
        # Every request to send is checked, its files read, before the first is sent; recorded ones never are.
        to_send = {index: self._built(index, declared[index]) for index in ledger.needs_sending()}
        refused = self._submit(to_send, ledger)
        if refused is not None:
            # About the connection, not one video: nothing more can pass, whatever max_failed says.
            self._publish_results(context, ledger, declared)
            raise refused
        rendering = ledger.rendering()
        deadline = time.time() + self.timeout
        if rendering:
            self.log.info(
                "Waiting for %d videos: a round of status checks every %g s, until %s",
                len(rendering),
                self.poll_interval,
                utc_text(deadline),
            )
        if rendering and self.deferrable:
            if context.get("task_state_store") is None:
                # Before Airflow 3.3 the ledger crosses the deferral in XCom (of this try only).
                context["ti"].xcom_push(key=RECORDS_XCOM_KEY, value=ledger.as_list())
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
        return self._store(context, ledger, waited, declared)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Resume after the batch's deferral: store what completed, from the ledger."""
        try:
            event = checked_event(event)
        except OctopusXError as error:
            raise AirflowException(str(error)) from error
        if event["status"] != "done" or not isinstance(event.get("videos"), dict):
            # A retry resumes every recorded video; nothing is submitted twice.
            raise AirflowException(f"Waiting for the batch failed: {event.get('message', event)!r}")
        carried = None
        if context.get("task_state_store") is None:
            ti = context["ti"]
            carried = ti.xcom_pull(task_ids=ti.task_id, key=RECORDS_XCOM_KEY, map_indexes=ti.map_index)
        # The requests as written: their files were read when they were sent, and are not read again.
        declared = self._declared_requests()
        fingerprints = [fingerprint(fields) for fields in declared]
        ledger = Ledger(context.get("task_state_store"), fingerprints, self.log, carried, after_deferral=True)
        return self._store(context, ledger, event["videos"], declared)

    def _declared_requests(self) -> list[dict[str, Any]]:
        """Each request's fields as written (defaults filled in); the first malformed one fails the task."""
        if isinstance(self.requests, (str, bytes, Mapping)) or not isinstance(self.requests, Sequence):
            raise AirflowFailException(
                f"requests: must be a list of dicts, got {type(self.requests).__name__}"
            )
        if self.defaults is not None and not isinstance(self.defaults, Mapping):
            raise AirflowFailException("defaults: must be a dict of request fields")
        declared = []
        for index, request in enumerate(self.requests):
            if not isinstance(request, Mapping):
                raise AirflowFailException(
                    f"requests[{index}]: must be a dict of request fields, got {type(request).__name__}; "
                    "nothing was submitted"
                )
            fields = {**(self.defaults or {}), **request}
            try:
                refuse_unknown_fields(fields)
            except InvalidVideoRequest as error:
                raise AirflowFailException(f"requests[{index}]: {error}; nothing was submitted") from error
            declared.append(fields)
        return declared

    def _built(self, index: int, fields: dict[str, Any]) -> VideoRequest:
        """The request to send, its files read once per path for the whole batch (they share the text)."""
        try:
            return VideoRequest.build(with_files_inlined(fields, self._read_file))
        except InvalidVideoRequest as error:
            raise AirflowFailException(f"requests[{index}]: {error}; nothing was submitted") from error

    def _destination(self) -> VideoDestination:
        return VideoDestination(
            self.destination if _is_folder(self.destination) else f"{self.destination}/",
            conn_id=self.destination_conn_id,
            overwrite=self.overwrite,
        )

    def _manifest(self, context: Context) -> ObjectStoragePath:
        """Where this task instance's manifest goes: the same file in every try."""
        name = self.manifest_name
        if name is None:
            ti = context["ti"]
            mapped = ti.map_index is not None and ti.map_index >= 0
            name = file_name(f"{self.task_id}{f'.{ti.map_index}' if mapped else ''}.{ti.run_id}.jsonl")
        elif not isinstance(name, str) or "/" in name or not name.strip("."):
            raise AirflowFailException(
                f"manifest_name: must be a file name without '/', got {name!r}; nothing was submitted"
            )
        return self._destination().in_folder(name)

    def _read_file(self, field: str, value: Any, video: bool) -> str:
        key = (str(value), video)
        if key not in self._inlined:
            self._inlined[key] = file_reader(self.input_conn_id)(field, value, video)
        return self._inlined[key]

    def _submit(self, requests: dict[int, VideoRequest], ledger: Ledger) -> AccountError | None:
        """Send ``requests`` (by index), ``max_concurrent_requests`` at a time over one client; stop
        sending at the first refusal of the account (its key, its quota), and return it.

        Each request's record says ``sending`` in the task state store before its POST leaves, written
        with the outcomes of those that ended meanwhile: one save per round, however many requests.
        """
        if not requests:
            return None
        self.log.info("Submitting %d of %d videos", len(requests), len(self.requests))
        refused: AccountError | None = None
        waiting = list(requests)
        in_flight: dict[Future[VideoTask], int] = {}
        # One attempt per call: the batch retries, so that a 429 pauses every submission, not one.
        with (
            OctopusXHook(self.octopusx_conn_id, retry_policy=RetryPolicy(max_attempts=1)) as hook,
            ThreadPoolExecutor(self.max_concurrent_requests, thread_name_prefix="octopusx-submit") as pool,
        ):
            gate = _SubmitGate(RetryPolicy(max_attempts=hook.endpoint.max_attempts))
            while (waiting and refused is None) or in_flight:
                free = self.max_concurrent_requests - len(in_flight) if refused is None else 0
                leaving, waiting = waiting[:free], waiting[free:]
                ledger.sending(leaving)
                ledger.save()
                for index in leaving:
                    in_flight[pool.submit(gate.submit, hook, requests[index])] = index
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    ledger.sent(in_flight.pop(future), future)
                    error = future.exception()
                    if refused is None and isinstance(error, AccountError):
                        refused = error
            ledger.save()
        return refused

    # -- second run (or the same, on a worker): store what completed -----------------------------------

    def _store(
        self,
        context: Context,
        ledger: Ledger,
        waited: Mapping[str, Mapping[str, Any]],
        declared: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        destination = self._destination()
        ledger.finished(waited)
        to_store = []
        names: dict[str, str] = {}
        for index, video_id, was_storing in ledger.to_store():
            taken = names.setdefault(file_name(video_id), video_id)
            if taken != video_id:
                ledger.not_stored(index, "file_name_taken", f"its file name is video {taken}'s as well")
            else:
                to_store.append((index, video_id, was_storing))
        # Marked before a byte is stored: a later try takes a whole file at such a name as this batch's.
        ledger.storing(index for index, _, _ in to_store)
        ledger.save()
        if to_store:
            self.log.info("Downloading %d videos", len(to_store))
        with (
            OctopusXHook(self.octopusx_conn_id) as hook,
            ThreadPoolExecutor(self.max_concurrent_requests, thread_name_prefix="octopusx-download") as pool,
        ):
            futures = {
                pool.submit(self._download, hook, destination, video_id, was_storing): (index, video_id)
                for index, video_id, was_storing in to_store
            }
            for done in _finished_in_groups(futures):
                for future in done:
                    index, video_id = futures[future]
                    try:
                        future.result()
                        ledger.stored(index)
                    except (OctopusXError, AirflowFailException) as error:
                        self.log.warning("Video %s was not stored: %s", video_id, error)
                        ledger.not_stored(index, "download_failed", error)
                ledger.save()
        for orphan in ledger.unstored_orphans():
            self.log.warning(
                "Video %s of an earlier try, for a request no longer in the list, is %s and not stored",
                orphan.video_id or "(id unknown)",
                orphan.status.value,
            )
        results = self._publish_results(context, ledger, declared)
        self._report(results, ledger)
        self._announce(context, results)
        ledger.forget_all()
        return results

    def _publish_results(
        self, context: Context, ledger: Ledger, declared: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The results, each unstored one in a warning, pushed as the return value and written to the
        manifest before the task may fail: an ``all_done`` downstream task still gets the stored videos."""
        destination = self._destination()
        results = ledger.results(lambda video_id: plain_uri(destination.location(video_id)))
        for result in results:
            if result["status"] != "stored":
                prompt = declared[result["index"]].get("prompt")
                error = result["error"] or {}
                self.log.warning(
                    "requests[%d] (%s) not stored: %s%s",
                    result["index"],
                    excerpt(prompt, 60) if isinstance(prompt, str) else "no prompt",
                    result["status"],
                    f" ({error.get('code')}: {error.get('message')})" if error.get("code") else "",
                )
        context["ti"].xcom_push(key=XCOM_RETURN_KEY, value=results)
        manifest = self._manifest(context)
        lines = "".join(
            json.dumps({**result, "prompt": declared[result["index"]].get("prompt")}, default=str) + "\n"
            for result in results
        )
        # Ours alone, so replaced whatever overwrite says; shown whole or not at all, as a video is.
        with VideoDestination(manifest, overwrite=True).open(manifest) as file:
            file.write(lines.encode())
        context["ti"].xcom_push(key="manifest", value=plain_uri(manifest))
        self.log.info("The results are in %s", plain_uri(manifest))
        return results

    def _download(
        self, hook: OctopusXHook, destination: VideoDestination, video_id: str, was_storing: bool
    ) -> None:
        target = destination.location(video_id)
        if was_storing and not self.overwrite and target.is_file():
            # An earlier try was storing it and was stopped before recording that it had: files appear
            # only whole, so this one is.
            self.log.info("Video %s is already stored at %s (by an earlier try)", video_id, plain_uri(target))
            return
        with destination.open(target) as file:
            hook.download_video(video_id, file, max_bytes=self.max_bytes, timeout=DEFAULT_DOWNLOAD_TIMEOUT)
        if hook_lineage_is_read():
            get_hook_lineage_collector().add_output_asset(context=target, uri=plain_uri(target))

    def _announce(self, context: Context, results: list[dict[str, Any]]) -> None:
        """One asset event for the batch, its manifest's, however many videos it stored.

        Not one per video as ``DownloadVideoOperator`` does: Airflow records a task's asset events in the
        call that marks it successful, at about 10 ms each here, and a call slower than the worker's
        ``[workers] execution_api_timeout`` (5 s) is sent again and the task marked failed. Not the
        folder's either: a consumer of single videos would take it for one, and two tasks announcing one
        new folder at once race to create its asset (Airflow 3.3.2 fails one of them).
        """
        manifest = self._manifest(context)
        uri = plain_uri(manifest)
        extra = {
            "uri": uri,
            "folder": plain_uri(manifest.parent),
            "requests": len(results),
            "videos": sum(result["status"] == "stored" for result in results),
        }
        announce(context, self.outlets, uri, extra)

    def _report(self, results: list[dict[str, Any]], ledger: Ledger) -> None:
        """Fail the task when more than ``max_failed`` videos are not stored, saying what a retry would
        do for each: resume it at no charge, submit it anew (billed), or nothing, as it is final."""
        unstored = [result for result in results if result["status"] != "stored"]
        self.log.info("Stored %d of %d videos", len(results) - len(unstored), len(results))
        if len(unstored) <= self.max_failed:
            return
        by_retry: dict[str, list[str]] = {"resumes": [], "submits": [], "final": []}
        for result in unstored:
            error = result["error"] or {}
            line = f"requests[{result['index']}] video {result['video_id'] or '-'}: {result['status']}" + (
                f" ({error.get('code')}: {error.get('message')})" if error.get("code") else ""
            )
            by_retry[ledger.on_retry(result["index"], self.resubmit_failed)].append(line)
        headings = {
            "resumes": "a retry resumes these at no new charge (it waits for them again, or stores them)",
            "submits": "a retry submits these anew, each a new, billed video",
            "final": "these will end the same way on every retry: raise max_failed or change these requests",
        }
        sections = [
            f"{len(lines)} {headings[kind]}:\n"
            + "\n".join(lines[:SHOWN_FAILURES])
            + (f"\n... and {len(lines) - SHOWN_FAILURES} more" if len(lines) > SHOWN_FAILURES else "")
            for kind, lines in by_retry.items()
            if lines
        ]
        raise AirflowException(
            f"{len(unstored)} of {len(results)} videos were not stored (max_failed={self.max_failed}); the "
            "stored ones stay, and the results are pushed. " + "\n".join(sections)
        )


def fingerprint(fields: Mapping[str, Any]) -> str:
    """A digest of a request as written (files by their names), to find its record in any later try."""
    try:
        text = json.dumps(fields, sort_keys=True, default=repr, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = repr(fields)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
        """Submit ``request``, pausing first while a 429 holds the batch back."""
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
