"""The operators against a real S3 API (moto over a socket), through an ``aws`` connection: where the
video lands, that it is whole, that it goes straight to its key and a failed download stores nothing, and
that frames stored in a bucket are read and sent inline."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("airflow.providers.amazon", reason="needs apache-airflow-providers-amazon")
pytest.importorskip("s3fs", reason="needs apache-airflow-providers-amazon[s3fs]")

from airflow.providers.common.compat.sdk import AirflowFailException, Asset, AssetAlias
from airflow.sdk import ObjectStoragePath

from airflow_octopusx.exceptions import BadRequestError, VideoDownloadError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import REQUEST_FIELDS, VideoRequest, VideoTask
from airflow_octopusx.operators.octopusx import (
    DEFAULT_ASSET_ALIAS,
    DownloadVideoOperator,
    SubmitVideoOperator,
)
from airflow_octopusx.simulator import Fault, Simulator
from airflow_octopusx.simulator.media import VideoBody, sample_mp4
from airflow_octopusx.storage.input_files import file_reader, with_files_inlined
from airflow_octopusx.storage.video_destination import UPLOAD_PART_SIZE
from tests.conftest import when_a_fault_fires
from tests.storage.conftest import Bucket

# Over two of the operator's upload parts: a multipart upload of three parts.
LARGE_SIZE = 2 * UPLOAD_PART_SIZE + 2 * 1024 * 1024


def inlined_fields(task: SubmitVideoOperator) -> dict[str, Any]:
    """The request fields as the task sends them, files read and inlined."""
    fields = {name: getattr(task, name) for name in REQUEST_FIELDS}
    return with_files_inlined(fields, file_reader(task.input_conn_id))


def submit(simulator: Simulator, **settings: Any) -> VideoTask:
    """Submit one video through the real API; with no generation time it is completed at once."""
    simulator.configure(generation_seconds=0, **settings)
    with OctopusXHook() as hook:
        video = hook.submit_video(VideoRequest.build({"prompt": "A red kite over green hills"}))
        video = hook.get_video(video.id)
    assert video.is_completed
    return video


@pytest.fixture
def video_id(octopusx_conn: Simulator) -> str:
    return submit(octopusx_conn).id


def download(video_id: str, destination: Any, context: dict[str, Any], **kwargs: Any) -> str:
    return DownloadVideoOperator(
        task_id="download_video", video_id=video_id, destination=destination, **kwargs
    ).execute(context)


def download_counts(simulator: Simulator) -> tuple[int, int, int]:
    stats = simulator.stats
    return stats.gets, stats.cdn_gets, stats.content_gets


def served_sha256(size: int) -> str:
    """The digest of the body the simulator serves for a video of ``size`` bytes."""
    digest = hashlib.sha256()
    for chunk in VideoBody.build(sample_mp4(), size).iter_bytes(0, size):
        digest.update(chunk)
    return digest.hexdigest()


def in_folder(bucket: Bucket, conn_id: str) -> dict[str, Any]:
    return {"destination": bucket.uri("videos/"), "destination_conn_id": conn_id}


def as_file(bucket: Bucket, conn_id: str) -> dict[str, Any]:
    return {"destination": bucket.uri("clips/kite.mp4"), "destination_conn_id": conn_id}


def in_folder_path(bucket: Bucket, conn_id: str) -> dict[str, Any]:
    return {"destination": ObjectStoragePath(bucket.uri("videos/"), conn_id=conn_id)}


def as_file_path(bucket: Bucket, conn_id: str) -> dict[str, Any]:
    return {"destination": ObjectStoragePath(bucket.uri("clips/kite.mp4"), conn_id=conn_id)}


# Each case: the operator's destination arguments, objects already in the bucket, where the video lands.
DESTINATIONS = [
    pytest.param(in_folder, [], "videos/{id}.mp4", id="uri-string-of-a-folder"),
    pytest.param(as_file, [], "clips/kite.mp4", id="uri-string-of-a-file"),
    pytest.param(
        in_folder_path, ["videos/earlier.mp4"], "videos/{id}.mp4", id="object-storage-path-of-a-used-folder"
    ),
    pytest.param(as_file_path, [], "clips/kite.mp4", id="object-storage-path-of-a-file"),
    pytest.param(
        in_folder_path,
        [],
        "videos/{id}.mp4",
        id="object-storage-path-of-a-new-folder",
    ),
]


@pytest.mark.parametrize(("spell", "existing", "key_pattern"), DESTINATIONS)
def test_destination_forms_store_the_exact_mp4_and_nothing_else(
    spell: Callable[[Bucket, str], dict[str, Any]],
    existing: list[str],
    key_pattern: str,
    video_id: str,
    s3_conn_id: str,
    bucket: Bucket,
    context: dict[str, Any],
) -> None:
    for key in existing:
        bucket.write(key, b"an earlier video")
    key = key_pattern.format(id=video_id)

    result = download(video_id, context=context, **spell(bucket, s3_conn_id))

    assert result == bucket.uri(key)  # the plain URI: no connection id in it
    assert bucket.read(key) == sample_mp4()
    assert bucket.listed_keys() == sorted([*existing, key])  # nothing temporary left behind
    assert bucket.unfinished_uploads() == []


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut-mid-way"])
def test_a_large_video_streams_in_parts_to_the_exact_bytes(
    cut: bool, octopusx_conn: Simulator, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    video_id = submit(octopusx_conn, video_size_bytes=LARGE_SIZE).id
    if cut:
        # Half the body, then the connection closes: the rest must come with a Range request.
        octopusx_conn.inject(Fault(route="GET cdn", kind="truncate"))
    key = f"videos/{video_id}.mp4"

    result = download(video_id, bucket.uri("videos/"), context, destination_conn_id=s3_conn_id)

    assert result == bucket.uri(key)
    stored = bucket.read(key)
    assert len(stored) == LARGE_SIZE
    assert hashlib.sha256(stored).hexdigest() == served_sha256(LARGE_SIZE)
    stats = octopusx_conn.stats
    assert (stats.faults_fired, stats.ranged_responses) == ((1, 1) if cut else (0, 0))
    assert bucket.listed_keys() == [key]
    assert bucket.unfinished_uploads() == []
    # One multipart upload to the key itself, in parts of UPLOAD_PART_SIZE, then completed: no temporary
    # object and no copy (a CopyObject would be a PUT without a partNumber).
    path = f"/{bucket.name}/{key}"
    parts = math.ceil(LARGE_SIZE / UPLOAD_PART_SIZE)
    assert [shape(line) for line in writes(bucket)] == [
        f"POST {path}?uploads",
        *(f"PUT {path}?partNumber={number}&uploadId=*" for number in range(1, parts + 1)),
        f"POST {path}?uploadId=*",
    ]


def writes(bucket: Bucket) -> list[str]:
    """The requests that changed the bucket, in order."""
    return [line for line in bucket.requests() if not line.startswith(("GET ", "HEAD "))]


def shape(request: str) -> str:
    """The request with its upload id, which differs each time, as ``*``."""
    return re.sub(r"uploadId=[^&]+", "uploadId=*", request)


@pytest.mark.parametrize("size", [LARGE_SIZE, 0], ids=["large", "small"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new-key", "over-an-existing-object"])
def test_a_download_that_fails_mid_way_aborts_its_upload_and_stores_nothing(
    size: int,
    overwrite: bool,
    octopusx_conn: Simulator,
    s3_conn_id: str,
    bucket: Bucket,
    context: dict[str, Any],
) -> None:
    video_id = submit(octopusx_conn, video_size_bytes=size).id
    key = f"clips/{video_id}.mp4"
    if overwrite:
        bucket.write(key, b"the earlier video")
    before = len(writes(bucket))
    # Half the body arrives (of the large video, more than one upload part), then the resumed request is
    # refused for good.
    octopusx_conn.inject(Fault(route="GET cdn", kind="truncate"), Fault(route="GET cdn", status=400))

    with pytest.raises(BadRequestError):
        download(video_id, bucket.uri(key), context, destination_conn_id=s3_conn_id, overwrite=overwrite)

    assert octopusx_conn.stats.faults_fired == 2
    assert bucket.listed_keys() == ([key] if overwrite else [])
    if overwrite:
        assert bucket.read(key) == b"the earlier video"
    assert bucket.unfinished_uploads() == []
    # The large video's upload had begun, with one part, and was aborted; the small one never left memory.
    path = f"/{bucket.name}/{key}"
    aborted = [f"POST {path}?uploads", f"PUT {path}?partNumber=1&uploadId=*", f"DELETE {path}?uploadId=*"]
    assert [shape(line) for line in writes(bucket)[before:]] == (aborted if size else [])


def test_a_refused_download_leaves_nothing_in_the_bucket(
    video_id: str, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    with pytest.raises(VideoDownloadError, match=r"over the cap of 1000 \(max_bytes\)"):
        download(video_id, bucket.uri("videos/"), context, destination_conn_id=s3_conn_id, max_bytes=1000)

    assert bucket.listed_keys() == []
    assert bucket.unfinished_uploads() == []
    assert writes(bucket) == []


@pytest.mark.parametrize(
    ("destination", "key"),
    [("videos/", "videos/{id}.mp4"), ("clips/kite.mp4", "clips/kite.mp4")],
    ids=["folder", "file"],
)
def test_an_existing_object_is_refused_untouched_without_any_download(
    destination: str,
    key: str,
    video_id: str,
    octopusx_conn: Simulator,
    s3_conn_id: str,
    bucket: Bucket,
    context: dict[str, Any],
) -> None:
    key = key.format(id=video_id)
    bucket.write(key, b"keep me")
    before = download_counts(octopusx_conn)

    with pytest.raises(AirflowFailException, match=r"already exists.*overwrite=True"):
        download(video_id, bucket.uri(destination), context, destination_conn_id=s3_conn_id)

    assert bucket.read(key) == b"keep me"
    assert bucket.listed_keys() == [key]
    assert download_counts(octopusx_conn) == before


@pytest.mark.parametrize("size", [LARGE_SIZE, 0], ids=["multipart", "one-shot"])
def test_an_object_that_appears_during_the_download_is_not_replaced_without_overwrite(
    size: int, octopusx_conn: Simulator, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    video_id = submit(octopusx_conn, video_size_bytes=size).id
    key = f"clips/{video_id}.mp4"
    # The download's fresh look-up of the video is held back, and the object appears meanwhile: after the
    # operator's check that the key is free, before the upload commits.
    octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", kind="delay", delay_seconds=1))
    writer = when_a_fault_fires(octopusx_conn, lambda: bucket.write(key, b"written by someone else"))
    try:
        with pytest.raises(AirflowFailException, match=r"already exists \(it appeared during the download\)"):
            download(video_id, bucket.uri(key), context, destination_conn_id=s3_conn_id)
    finally:
        writer.join()

    assert bucket.read(key) == b"written by someone else"
    assert bucket.listed_keys() == [key]
    assert bucket.unfinished_uploads() == []


def test_overwrite_true_replaces_an_existing_object(
    video_id: str, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    bucket.write("clips/kite.mp4", b"old, and not an mp4")

    result = download(
        video_id, bucket.uri("clips/kite.mp4"), context, destination_conn_id=s3_conn_id, overwrite=True
    )

    assert result == bucket.uri("clips/kite.mp4")
    assert bucket.read("clips/kite.mp4") == sample_mp4()
    assert bucket.listed_keys() == ["clips/kite.mp4"]


def test_a_folder_destination_is_announced_with_its_s3_uri(
    video_id: str, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    task = DownloadVideoOperator(
        task_id="store", video_id=video_id, destination=bucket.uri("videos/"), destination_conn_id=s3_conn_id
    )
    assert task.outlets == [AssetAlias(DEFAULT_ASSET_ALIAS)]

    uri = task.execute(context)

    [event] = context["outlet_events"][AssetAlias(DEFAULT_ASSET_ALIAS)].asset_alias_events
    assert event.dest_asset_key.uri == event.extra["uri"] == uri == bucket.uri(f"videos/{video_id}.mp4")
    assert event.extra["video_id"] == video_id
    assert event.extra["bytes"] == len(sample_mp4())


@pytest.mark.parametrize("spell", [as_file, as_file_path], ids=["uri-string", "object-storage-path"])
def test_a_fixed_s3_file_is_declared_as_that_asset_without_the_conn_id(
    spell: Callable[[Bucket, str], dict[str, Any]],
    video_id: str,
    s3_conn_id: str,
    bucket: Bucket,
    context: dict[str, Any],
) -> None:
    uri = bucket.uri("clips/kite.mp4")
    task = DownloadVideoOperator(task_id="store", video_id=video_id, **spell(bucket, s3_conn_id))
    assert task.outlets == [Asset(uri)]

    assert task.execute(context) == uri

    extra = context["outlet_events"][Asset(uri)].extra
    assert extra["video_id"] == video_id
    assert extra["bytes"] == len(sample_mp4())


def png(red: int, green: int, blue: int) -> bytes:
    """A real one-pixel PNG of the given colour, so each frame has bytes of its own."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(bytes([0, red, green, blue]))  # filter byte, then the pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def data_uri(image: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(image).decode()}"


def test_frames_in_a_bucket_are_read_with_the_input_connection_and_sent_inline(
    octopusx_conn: Simulator, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    frames = {"frames/first.png": png(255, 0, 0), "frames/last.png": png(0, 0, 255)}
    frames.update({f"refs/{i}.png": png(0, 64 * i, 0) for i in range(2)})
    for key, image in frames.items():
        bucket.write(key, image)
    octopusx_conn.configure(generation_seconds=0)
    task = SubmitVideoOperator(
        task_id="clip",
        prompt="A red kite turns blue",
        first_image_url=bucket.uri("frames/first.png"),
        last_image_url=bucket.uri("frames/last.png"),
        images=[bucket.uri("refs/0.png"), bucket.uri("refs/1.png")],
        input_conn_id=s3_conn_id,
        poll_interval=0.05,
    )

    fields = inlined_fields(task)

    assert fields["first_image_url"] == data_uri(frames["frames/first.png"])
    assert fields["last_image_url"] == data_uri(frames["frames/last.png"])
    assert fields["images"] == [data_uri(frames["refs/0.png"]), data_uri(frames["refs/1.png"])]
    # The simulator answers 400 to anything but an http(s) or data: URI, so an s3:// one would fail here.
    video_id = task.execute(context)
    assert context["ti"].xcom["video_id"] == video_id
    assert octopusx_conn.stats.videos_created == 1
    assert bucket.listed_keys() == sorted(frames)  # only read


def test_a_frame_given_as_object_storage_path_carries_its_own_connection(
    octopusx_conn: Simulator, s3_conn_id: str, bucket: Bucket, context: dict[str, Any]
) -> None:
    bucket.write("frames/first.png", png(255, 255, 0))
    octopusx_conn.configure(generation_seconds=0)
    task = SubmitVideoOperator(
        task_id="clip",
        prompt="A yellow kite",
        first_image_url=ObjectStoragePath(bucket.uri("frames/first.png"), conn_id=s3_conn_id),
        poll_interval=0.05,
    )

    assert inlined_fields(task)["first_image_url"] == data_uri(png(255, 255, 0))
    assert task.execute(context) == context["ti"].xcom["video_id"]
