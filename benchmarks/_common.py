"""What the benchmarks share: the simulator in its own process, and readings of CPU, memory and lag.

Nothing here imports Airflow: the scripts set ``AIRFLOW_HOME`` and the connection variables first and
import Airflow only after that.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import importlib.util
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_START_TIMEOUT = 30.0
#: Source address of the benchmarks' control requests to the simulator (all of 127/8 is loopback).
CONTROL_ADDRESS = "127.0.0.2"
#: The body every benchmark submits: what ``SubmitVideoOperator(prompt=..., seconds=8)`` sends.
VIDEO_REQUEST = {"model": "omni-fast", "prompt": "Ocean waves at golden hour", "seconds": "8"}


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (inherited by children); thousands of
    waiting triggers may each hold a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def add_measurement_arguments(parser: argparse.ArgumentParser) -> None:
    """``--product-ref`` and ``--wait-quiet``, which every measuring script takes."""
    parser.add_argument(
        "--product-ref",
        help="measure airflow_octopusx as of this git ref (exported to a temp dir), not the working tree",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=180,
        help="wait up to this many seconds for other processes to go quiet first (default: %(default)s)",
    )


def prepare_airflow_environment(home: Path, connections: dict[str, dict[str, Any]]) -> None:
    """Point Airflow at a throw-away home and export connections; call before anything imports Airflow."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(home / "dags")
    for conn_id, connection in connections.items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(connection)


# -- /proc readings ----------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time of a process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command name: field 3 (state) is fields[0], so utime (14) and stime (15) are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A memory figure in KiB from ``/proc/<pid>/status``: ``VmRSS`` now, or ``VmHWM`` (peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset a process's ``VmHWM`` to its current RSS (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent running processes (user and system time, not interrupts) since boot."""
    user, nice, system = (int(value) for value in Path("/proc/stat").read_text().split(maxsplit=4)[1:4])
    return (user + nice + system) / CLOCK_TICKS


def kernel_threads_cpu_seconds() -> float:
    """CPU seconds of all kernel threads (children of kthreadd), e.g. page writeback after a download."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat.read_text().rpartition(")")[2]
        except OSError:  # the process ended meanwhile
            continue
        fields = rest.split()
        if stat.parent.name == "2" or fields[1] == "2":
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def use_product_ref(ref: str, into: Path) -> str:
    """Measure ``airflow_octopusx`` as of git ``ref`` instead of the working tree (which colleagues may
    be editing): export it with ``git archive`` and put it first on the path of this process and of every
    process started from now on (simulator included). Returns the commit measured."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "airflow_octopusx"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    sys.path.insert(0, str(into))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(into), os.environ.get("PYTHONPATH")]))
    return commit


def product_fingerprint(*files: str) -> str:
    """Where ``airflow_octopusx`` is imported from and a digest of the given files in it, so a figure can
    be tied to the code that produced it while colleagues edit the working tree."""
    spec = importlib.util.find_spec("airflow_octopusx")
    if spec is None or spec.origin is None:
        raise RuntimeError("airflow_octopusx is not importable")
    package = Path(spec.origin).parent
    digests = [f"{name} {hashlib.sha1((package / name).read_bytes()).hexdigest()[:8]}" for name in files]
    source = "working tree" if package.parent == ROOT else str(package.parent)
    head = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", *(f"airflow_octopusx/{name}" for name in files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", *(f"airflow_octopusx/{name}" for name in files)],
        cwd=ROOT,
        check=False,
    ).returncode
    state = (
        f" (last commit {head}{', with uncommitted changes' if dirty else ''})"
        if source == "working tree"
        else ""
    )
    return f"{source}{state}: {', '.join(digests)}"


def wait_until_quiet(timeout: float, max_busy_cores: float = 0.25, sample: float = 3.0) -> str:
    """Wait (up to ``timeout`` s) until the whole machine uses under ``max_busy_cores`` cores over a
    ``sample``-second stretch, so other engineers' tests do not skew the figures; say how it went."""
    give_up = time.monotonic() + timeout
    while True:
        before = machine_busy_seconds()
        time.sleep(sample)
        busy = (machine_busy_seconds() - before) / sample
        if busy < max_busy_cores:
            return f"machine quiet ({busy:.2f} cores busy over {sample:g} s)"
        if time.monotonic() > give_up:
            return f"machine NOT quiet after waiting {timeout:g} s ({busy:.2f} cores busy by others)"


def load_average() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


@dataclass
class Window:
    """CPU used by the measured process, the simulator and everything else over one stretch of time."""

    pids: dict[str, int | str]
    started: float = 0.0
    wall: float = 0.0

    def __post_init__(self) -> None:
        self._cpu: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.machine = 0.0
        self.kernel = 0.0

    def __enter__(self) -> Window:
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._machine = machine_busy_seconds()
        self._kernel = kernel_threads_cpu_seconds()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.monotonic() - self.started
        self.cpu = {name: cpu_seconds(pid) - self._cpu[name] for name, pid in self.pids.items()}
        self.machine = machine_busy_seconds() - self._machine
        self.kernel = kernel_threads_cpu_seconds() - self._kernel

    def cpu_so_far(self, name: str) -> float:
        """CPU seconds ``name`` has used since the window opened (while it is still open)."""
        return cpu_seconds(self.pids[name]) - self._cpu[name]

    @property
    def others(self) -> float:
        """CPU seconds used by processes neither in ``pids`` nor kernel threads: other engineers' tests."""
        return max(0.0, self.machine - sum(self.cpu.values()) - self.kernel)


class ConnectionCounter:
    """Samples, from a thread, how many client TCP connections to ``port`` on this host are open at once
    (``/proc/net/tcp``): the footprint a server sees, which a count of connections accepted over a run
    overstates when idle connections are closed and replaced. Control requests (from
    ``CONTROL_ADDRESS``) are not counted."""

    def __init__(self, port: int, every: float = 0.05) -> None:
        self.port = port
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="connection-counter", daemon=True)

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def open_now(self) -> int:
        control = socket.inet_aton(CONTROL_ADDRESS)[::-1].hex().upper()  # /proc/net/tcp's byte order
        count = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            local_address, local_port = local.split(":")
            # Client side: the remote end is the port; 01 is ESTABLISHED.
            if state == "01" and int(remote.split(":")[1], 16) == self.port:
                count += int(local_port, 16) != self.port and local_address != control
        return count

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.open_now())


# -- statistics and printing ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain-text table, columns sized to fit, numbers right-aligned."""
    cells = [[str(value) for value in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  " + "  ".join(_align(value, width) for value, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))
    sys.stdout.flush()


def _align(value: str, width: int) -> str:
    return value.rjust(width) if value[:1].isdigit() or value[:1] in "-+." else value.ljust(width)


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}x" if reference else "n/a"


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


# -- a task context for calling execute() directly ------------------------------------------------------


class RecordingTaskInstance:
    """Stands in for ``context["ti"]``: keeps what the operator pushes to XCom."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class MemoryTaskStateStore:
    """Stands in for Airflow 3.3's ``context["task_state_store"]``, which outlives a task's tries."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class RecordingOutletEvent:
    """Stands in for one entry of ``context["outlet_events"]``."""

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}
        self.added: list[tuple[Any, dict[str, Any] | None]] = []

    def add(self, asset: Any, extra: dict[str, Any] | None = None) -> None:
        self.added.append((asset, extra))


def minimal_context() -> dict[str, Any]:
    """The least an operator's ``execute()`` reads when called outside a task run."""
    return {
        "ti": RecordingTaskInstance(),
        "task_state_store": MemoryTaskStateStore(),
        "outlet_events": collections.defaultdict(RecordingOutletEvent),
    }


def log_to(path: str) -> None:
    """Send this process's stdout and stderr to a file (Airflow's and the operator's logs among them)."""
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


# -- event-loop lag ------------------------------------------------------------------------------------


class LoopLag:
    """Measures event-loop lag as the overshoot of a short ``asyncio.sleep``, the way a blocked loop shows
    up to every trigger in it."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self.samples: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(self.tick)
            self.samples.append(max(0.0, loop.time() - started - self.tick))

    def summary(self) -> dict[str, float]:
        return {
            "lag_p50_ms": percentile(self.samples, 50) * 1000,
            "lag_p99_ms": percentile(self.samples, 99) * 1000,
            "lag_max_ms": max(self.samples, default=float("nan")) * 1000,
        }


# -- the simulator in its own process ------------------------------------------------------------------


class SimulatorControl:
    """Steers a running simulator over its ``/_simulator`` endpoints (not counted in its stats) and
    submits videos; picklable, so a benchmark's child process can hold one."""

    def __init__(self, api_url: str, api_key: str, generation_seconds: float) -> None:
        self.api_url = api_url
        self.api_key = api_key
        self.generation_seconds = generation_seconds

    @property
    def connection(self) -> dict[str, Any]:
        """The ``octopusx`` connection for it, as ``AIRFLOW_CONN_*`` takes it."""
        return {"conn_type": "octopusx", "host": self.api_url, "password": self.api_key}

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        # From another loopback address, so ConnectionCounter can tell this traffic from the measured one.
        transport = httpx.HTTPTransport(local_address=CONTROL_ADDRESS)
        with httpx.Client(transport=transport, timeout=30) as client:
            response = client.request(method, f"{self.api_url}/_simulator/{path}", json=payload)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "stats"))

    def reset(self) -> None:
        """No videos and zeroed stats; the settings the process was started with."""
        self._call("POST", "reset")

    def configure(self, **settings: Any) -> None:
        self._call("POST", "settings", settings)

    def submit_videos(self, count: int, *, generation_seconds: float | None = None) -> list[str]:
        """Create ``count`` videos over one keep-alive connection (from ``CONTROL_ADDRESS``); its requests
        are counted in the stats."""
        return list(self.submit_videos_timed(count, generation_seconds=generation_seconds))

    def submit_videos_timed(self, count: int, *, generation_seconds: float | None = None) -> dict[str, float]:
        """Like :meth:`submit_videos`, with the Unix time each video was created (when its answer came)."""
        if generation_seconds is not None:
            self.configure(generation_seconds=generation_seconds)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        created: dict[str, float] = {}
        try:
            transport = httpx.HTTPTransport(local_address=CONTROL_ADDRESS)
            with httpx.Client(
                base_url=self.api_url, headers=headers, transport=transport, timeout=30
            ) as client:
                for _ in range(count):
                    video_id = _created_id(client.post("/v1/videos", json=VIDEO_REQUEST))
                    created[video_id] = time.time()
        finally:
            if generation_seconds is not None:
                self.configure(generation_seconds=self.generation_seconds)
        return created


class SimulatorProcess:
    """``python -m airflow_octopusx.simulator`` in a separate process, so its CPU is not in the measured
    process and can be read apart from ``/proc/<pid>/stat``."""

    def __init__(
        self, *, generation_seconds: float = 30.0, video_size_bytes: int = 0, api_key: str = "bench-key"
    ) -> None:
        self.generation_seconds = generation_seconds
        self.video_size_bytes = video_size_bytes
        self.api_key = api_key
        self.cdn_url = ""
        self._control: SimulatorControl | None = None
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("The simulator is not running")
        return self._process.pid

    @property
    def control(self) -> SimulatorControl:
        if self._control is None:
            raise RuntimeError("The simulator is not running")
        return self._control

    def __enter__(self) -> SimulatorProcess:
        self._stderr = tempfile.TemporaryFile("w+")
        command = [
            sys.executable,
            "-m",
            "airflow_octopusx.simulator",
            "--port=0",
            f"--api-key={self.api_key}",
            f"--generation-seconds={self.generation_seconds}",
            f"--video-size-bytes={self.video_size_bytes}",
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=ROOT
        )
        assert self._process.stdout is not None
        api_url = ""
        deadline = time.monotonic() + _START_TIMEOUT
        for line in self._process.stdout:
            if line.startswith("OctopusX simulator API:"):
                api_url = line.split(":", 1)[1].strip()
            elif line.startswith("OctopusX simulator CDN:"):
                self.cdn_url = line.split(":", 1)[1].strip()
            elif line.startswith("Press Ctrl+C") or time.monotonic() > deadline:
                break
        if not api_url:
            error = self.stderr_text()
            self.__exit__()
            raise RuntimeError(f"The simulator did not start: {error}")
        self._control = SimulatorControl(api_url, self.api_key, self.generation_seconds)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._control = None
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]


def _created_id(response: httpx.Response) -> str:
    response.raise_for_status()
    return str(response.json()["id"])


@contextmanager
def stats_delta(simulator: SimulatorControl) -> Iterator[dict[str, int]]:
    """Counters the simulator gained inside the block (filled in on exit)."""
    before = simulator.stats()
    delta: dict[str, int] = {}
    yield delta
    after = simulator.stats()
    delta.update({k: after[k] - before[k] for k, v in after.items() if isinstance(v, int)})
