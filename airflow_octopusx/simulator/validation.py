"""Request validation for ``POST /v1/videos``, strict enough that client bugs surface as 400s here first.

Written apart from ``airflow_octopusx.models`` on purpose: the simulator plays the server, so reusing the
client's own rules would let a client bug pass its own check unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

MODELS = ("omni-fast", "omni-fast-v2v")
RESOLUTIONS = ("720p", "1080p", "2k", "4k")
ASPECT_RATIOS = ("16:9", "9:16")
MIN_SECONDS = 4
MAX_SECONDS = 30
MAX_IMAGES = 5
VIDEO_FIELDS = ("video", "video_url", "input_video")

_ASPECT_RATIO = re.compile(r"^([1-9]\d*):([1-9]\d*)$")
_DATA_URL = re.compile(r"^data:(image|video)/[A-Za-z0-9.+-]+;base64,(.*)$", re.DOTALL)


class InvalidRequest(ValueError):
    """A field the real API would reject; becomes a 400 ``invalid_request_error`` naming ``param``."""

    def __init__(self, param: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


def validate_create(payload: Any) -> str:
    """Check a create-video body and return its model; raise :class:`InvalidRequest` on the first problem."""
    if not isinstance(payload, Mapping):
        raise InvalidRequest(None, "The request body must be a JSON object.", "invalid_json")
    model = _required_str(payload, "model")
    if model not in MODELS:
        raise InvalidRequest(
            "model", f"Invalid 'model': {model!r}. Supported values are: {_listing(MODELS)}."
        )
    prompt = _required_str(payload, "prompt")
    if not prompt.strip():
        raise InvalidRequest("prompt", "Invalid 'prompt': it must be a non-empty string.")
    _check_seconds(payload)
    _check_choice(payload, "resolution", RESOLUTIONS)
    _check_aspect_ratio(payload)
    _check_images(payload)
    _check_reference_video(payload, model)
    return model


def _listing(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _required_str(payload: Mapping[str, Any], name: str) -> str:
    if name not in payload or payload[name] is None:
        raise InvalidRequest(name, f"Missing required parameter: '{name}'.", "missing_required_parameter")
    value = payload[name]
    if not isinstance(value, str):
        raise InvalidRequest(name, f"Invalid type for '{name}': expected a string.", "invalid_type")
    return value


def _optional_str(payload: Mapping[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(name, f"Invalid type for '{name}': expected a string.", "invalid_type")
    return value


def _check_seconds(payload: Mapping[str, Any]) -> None:
    value = payload.get("seconds")
    if value is None:
        return
    allowed = f'an integer number of seconds from {MIN_SECONDS} to {MAX_SECONDS}, e.g. "8"'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest("seconds", f"Invalid type for 'seconds': expected {allowed}.", "invalid_type")
    text = str(value).strip()
    if not text.isdigit() or not MIN_SECONDS <= int(text) <= MAX_SECONDS:
        raise InvalidRequest("seconds", f"Invalid 'seconds': {value!r}. Expected {allowed}.")


def _check_choice(payload: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    value = _optional_str(payload, name)
    if value is not None and value not in allowed:
        raise InvalidRequest(name, f"Invalid '{name}': {value!r}. Supported values are: {_listing(allowed)}.")


def _check_aspect_ratio(payload: Mapping[str, Any]) -> None:
    value = _optional_str(payload, "aspect_ratio")
    if value is not None and not _ASPECT_RATIO.match(value):
        raise InvalidRequest(
            "aspect_ratio",
            f"Invalid 'aspect_ratio': {value!r}. Use 'W:H' with positive integers, "
            f"e.g. {_listing(ASPECT_RATIOS)}.",
        )


def _check_images(payload: Mapping[str, Any]) -> None:
    first = _optional_str(payload, "first_image_url")
    last = _optional_str(payload, "last_image_url")
    for name, value in (("first_image_url", first), ("last_image_url", last)):
        if value is not None:
            _check_media_ref(name, value, "image")
    if last is not None and first is None:
        raise InvalidRequest(
            "last_image_url", "'last_image_url' must be used together with 'first_image_url'."
        )
    images = payload.get("images")
    if images is None:
        return
    if not isinstance(images, list):
        raise InvalidRequest(
            "images", "Invalid type for 'images': expected an array of strings.", "invalid_type"
        )
    if len(images) > MAX_IMAGES:
        raise InvalidRequest(
            "images", f"Too many 'images': {len(images)} given, at most {MAX_IMAGES} allowed."
        )
    for image in images:
        if not isinstance(image, str):
            raise InvalidRequest(
                "images", "Invalid type for 'images': expected an array of strings.", "invalid_type"
            )
        _check_media_ref("images", image, "image")


def _check_reference_video(payload: Mapping[str, Any], model: str) -> None:
    for name in VIDEO_FIELDS:
        value = payload.get(name)
        if value is None:
            continue
        if model != "omni-fast-v2v":
            raise InvalidRequest(
                name, f"'{model}' does not support '{name}'; use 'omni-fast-v2v' for reference-video input."
            )
        if not isinstance(value, str):
            raise InvalidRequest(name, f"Invalid type for '{name}': expected a string.", "invalid_type")
        _check_media_ref(name, value, "video")


def _check_media_ref(param: str, value: str, kind: str) -> None:
    """Accept a public http(s) URL or a ``data:<kind>/...;base64,...`` URL with valid base64."""
    if value.startswith("data:"):
        match = _DATA_URL.match(value)
        if match is None or match.group(1) != kind:
            raise InvalidRequest(
                param, f"Invalid '{param}': a data URL must look like 'data:{kind}/<type>;base64,...'."
            )
        try:
            decoded = base64.b64decode(match.group(2), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if not decoded:
            raise InvalidRequest(param, f"Invalid '{param}': the data URL does not hold valid base64 data.")
        return
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise InvalidRequest(
            param, f"Invalid '{param}': expected a public http(s) URL or a 'data:{kind}/...;base64,' URL."
        )
