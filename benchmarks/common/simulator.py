"""The simulator in its own process (its CPU apart from the measured process's), and its controls."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import httpx

from benchmarks.common import ROOT

_START_TIMEOUT = 30.0
#: Source address of the benchmarks' control requests to the simulator (all of 127/8 is loopback).
CONTROL_ADDRESS = "127.0.0.2"
#: The body every benchmark submits: what ``SubmitVideoOperator(prompt=..., seconds=8)`` sends.
VIDEO_REQUEST = {"model": "omni-fast", "prompt": "Ocean waves at golden hour", "seconds": "8"}


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
