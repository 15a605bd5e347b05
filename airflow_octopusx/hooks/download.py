"""Where a downloaded MP4's bytes go: counted, checked and capped, with a way to start over."""

from __future__ import annotations

from typing import IO

import httpx

from airflow_octopusx.exceptions import VideoDownloadError

_MP4_SIGNATURE_AT = slice(4, 8)


class Mp4Sink:
    """Writes a download into ``file``, checking the MP4 signature and the size cap as bytes arrive.

    A resumed transfer appends where the last one stopped; when a server ignores the ``Range`` request,
    ``restart`` empties the file first (which needs a seekable file; object-store uploads are not).
    """

    def __init__(self, video_id: str, file: IO[bytes], max_bytes: int | None) -> None:
        self.video_id = video_id
        self.file = file
        self.max_bytes = max_bytes
        self.written = 0
        self._head = b""

    def check_size(self, total: int | None) -> None:
        if self.max_bytes is not None and total is not None and total > self.max_bytes:
            raise VideoDownloadError(
                self.video_id, f"the video is {total} bytes, over the cap of {self.max_bytes} (max_bytes)"
            )

    def write(self, chunk: bytes) -> None:
        if len(self._head) < 8:
            self._head += chunk[: 8 - len(self._head)]
            if len(self._head) == 8 and self._head[_MP4_SIGNATURE_AT] != b"ftyp":
                raise VideoDownloadError(self.video_id, "the body is not an MP4 (no 'ftyp' box at the start)")
        self.check_size(self.written + len(chunk))
        self.file.write(chunk)
        self.written += len(chunk)

    def restart(self) -> None:
        if self.written == 0:
            return
        try:
            self.file.seek(0)
            self.file.truncate()
        except (OSError, ValueError) as error:
            raise VideoDownloadError(
                self.video_id, f"the server cannot resume and the destination cannot start over: {error}"
            ) from error
        self.written = 0
        self._head = b""

    def finish(self) -> int:
        if self.written < 8:
            raise VideoDownloadError(
                self.video_id, f"the body is only {self.written} bytes, too short for an MP4"
            )
        return self.written


def announced_total(response: httpx.Response, offset: int) -> int | None:
    """The whole file's size as the server states it (``Content-Range`` total, else offset + length)."""
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    # With a Content-Encoding the header counts encoded bytes, which iter_bytes has already decoded.
    if length is None or "content-encoding" in response.headers:
        return None
    return offset + int(length)
