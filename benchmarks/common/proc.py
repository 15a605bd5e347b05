"""Readings from ``/proc``: CPU and memory of a process, the whole machine's load, and open TCP
connections to a port."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common.simulator import CONTROL_ADDRESS

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
