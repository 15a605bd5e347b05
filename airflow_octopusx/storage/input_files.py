"""Images and reference videos given as files: read on the worker and sent inline as data URIs.

The API takes public URLs or ``data:`` URIs. A pipeline usually has its frames in a folder or a bucket,
so operators accept a local path, a storage URI (``file://``, ``s3://``, ``gs://`` ...) or an
``ObjectStoragePath`` too; the type is sniffed from the bytes, never trusted from the name.
"""

from __future__ import annotations

import base64
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import fsspec
from airflow.providers.common.compat.sdk import ObjectStoragePath, conf

from airflow_octopusx.exceptions import InvalidVideoRequest
from airflow_octopusx.models import MAX_REFERENCE_VIDEO_BYTES

MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
_URL_SCHEMES: Final = frozenset({"http", "https", "data"})
_LOCAL_PROTOCOLS: Final = frozenset({"file", "local"})


def is_file_reference(value: Any) -> bool:
    """A path or storage URI to read here, as opposed to a URL or data URI the API takes as it is."""
    if isinstance(value, ObjectStoragePath):
        return True
    if not isinstance(value, str) or not value.strip():
        return False
    scheme = urlsplit(value).scheme.lower()
    return scheme == "" or (scheme not in _URL_SCHEMES and scheme in fsspec.available_protocols())


def read_as_data_uri(field: str, source: str | ObjectStoragePath, *, conn_id: str | None, video: bool) -> str:
    """Read ``source`` (capped), check what it is from its bytes, and inline it as a data URI."""
    limit = MAX_REFERENCE_VIDEO_BYTES if video else MAX_IMAGE_BYTES
    path = (
        source if isinstance(source, ObjectStoragePath) else ObjectStoragePath(_uri(source), conn_id=conn_id)
    )
    try:
        data = (
            _read_local(field, path.path, limit) if path.protocol in _LOCAL_PROTOCOLS else _read(path, limit)
        )
    except InvalidVideoRequest:
        raise
    except Exception as error:  # fsspec backends raise their own errors (botocore's, gcsfs's ...)
        hint = "" if conn_id or path.protocol in _LOCAL_PROTOCOLS else " (is input_conn_id set?)"
        problem = f"could not be read from {path}{hint}: {type(error).__name__}: {error}"
        raise InvalidVideoRequest(field, problem) from error
    if len(data) > limit:
        raise InvalidVideoRequest(
            field, f"{path} is over the {limit // (1024 * 1024)} MB limit for inline files"
        )
    mime = sniff_media_type(data)
    wanted = "video/" if video else "image/"
    if mime is None or not mime.startswith(wanted) or not _is_whole(mime, data):
        kinds = "an MP4, MOV or WebM video" if video else "a PNG, JPEG, GIF or WebP image"
        raise InvalidVideoRequest(field, f"{path} is not {kinds} (or it is cut short)")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _read(path: ObjectStoragePath, limit: int) -> bytes:
    with path.open("rb") as file:
        data: bytes = file.read(limit + 1)
    return data


def _read_local(field: str, name: str, limit: int) -> bytes:
    """A regular file of this machine, inside the allowed folders if the deployment names any.

    Opened without blocking and checked before reading: a named pipe or a device would hang the task or
    never end, and a template rendered from a run's conf must not reach files outside those folders.
    """
    real = os.path.realpath(name)
    allowed = allowed_input_folders()
    if allowed and not any(os.path.commonpath([real, folder]) == folder for folder in allowed):
        raise InvalidVideoRequest(
            field,
            f"{name} is outside the folders this deployment allows for input files "
            f"([octopusx] allowed_input_folders: {', '.join(allowed)})",
        )
    descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise InvalidVideoRequest(field, f"{name} is not a regular file")
        return file.read(limit + 1)


def allowed_input_folders() -> list[str]:
    """Folders of the workers that local input files must be in; empty when the deployment sets none."""
    folders = conf.get("octopusx", "allowed_input_folders", fallback="") or ""
    return [os.path.realpath(folder.strip()) for folder in folders.split(",") if folder.strip()]


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


def _is_whole(mime: str, data: bytes) -> bool:
    """Whether the bytes hold the frame of their format, not just its first bytes (a text file that
    starts with ``GIF89a`` is not a GIF). A structural check, not a decoder."""
    if mime == "image/png":
        # The IHDR chunk first, its CRC right, and the IEND chunk last.
        return (
            data[12:16] == b"IHDR"
            and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big")
            and data.endswith(b"IEND\xaeB`\x82")
        )
    if mime == "image/jpeg":
        return b"\xff\xd9" in data[-1024:]
    if mime == "image/gif":
        width, height = struct.unpack("<HH", data[6:10]) if len(data) >= 10 else (0, 0)
        return width > 0 and height > 0 and data.rstrip(b"\x00").endswith(b";")
    if mime == "image/webp":
        declared = int.from_bytes(data[4:8], "little")
        return declared + 8 in (len(data), len(data) - 1) and data[12:16] in (b"VP8 ", b"VP8L", b"VP8X")
    if mime.startswith("video/") and data[4:8] == b"ftyp":
        return 8 <= int.from_bytes(data[:4], "big") <= len(data)
    return True  # WebM: the EBML signature is all that is checked


def _uri(source: str) -> str:
    # A plain path is a local file; not Path.as_uri(), whose percent-escapes ObjectStoragePath keeps.
    return source if urlsplit(source).scheme else f"file://{Path(source).absolute()}"
