"""Peak memory of a batch whose requests share one input image, and of the MP4 check on hostile bodies.

``GenerateVideosOperator`` reads each input file once and shares its text among the requests that name
it, so a batch holds one copy of an image however many requests send it; the measured comparison is the
same batch with a copy per request, as it was before (each request inlined its own). Each variant runs
in a fresh process against the simulator (in its own process), up to the deferral: every request
submitted, its body sent whole. The second table feeds the MP4 box checker 16 MB of tiny boxes of
distinct types, which it once kept one by one.

    .venv/bin/python -m benchmarks.batch_memory            # 1,000 shared, 200 copied: a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common.environment import prepare_airflow_environment
from benchmarks.common.proc import memory_kib, reset_peak_rss
from benchmarks.common.simulator import SimulatorProcess
from benchmarks.common.tables import print_table, ratio, verdict

IMAGE_BYTES = 4 * 1024 * 1024
GOAL_MB = 100


def png_of(size: int) -> bytes:
    """A whole PNG of about ``size`` bytes: stored (uncompressed) rows of one grey level."""
    width = 1024
    height = size // (width + 1)
    rows = (b"\x00" + b"\x7f" * width) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


def _run_batch(
    connection: dict[str, Any], image: str, count: int, shared: bool, home: str
) -> dict[str, float]:
    """In a fresh process: the batch up to its deferral; the peak RSS it added, in MB."""
    prepare_airflow_environment(Path(home), {"octopusx_default": connection})
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_octopusx.operators.batch import GenerateVideosOperator
    from airflow_octopusx.storage.input_files import file_reader
    from tests.support.task_context import MemoryTaskStateStore, RecordingTaskInstance

    task = GenerateVideosOperator(
        task_id="batch",
        requests=[{"prompt": f"Take {n}", "first_image_url": image} for n in range(count)],
        destination=f"{home}/videos/",
        deferrable=True,
    )
    if not shared:
        # Before: each request read and inlined its own copy.
        task._read_file = lambda field, value, video: file_reader(None)(field, value, video)  # type: ignore[method-assign]
    context = {"ti": RecordingTaskInstance(), "task_state_store": MemoryTaskStateStore()}
    baseline = memory_kib(field="VmRSS")
    reset_peak_rss()
    with contextlib.suppress(TaskDeferred):
        task.execute(context)
    peak = memory_kib(field="VmHWM")
    return {"added_mb": (peak - baseline) / 1024}


def _box_checker(megabytes: int) -> float:
    """In a fresh process: peak RSS (MB) added by feeding ``megabytes`` of 8-byte boxes of distinct types."""
    from airflow_octopusx.hooks.download import Mp4Boxes

    boxes = Mp4Boxes()
    boxes.feed(b"\x00\x00\x00\x08ftyp")
    baseline = memory_kib(field="VmRSS")
    reset_peak_rss()
    chunk = bytearray()
    for number in range(megabytes * 1024 * 1024 // 8):
        chunk += b"\x00\x00\x00\x08" + number.to_bytes(4, "big")
        if len(chunk) >= 1 << 20:
            boxes.feed(bytes(chunk))
            chunk.clear()
    return (memory_kib(field="VmHWM") - baseline) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=int, default=1000, help="requests sharing the image")
    parser.add_argument("--copied", type=int, default=200, help="requests with a copy each (the before)")
    args = parser.parse_args(argv)
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder, SimulatorProcess(generation_seconds=600) as simulator:
        image = Path(folder) / "frame.png"
        image.write_bytes(png_of(IMAGE_BYTES))
        size_mb = image.stat().st_size / 1e6
        connection = simulator.control.connection
        figures = {}
        for name, count, shared in (("shared", args.shared, True), ("copied", args.copied, False)):
            simulator.control.reset()
            with spawn.Pool(1) as pool:
                measured = pool.apply(_run_batch, (connection, str(image), count, shared, f"{folder}/{name}"))
            posts = simulator.control.stats()["posts"]
            figures[name] = (count, measured["added_mb"], posts)
        with spawn.Pool(1) as pool:
            boxes_mb = pool.apply(_box_checker, (16,))
    rows = [
        [name, count, f"{added:.0f} MB", f"{added / count:.2f} MB", posts]
        for name, (count, added, posts) in figures.items()
    ]
    print_table(
        f"A batch whose requests all name one {size_mb:.1f} MB image, submitted up to its deferral",
        ["inputs", "requests", "peak RSS added", "per request", "POSTs"],
        rows,
    )
    shared_count, shared_mb, _ = figures["shared"]
    copied_count, copied_mb, _ = figures["copied"]
    print(f"per request, shared vs copied: {ratio(shared_mb / shared_count, copied_mb / copied_count)}")
    print(
        f"goal: {shared_count} requests sharing one image add <= {GOAL_MB} MB: "
        f"{verdict(shared_mb <= GOAL_MB)}"
    )
    print_table(
        "The MP4 box checker fed 16 MB of 8-byte boxes of distinct types",
        ["peak RSS added"],
        [[f"{boxes_mb:.1f} MB"]],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
