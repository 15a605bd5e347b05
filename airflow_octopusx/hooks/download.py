"""A video's download: where it is fetched from, and where its bytes go (counted, checked and capped)."""

from __future__ import annotations

import enum
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import httpx

from airflow_octopusx.exceptions import (
    InvalidResponseError,
    OctopusXError,
    TransportError,
    VideoDownloadError,
    excerpt,
)
from airflow_octopusx.hooks.answers import raise_for_status, transport_error
from airflow_octopusx.hooks.connection import LinkRefused, video_path
from airflow_octopusx.models import VideoTask, is_web_link

if TYPE_CHECKING:
    from airflow_octopusx.hooks.octopusx import OctopusXHook

# Chunks (about 64 KiB each as received) go to the writer thread in batches of at least this many bytes,
# at most _QUEUED_BATCHES of them waiting: memory stays flat at a few MiB.
_BATCH_BYTES = 1024 * 1024
_QUEUED_BATCHES = 2
# A CDN answers these when a signed link has expired or was revoked; the API's /content proxy still works.
_EXPIRED_LINK_STATUSES = frozenset({401, 403, 404, 410})


@dataclass(frozen=True)
class DownloadedVideo:
    """What a download stored: the video as the API last described it, and its size in bytes."""

    video: VideoTask
    size: int


class _Source(enum.Enum):
    """Where a download's next attempt fetches the video, as its links are refused; the log says so."""

    LINK = "fetching it from its link"
    FRESH_LINK = "asking for a fresh one"
    CONTENT = "using the API's /content download"


def download_into(hook: OctopusXHook, sink: Mp4Sink, chunk_size: int | None) -> DownloadedVideo:
    """Fetch the finished video into ``sink`` as ``OctopusXHook.download_video`` describes."""
    video_id = sink.video_id
    source = _Source.LINK
    failures = most_written = 0
    while True:
        video = hook.get_video(video_id)
        video.raise_if_failed()
        if not video.is_completed:
            raise VideoDownloadError(video_id, f"the video is {video.status!r}, not completed yet")
        via_link = source is not _Source.CONTENT and _has_own_link(video)
        url = video.video_url if via_link else f"{video_path(video_id)}/content"
        try:
            refusal = _transfer(hook, url, sink, chunk_size)
            if refusal is None:
                return DownloadedVideo(video=video, size=sink.finish())
            if not via_link and refusal.permanent:
                raise VideoDownloadError(video_id, f"/content: {refusal}")
            if not via_link:
                # /content's redirect to a fresh link that the CDN refused: ask /content again.
                raise TransportError(f"/content led to a refused link ({refusal})", request_sent=True)
            # A refused link costs no attempt: a fresh one is asked for once, then /content is used.
            permanent = refusal.permanent or source is _Source.FRESH_LINK
            source = _Source.CONTENT if permanent else _Source.FRESH_LINK
            hook.log.info("The link of video %s was refused (%s); %s", video_id, refusal, source.value)
        except OctopusXError as error:
            # Bounded all the same, by the deadline that _transfer checks; without one, by the count.
            progressed = sink.written > most_written and sink.deadline is not None
            failures = 1 if progressed else failures + 1
            most_written = max(most_written, sink.written)
            policy = hook.retry_policy
            if failures == policy.max_attempts or not policy.is_retryable(error, idempotent=True):
                raise
            delay = policy.delay(failures, error)
            hook.log.warning(
                "Download of video %s interrupted at %d bytes (%s); resuming in %.1f s",
                video_id,
                sink.written,
                error,
                delay,
            )
            time.sleep(delay)


def _has_own_link(video: VideoTask) -> bool:
    """Whether the video has a link of its own, not one to the API's ``/content`` proxy of itself.

    The gateway builds such links from its own configured address, which may not be the
    connection's: whatever the origin, the video is fetched from the connection's ``/content``.
    """
    if not is_web_link(video.video_url):
        return False
    try:
        path = httpx.URL(video.video_url).path
    except httpx.InvalidURL:
        return True  # refused, with its reason, when it is followed
    return not path.endswith(f"{video_path(video.id)}/content")


def _transfer(hook: OctopusXHook, url: str, sink: Mp4Sink, chunk_size: int | None) -> LinkRefused | None:
    """One GET of the video into ``sink``, from where the last attempt stopped; the link's refusal
    (by the CDN, or by the link rules) if it was refused, None once the video is whole."""
    what = f"download of video {sink.video_id}"
    sink.check_deadline()
    # An MP4 gains nothing from compression, and a compressed body is decoded a whole chunk at a time,
    # before the size cap sees it.
    headers = {"Accept-Encoding": "identity"}
    if sink.written:
        headers["Range"] = f"bytes={sink.written}-"
    try:
        with hook.stream(url, headers) as response:
            # response.url, not url: /content may redirect to the CDN, whose refusal is a link's.
            if response.status_code in _EXPIRED_LINK_STATUSES and not hook.endpoint.is_api_origin(
                response.url
            ):
                return LinkRefused(f"HTTP {response.status_code}")
            if not response.is_success:
                raise_for_status(hook.read_whole(response), sink.video_id)
                raise InvalidResponseError(f"{what}: the server answered HTTP {response.status_code}")
            start = resumed_from(response)
            if start != sink.written:
                # A full answer, or a part from another offset than asked: start over from 0.
                sink.restart()
                if start != 0:
                    raise TransportError(
                        f"{what}: the server answered from byte {start} instead of the one asked for; "
                        "starting over",
                        request_sent=True,
                    )
            total = announced_total(response, sink.written)
            sink.check_size(total)
            for chunk in response.iter_bytes(chunk_size):
                sink.write(chunk)
    except LinkRefused as refused:  # a redirect the link rules do not allow
        return refused
    except (httpx.TransportError, httpx.DecodingError) as error:
        raise TransportError(
            f"{what} broke after {sink.written} bytes: {excerpt(str(error))}", request_sent=True
        ) from error
    except httpx.HTTPError as error:
        raise transport_error(error, what) from error
    if total is not None and sink.written != total:
        raise TransportError(f"{what} ended at {sink.written} of {total} bytes", request_sent=True)
    return None


class BackgroundWriter:
    """Writes to ``file`` from its own thread, so receiving the next chunks overlaps writing the last.

    Receiving (parsing HTTP in Python) and writing (the kernel copying into the page cache, or a part
    upload) each keep a core busy; ``file.write`` releases the GIL, so here they run at once. Chunks are
    handed over and written in batches of about 1 MiB: handing over each 64 KiB chunk cost a lock round
    trip and a GIL hand-off per chunk, more CPU than the overlap saved (both measured in
    docs/performance.md). A write error is raised on the next ``write``, ``wait`` or ``close``.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batches: queue.Queue[list[bytes] | None] = queue.Queue(_QUEUED_BATCHES)
        self._write_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._write_batches, name="octopusx-download-writer", daemon=True
        )
        self._thread.start()

    def _write_batches(self) -> None:
        while True:
            batch = self._batches.get()
            try:
                if batch is None:
                    return
                if self._write_error is None:
                    # One write per batch: one GIL hand-off and one system call per MiB, not per chunk.
                    self.file.write(b"".join(batch))
            except BaseException as error:  # handed to the downloading thread
                self._write_error = error
            finally:
                self._batches.task_done()

    def write(self, chunk: bytes) -> None:
        """Queue ``chunk`` for the writer thread; raise what the thread met, if anything."""
        self._raise_if_failed()
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= _BATCH_BYTES:
            self._hand_over()

    def wait(self) -> None:
        """Return once every chunk given so far is in ``file``."""
        self._hand_over()
        self._batches.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Write what is given and queued, and stop the thread."""
        self._hand_over()
        self._batches.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _hand_over(self) -> None:
        if self._batch:
            self._batches.put(self._batch)
            self._batch, self._batch_bytes = [], 0

    def _raise_if_failed(self) -> None:
        if self._write_error is not None:
            raise self._write_error


class Mp4Sink:
    """Writes a download into ``file``, checking the MP4 signature and the size cap as bytes arrive.

    A resumed transfer appends where the last one stopped; when a server ignores the ``Range`` request,
    ``restart`` empties the file first (which needs a seekable file; object-store uploads are not).
    Use it as a context manager: writing happens in a ``BackgroundWriter``, stopped on exit.
    """

    def __init__(
        self, video_id: str, file: IO[bytes], max_bytes: int | None, deadline: float | None = None
    ) -> None:
        self.video_id = video_id
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.written = 0
        self._boxes = Mp4Boxes()
        self._writer = BackgroundWriter(file)

    def __enter__(self) -> Mp4Sink:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *exc_info: object) -> None:
        try:
            self._writer.close()
        except Exception:
            if error_type is None:
                raise  # otherwise the download's own error says more than a write error after it

    def check_size(self, total: int | None) -> None:
        """Refuse a download whose announced size is over ``max_bytes``, before its body is read."""
        if self.max_bytes is not None and total is not None and total > self.max_bytes:
            raise VideoDownloadError(
                self.video_id, f"the video is {total} bytes, over the cap of {self.max_bytes} (max_bytes)"
            )

    def check_deadline(self) -> None:
        """Refuse to go on past the deadline (``time.monotonic()``), however slowly bytes still come."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise VideoDownloadError(
                self.video_id, f"it did not finish in time ({self.written} bytes received; see timeout)"
            )

    def write(self, chunk: bytes) -> None:
        """Write ``chunk``; refuse a body that is not an MP4 or runs past ``max_bytes`` or the deadline."""
        self.check_deadline()
        problem = self._boxes.feed(chunk)
        if problem is not None:
            raise VideoDownloadError(self.video_id, f"the body is not an MP4 ({problem})")
        self.check_size(self.written + len(chunk))
        self._writer.write(chunk)
        self.written += len(chunk)

    def restart(self) -> None:
        """Start the file over: the server sent the whole video, not the part asked for."""
        if self.written == 0:
            return
        self._writer.wait()
        try:
            self._writer.file.seek(0)
            self._writer.file.truncate()
        except (OSError, ValueError) as error:
            raise VideoDownloadError(
                self.video_id, f"the server cannot resume and the destination cannot start over: {error}"
            ) from error
        self.written = 0
        self._boxes = Mp4Boxes()

    def finish(self) -> int:
        """The size stored, once every byte is in the file and the MP4 is whole.

        A body that stopped early without a ``Content-Length`` to say so looks complete to HTTP; the MP4's
        own box sizes tell, and a cut one is resumed like any broken transfer.
        """
        self._writer.wait()
        problem = self._boxes.cut_short()
        if problem is not None:
            raise TransportError(
                f"download of video {self.video_id} stopped early: {problem}", request_sent=True
            )
        return self.written


class Mp4Boxes:
    """Follows the top-level boxes of an MP4 as its bytes stream past, without keeping them.

    An MP4 is a row of boxes, each starting with its size and type: the first must be ``ftyp``, and a
    whole file ends where its last box ends and holds a ``moov`` (the index) and an ``mdat`` (the media).
    """

    def __init__(self) -> None:
        self._offset = 0  # bytes seen
        self._next = 0  # where the next box starts
        self._header = b""  # the next box's header, as far as it has arrived
        self._open_ended = False  # a box of size 0 runs to the end of the file
        self._boxes = 0
        # Whether the index and the media were seen: constant state, however many boxes stream past.
        self._has_moov = self._has_mdat = False

    def feed(self, chunk: bytes) -> str | None:
        """Take the next bytes; a reason if they cannot be an MP4."""
        end = self._offset + len(chunk)
        while not self._open_ended and self._next + len(self._header) < end:
            at = self._next + len(self._header) - self._offset
            self._header += chunk[at : at + 16 - len(self._header)]
            if len(self._header) < 8:
                break
            size, kind, header_size = int.from_bytes(self._header[:4], "big"), self._header[4:8], 8
            if not self._boxes and kind != b"ftyp":
                return "no 'ftyp' box at the start"
            if size == 1:  # a 64-bit size follows the type
                if len(self._header) < 16:
                    break
                size, header_size = int.from_bytes(self._header[8:16], "big"), 16
            self._boxes += 1
            self._has_moov = self._has_moov or kind == b"moov"
            self._has_mdat = self._has_mdat or kind == b"mdat"
            if size == 0:
                self._open_ended = True
            elif size < header_size:
                return f"a {kind!r} box of {size} bytes"
            self._next += size
            self._header = b""
        self._offset = end
        return None

    def cut_short(self) -> str | None:
        """Why the bytes so far are not a whole MP4; None if they are."""
        if not self._open_ended and (self._header or self._next != self._offset):
            return f"it ends at byte {self._offset}, inside an MP4 box"
        missing = [kind for kind, seen in (("moov", self._has_moov), ("mdat", self._has_mdat)) if not seen]
        return f"it has no {' or '.join(missing)} box" if missing else None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)", re.IGNORECASE)


def resumed_from(response: httpx.Response) -> int | None:
    """Where the body starts in the file: 0 for a whole answer, the ``Content-Range`` start for a part;
    None for a part whose ``Content-Range`` cannot be read."""
    if response.status_code != 206:
        return 0
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if match is None or int(match[2]) < int(match[1]):
        return None
    return int(match[1])


def announced_total(response: httpx.Response, offset: int) -> int | None:
    """The whole file's size as the server states it (``Content-Range`` total, else offset + length)."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    if match is not None and match[3] != "*":
        return int(match[3])
    length = response.headers.get("content-length", "").strip()
    # With a Content-Encoding the header counts encoded bytes, which iter_bytes has already decoded.
    if not length.isdigit() or "content-encoding" in response.headers:
        return None
    return offset + int(length)
