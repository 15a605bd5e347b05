"""Images and reference videos given as files: read on the worker and sent inline as data URIs.

The API takes public URLs or ``data:`` URIs. A pipeline usually has its frames in a folder or a bucket,
so operators accept a local path, a storage URI (``file://``, ``s3://``, ``gs://`` ...) or an
``ObjectStoragePath`` too; the type is sniffed from the bytes, never trusted from the name.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import fsspec
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_octopusx.exceptions import InvalidVideoRequest
from airflow_octopusx.models import MAX_REFERENCE_VIDEO_BYTES

MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
_URL_SCHEMES: Final = frozenset({"http", "https", "data"})


def is_file_reference(value: Any) -> bool:
    """A path or storage URI to read here, as opposed to a URL or data URI the API takes as it is."""
    if isinstance(value, ObjectStoragePath):
        return True
    if not isinstance(value, str) or not value.strip():
        return False
    scheme = urlsplit(value).scheme.lower()
    return scheme == "" or (scheme not in _URL_SCHEMES and scheme in fsspec.available_protocols())


def read_as_data_uri(field: str, source: str | ObjectStoragePath, *, conn_id: str | None, video: bool) -> str:
    """Read ``source`` (capped), check what it is from its first bytes, and inline it as a data URI."""
    limit = MAX_REFERENCE_VIDEO_BYTES if video else MAX_IMAGE_BYTES
    path = (
        source if isinstance(source, ObjectStoragePath) else ObjectStoragePath(_uri(source), conn_id=conn_id)
    )
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except (OSError, ValueError) as error:
        raise InvalidVideoRequest(field, f"could not be read from {path}: {error}") from error
    if len(data) > limit:
        raise InvalidVideoRequest(
            field, f"{path} is over the {limit // (1024 * 1024)} MB limit for inline files"
        )
    mime = sniff_media_type(data)
    wanted = "video/" if video else "image/"
    if mime is None or not mime.startswith(wanted):
        kinds = "an MP4, MOV or WebM video" if video else "a PNG, JPEG, GIF or WebP image"
        raise InvalidVideoRequest(field, f"{path} is not {kinds}")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def sniff_media_type(data: bytes) -> str | None:
    """The media type from the file's signature bytes; None when it is none we send."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:12] == b"qt  " else "video/mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return None


def _uri(source: str) -> str:
    # A plain path is a local file; not Path.as_uri(), whose percent-escapes ObjectStoragePath keeps.
    return source if urlsplit(source).scheme else f"file://{Path(source).absolute()}"
