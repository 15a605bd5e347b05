"""``BackgroundWriter`` and ``Mp4Sink`` on their own: bounded memory, write errors, nothing left running."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_octopusx.hooks.download import _BATCH_BYTES, _QUEUED_BATCHES, BackgroundWriter
from airflow_octopusx.simulator.media import sample_mp4
from tests.hooks.test_hook_unit import (  # the fixture points octopusx_default at make_hook's API
    COMPLETED,
    Recorder,
    connection_of_the_endpoint,  # noqa: F401
    make_hook,
)

# Padded with zeros: a last box of size 0 runs to the end of the file.
MP4 = sample_mp4() + b"\x00" * 65_536


class HeldFile(io.BytesIO):
    """A file whose writes wait until ``release`` is set, as a slow disk or upload would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        self.release.wait()
        return super().write(chunk)


class RecordingFile(io.BytesIO):
    """Counts the ``write`` calls it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(chunk)


class FullDisk(io.BytesIO):
    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(chunk) > self.room:
            raise OSError(28, "No space left on device")
        return super().write(chunk)


def writer_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "octopusx-download-writer"]


def test_a_slow_file_holds_back_the_download_after_a_bounded_number_of_bytes() -> None:
    file = HeldFile()
    writer = BackgroundWriter(file)
    chunk = b"x" * 65_536
    chunks_per_batch = _BATCH_BYTES // len(chunk)
    total = 3 * (_QUEUED_BATCHES + 2) * chunks_per_batch
    accepted = 0

    def produce() -> None:
        nonlocal accepted
        for _ in range(total):
            writer.write(chunk)
            accepted += 1

    producer = threading.Thread(target=produce)
    producer.start()
    # One batch held by the waiting write, the queue full, and the next batch filled up to the chunk
    # whose hand-over waits: nothing more is taken in.
    held_back = (_QUEUED_BATCHES + 2) * chunks_per_batch - 1
    deadline = time.monotonic() + 10
    while accepted < held_back and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a producer that is not held back to take in more
    assert accepted == held_back
    file.release.set()
    producer.join(timeout=5)
    writer.close()
    assert file.getvalue() == chunk * total
    assert not writer_threads()


def test_chunks_are_written_in_batches_and_wait_writes_a_partial_one() -> None:
    file = RecordingFile()
    writer = BackgroundWriter(file)
    for _ in range(3 * _BATCH_BYTES // 65_536):
        writer.write(b"x" * 65_536)
    writer.write(b"tail")
    writer.wait()
    assert file.getvalue() == b"x" * 3 * _BATCH_BYTES + b"tail"
    assert file.writes == 4
    writer.close()
    assert not writer_threads()


@settings(max_examples=50, deadline=None)
@given(steps=st.lists(st.integers(1, 3 * _BATCH_BYTES // 2) | st.none(), max_size=12))
def test_whatever_the_chunk_sizes_and_waits_the_file_gets_exactly_the_bytes_in_order(
    steps: list[int | None],
) -> None:
    """``None`` is a ``wait`` (as before a resumed transfer starts over); a size is a chunk that long."""
    file = RecordingFile()
    writer = BackgroundWriter(file)
    expected = bytearray()
    for number, size in enumerate(steps):
        if size is None:
            writer.wait()
            assert file.getvalue() == expected
        else:
            chunk = bytes([number % 251]) * size
            writer.write(chunk)
            expected += chunk
    writer.close()
    assert file.getvalue() == expected
    assert not writer_threads()


def test_a_write_error_reaches_the_caller_and_the_thread_ends() -> None:
    writer = BackgroundWriter(FullDisk(room=10))
    writer.write(b"x" * 8)
    writer.write(b"x" * 8)  # fails in the thread
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert not writer_threads()


def test_a_download_onto_a_full_disk_fails_with_the_disk_error_and_leaves_no_thread() -> None:
    recorder = Recorder(httpx.Response(200, json=COMPLETED), httpx.Response(200, content=MP4))
    with pytest.raises(OSError, match="No space left"):
        make_hook(recorder).download_video("video_1", FullDisk(room=1000))
    assert not writer_threads()


def test_a_refused_download_leaves_no_thread() -> None:
    recorder = Recorder(httpx.Response(200, json=COMPLETED), httpx.Response(200, content=MP4))
    with pytest.raises(Exception, match="over the cap"):
        make_hook(recorder).download_video("video_1", io.BytesIO(), max_bytes=100)
    assert not writer_threads()
