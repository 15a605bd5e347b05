"""Images and reference videos given as files are read on the worker and sent inline as data URIs."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import av
import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, ObjectStoragePath

from airflow_octopusx.exceptions import InvalidVideoRequest
from airflow_octopusx.models import REQUEST_FIELDS
from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.simulator import Simulator
from airflow_octopusx.simulator.media import sample_mp4
from airflow_octopusx.storage import input_files
from airflow_octopusx.storage.input_files import (
    MAX_IMAGE_BYTES,
    file_reader,
    is_file_reference,
    read_as_data_uri,
    sniff_media_type,
    with_files_inlined,
)

# The smallest valid PNG: one transparent pixel.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def inlined_fields(task: SubmitVideoOperator) -> dict[str, Any]:
    """The request fields as the task sends them, files read and inlined."""
    fields = {name: getattr(task, name) for name in REQUEST_FIELDS}
    return with_files_inlined(fields, file_reader(task.input_conn_id))


@pytest.fixture
def frame(tmp_path: Path) -> Path:
    path = tmp_path / "frames" / "first frame.png"
    path.parent.mkdir()
    path.write_bytes(PNG)
    return path


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PNG, "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (sample_mp4()[:32], "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00", "video/quicktime"),
        (b"\x1a\x45\xdf\xa3\x01\x00", "video/webm"),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_media_types_are_sniffed_from_the_bytes(data: bytes, media_type: str | None) -> None:
    assert sniff_media_type(data) == media_type


@pytest.mark.parametrize(
    ("value", "is_file"),
    [
        ("/data/frames/1.png", True),
        ("frames/1.png", True),
        ("file:///data/1.png", True),
        ("s3://bucket/frames/1.png", True),
        ("gs://bucket/frames/1.png", True),
        (ObjectStoragePath("file:///data/1.png"), True),
        ("https://example.com/1.png", False),
        ("http://example.com/1.png", False),
        ("data:image/png;base64,AAAA", False),
        ("gopher://example.com/1.png", False),
        ("", False),
        (None, False),
        (42, False),
    ],
)
def test_file_references_are_told_from_urls(value: Any, is_file: bool) -> None:
    assert is_file_reference(value) is is_file


@pytest.mark.parametrize("form", ["path", "file-uri", "object-storage-path"])
def test_an_image_file_becomes_a_data_uri(frame: Path, form: str) -> None:
    source: Any = {
        "path": str(frame),
        "file-uri": f"file://{frame}",
        "object-storage-path": ObjectStoragePath(f"file://{frame}"),
    }[form]
    uri = read_as_data_uri("first_image_url", source, conn_id=None, video=False)
    assert uri == "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    ("content", "video", "problem"),
    [
        (b"plain text, not a picture", False, "is not a PNG, JPEG, GIF or WebP image"),
        (PNG, True, "is not an MP4, MOV or WebM video"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_IMAGE_BYTES, False, "over the 10 MB limit"),
    ],
)
def test_files_that_are_not_what_they_should_be_are_refused(
    tmp_path: Path, content: bytes, video: bool, problem: str
) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    with pytest.raises(InvalidVideoRequest, match=problem):
        read_as_data_uri("images[0]", str(path), conn_id=None, video=video)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidVideoRequest, match=r"first_image_url: could not be read from .*missing\.png"):
        read_as_data_uri("first_image_url", str(tmp_path / "missing.png"), conn_id=None, video=False)


class TestOperator:
    def test_files_are_not_read_while_the_dag_is_parsed(self) -> None:
        SubmitVideoOperator(
            task_id="clip", prompt="waves", first_image_url="/nowhere/yet.png", images=["s3://b/x.png"]
        )

    def test_image_files_are_sent_inline_and_accepted_by_the_api(
        self, frame: Path, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0)
        task = SubmitVideoOperator(
            task_id="clip",
            prompt="The scene comes alive",
            first_image_url=str(frame),
            last_image_url=ObjectStoragePath(f"file://{frame}"),
            images=["https://example.com/style.jpg", f"file://{frame}"],
        )
        inlined = inlined_fields(task)
        png_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
        assert inlined["first_image_url"] == inlined["last_image_url"] == png_uri
        assert inlined["images"] == ["https://example.com/style.jpg", png_uri]
        assert task.execute(context) == context["ti"].xcom["video_id"]
        assert octopusx_conn.stats.videos_created == 1

    def test_a_file_that_is_not_an_image_fails_before_any_request(
        self, tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        notes = tmp_path / "notes.txt"
        notes.write_text("not an image")
        task = SubmitVideoOperator(task_id="clip", prompt="waves", first_image_url=str(notes))
        with pytest.raises(AirflowFailException, match=r"first_image_url: .* is not a PNG"):
            task.execute(context)
        assert octopusx_conn.stats.posts == 0

    def test_a_reference_video_file_goes_inline_for_omni_fast_v2v(
        self, tmp_path: Path, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        clip = tmp_path / "reference.mp4"
        clip.write_bytes(sample_mp4())
        octopusx_conn.configure(generation_seconds=0)
        task = SubmitVideoOperator(
            task_id="edit", prompt="Make it snow", model="omni-fast-v2v", extra_body={"video_url": str(clip)}
        )
        assert inlined_fields(task)["extra_body"]["video_url"].startswith("data:video/mp4;base64,")
        task.execute(context)
        assert octopusx_conn.stats.videos_created == 1

    def test_omni_fast_refuses_a_reference_video_when_the_dag_is_parsed(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"extra_body\.video_url: omni-fast takes no reference video"):
            SubmitVideoOperator(
                task_id="clip", prompt="waves", extra_body={"video_url": str(tmp_path / "v.mp4")}
            )


class TestWhatMayBeRead:
    def test_a_named_pipe_is_refused_at_once_instead_of_hanging(self, tmp_path: Path) -> None:
        pipe = tmp_path / "frame.png"
        os.mkfifo(pipe)
        with pytest.raises(InvalidVideoRequest, match="not a regular file"):
            read_as_data_uri("first_image_url", str(pipe), conn_id=None, video=False)

    @pytest.mark.parametrize(
        "data",
        [
            b"GIF89a this is a text file, not a picture\n",
            PNG[:-12],  # cut before IEND
            PNG[:20] + b"\x00" * 13 + PNG[33:],  # IHDR's CRC broken
            b"\xff\xd8\xff\xe0 and then nothing",
            b"RIFF\xff\xff\x00\x00WEBPVP8 short",
            # The first and last bytes of the format, text between them.
            b"GIF89a\x01\x00\x01\x00 a text file that ends as a GIF does;",
            b"\xff\xd8\xff\xe0 a text file that ends as a JPEG does \xff\xd9",
        ],
    )
    def test_bytes_that_only_start_like_an_image_are_refused(self, tmp_path: Path, data: bytes) -> None:
        path = tmp_path / "frame.png"
        path.write_bytes(data)
        with pytest.raises(InvalidVideoRequest, match="is not a PNG, JPEG, GIF or WebP image"):
            read_as_data_uri("images[0]", str(path), conn_id=None, video=False)

    @pytest.mark.parametrize(
        ("codec", "pixels", "media_type"), [("mjpeg", "yuvj420p", "image/jpeg"), ("gif", "rgb8", "image/gif")]
    )
    def test_images_an_encoder_made_are_whole(
        self, tmp_path: Path, codec: str, pixels: str, media_type: str
    ) -> None:
        path = tmp_path / "frame"
        path.write_bytes(encoded_image(codec, pixels))
        uri = read_as_data_uri("images[0]", str(path), conn_id=None, video=False)
        assert uri.startswith(f"data:{media_type};base64,")

    def test_a_folder_swapped_for_a_link_while_the_file_is_opened_is_caught(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        allowed, outside = tmp_path / "allowed", tmp_path / "outside"
        (allowed / "frames").mkdir(parents=True)
        outside.mkdir()
        (allowed / "frames" / "frame.png").write_bytes(PNG)
        (outside / "frame.png").write_bytes(PNG)
        monkeypatch.setenv("AIRFLOW__OCTOPUSX__ALLOWED_INPUT_FOLDERS", str(allowed))
        open_file = os.open

        def swapped_first(path: str, flags: int, *args: Any) -> int:
            # Between the folder check and the open, the folder on the way becomes a link out.
            (allowed / "frames").rename(allowed / "kept")
            (allowed / "frames").symlink_to(outside)
            monkeypatch.setattr(input_files.os, "open", open_file)
            return open_file(path, flags, *args)

        monkeypatch.setattr(input_files.os, "open", swapped_first)
        with pytest.raises(InvalidVideoRequest, match="outside the folders"):
            read_as_data_uri(
                "first_image_url", str(allowed / "frames" / "frame.png"), conn_id=None, video=False
            )

    def test_a_deployment_can_keep_local_reads_inside_chosen_folders(
        self, frame: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        allowed = tmp_path / "allowed"
        allowed.mkdir()
        monkeypatch.setenv("AIRFLOW__OCTOPUSX__ALLOWED_INPUT_FOLDERS", f"/nowhere, {allowed}")
        with pytest.raises(InvalidVideoRequest, match="outside the folders this deployment allows"):
            read_as_data_uri("first_image_url", str(frame), conn_id=None, video=False)
        # A link inside the folder to a file outside is judged by where it leads.
        (allowed / "link.png").symlink_to(frame)
        with pytest.raises(InvalidVideoRequest, match="outside the folders"):
            read_as_data_uri("first_image_url", str(allowed / "link.png"), conn_id=None, video=False)
        (allowed / "inside.png").write_bytes(PNG)
        assert read_as_data_uri("first_image_url", str(allowed / "inside.png"), conn_id=None, video=False)

    def test_a_storage_uri_that_cannot_be_read_is_an_invalid_argument_naming_the_field(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # No credentials anywhere, and botocore must not go looking for them on the network.
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: traffic stays here
        with pytest.raises(
            InvalidVideoRequest, match=r"^images\[1\]: could not be read from .*input_conn_id"
        ):
            read_as_data_uri("images[1]", "s3://no-such-bucket-octopusx/1.png", conn_id=None, video=False)


def encoded_image(codec: str, pixels: str) -> bytes:
    """One 16x16 frame, as an encoder writes it."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mjpeg" if codec == "mjpeg" else "gif") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = pixels
        frame = av.VideoFrame(16, 16, "rgb24").reformat(format=pixels)
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return buffer.getvalue()
