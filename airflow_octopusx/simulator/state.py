"""In-memory state of a simulator: videos, settings, scripted faults and traffic counters.

The server thread and the test thread both touch it, so every access goes through one lock and
everything handed out is an immutable snapshot.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_octopusx.simulator.faults import (
    DEFAULT_RANDOM_FAULT_KINDS,
    RANDOM_FAULT_KINDS,
    ROUTE_CDN,
    ROUTE_CONTENT,
    ROUTE_CREATE,
    ROUTE_RETRIEVE,
    Fault,
    RandomFaults,
    check_seconds,
)
from airflow_octopusx.simulator.media import min_padded_size

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]

#: Share of the generation time a video spends "queued" before progress starts.
QUEUED_FRACTION = 0.15
#: Point of the generation time at which a video chosen to fail stops.
FAIL_AT_FRACTION = 0.5

#: How the simulator answers: as the API's doc says (``doc``), as the new-api gateway OctopusX runs on
#: answers (``new-api``: task errors at the top level, unknown ids as 400, the link in ``metadata.url``,
#: ``unknown`` before ``queued``, billing ratios on submission), or as one release of that gateway did
#: (``new-api-task-dto``: its internal task record, upper-case statuses, ``result_url``).
FLAVOURS = ("doc", "new-api", "new-api-task-dto")

DEFAULT_FAILURE_CODE = "content_policy_violation"
DEFAULT_FAILURE_MESSAGE = "The generated video was blocked by the content safety system."


@dataclass(frozen=True)
class Settings:
    """Knobs a test turns to shape the simulated service.

    ``video_size_bytes`` of 0 (or anything not above the sample's size) serves the bare sample;
    ``empty_video_url`` hides ``video_url`` on completed videos so clients must use ``/content``.
    A ``url_ttl_seconds`` <= 0 hands out links that are already expired. ``content_redirect`` makes
    ``/v1/videos/{id}/content`` answer 302 to the video's signed CDN link, as a proxying API does.

    ``fault_rate`` > 0 turns on random faults (see :class:`~airflow_octopusx.simulator.faults.RandomFaults`):
    each request to the API and CDN routes meets one with that probability, of a kind from
    ``fault_kinds``, drawn reproducibly from ``fault_seed``. A ``slow`` fault waits ``slow_seconds``;
    a ``rate_limit`` fault sends ``Retry-After`` of 0 to ``max_retry_after_seconds``. With
    ``unambiguous_posts`` a ``POST`` meets only faults whose answer says no work was done (429, 5xx),
    never a reset or a timeout, which a careful client must treat as "a video may exist".

    ``flavour`` is one of :data:`FLAVOURS`. ``quota_videos`` >= 0 lets that many more videos be created,
    then refuses submissions as an exhausted account (403 ``insufficient_user_quota`` from the gateway,
    429 ``insufficient_quota`` in the doc's OpenAI style); -1 never runs out. ``content_cut_bytes`` > 0
    cuts every ``/content`` answer after that many bytes, as the gateway's proxy cuts a transfer at 60 s.
    """

    generation_seconds: float = 3.0
    url_ttl_seconds: float = 3600.0
    video_size_bytes: int = 0
    empty_video_url: bool = False
    content_redirect: bool = False
    fault_rate: float = 0.0
    fault_seed: int = 0
    fault_kinds: tuple[str, ...] = DEFAULT_RANDOM_FAULT_KINDS
    slow_seconds: float = 2.0
    max_retry_after_seconds: int = 1
    unambiguous_posts: bool = False
    flavour: str = "doc"
    quota_videos: int = -1
    content_cut_bytes: int = 0

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
        for name in ("empty_video_url", "content_redirect", "unambiguous_posts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        for name, least in (("quota_videos", -1), ("content_cut_bytes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self._check_random_faults()

    def _check_random_faults(self) -> None:
        rate = self.fault_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"fault_rate must be a number from 0 to 1, got {rate!r}")
        if isinstance(self.fault_seed, bool) or not isinstance(self.fault_seed, int):
            raise ValueError(f"fault_seed must be an int, got {self.fault_seed!r}")
        kinds = self.fault_kinds
        if isinstance(kinds, list):  # JSON from the HTTP controls has no tuples
            kinds = tuple(kinds)
            object.__setattr__(self, "fault_kinds", kinds)
        if not isinstance(kinds, tuple) or any(kind not in RANDOM_FAULT_KINDS for kind in kinds):
            raise ValueError(f"fault_kinds must be a list of {', '.join(RANDOM_FAULT_KINDS)}; got {kinds!r}")
        check_seconds("slow_seconds", self.slow_seconds)
        limit = self.max_retry_after_seconds
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"max_retry_after_seconds must be an int >= 0, got {limit!r}")

    @property
    def random_faults(self) -> RandomFaults:
        return RandomFaults(
            rate=self.fault_rate,
            seed=self.fault_seed,
            kinds=self.fault_kinds,
            slow_seconds=self.slow_seconds,
            max_retry_after_seconds=self.max_retry_after_seconds,
            content_redirect=self.content_redirect,
            unambiguous_posts=self.unambiguous_posts,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the HTTP control endpoints."""
        data = dataclasses.asdict(self)
        data["fault_kinds"] = list(self.fault_kinds)
        return data


@dataclass(frozen=True)
class Failure:
    """Why a video ended ``failed``; rendered as the video's ``error`` object."""

    code: str
    message: str


#: A prompt holding ``[simulate-failure]`` or ``[simulate-failure:CODE]`` makes a video that fails, so a
#: DAG author can try failure handling from a DAG or the UI, with no call to the simulator's controls.
_FAILURE_MARKER = re.compile(r"\[simulate-failure(?::([A-Za-z0-9_.-]{1,64}))?\]")


def failure_asked_by(prompt: str) -> Failure | None:
    marker = _FAILURE_MARKER.search(prompt)
    if marker is None:
        return None
    return Failure(
        code=marker[1] or "content_policy_violation",
        message=f"The simulator failed this video as its prompt asked ({marker[0]}).",
    )


@dataclass(frozen=True)
class Video:
    """A submitted task; its status is a pure function of time, so polling needs no background work."""

    id: str
    model: str
    prompt: str
    created_at: int
    started: float
    generation_seconds: float
    failure: Failure | None = None
    #: Echoed on GET, as OpenAI-style video objects do; clients must not rely on them.
    seconds: str | None = None
    resolution: str | None = None

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for ``GET /_simulator/videos``."""
        status, progress = self.progress_at(time.monotonic())
        return {
            "id": self.id,
            "model": self.model,
            "prompt": self.prompt,
            "created_at": self.created_at,
            "status": status,
            "progress": progress,
        }


def _running_progress(fraction: float) -> int:
    share = (fraction - QUEUED_FRACTION) / (1.0 - QUEUED_FRACTION)
    return min(99, max(1, 1 + int(share * 99)))


@dataclass(frozen=True)
class Stats:
    """Traffic seen since the last reset (a snapshot; take a new one to see later requests).

    Request counters include requests answered with errors or faults; ``connections`` counts
    distinct client (host, port) pairs on the API and CDN routes, so it shows connection reuse.
    ``cdn_authorization_headers`` lists every ``Authorization`` value the CDN origin received.
    ``faults_by_route`` counts fired faults (injected and random) per route and
    :attr:`Fault.label <airflow_octopusx.simulator.faults.Fault.label>`; ``bytes_served`` counts
    video bytes sent by both origins, cut-short bodies included; ``ranged_responses`` counts ``206``
    answers to ``Range`` requests (resumed downloads).
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
    faults_by_route: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    bytes_served: int = 0
    ranged_responses: int = 0

    @property
    def faults_by_kind(self) -> dict[str, int]:
        """Fired faults per label, all routes together."""
        totals: dict[str, int] = {}
        for counts in self.faults_by_route.values():
            for label, count in counts.items():
                totals[label] = totals.get(label, 0) + count
        return dict(sorted(totals.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``GET /_simulator/stats``."""
        data = dataclasses.asdict(self)
        data["cdn_authorization_headers"] = list(self.cdn_authorization_headers)
        data["faults_by_route"] = {route: dict(counts) for route, counts in self.faults_by_route.items()}
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
    faults_by_route: dict[str, dict[str, int]] = field(default_factory=dict)
    bytes_served: int = 0
    ranged_responses: int = 0
    # Requests seen per (route, subject): the n that random faults are drawn for.
    arrivals: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int


class SimulatorState:
    """Thread-safe store behind one simulator; the app reads it, the test controls it."""

    def __init__(self, sample: bytes, *, settings: Settings | None = None, api_key: str = "sim-key") -> None:
        self.sample = sample
        self.secret = secrets.token_bytes(32)
        self._default_api_key = self.api_key = api_key
        self._defaults = self._checked(settings or Settings())
        self._lock = threading.Lock()
        self._settings = self._defaults
        self._random_faults = self._defaults.random_faults
        self._videos: dict[str, Video] = {}
        self._faults: list[_PendingFault] = []
        self._failures: deque[Failure] = deque()
        self._counters = _Counters()

    # -- controls ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget videos, faults, pending failures and counters; restore the default settings and key."""
        with self._lock:
            self.api_key = self._default_api_key
            self._settings = self._defaults
            self._random_faults = self._defaults.random_faults
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
            self._random_faults = self._settings.random_faults
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
                faults_by_route={route: dict(labels) for route, labels in c.faults_by_route.items()},
                bytes_served=c.bytes_served,
                ranged_responses=c.ranged_responses,
            )

    # -- used by the app --------------------------------------------------------------------------

    def admit(
        self,
        route: str,
        client: tuple[str, int] | None,
        *,
        video_id: str | None = None,
        prompt: str | None = None,
        cdn_authorization: list[str] | None = None,
    ) -> Fault | None:
        """Count one request on ``route`` and return the fault it meets, if any.

        An injected fault for the route comes first (the oldest). Otherwise random faults are drawn for
        the ``n``-th request on this route about one subject: the prompt of the video the request is
        about (``prompt`` of a submission, or the prompt ``video_id`` was made with; an unknown id
        stands for itself). Keyed on prompts rather than the random video ids, a run with the same seed
        and prompts meets the same faults. One lock round per request, for speed.
        """
        origin = "cdn" if route == ROUTE_CDN else "api"
        with self._lock:
            c = self._counters
            c.requests[route] = c.requests.get(route, 0) + 1
            if client is not None:
                c.clients.add((origin, client[0], client[1]))
            if cdn_authorization:
                c.cdn_authorization_headers.extend(cdn_authorization)
            if prompt is None:
                video = self._videos.get(video_id or "")
                subject = video.prompt if video is not None else f"id:{video_id}"
            else:
                subject = prompt
            arrival = (route, subject)
            n = c.arrivals.get(arrival, 0)
            c.arrivals[arrival] = n + 1
            fault = self._take_injected(route) or self._random_faults.draw(route, subject, n)
            if fault is not None:
                c.faults_fired += 1
                labels = c.faults_by_route.setdefault(route, {})
                labels[fault.label] = labels.get(fault.label, 0) + 1
            return fault

    def _take_injected(self, route: str) -> Fault | None:
        """Consume one firing of the oldest fault armed for ``route`` (the lock is held)."""
        for index, pending in enumerate(self._faults):
            if pending.fault.route == route:
                pending.remaining -= 1
                if pending.remaining <= 0:
                    del self._faults[index]
                return pending.fault
        return None

    def record_unauthorized(self) -> None:
        with self._lock:
            self._counters.unauthorized += 1

    def record_video_served(self, count: int, ranged: bool) -> None:
        """Count the body bytes of one video response, and whether it answered a ``Range``."""
        with self._lock:
            self._counters.bytes_served += count
            if ranged:
                self._counters.ranged_responses += 1

    def create_video(
        self, model: str, prompt: str, seconds: str | None = None, resolution: str | None = None
    ) -> Video | None:
        """Register a new task that fails if its prompt asks to, else by a pending ``fail_next``; None if
        the account's quota (``quota_videos``) has run out."""
        with self._lock:
            if self._settings.quota_videos == 0:
                return None
            if self._settings.quota_videos > 0:
                self._settings = dataclasses.replace(
                    self._settings, quota_videos=self._settings.quota_videos - 1
                )
            asked = failure_asked_by(prompt)
            video = Video(
                id=f"video_{secrets.token_hex(12)}",
                model=model,
                prompt=prompt,
                created_at=int(time.time()),
                started=time.monotonic(),
                generation_seconds=self._settings.generation_seconds,
                failure=asked or (self._failures.popleft() if self._failures else None),
                seconds=seconds,
                resolution=resolution,
            )
            self._videos[video.id] = video
            self._counters.videos_created += 1
            return video

    def finish_videos(self, video_ids: Collection[str]) -> None:
        """End the rendering of these videos (all made so far if none are named), now: completed, or
        failed as they were to fail."""
        with self._lock:
            for video_id, video in self._videos.items():
                if not video_ids or video_id in video_ids:
                    self._videos[video_id] = dataclasses.replace(video, generation_seconds=0)

    def get_video(self, video_id: str) -> Video | None:
        with self._lock:
            return self._videos.get(video_id)

    @property
    def videos(self) -> tuple[Video, ...]:
        """Every video created since the last reset, oldest first."""
        with self._lock:
            return tuple(self._videos.values())
