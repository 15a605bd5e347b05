"""Scripted misbehaviour for the simulator, so client retry and timeout paths can be tested on demand."""

from __future__ import annotations

import dataclasses
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

FaultKind = Literal["status", "delay", "reset", "truncate"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by the next ``times`` requests to ``route``.

    ``route`` is one of:

    * ``"POST /v1/videos"`` - submit a video,
    * ``"GET /v1/videos/{id}"`` - poll a video (any id),
    * ``"GET /v1/videos/{id}/content"`` - authenticated download from the API origin,
    * ``"GET cdn"`` - download of a signed ``video_url`` from the CDN origin (GET or HEAD).

    ``kind`` decides what happens; faults fire before authentication and validation, like a
    gateway in front of the real service would, so an error fault on POST never creates a video:

    * ``"status"`` - answer ``status`` with an error body (OpenAI-style JSON on the API, S3-style XML
      on the CDN; ``message``/``code``/``error_type`` override the defaults). ``retry_after`` adds a
      ``Retry-After`` header: an int is seconds (sent as an HTTP date if ``retry_after_http_date``),
      a str is sent verbatim.
    * ``"delay"`` - wait ``delay_seconds`` (without blocking the server), then answer normally.
    * ``"reset"`` - abort the TCP connection (RST) without sending any response.
    * ``"truncate"`` - download routes only: send the headers with the full ``Content-Length``, then
      half of the body, then close the connection.
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
        if (
            isinstance(self.delay_seconds, bool)
            or not isinstance(self.delay_seconds, int | float)
            or not math.isfinite(self.delay_seconds)
            or self.delay_seconds < 0
        ):
            raise ValueError(f"delay_seconds must be a finite number >= 0, got {self.delay_seconds!r}")
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise ValueError(f"times must be an int >= 1, got {self.times!r}")

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
