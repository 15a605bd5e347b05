"""Images and reference videos given as files: read on the worker and sent inline as data URIs.

The API takes public URLs or ``data:`` URIs. A pipeline usually has its frames in a folder or a bucket,
so operators accept a local path, a storage URI (``file://``, ``s3://``, ``gs://`` ...) or an
``ObjectStoragePath`` too; the type is sniffed from the bytes, never trusted from the name.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import fsspec
from airflow.providers.common.compat.sdk import ObjectStoragePath, conf

from airflow_octopusx.exceptions import InvalidVideoRequest
from airflow_octopusx.models import DEFAULT_MODEL, MAX_REFERENCE_VIDEO_BYTES, REFERENCE_VIDEO_FIELDS

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
    never end, and a template rendered from a run's conf must not reach files outside those folders. The
    folders are checked twice, where the name leads and where the opened file is: a link swapped in
    between the two would otherwise lead out of them.
    """
    allowed = allowed_input_folders()
    real = os.path.realpath(name)
    _check_inside(field, name, real, allowed)
    descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as file:
        _check_inside(field, name, _opened_path(descriptor, real), allowed)
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise InvalidVideoRequest(field, f"{name} is not a regular file")
        return file.read(limit + 1)


def _check_inside(field: str, name: str, real: str, allowed: list[str]) -> None:
    if allowed and not any(os.path.commonpath([real, folder]) == folder for folder in allowed):
        raise InvalidVideoRequest(
            field,
            f"{name} is outside the folders this deployment allows for input files "
            f"([octopusx] allowed_input_folders: {', '.join(allowed)})",
        )


def _opened_path(descriptor: int, real: str) -> str:
    """Where the open file is: the kernel's word where it gives one (Linux), else the name's, if it still
    leads to that same file."""
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{descriptor}")
    now = os.path.realpath(real)
    opened, found = os.fstat(descriptor), os.stat(now)
    return now if (opened.st_dev, opened.st_ino) == (found.st_dev, found.st_ino) else "/"


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
        return _is_whole_jpeg(data)
    if mime == "image/gif":
        return _is_whole_gif(data)
    if mime == "image/webp":
        declared = int.from_bytes(data[4:8], "little")
        return declared + 8 in (len(data), len(data) - 1) and data[12:16] in (b"VP8 ", b"VP8L", b"VP8X")
    if mime.startswith("video/") and data[4:8] == b"ftyp":
        return 8 <= int.from_bytes(data[:4], "big") <= len(data)
    return True  # WebM: the EBML signature is all that is checked


def _is_whole_jpeg(data: bytes) -> bool:
    """Markers and segment lengths that lead from the start through a frame header to the scan, and the
    end-of-image marker last."""
    at, framed = 2, False
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2:
            return False
        if marker == 0xDA:  # start of scan: entropy-coded data up to the end-of-image marker
            return framed and at + 2 + length < len(data) - 2 and data.endswith(b"\xff\xd9")
        framed = framed or (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC))
        at += 2 + length
    return False


def _is_whole_gif(data: bytes) -> bool:
    """The screen descriptor, every block's sub-blocks chained to their ends, an image, and the trailer
    last (trailing zero padding allowed)."""
    if len(data) < 13 or struct.unpack("<HH", data[6:10]) < (1, 1) or 0 in struct.unpack("<HH", data[6:10]):
        return False
    at = 13 + (3 << ((data[10] & 0x07) + 1) if data[10] & 0x80 else 0)
    images = 0
    while at < len(data):
        block = data[at]
        if block == 0x3B:  # trailer
            return images > 0 and not data[at + 1 :].strip(b"\x00")
        if block == 0x21:  # extension: label, then sub-blocks
            at += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, then sub-blocks
            if at + 10 > len(data):
                return False
            flags = data[at + 9]
            at += 10 + (3 << ((flags & 0x07) + 1) if flags & 0x80 else 0) + 1
            images += 1
        else:
            return False
        while at < len(data) and data[at] != 0:  # sub-blocks, each its size and then its bytes
            at += 1 + data[at]
        at += 1
    return False


def _uri(source: str) -> str:
    # A plain path is a local file; not Path.as_uri(), whose percent-escapes ObjectStoragePath keeps.
    return source if urlsplit(source).scheme else f"file://{Path(source).absolute()}"


def with_files_inlined(fields: dict[str, Any], read: Callable[[str, Any, bool], Any]) -> dict[str, Any]:
    """Request fields with images (and a v2v reference video) given as files replaced by ``read(...)``."""

    def inline(field: str, value: Any, *, video: bool = False) -> Any:
        return read(field, value, video) if is_file_reference(value) else value

    fields = dict(fields)
    for name in ("first_image_url", "last_image_url"):
        fields[name] = inline(name, fields.get(name))
    if isinstance(fields.get("images"), (list, tuple)):
        fields["images"] = [inline(f"images[{i}]", image) for i, image in enumerate(fields["images"])]
    if isinstance(fields.get("extra_body"), dict) and fields.get("model", DEFAULT_MODEL) != DEFAULT_MODEL:
        # Only the reference video may be a file; any other string is the API's to read as it is.
        fields["extra_body"] = {
            key: inline(f"extra_body.{key}", value, video=True) if key in REFERENCE_VIDEO_FIELDS else value
            for key, value in fields["extra_body"].items()
        }
    return fields


def file_reader(conn_id: str | None) -> Callable[[str, Any, bool], str]:
    """Reads a file given for ``field`` on the worker, into the data URI the API takes."""
    return lambda field, value, video: read_as_data_uri(field, value, conn_id=conn_id, video=video)
