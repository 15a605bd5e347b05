from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_octopusx.exceptions import InvalidResponseError, InvalidVideoRequest, VideoFailedError
from airflow_octopusx.models import UNRENDERED, VideoRequest, VideoTask, check_video_id

PNG_URI = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()


def build(**overrides: Any) -> VideoRequest:
    return VideoRequest.build({"prompt": "ocean waves", **overrides})


class TestVideoRequestAccepts:
    def test_text_to_video_body_matches_the_documented_example(self) -> None:
        request = build(seconds=8, aspect_ratio="16:9", resolution="720p")
        assert request.to_json() == {
            "model": "omni-fast",
            "prompt": "ocean waves",
            "seconds": "8",
            "aspect_ratio": "16:9",
            "resolution": "720p",
        }

    @pytest.mark.parametrize(("given", "sent"), [(4, "4"), ("30", "30"), (" 12 ", "12"), ("08", "8")])
    def test_seconds_as_int_or_str_are_sent_as_a_string(self, given: Any, sent: str) -> None:
        assert build(seconds=given).to_json()["seconds"] == sent

    def test_optional_fields_are_left_out_not_sent_as_null(self) -> None:
        assert build().to_json() == {"model": "omni-fast", "prompt": "ocean waves"}

    def test_first_and_last_frame_and_reference_images(self) -> None:
        body = build(
            first_image_url="https://example.com/first.jpg",
            last_image_url=PNG_URI,
            images=["https://example.com/a.png", PNG_URI],
        ).to_json()
        assert body["first_image_url"] == "https://example.com/first.jpg"
        assert body["last_image_url"] == PNG_URI
        assert body["images"] == ["https://example.com/a.png", PNG_URI]

    def test_other_models_pass_through_with_their_extra_fields(self) -> None:
        body = build(model="omni-fast-v2v", extra_body={"video_url": "https://example.com/in.mp4"}).to_json()
        assert body["model"] == "omni-fast-v2v"
        assert body["video_url"] == "https://example.com/in.mp4"

    def test_describe_leaves_out_image_payloads(self) -> None:
        text = build(seconds=8, resolution="1080p", images=[PNG_URI]).describe()
        assert "base64" not in text
        assert "seconds=8" in text
        assert "1 reference image" in text


# Each case: arguments, the field the error must name, words the message must contain.
INVALID = [
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({"prompt": None}, "prompt", "non-empty"),
    ({"prompt": 42}, "prompt", "non-empty"),
    ({"model": ""}, "model", "omni-fast"),
    ({"seconds": 3}, "seconds", "4 to 30"),
    ({"seconds": 31}, "seconds", "4 to 30"),
    ({"seconds": "0"}, "seconds", "4 to 30"),
    ({"seconds": "8s"}, "seconds", "4 to 30"),
    ({"seconds": 8.5}, "seconds", "4 to 30"),
    ({"seconds": True}, "seconds", "4 to 30"),
    ({"seconds": "-5"}, "seconds", "4 to 30"),
    ({"aspect_ratio": "4:3"}, "aspect_ratio", "16:9, 9:16"),
    ({"aspect_ratio": "16x9"}, "aspect_ratio", "16:9, 9:16"),
    ({"resolution": "480p"}, "resolution", "720p, 1080p, 2k, 4k"),
    ({"resolution": "1080P"}, "resolution", "720p, 1080p, 2k, 4k"),
    ({"last_image_url": "https://example.com/l.png"}, "last_image_url", "first_image_url"),
    ({"first_image_url": "gopher://example.com/f.png"}, "first_image_url", "http(s) URL"),
    ({"first_image_url": "mailto:someone@example.com"}, "first_image_url", "http(s) URL"),
    ({"first_image_url": "https://"}, "first_image_url", "http(s) URL"),
    ({"first_image_url": 7}, "first_image_url", "http(s) URL"),
    ({"first_image_url": "data:image/png;base64,@@not base64@@"}, "first_image_url", "does not decode"),
    ({"first_image_url": "data:text/plain;base64,aGVsbG8="}, "first_image_url", "data:image/"),
    ({"first_image_url": "data:image/png,rawbytes"}, "first_image_url", "base64"),
    ({"first_image_url": "data:image/png;base64,"}, "first_image_url", "empty image"),
    ({"images": ["https://example.com/x.png"] * 6}, "images", "at most 5"),
    ({"images": "https://example.com/x.png"}, "images", "list of up to 5"),
    ({"images": ["https://example.com/x.png", "javascript:alert(1)"]}, "images[1]", "http(s) URL"),
    (
        {"model": "omni-fast-v2v", "extra_body": {"video_url": "gopher://e.com/v.mp4"}},
        "extra_body.video_url",
        "15 MB",
    ),
    ({"model": "omni-fast-v2v", "extra_body": {"video": PNG_URI}}, "extra_body.video", "data:video/"),
    ({"extra_body": {"video": "https://example.com/in.mp4"}}, "extra_body.video", "omni-fast-v2v"),
    ({"extra_body": {"video_url": "https://example.com/in.mp4"}}, "extra_body.video_url", "omni-fast-v2v"),
    ({"extra_body": {"input_video": "https://example.com/in.mp4"}}, "extra_body.input_video", "v2v"),
    ({"extra_body": {"seconds": "8"}}, "extra_body", "pass them as arguments"),
    ({"extra_body": ["not", "a", "mapping"]}, "extra_body", "mapping"),
]


@pytest.mark.parametrize(("arguments", "field", "words"), INVALID)
def test_invalid_arguments_name_the_field_and_the_allowed_values(
    arguments: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidVideoRequest) as caught:
        build(**arguments)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidVideoRequest) as caught:
        build(first_image_url="data:image/png;base64," + "!" * 5000)
    assert len(str(caught.value)) < 300


class TestCheckKnown:
    def test_unrendered_values_are_left_for_later(self) -> None:
        VideoRequest.check_known({"prompt": UNRENDERED, "seconds": UNRENDERED, "images": [UNRENDERED] * 5})

    def test_known_values_are_checked_beside_unrendered_ones(self) -> None:
        with pytest.raises(InvalidVideoRequest, match="resolution"):
            VideoRequest.check_known({"prompt": UNRENDERED, "resolution": "8k"})

    def test_an_unrendered_first_image_counts_as_given(self) -> None:
        VideoRequest.check_known({"first_image_url": UNRENDERED, "last_image_url": "https://e.com/l.png"})

    def test_six_images_are_refused_even_when_unrendered(self) -> None:
        with pytest.raises(InvalidVideoRequest, match="at most 5"):
            VideoRequest.check_known({"images": [UNRENDERED] * 6})


class TestVideoTask:
    def test_parses_the_documented_response(self) -> None:
        task = VideoTask.from_api(
            {
                "id": "video_abc123",
                "task_id": "video_abc123",
                "object": "video",
                "model": "omni-fast",
                "status": "queued",
                "progress": 0,
                "created_at": 1735689600,
                "video_url": "",
            }
        )
        assert (task.id, task.status, task.progress, task.model, task.created_at) == (
            "video_abc123",
            "queued",
            0,
            "omni-fast",
            1735689600,
        )
        assert not task.is_finished

    def test_falls_back_to_task_id_and_accepts_float_progress(self) -> None:
        task = VideoTask.from_api({"task_id": "video_x", "status": "in_progress", "progress": 42.5})
        assert task.id == "video_x"
        assert task.progress == 42.5

    def test_without_any_id_is_an_error(self) -> None:
        with pytest.raises(InvalidResponseError, match="video id"):
            VideoTask.from_api({"status": "queued"})

    def test_completed(self) -> None:
        task = VideoTask.from_api(
            {"id": "v", "status": "completed", "progress": 100, "video_url": "https://c/v"}
        )
        assert task.is_completed
        assert task.is_finished
        task.raise_if_failed()

    @pytest.mark.parametrize("status", ["failed", "cancelled", "canceled", "error", "FAILED"])
    def test_failed_raises_with_the_api_code_and_message(self, status: str) -> None:
        task = VideoTask.from_api(
            {"id": "v1", "status": status, "error": {"message": "Prompt refused", "code": "content_policy"}}
        )
        assert task.is_failed
        assert task.is_finished
        with pytest.raises(VideoFailedError) as caught:
            task.raise_if_failed()
        assert (caught.value.video_id, caught.value.code, caught.value.message) == (
            "v1",
            "content_policy",
            "Prompt refused",
        )
        assert "v1" in str(caught.value)
        assert "content_policy" in str(caught.value)

    def test_unknown_status_counts_as_running_and_is_logged_once(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="airflow_octopusx.models"):
            first = VideoTask.from_api({"id": "v", "status": "rendering_frames"})
            VideoTask.from_api({"id": "v", "status": "rendering_frames"})
        assert not first.is_finished
        assert [r.getMessage() for r in caplog.records].count(
            "OctopusX reported an unknown status 'rendering_frames'; treating it as still in progress."
        ) == 1

    @pytest.mark.parametrize(
        ("given", "read"),
        [
            *[("50", 50), ("50%", 50), (" 12.5 % ", 12.5), (150, 100), (-3, 0), ("NaN", 0)],
            *[(float("inf"), 0), (10**400, 100), ("1e400", 0), ("half", 0), (True, 0), (None, 0), ([50], 0)],
        ],
    )
    def test_progress_is_read_from_numbers_and_strings_and_kept_within_0_to_100(
        self, given: Any, read: float
    ) -> None:
        assert VideoTask.from_api({"id": "v", "status": "in_progress", "progress": given}).progress == read

    def test_an_error_given_as_a_plain_string_is_kept(self) -> None:
        task = VideoTask.from_api({"id": "v", "status": "failed", "error": "Upstream vendor refused"})
        with pytest.raises(VideoFailedError, match="Upstream vendor refused"):
            task.raise_if_failed()

    @pytest.mark.parametrize(
        "payload",
        [
            *[[], "video", None, 7, {"id": "v\r\nINFO forged"}, {"id": "x" * 100_000}],
            *[
                {"id": "v", "status": 3},
                {"id": "v", "status": "<html>"},
                {"id": "v", "status": "done\nINFO x"},
            ],
        ],
    )
    def test_answers_that_are_not_a_video_are_refused(self, payload: Any) -> None:
        with pytest.raises(InvalidResponseError):
            VideoTask.from_api(payload)

    def test_processing_is_a_known_running_status(self) -> None:
        assert not VideoTask.from_api({"id": "v", "status": "processing"}).is_finished


@pytest.mark.parametrize("video_id", ["video_abc123", "task-1.2", "a:b"])
def test_valid_video_ids(video_id: str) -> None:
    assert check_video_id(video_id) == video_id


@pytest.mark.parametrize("video_id", ["", "../etc/passwd", "a/b", "a\\b", ".hidden", None, 7, "x" * 201])
def test_video_ids_that_cannot_come_from_the_api_are_refused(video_id: Any) -> None:
    with pytest.raises(InvalidVideoRequest, match="video_id"):
        check_video_id(video_id)


@pytest.mark.parametrize("video_id", [None, "None"])
def test_a_template_pulling_a_missing_xcom_is_refused_as_such(video_id: Any) -> None:
    with pytest.raises(InvalidVideoRequest, match="video_id: is None: the XCom it names does not exist"):
        check_video_id(video_id)


# -- properties: whatever a DAG author or a rendered template passes, whatever the API answers ----------

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_images = st.sampled_from([PNG_URI, "https://example.com/a.png", "data:image/png;base64,!!", "ftp://x/a.png"])
_request_fields = st.fixed_dictionaries(
    {"prompt": st.sampled_from(["waves", "", "  "]) | _anything},
    optional={
        "model": st.sampled_from(["omni-fast", "omni-fast-v2v", ""]) | _anything,
        "seconds": st.integers(0, 40) | st.integers(0, 40).map(str) | _anything,
        "aspect_ratio": st.sampled_from(["16:9", "9:16", "4:3"]) | _anything,
        "resolution": st.sampled_from(["720p", "1080p", "2k", "4k", "8k"]) | _anything,
        "first_image_url": _images | _anything,
        "last_image_url": _images | _anything,
        "images": st.lists(_images, max_size=7) | _anything,
        "extra_body": st.dictionaries(
            st.sampled_from(["style", "video", "video_url", "prompt", "negative_prompt"]),
            st.sampled_from(["https://x.test/v.mp4", "cinematic"]) | _anything,
            max_size=3,
        )
        | _anything,
    },
)
_FIELDS = ("prompt", "model", "seconds", "aspect_ratio", "resolution", "first_image_url", "last_image_url")


@given(fields=_request_fields)
def test_a_request_is_either_valid_per_the_api_doc_or_refused_naming_its_field(
    fields: dict[str, Any],
) -> None:
    try:
        body = VideoRequest.build(fields).to_json()
    except InvalidVideoRequest as error:
        refused = error
    else:
        refused = None
    if refused is not None:
        assert refused.field.split(".")[0].split("[")[0] in (*_FIELDS, "images", "extra_body")
        assert str(refused).startswith(refused.field)
        return
    assert body["prompt"].strip()
    assert body["model"].strip()
    assert body.get("seconds") is None or 4 <= int(body["seconds"]) <= 30
    assert body.get("aspect_ratio") in (None, "16:9", "9:16")
    assert body.get("resolution") in (None, "720p", "1080p", "2k", "4k")
    assert "last_image_url" not in body or "first_image_url" in body
    images = body.get("images", []) + [body.get(name) for name in ("first_image_url", "last_image_url")]
    for image in filter(None, images):
        assert image.startswith(("https://", "http://", "data:image/"))
    assert len(body.get("images", [])) <= 5
    if body["model"] == "omni-fast":
        assert not {"video", "video_url", "input_video"} & set(body)


@given(payload=_anything | st.dictionaries(st.sampled_from(["id", "status", "progress", "error"]), _anything))
def test_any_json_is_a_video_or_an_invalid_answer(payload: Any) -> None:
    try:
        video = VideoTask.from_api(payload)
    except InvalidResponseError:
        return
    assert 0 <= video.progress <= 100
    assert check_video_id(video.id) == video.id


json_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
data_uris = st.binary(min_size=1, max_size=30).map(
    lambda data: f"data:image/png;base64,{base64.b64encode(data).decode()}"
)


@given(
    prompt=json_text.filter(str.strip),
    first=st.none() | data_uris | st.just("https://frames.test/a.png"),
    images=st.lists(data_uris | st.just("https://frames.test/b.png"), max_size=5),
    extra=st.dictionaries(
        st.sampled_from(["strength", "note", "seed"]),
        st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_text,
        max_size=3,
    ),
)
def test_the_body_sent_in_parts_is_the_json_of_the_request(
    prompt: str, first: str | None, images: list[str], extra: dict[str, Any]
) -> None:
    request = VideoRequest.build(
        {
            "prompt": prompt,
            "first_image_url": first,
            "images": images,
            "model": "omni-fast-v2v",
            "extra_body": extra,
        }
    )
    body = b"".join(request.body_parts())
    assert json.loads(body) == request.to_json()
