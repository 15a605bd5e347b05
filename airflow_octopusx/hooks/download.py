"""Where a downloaded MP4's bytes go: counted, checked and capped, with a way to start over."""

from __future__ import annotations

import queue
import re
import threading
import time
from typing import IO

import httpx

from airflow_octopusx.exceptions import TransportError, VideoDownloadError

# Chunks (about 64 KiB each as received) go to the writer thread in batches of at least this many bytes,
# at most _QUEUED_BATCHES of them waiting: memory stays flat at a few MiB.
_BATCH_BYTES = 1024 * 1024
_QUEUED_BATCHES = 2


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
        self._error: BaseException | None = None
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
                if self._error is None:
                    # One write per batch: one GIL hand-off and one system call per MiB, not per chunk.
                    self.file.write(b"".join(batch))
            except BaseException as error:  # handed to the downloading thread
                self._error = error
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
        if self._error is not None:
            raise self._error


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
