"""Typed models of the OctopusX video API: what we send (``VideoRequest``) and what we get (``VideoTask``).

Every operator builds its request through ``VideoRequest.build`` so that one set of rules decides what is
valid, and a bad argument is refused, naming the field and the allowed values, before any HTTP request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from airflow_octopusx.exceptions import InvalidResponseError, InvalidVideoRequest, VideoFailedError, excerpt

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_MODEL: Final = "omni-fast"
ASPECT_RATIOS: Final = ("16:9", "9:16")
RESOLUTIONS: Final = ("720p", "1080p", "2k", "4k")
MIN_SECONDS: Final = 4
MAX_SECONDS: Final = 30
MAX_IMAGES: Final = 5
# omni-fast has no reference-video input; those fields belong to omni-fast-v2v.
REFERENCE_VIDEO_FIELDS: Final = ("video", "video_url", "input_video")

#: Waits log a line when the status changes and each time progress passes a multiple of this (percent).
PROGRESS_LOG_STEP: Final = 25
#: The documented statuses, and the other spellings of them that the gateway and its vendors answer (the
#: gateway's own task states in upper case, among them): see docs/answers.md. Compared in lower case.
STATUS_ALIASES: Final = {
    alias: status
    for status, aliases in {
        "queued": ("queued", "submitted", "not_start", "pending", "unknown"),
        "in_progress": ("in_progress", "processing", "running"),
        "completed": ("completed", "succeeded", "success"),
        "failed": ("failed", "failure"),
    }.items()
    for alias in aliases
}
# Ends a video as failed under its own name, so the task's error shows it.
FAILED_STATUSES: Final = frozenset({"failed", "cancelled", "canceled", "error"})
#: Where a finished video's link may be, first found first: the doc's field, the gateway's (most of its
#: vendor adaptors), the gateway's internal task record, and a bare ``url``.
LINK_FIELDS: Final = ("video_url", "metadata.url", "result_url", "url")
#: Billing details kept from an answer: at most this many entries, each a short name and a number or word.
MAX_BILLING_ENTRIES: Final = 16
# A status is a word or two; anything else (markup, control characters, a novel) is not one.
_STATUS = re.compile(r"[a-z][a-z0-9_ -]{0,39}")


class _Unrendered:
    """Stands for a value that is only known after Airflow renders templates or resolves XComs."""

    def __repr__(self) -> str:
        return "UNRENDERED"


UNRENDERED: Final = _Unrendered()

MAX_REFERENCE_VIDEO_BYTES: Final = 15 * 1024 * 1024
_DATA_URI_ANY = re.compile(
    r"data:(?P<kind>[a-z]+)/[a-z0-9.+-]+;base64,(?P<payload>.*)", re.IGNORECASE | re.DOTALL
)
_DATA_URI = re.compile(r"data:image/(?P<type>[a-z0-9.+-]+);base64,(?P<payload>.*)", re.IGNORECASE | re.DOTALL)


def _strict_json(name: str, value: _T) -> _T:
    """Refuse what strict JSON in UTF-8 cannot carry, as the request's body must: NaN, infinities, and
    lone surrogates (which a ``dag_run.conf`` can hold). Sending such a request would fail mid-way."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        raise InvalidVideoRequest(
            name, "must be strict JSON text: no NaN or infinity, no lone surrogate characters"
        ) from None
    return value


def _text(name: str, allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise InvalidVideoRequest(name, allowed, value)
        return _strict_json(name, value)

    return check


def _seconds(value: Any) -> str | None:
    if value is None:
        return None
    allowed = f"must be a whole number of seconds from {MIN_SECONDS} to {MAX_SECONDS}, as int or str"
    if isinstance(value, bool):
        raise InvalidVideoRequest("seconds", allowed, value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        raise InvalidVideoRequest("seconds", allowed, value)
    if not MIN_SECONDS <= number <= MAX_SECONDS:
        raise InvalidVideoRequest("seconds", allowed, value)
    return str(number)


def _one_of(name: str, allowed: Sequence[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None or value in allowed:
            return value  # type: ignore[no-any-return]
        raise InvalidVideoRequest(name, f"must be one of {', '.join(allowed)}", value)

    return check


def _image(name: str, value: Any) -> str:
    """An image is a public http(s) URL or a ``data:image/<type>;base64,`` URI that really decodes."""
    allowed = "must be an http(s) URL, a data:image/<type>;base64,<data> URI, or a file path or storage URI"
    if not isinstance(value, str):
        raise InvalidVideoRequest(name, allowed, value)
    if value[:5].lower() == "data:":
        problem = _data_uri_problem(value)
        if problem is not None:
            raise InvalidVideoRequest(name, problem or allowed, value)
        return value
    if not is_web_link(value):
        raise InvalidVideoRequest(name, allowed, value)
    return _strict_json(name, value)


@functools.lru_cache(maxsize=8)
def _data_uri_problem(value: str) -> str | None:
    """What is wrong with a ``data:image/`` URI ("" for its form), None if nothing: checked once per URI,
    as a batch's requests share the one a file was read into."""
    match = _DATA_URI.fullmatch(value)
    if match is None:
        return ""
    try:
        decoded = base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        return "has a data URI whose base64 payload does not decode"
    return None if decoded else "has a data URI with an empty image"


def _optional_image(name: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value is None else _image(name, value)

    return check


def _images(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidVideoRequest("images", f"must be a list of up to {MAX_IMAGES} images", value)
    if len(value) > MAX_IMAGES:
        raise InvalidVideoRequest("images", f"takes at most {MAX_IMAGES} images, got {len(value)}")
    return tuple(
        item if item is UNRENDERED else _image(f"images[{index}]", item) for index, item in enumerate(value)
    )


def _extra_body(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise InvalidVideoRequest("extra_body", "must be a mapping of field names to JSON values", value)
    clashes = sorted(set(value) & set(_FIELD_CHECKS))
    if clashes:
        raise InvalidVideoRequest(
            "extra_body", f"must not repeat {', '.join(clashes)}; pass them as arguments"
        )
    for key, item in value.items():
        _strict_json(f"extra_body.{_strict_json('extra_body', key)}", item)
    return dict(value)


_FIELD_CHECKS: Final[dict[str, Callable[[Any], Any]]] = {
    "prompt": _text("prompt", "must be a non-empty string"),
    "model": _text("model", f"must be a model name such as {DEFAULT_MODEL!r}"),
    "seconds": _seconds,
    "aspect_ratio": _one_of("aspect_ratio", ASPECT_RATIOS),
    "resolution": _one_of("resolution", RESOLUTIONS),
    "first_image_url": _optional_image("first_image_url"),
    "last_image_url": _optional_image("last_image_url"),
    "images": _images,
}


def _reference_video(name: str, value: Any) -> None:
    """A reference video for omni-fast-v2v: a public URL or an inline data URI of at most 15 MB."""
    allowed = "must be an http(s) URL or a data:video/<type>;base64,<data> URI of at most 15 MB"
    if value is UNRENDERED:
        return
    if not isinstance(value, str):
        raise InvalidVideoRequest(name, allowed, value)
    match = _DATA_URI_ANY.fullmatch(value)
    if match is not None:
        if match["kind"].lower() != "video" or len(match["payload"]) * 3 // 4 > MAX_REFERENCE_VIDEO_BYTES:
            raise InvalidVideoRequest(name, allowed, value)
        return
    if not is_web_link(value):
        raise InvalidVideoRequest(name, allowed, value)


def _check_combination(values: Mapping[str, Any]) -> None:
    """Rules that span fields; an ``UNRENDERED`` value counts as given but unknown."""
    if values.get("last_image_url") is not None and values.get("first_image_url") is None:
        raise InvalidVideoRequest("last_image_url", "needs first_image_url as well (first/last frame mode)")
    extra = values.get("extra_body")
    model = values.get("model")
    if model not in (DEFAULT_MODEL, UNRENDERED) and isinstance(extra, Mapping):
        for name in REFERENCE_VIDEO_FIELDS:
            if name in extra:
                _reference_video(f"extra_body.{name}", extra[name])
    if model == DEFAULT_MODEL and isinstance(extra, Mapping):
        refused = [name for name in REFERENCE_VIDEO_FIELDS if name in extra]
        if refused:
            raise InvalidVideoRequest(
                f"extra_body.{refused[0]}",
                f"{DEFAULT_MODEL} takes no reference video ({', '.join(REFERENCE_VIDEO_FIELDS)}); "
                "use model='omni-fast-v2v'",
            )


def is_web_link(link: Any) -> bool:
    """An http(s) link with a host: the only kind followed, or shown in XCom and on the task page."""
    if not isinstance(link, str):
        return False
    try:
        parts = urlsplit(link.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


def check_video_id(value: Any) -> str:
    """Refuse ids that could not have come from the API, such as ones with path characters."""
    if value in (None, "None"):
        # What a template renders when the XCom it pulls does not exist (yet).
        raise InvalidVideoRequest(
            "video_id",
            "is None: the XCom it names does not exist (yet); does this task run after the one that "
            "pushes it?",
            value,
        )
    if not isinstance(value, str) or not _VIDEO_ID.fullmatch(value):
        raise InvalidVideoRequest(
            "video_id",
            "must be an OctopusX video id: letters, digits, '.', '_', ':' or '-', at most 200",
            value,
        )
    return value


@dataclass(frozen=True)
class VideoRequest:
    """A validated ``POST /v1/videos`` body."""

    prompt: str
    model: str = DEFAULT_MODEL
    seconds: str | None = None
    aspect_ratio: str | None = None
    resolution: str | None = None
    first_image_url: str | None = None
    last_image_url: str | None = None
    images: tuple[str, ...] = ()
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, fields: Mapping[str, Any]) -> VideoRequest:
        """Validate request fields (as a DAG author wrote or Airflow rendered them) into a request.

        Fields left out take the defaults (``model`` is ``omni-fast``); an unknown field is refused.
        """
        refuse_unknown_fields(fields)
        checked = {
            name: check(fields.get(name, DEFAULT_MODEL if name == "model" else None))
            for name, check in _FIELD_CHECKS.items()
        }
        checked["extra_body"] = _extra_body(fields.get("extra_body"))
        _check_combination(checked)
        return cls(**checked)

    @staticmethod
    def check_known(values: Mapping[str, Any]) -> None:
        """Check what is known before rendering; values that are ``UNRENDERED`` are checked later."""
        for name, value in values.items():
            if value is UNRENDERED:
                continue
            if name == "extra_body":
                _extra_body(value)
            else:
                _FIELD_CHECKS[name](value)
        _check_combination(values)

    def to_json(self) -> dict[str, Any]:
        """The JSON body the API expects: unset optional fields are left out, not sent as null."""
        body = {
            name: value
            for name in REQUEST_FIELDS
            if name not in ("images", "extra_body") and (value := getattr(self, name)) is not None
        }
        if self.images:
            body["images"] = list(self.images)
        body.update(self.extra_body)
        return body

    def body_parts(self) -> list[bytes]:
        """The JSON body (``to_json``) as parts to send one after another, for a request whose images are
        data URIs of many MB: each URI's bytes are made once and shared by every request that sends it,
        where encoding each body whole would copy them twice per request."""
        parts = [b"{"]
        for index, (name, value) in enumerate(self.to_json().items()):
            parts += [b"," if index else b"", json.dumps(name).encode(), b":"]
            if isinstance(value, list) and name == "images":
                parts.append(b"[")
                for item, image in enumerate(value):
                    parts += [b"," if item else b"", *_json_string_parts(image)]
                parts.append(b"]")
            elif isinstance(value, str):
                parts += _json_string_parts(value)
            else:
                parts.append(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
        parts.append(b"}")
        return [part for part in parts if part]

    def fingerprint(self) -> str:
        """A digest of the body, to tell whether a retry still asks for the same video."""
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def describe(self) -> str:
        """A one-line summary for task logs, without image payloads."""
        shown: list[tuple[str, str | None]] = [("model", self.model), ("seconds", self.seconds or "default")]
        shown += [("resolution", self.resolution), ("aspect_ratio", self.aspect_ratio)]
        parts = [f"{name}={value}" for name, value in shown if value]
        if self.first_image_url:
            parts.append("first/last frame" if self.last_image_url else "first frame")
        if self.images:
            parts.append(f"{len(self.images)} reference image(s)")
        return ", ".join(parts)


#: The request's fields, in the order of ``VideoRequest``: what the operators take and template.
REQUEST_FIELDS: Final = tuple(field.name for field in dataclasses.fields(VideoRequest))
_PLAIN_TYPES: Final = (str, int, float, bool, type(None))


def refuse_unknown_fields(fields: Mapping[str, Any]) -> None:
    """Refuse a field that is not a request field, naming the ones there are."""
    unknown = sorted(set(fields) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidVideoRequest(
            unknown[0], f"is not a request field; the fields are {', '.join(REQUEST_FIELDS)}"
        )


def known_at_parse(value: Any) -> Any:
    """``value`` as far as it is known while the DAG is parsed: templates and XComs are ``UNRENDERED``."""
    if isinstance(value, str):
        return UNRENDERED if ("{{" in value or "{%" in value) else value
    if isinstance(value, (list, tuple)):
        return [known_at_parse(item) for item in value]
    if isinstance(value, dict):
        known = {key: known_at_parse(item) for key, item in value.items()}
        return UNRENDERED if UNRENDERED in known.values() else known
    return value if isinstance(value, _PLAIN_TYPES) else UNRENDERED


@dataclass(frozen=True)
class VideoError:
    """Why the API failed a video."""

    message: str
    code: str | None = None


@dataclass(frozen=True)
class VideoTask:
    """A video as the API reports it, parsed once so callers never read raw JSON."""

    id: str
    status: str
    progress: float = 0
    video_url: str = ""
    error: VideoError | None = None
    model: str | None = None
    created_at: int | None = None
    # Echoed by the API on some deployments; kept for asset metadata when present.
    prompt: str | None = None
    seconds: str | None = None
    resolution: str | None = None
    #: What the gateway says it billed: ``usage`` of a finished video, and the multipliers its answer to
    #: the submission named (``X-New-Api-Other-Ratios``), under ``ratios``.
    billing: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, payload: Any, asked: str | None = None) -> VideoTask:
        """Parse a status answer; anything that is not a video raises ``InvalidResponseError``, and so does
        an answer about another video than the ``asked`` id (believed, it would credit the wrong video).

        Lenient where gateways differ harmlessly (``progress`` as ``"50%"``, ``error`` as a plain string or
        ``fail_reason``, ``task_id`` for ``id``, the link in ``metadata.url``, status spellings, a
        ``{"code": "success", "data": {...}}`` envelope), strict where a wrong value would mislead: the id
        and the status.
        """
        if not isinstance(payload, Mapping):
            raise InvalidResponseError(f"the answer is not a JSON object: {excerpt(repr(payload), 80)}")
        if "id" not in payload and "task_id" not in payload and isinstance(payload.get("data"), Mapping):
            payload = payload["data"]
        video_id = payload.get("id") or payload.get("task_id")
        try:
            video_id = check_video_id(video_id)
        except InvalidVideoRequest:
            raise InvalidResponseError(
                f"the answer has no valid video id (got {excerpt(repr(video_id), 80)})"
            ) from None
        if asked is not None and asked not in (payload.get("id"), payload.get("task_id")):
            raise InvalidResponseError(f"asked about video {asked}, the answer describes video {video_id}")
        status = payload.get("status") or "queued"
        if not isinstance(status, str) or not _STATUS.fullmatch(status.strip().lower()):
            raise InvalidResponseError(
                f"video {video_id} has no readable status (got {excerpt(repr(status), 80)})"
            )
        status = status.strip().lower()
        status = STATUS_ALIASES.get(status, status)
        if status not in STATUS_ALIASES and status not in FAILED_STATUSES:
            _warn_unknown_status(status)
        created_at = payload.get("created_at")
        metadata = payload.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        usage = payload.get("usage") or metadata.get("usage")
        return cls(
            id=video_id,
            status=status,
            progress=_progress(payload.get("progress")),
            video_url=_first_link(payload, metadata),
            error=_video_error(payload.get("error")) or _video_error(payload.get("fail_reason")),
            model=_optional_text(payload.get("model")),
            created_at=created_at if type(created_at) is int else None,
            prompt=_optional_text(payload.get("prompt")),
            seconds=_optional_text(payload.get("seconds")),
            resolution=_optional_text(payload.get("resolution")),
            billing={"usage": parsed} if (parsed := billing_entries(usage)) else {},
        )

    def with_billing_ratios(self, header: str | None) -> VideoTask:
        """This video with the multipliers a submission's answer named in ``X-New-Api-Other-Ratios``."""
        try:
            ratios = billing_entries(json.loads(header)) if header else {}
        except (ValueError, RecursionError):
            ratios = {}
        return dataclasses.replace(self, billing={**self.billing, "ratios": ratios}) if ratios else self

    @property
    def milestone(self) -> tuple[str, int]:
        """What progress logs report: the status, and how many ``PROGRESS_LOG_STEP``s are done."""
        return self.status, int(self.progress // PROGRESS_LOG_STEP)

    @property
    def is_completed(self) -> bool:
        """Whether the video is made and can be downloaded."""
        return self.status == "completed"

    @property
    def is_failed(self) -> bool:
        """Whether the API failed the video."""
        return self.status in FAILED_STATUSES

    @property
    def is_finished(self) -> bool:
        """Completed or failed; any other status, known or not, means the video is still being made."""
        return self.is_completed or self.is_failed

    @property
    def failure(self) -> VideoError:
        """Why the video failed: the API's message and code, or its bare status if it gave no message."""
        return self.error or VideoError(f"the API reported status {self.status!r} without an error message")

    def raise_if_failed(self) -> None:
        """Raise ``VideoFailedError`` with the API's own message and code if the video failed."""
        if self.is_failed:
            raise VideoFailedError(self.id, self.failure.message, self.failure.code)


def _first_link(payload: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
    """The first http(s) link among ``LINK_FIELDS``; "" if there is none."""
    for name in LINK_FIELDS:
        link = metadata.get("url") if name == "metadata.url" else payload.get(name)
        if is_web_link(link):
            return str(link).strip()
    return ""


def billing_entries(value: Any) -> dict[str, float | str]:
    """A billing object as short names to finite numbers or short words; anything else is left out."""
    if not isinstance(value, Mapping):
        return {}
    entries: dict[str, float | str] = {}
    for key, item in value.items():
        if len(entries) == MAX_BILLING_ENTRIES:
            break
        if not isinstance(key, str) or not _STATUS.fullmatch(key.lower()):
            continue
        if isinstance(item, bool):
            continue
        if (
            (isinstance(item, int) and abs(item) < 2**53)
            or (isinstance(item, float) and math.isfinite(item))
            or (isinstance(item, str) and len(item) <= 40 and item.isprintable())
        ):
            entries[key] = item
    return entries


def _json_string_parts(value: str) -> list[bytes]:
    """A string as JSON: a checked data URI is its own (shared) bytes between quotes, as JSON needs no
    escape for base64; any other string is encoded as usual."""
    if value[:5].lower() == "data:" and _data_uri_problem(value) is None:
        return [b'"', _ascii(value), b'"']
    return [json.dumps(value, ensure_ascii=False).encode()]


@functools.lru_cache(maxsize=8)
def _ascii(value: str) -> bytes:
    return value.encode("ascii")


def _optional_text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _progress(value: Any) -> float:
    """Percent done, 0 to 100, from a number or a string such as ``"50"`` or ``"50%"``; else 0."""
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        number = float(value)
    except (ValueError, OverflowError):
        # An integer too large for a float is far past 100.
        return 100.0 if isinstance(value, int) and value > 0 else 0.0
    return min(max(number, 0.0), 100.0) if math.isfinite(number) else 0.0


def _video_error(value: Any) -> VideoError | None:
    """Why a video failed: ``{"message", "code"}``, or a plain string some vendors send instead."""
    if isinstance(value, str):
        return VideoError(excerpt(value, 1000)) if value.strip() else None
    if not isinstance(value, Mapping):
        return None
    message, code = value.get("message"), value.get("code") or value.get("type")
    if not message and not code:
        return None
    return VideoError(
        message=excerpt(message, 1000) if message else "no message given",
        code=None if code is None or isinstance(code, (dict, list)) else excerpt(code, 100),
    )


@functools.cache
def _warn_unknown_status(status: str) -> None:
    """Warn once per process: a new status is most likely a new in-progress state, so we keep waiting."""
    log.warning("OctopusX reported an unknown status %r; treating it as still in progress.", status)
