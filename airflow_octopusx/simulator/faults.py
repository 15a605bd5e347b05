"""Scripted and random misbehaviour for the simulator, so client retry and timeout paths can be tested.

A :class:`Fault` is one misbehaviour, armed with ``inject`` for the next requests to one route.
:class:`RandomFaults` is the soak mode: every request independently meets a fault with a set
probability, drawn from a seeded hash so a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

#: Route names a :class:`Fault` can target (the API's own route templates, plus the CDN download).
ROUTE_CREATE = "POST /v1/videos"
ROUTE_RETRIEVE = "GET /v1/videos/{id}"
ROUTE_CONTENT = "GET /v1/videos/{id}/content"
ROUTE_CDN = "GET cdn"
ROUTES = (ROUTE_CREATE, ROUTE_RETRIEVE, ROUTE_CONTENT, ROUTE_CDN)
DOWNLOAD_ROUTES = (ROUTE_CONTENT, ROUTE_CDN)

FaultKind = Literal[
    "status",
    "delay",
    "reset",
    "truncate",
    "status_after_handling",
    "reset_after_handling",
    "delay_after_handling",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next ``times`` requests to ``route``.

    ``route`` is one of:

    * ``"POST /v1/videos"`` - submit a video,
    * ``"GET /v1/videos/{id}"`` - poll a video (any id),
    * ``"GET /v1/videos/{id}/content"`` - authenticated download from the API origin,
    * ``"GET cdn"`` - download of a signed ``video_url`` from the CDN origin (GET or HEAD).

    ``kind`` decides what happens. Most kinds fire before authentication and validation, like a
    gateway in front of the real service would, so such a fault on POST never creates a video:

    * ``"status"`` - answer ``status`` with an error body (OpenAI-style JSON on the API, S3-style XML
      on the CDN; ``message``/``code``/``error_type`` override the defaults). ``retry_after`` adds a
      ``Retry-After`` header: an int is seconds (sent as an HTTP date if ``retry_after_http_date``),
      a str is sent verbatim.
    * ``"delay"`` - wait ``delay_seconds`` (without blocking the server), then answer normally; if the
      client gave up meanwhile, the request is dropped unhandled, as a gateway drops queued requests.
    * ``"reset"`` - abort the TCP connection (RST) without sending any response.
    * ``"truncate"`` - download routes only: send the headers with the full ``Content-Length``, then
      half of the body, then close the connection.

    Three kinds fire *after* the request was handled - the ambiguous outcome of a submission, where the
    video exists (and is billed) but the client never learns its id:

    * ``"status_after_handling"`` - handle the request, then answer ``status`` instead, as a gateway
      whose upstream finished too late does (a ``502`` or ``504``).
    * ``"reset_after_handling"`` - handle the request, then abort the connection instead of answering.
    * ``"delay_after_handling"`` - handle the request, then hold the answer ``delay_seconds``.
    """

    route: str
    kind: FaultKind = "status"
    status: int = 500
    retry_after: int | str | None = None
    retry_after_http_date: bool = False
    delay_seconds: float = 1.0
    message: str | None = None
    code: str | None = None
    error_type: str | None = None
    times: int = 1

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"Unknown fault route {self.route!r}; expected one of {', '.join(ROUTES)}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if self.kind == "truncate" and self.route not in DOWNLOAD_ROUTES:
            raise ValueError(
                "A 'truncate' fault only applies to download routes: " + ", ".join(DOWNLOAD_ROUTES)
            )
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 400 <= self.status <= 599:
            raise ValueError(f"Fault status must be an int error status (400-599), got {self.status!r}")
        if self.retry_after is not None and (
            isinstance(self.retry_after, bool)
            or not isinstance(self.retry_after, int | str)
            or (isinstance(self.retry_after, int) and self.retry_after < 0)
            or (isinstance(self.retry_after, str) and any(c in self.retry_after for c in "\r\n"))
        ):
            raise ValueError(f"retry_after must be a non-negative int or a str, got {self.retry_after!r}")
        check_seconds("delay_seconds", self.delay_seconds)
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise ValueError(f"times must be an int >= 1, got {self.times!r}")

    @property
    def label(self) -> str:
        """How the fault is counted in ``Stats.faults_by_route``: ``"status 503"``, ``"reset"``, ..."""
        if self.kind == "status":
            return f"status {self.status}"
        if self.kind == "status_after_handling":
            return f"status {self.status} after handling"
        return self.kind

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from JSON (the HTTP control endpoint), rejecting unknown keys loudly."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown fault field(s): {', '.join(unknown)}")
        if "route" not in data:
            raise ValueError("A fault needs a 'route'")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as listed by ``GET /_simulator/faults``."""
        return dataclasses.asdict(self)


RandomFaultKind = Literal[
    "rate_limit",
    "server_error",
    "reset",
    "slow",
    "expired_link",
    "truncate",
    "server_error_after_handling",
    "reset_after_handling",
    "delay_after_handling",
]
RANDOM_FAULT_KINDS: tuple[str, ...] = get_args(RandomFaultKind)
#: The random mix unless told otherwise: faults that leave the service untouched, so a client that
#: retries can never pay twice. The after-handling kinds (work done, answer lost) must be asked for.
DEFAULT_RANDOM_FAULT_KINDS = ("rate_limit", "server_error", "reset", "slow", "expired_link", "truncate")
SERVER_ERROR_STATUSES = (500, 502, 503, 504)
_AMBIGUOUS_FOR_POST = frozenset(
    {"reset", "slow", "server_error_after_handling", "reset_after_handling", "delay_after_handling"}
)
_KIND_ROUTES: dict[str, tuple[str, ...]] = {
    "rate_limit": ROUTES,
    "server_error": ROUTES,
    "reset": ROUTES,
    "slow": ROUTES,
    "expired_link": (ROUTE_CDN,),
    "truncate": DOWNLOAD_ROUTES,
    "server_error_after_handling": (ROUTE_CREATE,),
    "reset_after_handling": (ROUTE_CREATE,),
    "delay_after_handling": (ROUTE_CREATE,),
}
_UNIT = 2.0**64


@dataclass(frozen=True)
class RandomFaults:
    """Each request meets a fault with probability ``rate``, of a kind picked evenly among ``kinds``
    that apply to its route (``expired_link`` only on the CDN, ``truncate`` only on downloads, the
    after-handling kinds only on ``POST``).

    The draw for the ``n``-th request on a route about one subject (a video's prompt) is a hash of
    ``seed``, route, subject and ``n``, so the same seed gives each video the same faults in the same
    order, however requests from many clients interleave.
    Its values are checked where they come in, as :class:`~airflow_octopusx.simulator.state.Settings`.
    """

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = DEFAULT_RANDOM_FAULT_KINDS
    slow_seconds: float = 2.0
    max_retry_after_seconds: int = 1
    #: ``/content`` answers with a redirect, which has no body to cut short.
    content_redirect: bool = False
    #: A POST meets no reset or timeout, whose outcome its client cannot know.
    unambiguous_posts: bool = False

    def draw(self, route: str, subject: str, n: int) -> Fault | None:
        """The fault, if any, met by the ``n``-th (from 0) request on ``route`` about ``subject``."""
        if self.rate <= 0:
            return None
        digest = hashlib.blake2b(f"{self.seed}|{route}|{subject}|{n}".encode(), digest_size=16).digest()
        if int.from_bytes(digest[:8], "big") >= self.rate * _UNIT:
            return None
        kinds = [kind for kind in self.kinds if self._applies(kind, route)]
        if not kinds:
            return None
        pick = int.from_bytes(digest[8:], "big")
        kind = kinds[pick % len(kinds)]
        return self._fault(kind, route, pick // len(kinds))

    def _applies(self, kind: str, route: str) -> bool:
        if kind == "truncate" and route == ROUTE_CONTENT and self.content_redirect:
            return False
        if route == ROUTE_CREATE and self.unambiguous_posts and kind in _AMBIGUOUS_FOR_POST:
            return False
        return route in _KIND_ROUTES[kind]

    def _fault(self, kind: str, route: str, pick: int) -> Fault:
        if kind == "rate_limit":
            return Fault(route, status=429, retry_after=pick % (self.max_retry_after_seconds + 1))
        if kind == "server_error":
            return Fault(route, status=SERVER_ERROR_STATUSES[pick % len(SERVER_ERROR_STATUSES)])
        if kind == "server_error_after_handling":
            status = SERVER_ERROR_STATUSES[pick % len(SERVER_ERROR_STATUSES)]
            return Fault(route, kind="status_after_handling", status=status)
        if kind == "slow":
            return Fault(route, kind="delay", delay_seconds=self.slow_seconds)
        if kind == "expired_link":
            return Fault(route, status=403, code="AccessDenied", message="Request has expired")
        if kind == "delay_after_handling":
            return Fault(route, kind="delay_after_handling", delay_seconds=self.slow_seconds)
        if kind == "reset":
            return Fault(route, kind="reset")
        if kind == "truncate":
            return Fault(route, kind="truncate")
        if kind == "reset_after_handling":
            return Fault(route, kind="reset_after_handling")
        raise ValueError(f"Unknown random fault kind {kind!r}")


def check_seconds(name: str, value: object) -> None:
    """Refuse anything but a finite, non-negative number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
