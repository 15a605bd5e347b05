"""Where a downloaded video is written: any ``ObjectStoragePath``, where it appears whole or not at all."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from airflow.providers.common.compat.sdk import AirflowFailException, Asset, ObjectStoragePath
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

#: Object stores whose uploads become visible only when committed, so a download can be written to its
#: final key (s3fs, gcsfs). Not adlfs: it deletes an existing blob as soon as its upload begins.
_COMMITTED_UPLOAD_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs"})
#: Of those, the ones whose "xb" mode commits only while the key is still free (s3fs sends S3's
#: ``If-None-Match: *``), so without ``overwrite`` an object that appeared meanwhile is not replaced.
_EXCLUSIVE_CREATE_PROTOCOLS = frozenset({"s3", "s3a"})
#: The part size of those uploads, S3's minimum: s3fs holds a few parts in memory at once, so a smaller
#: part keeps a worker's memory flat (measured in docs/performance.md).
UPLOAD_PART_SIZE = 5 * 1024 * 1024


class VideoDestination:
    """A file or a folder given as a path, a URI or an ``ObjectStoragePath``, and whether to overwrite.

    A string that ends in ``/`` (or names an existing folder) is a folder; an ``ObjectStoragePath`` has
    lost any trailing slash, so without an ``.mp4`` name it counts as a folder. In a folder the file is
    ``<video_id>.mp4``.
    """

    def __init__(
        self, destination: str | ObjectStoragePath, *, conn_id: str | None = None, overwrite: bool = False
    ) -> None:
        self.destination = destination
        self.conn_id = conn_id
        self.overwrite = overwrite

    def path_for(self, video_id: str) -> ObjectStoragePath:
        """The file ``video_id`` is stored at; refused at once if it exists and may not be replaced."""
        target = self.location(video_id)
        if not self.overwrite and target.exists():
            raise AirflowFailException(
                f"{plain_uri(target)} already exists; pass overwrite=True to replace it"
            )
        return target

    def location(self, video_id: str) -> ObjectStoragePath:
        """The file ``video_id`` is stored at, whether or not something is there."""
        destination, folder = self._path()
        return destination / f"{file_name(video_id)}.mp4" if folder else destination

    def in_folder(self, name: str) -> ObjectStoragePath:
        """The file ``name`` in a folder destination, beside its videos."""
        return self._path()[0] / name

    def _path(self) -> tuple[ObjectStoragePath, bool]:
        """The destination as a path, and whether it is a folder."""
        destination = self.destination
        folder = (
            destination.endswith("/")
            if isinstance(destination, str)
            else destination.suffix.lower() != ".mp4"
        )
        if isinstance(destination, str):
            if "://" not in destination:
                # Not Path.as_uri(): ObjectStoragePath keeps percent-escapes literally.
                destination = f"file://{Path(destination).absolute()}"
            destination = ObjectStoragePath(destination, conn_id=self.conn_id)
        return destination, folder or destination.is_dir()

    @contextmanager
    def open(self, target: ObjectStoragePath) -> Iterator[IO[bytes]]:
        """A file to write the video into; ``target`` shows it only if the block ends without an error.

        On S3 and GCS the upload goes to the key itself, which the store shows only once committed; on any
        error it is aborted, so nothing is stored and an object already there is kept. Elsewhere the
        bytes go to a temporary name beside the target and are moved into place once whole.

        Both open the fsspec file itself, not ``ObjectStoragePath.open()``'s wrapper, which records hook
        lineage on every write call (of a temporary name, on most stores); the caller records the stored
        video once.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.protocol in _COMMITTED_UPLOAD_PROTOCOLS:
            with self._upload(target) as file:
                yield file
        else:
            with self._beside(target) as file:
                yield file

    @contextmanager
    def _upload(self, target: ObjectStoragePath) -> Iterator[IO[bytes]]:
        exclusive = not self.overwrite and target.protocol in _EXCLUSIVE_CREATE_PROTOCOLS
        file = target.fs.open(target.path, "xb" if exclusive else "wb", block_size=UPLOAD_PART_SIZE)
        try:
            yield file
            file.close()  # commits the upload
        except BaseException as error:
            # fsspec's flag (gcsfs's discard sets it too): close() and __del__ now commit nothing.
            file.closed = True
            file.discard()  # aborts an upload in progress; a smaller video was only ever in memory
            if exclusive and isinstance(error, FileExistsError):
                raise _appeared_meanwhile(target) from None
            raise

    @contextmanager
    def _beside(self, target: ObjectStoragePath) -> Iterator[IO[bytes]]:
        partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.partial"
        try:
            with _filesystem(partial).open(partial.path, "wb") as file:
                yield file
            self._publish(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def _publish(self, partial: ObjectStoragePath, target: ObjectStoragePath) -> None:
        """Move the checked file into place: a rename on one store, so only a whole file is ever visible.

        On local disk without ``overwrite`` a hard link is used, which refuses to replace a file that
        appeared at the destination while the video downloaded.
        """
        filesystem = _filesystem(partial)
        if self.overwrite or not isinstance(filesystem, LocalFileSystem):
            filesystem.mv(partial.path, target.path)
            return
        try:
            os.link(partial.path, target.path)
        except FileExistsError:
            raise _appeared_meanwhile(target) from None
        partial.unlink()

    def declared_asset(self) -> Asset | None:
        """The asset a fixed ``.mp4`` destination will be; None when only the run can tell.

        Decided from the text alone: parsing a DAG must not load a storage backend. A relative path
        depends on the worker's working directory, so it too is known only at run time.
        """
        destination = self.destination
        if isinstance(destination, ObjectStoragePath):
            return Asset(plain_uri(destination)) if destination.suffix.lower() == ".mp4" else None
        if "{{" in destination or "{%" in destination or not destination.lower().endswith(".mp4"):
            return None
        if "://" in destination:
            return Asset(destination)
        return Asset(f"file://{destination}") if Path(destination).is_absolute() else None


def _filesystem(path: ObjectStoragePath) -> AbstractFileSystem:
    """The path's filesystem; a local one without asking Airflow, whose first lookup in a process imports
    every provider's filesystem module (the Amazon provider's brings boto3): seconds per task run."""
    return LocalFileSystem() if path.protocol in ("", "file", "local") else path.fs


def _appeared_meanwhile(target: ObjectStoragePath) -> AirflowFailException:
    return AirflowFailException(
        f"{plain_uri(target)} already exists (it appeared during the download); "
        "pass overwrite=True to replace"
    )


def plain_uri(path: ObjectStoragePath) -> str:
    """The path's URI without the connection id that ``str()`` puts in it (``s3://conn@bucket/...``)."""
    return f"{path.protocol or 'file'}://{path.path}"


def file_name(video_id: str) -> str:
    """The video id as a file name: characters other than letters, digits, '.', '_' and '-' as '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", video_id)
