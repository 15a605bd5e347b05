"""The ledger of a ``GenerateVideosOperator`` batch: what each request has cost, kept between tries.

Money first. A request's record says ``sending`` in the task state store before its POST leaves, so a
try stopped at any moment leaves no request that a later try could pay for twice: a record found
``sending`` is reported ``ambiguous_submission`` and never sent again. Records are matched to requests by
fingerprint (the request as written; equal requests paired in order), never by position, so an edited
list resumes what it still asks for; a record whose request left the list keeps its video id, which the
operator reports. Records live in pages of ``PAGE_SIZE`` under one key each, written by ``save()``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from airflow_octopusx._compat import airflow_clears_state_on_success
from airflow_octopusx.exceptions import (
    TRANSIENT_VIDEO_FAILURES,
    AccountError,
    BadRequestError,
    OctopusXError,
)
from airflow_octopusx.hooks.retry import RetryPolicy
from airflow_octopusx.models import VideoTask

#: Task state store key of a page of records; the page number follows. A thousand videos take 40 reads
#: and a few dozen writes where a key per record took thousands of round trips through the supervisor, and
#: a page of the largest records stays under the 64 KB Airflow advises for a value.
PAGE_KEY = "octopusx_batch_page_"
PAGE_SIZE = 25
#: A recorded error code and message are cut to this many characters (the task log has them whole).
RECORDED_CODE_CHARS = 64
RECORDED_MESSAGE_CHARS = 200


class Status(str, enum.Enum):
    """Where a request stands. Only ``refused`` with ``resend`` and no record at all may be sent."""

    SENDING = "sending"  # its POST may have left: never sent again
    RENDERING = "rendering"  # accepted, with its id
    COMPLETED = "completed"  # finished; to be stored
    STORING = "storing"  # being stored: a whole file at its name is this batch's
    STORED = "stored"
    FAILED = "failed"  # the API failed it, or answered for it alone with an error
    TIMEOUT = "timeout"  # still rendering at the deadline: a retry waits for it again
    AMBIGUOUS = "ambiguous"  # may exist and be billed, its id unknown: never sent again
    REFUSED = "refused"  # refused before anything was made; with ``resend`` a retry sends it


@dataclasses.dataclass
class Record:
    """One request's entry: the fingerprint it was made for, where it stands, and what it cost."""

    request: str
    status: Status
    video_id: str | None = None
    error: dict[str, str | None] | None = None
    billing: dict[str, Any] = dataclasses.field(default_factory=dict)
    resend: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as stored in the task state store."""
        entry = dataclasses.asdict(self) | {"status": self.status.value}
        # billing and resend only where they say something: a page of records stays small.
        return {name: value for name, value in entry.items() if value or name not in ("billing", "resend")}

    @classmethod
    def from_json(cls, value: Any) -> Record | None:
        """A record as saved; None for anything else (a page another version wrote, a damaged value)."""
        if not isinstance(value, Mapping) or not isinstance(value.get("request"), str):
            return None
        try:
            status = Status(value.get("status"))
        except ValueError:
            return None
        video_id, error, billing = value.get("video_id"), value.get("error"), value.get("billing")
        return cls(
            request=value["request"],
            status=status,
            video_id=video_id if isinstance(video_id, str) else None,
            error=dict(error) if isinstance(error, Mapping) else None,
            billing=dict(billing) if isinstance(billing, Mapping) else {},
            resend=value.get("resend") is True,
        )


class Ledger:
    """Every request's record, read from the task state store (or what a deferral ``carried``).

    Transitions are the methods below; each marks its page to be written by the next ``save()``.
    """

    def __init__(
        self,
        store: Any,
        fingerprints: list[str],
        log: Any,
        carried: list[Any] | None = None,
        *,
        after_deferral: bool = False,
    ) -> None:
        self._store = store
        self._log = log
        self._fingerprints = fingerprints
        found, self._pages_read = (carried, 0) if carried is not None else _read_pages(store)
        unused = [record for record in map(Record.from_json, found) if record is not None]
        self._records: list[Record | None] = []
        for fingerprint in fingerprints:
            match = next((record for record in unused if record.request == fingerprint), None)
            if match is not None:
                unused.remove(match)
            self._records.append(match)
        # Records whose request left the list: kept while they hold a video or may have made one.
        self.orphans = [record for record in unused if record.video_id or record.status is Status.AMBIGUOUS]
        for record in self._entries():
            if record is not None and record.status is Status.SENDING:
                record.status = Status.AMBIGUOUS
                record.error = recorded_error(
                    "ambiguous_submission",
                    "a try was stopped while this request's submission was on its way: it may have created "
                    "a billed video, so it is not sent again",
                )
        # Positions may have moved: the first save writes every page.
        self._unsaved_pages = set(range(_page_count(len(self._entries()))))
        # This try's submissions in flight, and for each, those in flight with it at some moment.
        self._in_flight: set[int] = set()
        self._flew_with: dict[int, set[int]] = {}
        resumed = sum(record is not None for record in self._records)
        if resumed and not after_deferral:
            log.info("Resuming %d of %d videos from an earlier try", resumed, len(fingerprints))

    def _entries(self) -> list[Record | None]:
        return [*self._records, *self.orphans]

    def _set(self, index: int, record: Record | None) -> None:
        self._records[index] = record
        self._unsaved_pages.add(index // PAGE_SIZE)

    def save(self) -> None:
        """Write the pages changed since the last save (a few round trips, however many records)."""
        entries = self._entries()
        if self._store is not None:
            for page in sorted(self._unsaved_pages):
                chunk = entries[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
                self._store.set(f"{PAGE_KEY}{page}", [r.to_json() if r else None for r in chunk])
        self._unsaved_pages.clear()

    def as_list(self) -> list[Any]:
        """What a deferral carries in XCom where there is no task state store (before Airflow 3.3)."""
        return [record.to_json() if record else None for record in self._entries()]

    # -- submission ---------------------------------------------------------------------------------

    def forget_failures(self, resubmit_failed: bool) -> None:
        """Drop failed videos that a new submission may get past (or all, with ``resubmit_failed``)."""
        for index, record in enumerate(self._records):
            if record is None or record.status is not Status.FAILED or not record.video_id:
                continue
            code = (record.error or {}).get("code")
            if resubmit_failed or code in TRANSIENT_VIDEO_FAILURES:
                self._log.warning(
                    "Video %s failed in an earlier try (%s); submitting it anew (a new, billed video)",
                    record.video_id,
                    code,
                )
                self._set(index, None)

    def needs_sending(self) -> list[int]:
        """The indexes of requests to send: with no record, or refused before they reached the API."""
        return [
            index
            for index, record in enumerate(self._records)
            if record is None or (record.status is Status.REFUSED and record.resend)
        ]

    def sending(self, indexes: Iterable[int]) -> None:
        """Mark requests as about to be sent (saved before their POSTs leave)."""
        for index in indexes:
            self._set(index, Record(self._fingerprints[index], Status.SENDING))
            self._flew_with[index] = set(self._in_flight)
            for other in self._in_flight:
                self._flew_with[other].add(index)
            self._in_flight.add(index)

    def sent(self, index: int, outcome: Future[VideoTask]) -> None:
        """Take how a submission ended; any exception, of ours or not, is recorded against its request."""
        fingerprint = self._fingerprints[index]
        self._in_flight.discard(index)
        try:
            video = outcome.result()
        except OctopusXError as error:
            # Refused before any video was made: for good (400, 422), or until the account is fixed (a
            # key, a quota), or provably never reaching the API (no connection, a 429): a retry sends those.
            resend = isinstance(error, AccountError) or RetryPolicy().is_retryable(error, idempotent=False)
            if not (resend or isinstance(error, BadRequestError)):
                self._ambiguous(index, error)
                return
            refused = recorded_error(getattr(error, "code", None), error)
            self._set(index, Record(fingerprint, Status.REFUSED, error=refused, resend=resend))
        except Exception as error:
            self._ambiguous(index, error)
        else:
            holder = self._holder_of(video.id)
            if isinstance(holder, int) and holder in self._flew_with.get(index, ()):
                # Both were on their way at once: which one made the video cannot be told, so neither
                # is credited with it; both are reported with its id, and neither is sent again.
                for one, other in ((index, holder), (holder, index)):
                    self._ambiguous(
                        one,
                        f"OctopusX answered the id {video.id} for this submission and for requests[{other}], "
                        "sent at the same time: which one made it cannot be told, so neither is credited "
                        "with it, and neither is sent again",
                    )
            elif holder is not None:
                self._ambiguous(
                    index,
                    f"OctopusX answered this submission with the id {video.id} of another request's video "
                    f"({holder if isinstance(holder, str) else f'requests[{holder}]'}); it may have created "
                    "another billed video, so it is not sent again",
                )
            else:
                self._set(index, Record(fingerprint, Status.RENDERING, video.id, billing=dict(video.billing)))

    def _ambiguous(self, index: int, error: object) -> None:
        record = Record(
            self._fingerprints[index], Status.AMBIGUOUS, error=recorded_error("ambiguous_submission", error)
        )
        self._set(index, record)

    def _holder_of(self, video_id: str) -> int | str | None:
        """The index of the request credited with ``video_id``, or a word for one no longer listed."""
        for index, record in enumerate(self._records):
            if record is not None and record.video_id == video_id:
                return index
        if any(record.video_id == video_id for record in self.orphans):
            return "a request no longer in the list"
        return None

    # -- waiting and storing ----------------------------------------------------------------------------

    def rendering(self) -> list[str]:
        """Ids to wait for: accepted and not finished, or still rendering at an earlier deadline."""
        return [
            record.video_id
            for record in self._entries()
            if record is not None and record.video_id and record.status in (Status.RENDERING, Status.TIMEOUT)
        ]

    def finished(self, outcomes: Mapping[str, Mapping[str, Any]]) -> None:
        """Take how each waited-for video ended: ``completed``, ``failed`` or ``timeout``."""
        for index, record in enumerate(self._entries()):
            if record is None or record.status not in (Status.RENDERING, Status.TIMEOUT):
                continue
            outcome = outcomes.get(record.video_id or "")
            if outcome is None:
                continue
            try:
                record.status = Status(str(outcome.get("status")))
            except ValueError:
                record.status = Status.TIMEOUT
            if record.status is Status.COMPLETED:
                record.error = None
            elif record.status is Status.TIMEOUT:
                record.error = recorded_error("timeout", "still rendering at the deadline")
            else:
                record.error = recorded_error(outcome.get("code"), outcome.get("message"))
            self._unsaved_pages.add(index // PAGE_SIZE)

    def to_store(self) -> list[tuple[int, str, bool]]:
        """``(index, video id, whether an earlier try was storing it)`` of every finished, unstored video."""
        return [
            (index, record.video_id, record.status is Status.STORING)
            for index, record in enumerate(self._entries())
            if record is not None and record.video_id and record.status in (Status.COMPLETED, Status.STORING)
        ]

    def storing(self, indexes: Iterable[int]) -> None:
        """Mark videos as being stored, before a byte is written."""
        for index in indexes:
            self._update(index, Status.STORING, None)

    def stored(self, index: int) -> None:
        """Mark a video as stored."""
        self._update(index, Status.STORED, None)

    def not_stored(self, index: int, code: str, error: object) -> None:
        """Left ``completed``: a retry stores it, and never submits it again."""
        self._update(index, Status.COMPLETED, recorded_error(code, error))

    def _update(self, index: int, status: Status, error: dict[str, str | None] | None) -> None:
        record = self._entries()[index]
        assert record is not None, "only a recorded video is stored"
        record.status, record.error = status, error
        self._unsaved_pages.add(index // PAGE_SIZE)

    # -- the end of a try --------------------------------------------------------------------------------

    def results(self, uri_of: Any) -> list[dict[str, Any]]:
        """One per request, in order; a video left completed but unstored is reported ``failed``."""
        results = []
        for index, record in enumerate(self._records):
            record = record or Record(self._fingerprints[index], Status.REFUSED)
            status = _RESULT_STATUS.get(record.status, record.status.value)
            results.append(
                {
                    "index": index,
                    "video_id": record.video_id,
                    "status": status,
                    "uri": uri_of(record.video_id) if status == "stored" else None,
                    "error": record.error,
                    "billing": record.billing,
                }
            )
        return results

    def on_retry(self, index: int, resubmit_failed: bool) -> str:
        """What a retry does for a request not stored: ``resumes`` it at no charge (waits again, downloads
        again), ``submits`` it anew (a new, billed video), or nothing, as it is ``final``."""
        record = self._records[index]
        if record is None or (record.status is Status.REFUSED and record.resend):
            return "submits"
        if record.status in (Status.RENDERING, Status.TIMEOUT, Status.STORING):
            return "resumes"
        if record.status is Status.COMPLETED:
            return "final" if (record.error or {}).get("code") == "file_name_taken" else "resumes"
        if record.status is Status.FAILED and record.video_id:
            transient = (record.error or {}).get("code") in TRANSIENT_VIDEO_FAILURES
            return "submits" if resubmit_failed or transient else "final"
        return "final"

    def unstored_orphans(self) -> list[Record]:
        """Videos made for requests no longer in the list, or that may have been made, and not stored."""
        return [record for record in self.orphans if record.status is not Status.STORED]

    def forget_all(self) -> None:
        """The task succeeds: clearing it later makes a new batch, as with ``SubmitVideoOperator`` (where
        Airflow deletes the records as it records the success, they are left to it)."""
        if self._store is not None and not airflow_clears_state_on_success():
            for page in range(max(self._pages_read, _page_count(len(self._entries())))):
                self._store.delete(f"{PAGE_KEY}{page}")


_RESULT_STATUS = {
    Status.RENDERING: "timeout",
    Status.COMPLETED: "failed",
    Status.STORING: "failed",
    Status.AMBIGUOUS: "not_submitted",
    Status.REFUSED: "not_submitted",
    Status.SENDING: "not_submitted",
}


def recorded_error(code: Any, message: Any) -> dict[str, str | None]:
    """An error as recorded and returned: cut short, so a page of records stays small."""
    return {
        "code": None if code is None else str(code)[:RECORDED_CODE_CHARS],
        "message": None if message is None else str(message)[:RECORDED_MESSAGE_CHARS],
    }


def _read_pages(store: Any) -> tuple[list[Any], int]:
    """Every saved entry, page after page until a page is missing; and how many pages there were."""
    found: list[Any] = []
    page = 0
    while store is not None and isinstance(records := store.get(f"{PAGE_KEY}{page}"), list):
        found += (records + [None] * PAGE_SIZE)[:PAGE_SIZE]
        page += 1
    return found, page


def _page_count(count: int) -> int:
    return -(-count // PAGE_SIZE)
