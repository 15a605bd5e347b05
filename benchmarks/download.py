"""Download speed, CPU and memory: ``DownloadVideoOperator.execute()`` against ``curl -o`` of the same
signed URL, in the same run, from the same simulator, to the same disk.

A video can be gigabytes; the operator must stream it at close to what the network and disk allow
(curl is the reference: at least 0.9x its MB/s) without holding it in memory, and at no more than 1.5x
curl's CPU seconds per GiB, since a batch downloads many videos in one worker. Each of our downloads
runs in a fresh child process whose peak RSS (``VmHWM``, reset just before the download) is read
afterwards, so earlier runs cannot pollute it; its CPU counts all its threads. The simulator's share
of a core is shown for each side: a server near a full core limits both sides alike and hides the
client's cost, so such a comparison is marked as server-bound instead of met. Then the hook's
``chunk_size`` and the write path (plain file or fsspec) are swept, and with ``--s3`` the same
operator writes to ``s3://`` on a local moto server.

    .venv/bin/python -m benchmarks.download          # 1 GiB and 64 MiB, chunk sweep
    .venv/bin/python -m benchmarks.download --s3     # also to s3:// (needs moto and the Amazon provider)
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common.environment import add_measurement_arguments, log_to, prepare_airflow_environment
from benchmarks.common.proc import Window, load_average, memory_kib, reset_peak_rss, wait_until_quiet
from benchmarks.common.product import product_fingerprint, use_product_ref
from benchmarks.common.simulator import SimulatorControl, SimulatorProcess
from benchmarks.common.tables import median, print_table, verdict
from tests.support.task_context import minimal_context

MIB = 1024 * 1024
GOAL_CURL_RATIO = 0.9
GOAL_CPU_RATIO = 1.5
#: A simulator using this much of a core (its one event loop) during either side may be what limits it.
SERVER_BOUND_SHARE = 0.85
GIB = 1024 * MIB
GOAL_PEAK_MIB = 32
PRODUCT_FILES = ("hooks/octopusx.py", "hooks/download.py", "operators/octopusx.py")
S3_CONN_ID = "aws_bench"
S3_BUCKET = "octopusx-bench"
_WRITE_PATHS = {
    "open": "open('wb')",
    "fs": "path.fs.open('wb') (the operator's)",
    "fsspec": "ObjectStoragePath('file://').open('wb')",
}


@dataclass(frozen=True)
class Job:
    """One measured download in a child process (picklable)."""

    video_id: str
    size: int
    destination: str
    simulator: SimulatorControl
    simulator_pid: int
    log_file: str
    destination_conn_id: str | None = None
    #: ``operator`` (the whole execute()), or the hook into ``open`` (plain file), ``fs`` (the fsspec
    #: file of a file:// ObjectStoragePath, as the operator opens it), ``fsspec`` (the path's ``open()``,
    #: which wraps that file to record lineage on every call) or ``s3`` (an s3:// path's
    #: ``open()`` with ``block_size``).
    variant: str = "operator"
    #: Passed to ``download_video``: a byte count, ``"none"`` for ``None`` (each chunk as it arrives,
    #: about 64 KiB from httpcore), or ``"default"`` to leave the hook's default.
    chunk_size: str = "default"
    block_size: int | None = None
    #: What-if: write in the downloading thread instead of the hook's background writer thread.
    inline_writes: bool = False
    #: The S3 server's pid, so its CPU is counted apart from everything else.
    server_pid: int | None = None


# -- measured in a fresh child process, one download each ---------------------------------------------------


def measure(job: Job) -> dict[str, Any]:
    """One download of ``job.variant`` after a warm-up on the bare sample (imports, first-use caches)."""
    log_to(job.log_file)
    from airflow.sdk import ObjectStoragePath

    from airflow_octopusx.hooks.octopusx import OctopusXHook

    if job.inline_writes:
        import airflow_octopusx.hooks.download

        airflow_octopusx.hooks.download.BackgroundWriter = InlineWriter  # type: ignore[misc,assignment]
    download = _operator_download if job.variant == "operator" else _hook_download
    fixed = _warm_up(
        job,
        lambda video_id: ObjectStoragePath(download(job, video_id), conn_id=job.destination_conn_id).unlink(),
    )
    with _measured(job) as figures:
        target = download(job, job.video_id)
    ObjectStoragePath(target, conn_id=job.destination_conn_id).unlink()

    default = inspect.signature(OctopusXHook.download_video).parameters["chunk_size"].default
    return {**figures, "default_chunk_size": default, "fixed_ms": 1000 * fixed}


class InlineWriter:
    """``BackgroundWriter``'s interface, writing in the caller's thread: the hook before the thread."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)

    def wait(self) -> None:
        pass

    def close(self) -> None:
        pass


def _operator_download(job: Job, video_id: str) -> str:
    """``DownloadVideoOperator(...).execute(context)`` with a minimal context; returns where it stored.

    A ``chunk_size`` other than ``"default"`` replaces the hook's default for this process: what the
    operator would do with that default, measured without changing the product.
    """
    from airflow_octopusx.hooks.octopusx import OctopusXHook
    from airflow_octopusx.operators.octopusx import DownloadVideoOperator

    if job.chunk_size != "default":
        defaults = OctopusXHook.download_video.__kwdefaults__ or {}
        defaults["chunk_size"] = _chunk_value(job.chunk_size)
        OctopusXHook.download_video.__kwdefaults__ = defaults

    operator = DownloadVideoOperator(
        task_id="download_video",
        video_id=video_id,
        destination=job.destination,
        destination_conn_id=job.destination_conn_id,
        overwrite=True,
    )
    return str(operator.execute(minimal_context()))


def _hook_download(job: Job, video_id: str) -> str:
    """``OctopusXHook.download_video`` into the write path ``job.variant`` names."""
    from airflow.sdk import ObjectStoragePath

    from airflow_octopusx.hooks.octopusx import OctopusXHook

    options: dict[str, Any] = {}
    if job.chunk_size != "default":
        options["chunk_size"] = _chunk_value(job.chunk_size)
    if job.variant == "s3":
        target = ObjectStoragePath(f"{job.destination}{video_id}.mp4", conn_id=job.destination_conn_id)
    else:
        target = ObjectStoragePath(f"file://{job.destination}{video_id}.mp4")
    block_size = {"block_size": job.block_size} if job.block_size else {}
    if job.variant == "open":
        file = Path(target.path).open("wb")  # noqa: SIM115 - closed by the with below
    elif job.variant == "fs":
        file = target.fs.open(target.path, "wb")
    else:
        file = target.open("wb", **block_size)
    with OctopusXHook() as hook, file:
        hook.download_video(video_id, file, **options)
    return str(target)


def _chunk_value(chunk_size: str) -> int | None:
    return None if chunk_size == "none" else int(chunk_size)


def _warm_up(job: Job, download: Callable[[str], object]) -> float:
    """Two downloads of the bare 14 KB sample first, so imports and first-use caches are not counted;
    returns the second one's seconds: the fixed cost of a download, whatever its size."""
    simulator = job.simulator
    simulator.configure(video_size_bytes=0)
    try:
        first, second = simulator.submit_videos(2, generation_seconds=0)
        download(first)
        started = time.monotonic()
        download(second)
        return time.monotonic() - started
    finally:
        simulator.configure(video_size_bytes=job.size)


@contextmanager
def _measured(job: Job) -> Iterator[dict[str, Any]]:
    """Wall time, CPU and peak RSS growth (``VmHWM`` after minus ``VmRSS`` before) of the block."""
    figures: dict[str, Any] = {"peak_reset": reset_peak_rss()}
    rss_before = memory_kib()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pids: dict[str, int | str] = {"ours": "self", "simulator": job.simulator_pid}
    if job.server_pid is not None:
        pids["server"] = job.server_pid
    with Window(pids) as window:
        yield figures
    figures.update(
        _figures(job.size, window),
        peak_growth_mib=(memory_kib(field="VmHWM") - rss_before) / 1024,
        page_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before,
        code=product_fingerprint(*PRODUCT_FILES),
    )


def _figures(size: int, window: Window) -> dict[str, Any]:
    figures = {
        "seconds": window.wall,
        "mb_per_s": size / window.wall / 1e6,
        "cpu": window.cpu["ours"],
        "cpu_per_gib": window.cpu["ours"] / (size / GIB),
        "simulator_cpu": window.cpu["simulator"],
        "simulator_share": window.cpu["simulator"] / window.wall,
        "others_cpu": window.others,
        "others_share": window.others / window.wall,
    }
    if "server" in window.cpu:
        figures["server_cpu"] = window.cpu["server"]
    return figures


# -- the reference -------------------------------------------------------------------------------------------


def curl_download(job: Job) -> dict[str, Any]:
    """``curl -o`` of a freshly signed link to the video: wall time, and curl's own CPU."""
    url = signed_url(job.simulator, job.video_id)
    target = Path(job.destination) / "curl.mp4"
    command = ["curl", "--silent", "--show-error", "--fail", "-o", str(target), url]
    with (
        subprocess.Popen(command) as curl,
        Window({"ours": curl.pid, "simulator": job.simulator_pid}) as window,
    ):
        # /proc/<pid>/stat of a finished but not yet reaped child still holds its CPU times.
        os.waitid(os.P_PID, curl.pid, os.WEXITED | os.WNOWAIT)
    if curl.returncode:
        raise RuntimeError(f"curl failed with exit code {curl.returncode}")
    size = target.stat().st_size
    target.unlink()
    if size != job.size:
        raise RuntimeError(f"curl got {size} bytes, expected {job.size}")
    return _figures(size, window)


def in_child(function: Callable[[Job], dict[str, Any]], job: Job) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, job).result()


def signed_url(simulator: SimulatorControl, video_id: str) -> str:
    response = httpx.get(
        f"{simulator.api_url}/v1/videos/{video_id}",
        headers={"Authorization": f"Bearer {simulator.api_key}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["video_url"])


# -- a local S3 ----------------------------------------------------------------------------------------------


@contextmanager
def moto_s3(work: Path) -> Iterator[tuple[dict[str, Any], int]]:
    """``moto_server`` on a free loopback port with one bucket; yields the ``aws`` connection and its pid."""
    moto_server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if moto_server is None:
        raise SystemExit("--s3 needs moto: uv pip install 'moto[s3]' flask flask-cors")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with (work / "moto.log").open("w") as log:
        process = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        _wait_for_http(endpoint)
        httpx.put(f"{endpoint}/{S3_BUCKET}", timeout=30).raise_for_status()
        connection = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        yield connection, process.pid
    finally:
        process.terminate()
        process.wait(15)


def _wait_for_http(url: str, timeout: float = 30) -> None:
    give_up = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


# -- running and reporting --------------------------------------------------------------------------------


def interleaved(variants: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, dict[str, Any]]:
    """Each variant once per round for ``repeats`` rounds (drift hits all alike); each one's median run."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            runs[name].append(run())
    return {name: _median_run(results) for name, results in runs.items()}


#: Figures whose median is taken over the runs on its own; the rest come from the run of median speed.
_MEDIAN_FIGURES = ("mb_per_s", "cpu_per_gib", "simulator_share", "others_share")


def _median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    middle = median([run["mb_per_s"] for run in runs])
    best = min(runs, key=lambda run: abs(run["mb_per_s"] - middle))
    medians = {name: median([run[name] for run in runs]) for name in _MEDIAN_FIGURES}
    return {
        **best,
        **medians,
        "runs": [round(run["mb_per_s"]) for run in runs],
        "server_peak_share": max(run["simulator_share"] for run in runs),
    }


def report_sizes(results: Sequence[tuple[int, dict[str, Any], dict[str, Any]]], title: str) -> None:
    rows = []
    for size, ours, curl in results:
        speed_ratio = ours["mb_per_s"] / curl["mb_per_s"]
        cpu_ratio = ours["cpu_per_gib"] / curl["cpu_per_gib"]
        server_bound = max(ours["server_peak_share"], curl["server_peak_share"]) >= SERVER_BOUND_SHARE
        rows.append(
            (
                f"{size // MIB} MiB",
                f"{ours['mb_per_s']:.0f} {ours['runs']}",
                f"{curl['mb_per_s']:.0f} {curl['runs']}",
                f"{speed_ratio:.2f}x",
                "SERVER-BOUND" if server_bound else verdict(speed_ratio >= GOAL_CURL_RATIO),
                f"{ours['cpu_per_gib']:.2f} / {curl['cpu_per_gib']:.2f}",
                f"{cpu_ratio:.2f}x",
                verdict(cpu_ratio <= GOAL_CPU_RATIO),
                f"{ours['simulator_share']:.0%} / {curl['simulator_share']:.0%}",
                f"{ours['others_share']:.0%} / {curl['others_share']:.0%}",
                f"{ours['peak_growth_mib']:.1f}",
                verdict(ours["peak_growth_mib"] <= GOAL_PEAK_MIB),
                f"{ours['page_faults']}",
                f"{ours['fixed_ms']:.1f}",
            )
        )
    header = (
        "video",
        "ours MB/s (runs)",
        "curl MB/s (runs)",
        "ratio",
        f">= {GOAL_CURL_RATIO}x",
        "CPU s/GiB ours / curl",
        "ratio",
        f"<= {GOAL_CPU_RATIO}x",
        "server ours / curl",
        "others ours / curl",
        "peak RSS growth MiB",
        f"<= {GOAL_PEAK_MIB}",
        "page faults ours",
        "ours on a 14 KB video, ms",
    )
    print_table(title, header, rows)
    print(
        "  medians of the runs, each figure on its own. CPU s/GiB: user + system time of the whole process"
        " (ours: all its threads)\n"
        "  server, others: share of one core the simulator, and other users' processes, used meanwhile;"
        f" SERVER-BOUND: the simulator used {SERVER_BOUND_SHARE:.0%} of a core or more in some run, so"
        " the speed ratio says nothing about the client"
    )
    print(f"  ours ran {results[0][1]['code']}")


def _chunk_name(chunk_size: str) -> str:
    if chunk_size in ("default", "none"):
        return {"default": "default", "none": "None"}[chunk_size]
    return f"{int(chunk_size) // 1024} KiB"


def _share(run: dict[str, Any], cpu: str) -> str:
    """Share of one core that ``cpu`` (a CPU-seconds figure of the run) amounts to over the run."""
    return f"{run[cpu] / run['seconds']:.0%}"


def report_sweep(title: str, results: dict[str, Any], curl: dict[str, Any]) -> None:
    rows = [
        (
            name,
            f"{figures['mb_per_s']:.0f} {figures['runs']}",
            f"{figures['mb_per_s'] / curl['mb_per_s']:.2f}x",
            f"{figures['cpu']:.2f}",
            f"{figures['page_faults']}",
            f"{figures['peak_growth_mib']:.1f}",
            verdict(figures["peak_growth_mib"] <= GOAL_PEAK_MIB),
            _share(figures, "others_cpu"),
            _share(figures, "server_cpu") if "server_cpu" in figures else "",
        )
        for name, figures in results.items()
    ]
    header = (
        "variant",
        "MB/s (runs)",
        "vs curl",
        "CPU s",
        "page faults",
        "peak RSS growth MiB",
        f"<= {GOAL_PEAK_MIB}",
        "others",
        "S3 server",
    )
    print_table(title, header, rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes-mib",
        default="1024,64",
        help="video sizes to compare with curl; empty to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternating runs of curl and ours per size (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-sizes",
        default="none,65536,262144,1048576",
        help="hook chunk_size values to sweep: bytes, 'none' (as received) or 'default' (the hook's); "
        "empty to skip (default: %(default)s)",
    )
    parser.add_argument(
        "--no-what-if",
        action="store_true",
        help="skip the operator run that writes in the downloading thread (as before the hook's "
        "background writer), patched in the measured process only",
    )
    parser.add_argument(
        "--sweep-size-mib", type=int, default=1024, help="video size for the sweeps (default: %(default)s)"
    )
    parser.add_argument("--s3", action="store_true", help="also write to s3:// on a local moto server")
    parser.add_argument(
        "--s3-size-mib", type=int, default=256, help="video size for the s3:// runs (default: %(default)s)"
    )
    parser.add_argument(
        "--s3-repeats", type=int, default=1, help="rounds of the s3:// runs (default: %(default)s)"
    )
    parser.add_argument(
        "--s3-block-sizes-mib",
        default="0,5,8,16",
        help="s3fs block_size values to sweep, MiB; 0 is s3fs's default (default: %(default)s)",
    )
    add_measurement_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="octopusx-bench-download-"))
    if args.product_ref:
        commit = use_product_ref(args.product_ref, work / "product")
        print(f"Measuring airflow_octopusx at {args.product_ref} (commit {commit})")
    print(f"Product code: {product_fingerprint(*PRODUCT_FILES)}")
    print(f"Machine: {os.cpu_count()} cores, {load_average()}")
    print(f"Logs and files in {work}")
    destination = work / "videos"
    destination.mkdir()
    with SimulatorProcess(generation_seconds=0) as simulator_process:
        simulator = simulator_process.control
        prepare_airflow_environment(work / "airflow", {"octopusx_default": simulator.connection})
        base = Job(
            video_id="",
            size=0,
            destination=f"{destination}/",
            simulator=simulator,
            simulator_pid=simulator_process.pid,
            log_file=str(work / "ours.log"),
        )

        def job_for(size_mib: int, **changes: Any) -> Job:
            size = size_mib * MIB
            simulator.configure(video_size_bytes=size)
            video_id = simulator.submit_videos(1, generation_seconds=0)[0]
            return replace(base, video_id=video_id, size=size, **changes)

        results: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        what_ifs: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        for size_mib in (int(text) for text in args.sizes_mib.split(",") if text):
            print(f"  {size_mib} MiB: curl and DownloadVideoOperator, {args.repeats} rounds ...", flush=True)
            print(f"    {wait_until_quiet(args.wait_quiet)}; {load_average()}", flush=True)
            job = job_for(size_mib)
            variants = {
                "curl": lambda job=job: curl_download(job),
                "ours": lambda job=job: in_child(measure, job),
            }
            if not args.no_what_if:
                what_if = replace(job, inline_writes=True)
                variants["what-if"] = lambda what_if=what_if: in_child(measure, what_if)
            medians = interleaved(variants, args.repeats)
            results.append((job.size, medians["ours"], medians["curl"]))
            if not args.no_what_if:
                what_ifs.append((job.size, medians["what-if"], medians["curl"]))
        if results:
            report_sizes(results, "DownloadVideoOperator.execute() to a local folder vs curl -o (median run)")
        if what_ifs:
            report_sizes(
                what_ifs,
                "The same, writing in the downloading thread instead of the hook's writer thread "
                "(what-if, patched in the measured process; the product is unchanged)",
            )

        if args.chunk_sizes:
            print(f"  hook chunk_size and write path sweep on {args.sweep_size_mib} MiB ...", flush=True)
            print(f"    {wait_until_quiet(args.wait_quiet)}", flush=True)
            job = job_for(args.sweep_size_mib)
            variants: dict[str, Callable[[], dict[str, Any]]] = {"curl -o": lambda: curl_download(job)}
            for chunk_size in args.chunk_sizes.split(","):
                for variant in _WRITE_PATHS:
                    chunked = replace(job, variant=variant, chunk_size=chunk_size)
                    name = f"{_WRITE_PATHS[variant]}, chunk_size={_chunk_name(chunk_size)}"
                    variants[name] = lambda chunked=chunked: in_child(measure, chunked)
            sweep = interleaved(variants, args.repeats)
            curl = sweep.pop("curl -o")
            default = next(iter(sweep.values()))["default_chunk_size"]
            report_sweep(
                f"OctopusXHook.download_video(chunk_size=...) of {args.sweep_size_mib} MiB, median of "
                f"{args.repeats} (curl -o: {curl['mb_per_s']:.0f} MB/s; the hook's default chunk_size is "
                f"{default})",
                sweep,
                curl,
            )

        if args.s3:
            with moto_s3(work) as (connection, moto_pid):
                prepare_airflow_environment(work / "airflow", {S3_CONN_ID: connection})
                print(f"  s3:// on moto, {args.s3_size_mib} MiB ...", flush=True)
                print(f"    {wait_until_quiet(args.wait_quiet)}", flush=True)
                job = job_for(
                    args.s3_size_mib,
                    destination=f"s3://{S3_BUCKET}/videos/",
                    destination_conn_id=S3_CONN_ID,
                    server_pid=moto_pid,
                )
                local = replace(job, destination=f"{destination}/")
                variants = {
                    "curl -o (local disk)": lambda: curl_download(local),
                    "DownloadVideoOperator.execute()": lambda: in_child(measure, job),
                }
                for block_mib in (int(text) for text in args.s3_block_sizes_mib.split(",")):
                    blocked = replace(job, variant="s3", block_size=block_mib * MIB or None)
                    size = f"{block_mib} MiB" if block_mib else "default"
                    variants[f"hook -> s3 open('wb', block_size={size})"] = lambda blocked=blocked: in_child(
                        measure, blocked
                    )
                s3_runs = interleaved(variants, args.s3_repeats)
                curl = s3_runs.pop("curl -o (local disk)")
                report_sweep(
                    f"To s3:// on a local moto server, {args.s3_size_mib} MiB, median of {args.s3_repeats} "
                    f"(curl -o to local disk: {curl['mb_per_s']:.0f} MB/s)",
                    s3_runs,
                    curl,
                )
    print(f"\nMachine: {load_average()} at end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
