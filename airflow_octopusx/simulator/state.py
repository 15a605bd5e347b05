"""In-memory state of a simulator: videos, settings, scripted faults and traffic counters.

The server thread and the test thread both touch it, so every access goes through one lock and
everything handed out is an immutable snapshot.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_octopusx.simulator.faults import (
    ROUTE_CDN,
    ROUTE_CONTENT,
    ROUTE_CREATE,
    ROUTE_RETRIEVE,
    Fault,
)
from airflow_octopusx.simulator.media import min_padded_size

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]

#: Share of the generation time a video spends "queued" before progress starts.
QUEUED_FRACTION = 0.15
#: Point of the generation time at which a video chosen to fail stops.
FAIL_AT_FRACTION = 0.5

DEFAULT_FAILURE_CODE = "content_policy_violation"
DEFAULT_FAILURE_MESSAGE = "The generated video was blocked by the content safety system."


@dataclass(frozen=True)
class Settings:
    """Knobs a test turns to shape the simulated service.

    ``video_size_bytes`` of 0 (or anything not above the sample's size) serves the bare sample;
    ``empty_video_url`` hides ``video_url`` on completed videos so clients must use ``/content``.
    A ``url_ttl_seconds`` <= 0 hands out links that are already expired.
    """

    generation_seconds: float = 3.0
    url_ttl_seconds: float = 3600.0
    video_size_bytes: int = 0
    empty_video_url: bool = False

    def __post_init__(self) -> None:
        for name in ("generation_seconds", "url_ttl_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.generation_seconds < 0:
            raise ValueError(f"generation_seconds must be >= 0, got {self.generation_seconds!r}")
        size = self.video_size_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"video_size_bytes must be an int >= 0, got {size!r}")
        if not isinstance(self.empty_video_url, bool):
            raise ValueError(f"empty_video_url must be a bool, got {self.empty_video_url!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the HTTP control endpoints."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Failure:
    """Why a video ended ``failed``; rendered as the video's ``error`` object."""

    code: str
    message: str


@dataclass(frozen=True)
class Video:
    """A submitted task; its status is a pure function of time, so polling needs no background work."""

    id: str
    model: str
    created_at: int
    started: float
    generation_seconds: float
    failure: Failure | None = None

    def progress_at(self, now: float) -> tuple[VideoStatus, int]:
        """Status and integer progress at monotonic time ``now``."""
        duration = self.generation_seconds
        fraction = (now - self.started) / duration if duration > 0 else 1.0
        if self.failure is not None and fraction >= FAIL_AT_FRACTION:
            return "failed", _running_progress(FAIL_AT_FRACTION)
        if fraction >= 1.0:
            return "completed", 100
        if fraction < QUEUED_FRACTION:
            return "queued", 0
        return "in_progress", _running_progress(fraction)


def _running_progress(fraction: float) -> int:
    share = (fraction - QUEUED_FRACTION) / (1.0 - QUEUED_FRACTION)
    return min(99, max(1, 1 + int(share * 99)))


@dataclass(frozen=True)
class Stats:
    """Traffic seen since the last reset (a snapshot; take a new one to see later requests).

    Request counters include requests answered with errors or faults; ``connections`` counts
    distinct client (host, port) pairs on the API and CDN routes, so it shows connection reuse.
    ``cdn_authorization_headers`` lists every ``Authorization`` value the CDN origin received.
    """

    posts: int = 0
    gets: int = 0
    content_gets: int = 0
    cdn_gets: int = 0
    videos_created: int = 0
    unauthorized: int = 0
    faults_fired: int = 0
    connections: int = 0
    api_connections: int = 0
    cdn_connections: int = 0
    cdn_authorization_headers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``GET /_simulator/stats``."""
        data = dataclasses.asdict(self)
        data["cdn_authorization_headers"] = list(self.cdn_authorization_headers)
        return data


_ROUTE_COUNTERS = {
    ROUTE_CREATE: "posts",
    ROUTE_RETRIEVE: "gets",
    ROUTE_CONTENT: "content_gets",
    ROUTE_CDN: "cdn_gets",
}


@dataclass
class _Counters:
    requests: dict[str, int] = field(default_factory=dict)
    videos_created: int = 0
    unauthorized: int = 0
    faults_fired: int = 0
    clients: set[tuple[str, str, int]] = field(default_factory=set)
    cdn_authorization_headers: list[str] = field(default_factory=list)


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int


class SimulatorState:
    """Thread-safe store behind one simulator; the app reads it, the test controls it."""

    def __init__(self, sample: bytes, *, settings: Settings | None = None) -> None:
        self.sample = sample
        self.secret = secrets.token_bytes(32)
        self._defaults = self._checked(settings or Settings())
        self._lock = threading.Lock()
        self._settings = self._defaults
        self._videos: dict[str, Video] = {}
        self._faults: list[_PendingFault] = []
        self._failures: deque[Failure] = deque()
        self._counters = _Counters()

    # -- controls ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget videos, faults, pending failures and counters; restore the default settings."""
        with self._lock:
            self._settings = self._defaults
            self._videos.clear()
            self._faults.clear()
            self._failures.clear()
            self._counters = _Counters()

    @property
    def settings(self) -> Settings:
        with self._lock:
            return self._settings

    def configure(self, changes: Mapping[str, Any]) -> Settings:
        """Apply a partial settings update (unknown names are an error) and return the result."""
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"Unknown setting(s): {', '.join(unknown)}")
        with self._lock:
            self._settings = self._checked(dataclasses.replace(self._settings, **changes))
            return self._settings

    def _checked(self, settings: Settings) -> Settings:
        size = settings.video_size_bytes
        if len(self.sample) < size < min_padded_size(len(self.sample)):
            raise ValueError(
                f"video_size_bytes must be <= {len(self.sample)} (the bare sample) "
                f"or >= {min_padded_size(len(self.sample))} (sample plus a 'free' box), got {size}"
            )
        return settings

    def fail_next(self, n: int, code: str, message: str) -> None:
        """Make the next ``n`` created videos end ``failed`` with this error."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not isinstance(code, str) or not isinstance(message, str):
            raise ValueError("code and message must be strings")
        with self._lock:
            self._failures.extend(Failure(code=code, message=message) for _ in range(n))

    def inject(self, fault: Fault) -> None:
        """Queue a fault; faults for the same route fire in the order they were injected."""
        with self._lock:
            self._faults.append(_PendingFault(fault, fault.times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> tuple[Fault, ...]:
        """Faults still armed, each with ``times`` set to the number of firings left."""
        with self._lock:
            return tuple(dataclasses.replace(p.fault, times=p.remaining) for p in self._faults)

    def stats(self) -> Stats:
        with self._lock:
            c = self._counters
            counts = {name: c.requests.get(route, 0) for route, name in _ROUTE_COUNTERS.items()}
            return Stats(
                **counts,
                videos_created=c.videos_created,
                unauthorized=c.unauthorized,
                faults_fired=c.faults_fired,
                connections=len({(host, port) for _, host, port in c.clients}),
                api_connections=sum(1 for origin, _, _ in c.clients if origin == "api"),
                cdn_connections=sum(1 for origin, _, _ in c.clients if origin == "cdn"),
                cdn_authorization_headers=tuple(c.cdn_authorization_headers),
            )

    # -- used by the app --------------------------------------------------------------------------

    def record_request(
        self,
        route: str,
        client: tuple[str, int] | None,
        *,
        cdn_authorization: list[str] | None = None,
    ) -> None:
        """Count one request on ``route`` and remember the TCP connection it came on."""
        origin = "cdn" if route == ROUTE_CDN else "api"
        with self._lock:
            c = self._counters
            c.requests[route] = c.requests.get(route, 0) + 1
            if client is not None:
                c.clients.add((origin, client[0], client[1]))
            if cdn_authorization:
                c.cdn_authorization_headers.extend(cdn_authorization)

    def record_unauthorized(self) -> None:
        with self._lock:
            self._counters.unauthorized += 1

    def take_fault(self, route: str) -> Fault | None:
        """Consume one firing of the oldest fault armed for ``route``."""
        with self._lock:
            for index, pending in enumerate(self._faults):
                if pending.fault.route == route:
                    pending.remaining -= 1
                    if pending.remaining <= 0:
                        del self._faults[index]
                    self._counters.faults_fired += 1
                    return pending.fault
            return None

    def create_video(self, model: str) -> Video:
        """Register a new task, using up a pending ``fail_next`` failure if there is one."""
        with self._lock:
            video = Video(
                id=f"video_{secrets.token_hex(12)}",
                model=model,
                created_at=int(time.time()),
                started=time.monotonic(),
                generation_seconds=self._settings.generation_seconds,
                failure=self._failures.popleft() if self._failures else None,
            )
            self._videos[video.id] = video
            self._counters.videos_created += 1
            return video

    def get_video(self, video_id: str) -> Video | None:
        with self._lock:
            return self._videos.get(video_id)
