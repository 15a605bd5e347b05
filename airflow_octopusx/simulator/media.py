"""The bytes the simulator serves as a generated video: a real MP4, optionally padded to any size."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

CHUNK_SIZE = 1 << 20
_MAX_BOX32 = 0xFFFFFFFF
_BOX_HEADER = 8
_LARGE_BOX_HEADER = 16
_ZEROS = bytes(CHUNK_SIZE)


@cache
def sample_mp4() -> bytes:
    """The shipped clip (~2 s, H.264), read once: it is small, so every download can share it."""
    return (resources.files("airflow_octopusx.simulator") / "sample.mp4").read_bytes()


def min_padded_size(sample_size: int) -> int:
    """Smallest size above the sample that still fits a ``free`` box header."""
    return sample_size + _BOX_HEADER


@dataclass(frozen=True)
class VideoBody:
    """The sample followed by a top-level ``free`` box up to ``total`` bytes.

    Players skip ``free`` boxes, so the padded file still plays; the padding is generated on the fly,
    so a 1 GiB body costs one reusable 1 MiB buffer rather than 1 GiB of memory.
    """

    prefix: bytes
    total: int

    @classmethod
    def build(cls, sample: bytes, size: int) -> VideoBody:
        """Body of exactly ``size`` bytes, or just the sample when ``size`` does not exceed it."""
        if size <= len(sample):
            return cls(prefix=sample, total=len(sample))
        if size < min_padded_size(len(sample)):
            raise ValueError(
                f"Size {size} leaves no room for a 'free' box after the {len(sample)}-byte sample"
            )
        return cls(prefix=sample + free_box_header(size - len(sample)), total=size)

    def iter_bytes(self, start: int, stop: int, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield bytes ``[start, stop)`` in chunks of at most ``chunk_size``."""
        position = start
        while position < stop:
            length = min(chunk_size, stop - position)
            yield self._read(position, length)
            position += length

    def _read(self, position: int, length: int) -> bytes:
        head = self.prefix[position : position + length]
        zeros = length - len(head)
        if not zeros:
            return head
        padding = _ZEROS if zeros == CHUNK_SIZE else bytes(zeros)
        return head + padding if head else padding


def free_box_header(box_size: int) -> bytes:
    """ISO-BMFF ``free`` box header for a box of ``box_size`` bytes (64-bit form past 4 GiB)."""
    if box_size <= _MAX_BOX32:
        return struct.pack(">I4s", box_size, b"free")
    return struct.pack(">I4sQ", 1, b"free", box_size)


class RangeNotSatisfiable(ValueError):
    """The client asked for bytes outside the body (answered with 416)."""


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """Parse a single ``Range: bytes=a-b`` / ``a-`` / ``-n`` header into ``[start, stop)``.

    Returns None when the whole body should be sent (no header, or one this server ignores, such as
    multiple ranges - which RFC 9110 allows) and raises :class:`RangeNotSatisfiable` for a range that
    starts past the end.
    """
    if header is None:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return max(0, total - suffix), total
    start = int(first)
    if start >= total:
        raise RangeNotSatisfiable(header)
    if not last:
        return start, total
    end = int(last)
    if end < start:
        return None
    return start, min(end + 1, total)
