"""The OctopusX simulator over real sockets: API contract, lifecycle, CDN, faults, controls, stats."""

from __future__ import annotations

import email.utils
import io
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import pytest

from airflow_octopusx.simulator import Fault, Settings, Simulator
from airflow_octopusx.simulator.media import sample_mp4

VALID = {"model": "omni-fast", "prompt": "Ocean waves at golden hour", "seconds": "8", "aspect_ratio": "16:9"}
SAMPLE = sample_mp4()


def auth(sim: Simulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.api_key}"}


@pytest.fixture
def client(octopusx_simulator: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=octopusx_simulator.api_url, headers=auth(octopusx_simulator), timeout=10) as c:
        yield c


def create(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/videos", json={**VALID, **overrides})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_until_done(client: httpx.Client, video_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/videos/{video_id}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"video {video_id} did not finish in {timeout}s")


def completed_video(sim: Simulator, client: httpx.Client) -> dict[str, Any]:
    sim.configure(generation_seconds=0)
    video = wait_until_done(client, create(client)["id"])
    assert video["status"] == "completed"
    return video


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def decode_frames(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return list(container.decode(stream))


# -- lifecycle of the server itself ---------------------------------------------------------------


# Run in a fresh interpreter: threads and sockets that earlier tests in this worker left behind
# (Airflow's supervisor threads after dag.test(), say) end on their own schedule and would make the
# before/after comparison depend on timing.
_LEAK_CHECK = """
import os, socket, threading
from urllib.parse import urlsplit
import httpx
from airflow_octopusx.simulator import Simulator

def open_fds():
    return len(os.listdir("/proc/self/fd"))

with Simulator():
    pass  # warm-up: the event loop library allocates a process-wide wake-up pipe once
threads_before, fds_before = set(threading.enumerate()), open_fds()
with Simulator() as sim:
    api, cdn = urlsplit(sim.api_url), urlsplit(sim.cdn_url)
    assert api.hostname == cdn.hostname == "127.0.0.1", (api, cdn)
    assert api.port != cdn.port, (api, cdn)
    assert httpx.get(f"{sim.api_url}/_simulator/health").json() == {"status": "ok"}
    with httpx.Client() as keep_alive:  # an idle keep-alive connection must not block stop()
        keep_alive.get(f"{sim.cdn_url}/videos/nope.mp4")
        sim.stop()
assert not sim.running
assert set(threading.enumerate()) == threads_before, set(threading.enumerate()) ^ threads_before
assert open_fds() == fds_before, (open_fds(), fds_before)
for port in (api.port, cdn.port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        continue
    raise AssertionError(f"port {port} still accepts connections")
print("no leaks")
"""


def test_starts_and_stops_without_leaking_threads_or_sockets() -> None:
    result = subprocess.run([sys.executable, "-c", _LEAK_CHECK], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, "no leaks\n"), result.stderr


def test_plugin_fixture_gives_fresh_state(octopusx_simulator: Simulator) -> None:
    assert octopusx_simulator.running
    assert octopusx_simulator.settings == Settings()
    assert octopusx_simulator.pending_faults == ()
    assert octopusx_simulator.stats.posts == octopusx_simulator.stats.videos_created == 0


def test_cli_prints_urls_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_octopusx.simulator", "--port", "0", "--api-key", "k-123"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        api_url = re.search(r"API: (http://127\.0\.0\.1:\d+)$", lines[0].strip())
        assert api_url is not None
        assert re.search(r"CDN: http://127\.0\.0\.1:\d+$", lines[1].strip())
        assert lines[2].strip() == (
            "export AIRFLOW_CONN_OCTOPUSX_DEFAULT="
            f'\'{{"conn_type": "octopusx", "host": "{api_url.group(1)}", "password": "k-123"}}\''
        )
        response = httpx.post(
            f"{api_url.group(1)}/v1/videos", json=VALID, headers={"Authorization": "Bearer k-123"}
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic c2ltLWtleQ==", "sim-key"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/videos"), ("GET", "/v1/videos/video_x"), ("GET", "/v1/videos/video_x/content")],
)
def test_missing_or_wrong_key_is_401(
    octopusx_simulator: Simulator, header: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.request(method, octopusx_simulator.api_url + path, json=VALID, headers=headers)
    assert response.status_code == 401
    error = error_of(response)
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert error["param"] is None
    assert "Invalid API key" in error["message"]
    assert "sim-key" not in response.text
    assert "wrong-key" not in response.text
    assert octopusx_simulator.stats.unauthorized == 1
    assert octopusx_simulator.stats.videos_created == 0


def test_a_rotated_key_refuses_the_old_one_until_reset(octopusx_simulator: Simulator) -> None:
    url = f"{octopusx_simulator.api_url}/v1/videos"
    old = auth(octopusx_simulator)
    octopusx_simulator.rotate_api_key("sk-new")
    assert octopusx_simulator.api_key == "sk-new"
    assert httpx.post(url, json=VALID, headers=old).status_code == 401
    assert httpx.post(url, json=VALID, headers=auth(octopusx_simulator)).status_code == 200
    octopusx_simulator.reset()
    assert octopusx_simulator.api_key == "sim-key"
    assert httpx.post(url, json=VALID, headers=old).status_code == 200


# -- create-video validation ----------------------------------------------------------------------

PNG_DATA_URL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("changes", "param", "code"),
    [
        ({"model": None}, "model", "missing_required_parameter"),
        ({"model": "omni-slow"}, "model", "invalid_value"),
        ({"model": 3}, "model", "invalid_type"),
        ({"prompt": None}, "prompt", "missing_required_parameter"),
        ({"prompt": "   "}, "prompt", "invalid_value"),
        ({"prompt": ["a"]}, "prompt", "invalid_type"),
        ({"seconds": "3"}, "seconds", "invalid_value"),
        ({"seconds": 31}, "seconds", "invalid_value"),
        ({"seconds": "8.5"}, "seconds", "invalid_value"),
        ({"seconds": "eight"}, "seconds", "invalid_value"),
        ({"seconds": 8.0}, "seconds", "invalid_type"),
        ({"seconds": True}, "seconds", "invalid_type"),
        ({"aspect_ratio": "wide"}, "aspect_ratio", "invalid_value"),
        ({"aspect_ratio": "16:0"}, "aspect_ratio", "invalid_value"),
        ({"resolution": "8k"}, "resolution", "invalid_value"),
        ({"resolution": "720P"}, "resolution", "invalid_value"),
        ({"last_image_url": "https://example.com/last.jpg"}, "last_image_url", "invalid_value"),
        ({"first_image_url": "ftp://example.com/a.jpg"}, "first_image_url", "invalid_value"),
        ({"first_image_url": "example.com/a.jpg"}, "first_image_url", "invalid_value"),
        ({"first_image_url": "data:image/png;base64,@@not-base64@@"}, "first_image_url", "invalid_value"),
        ({"first_image_url": "data:text/plain;base64,aGVsbG8="}, "first_image_url", "invalid_value"),
        ({"images": "https://example.com/a.jpg"}, "images", "invalid_type"),
        ({"images": [f"https://example.com/{i}.jpg" for i in range(6)]}, "images", "invalid_value"),
        ({"images": ["https://example.com/a.jpg", "nope"]}, "images", "invalid_value"),
        ({"images": [1]}, "images", "invalid_type"),
        ({"video": "https://example.com/in.mp4"}, "video", "invalid_value"),
        ({"video_url": "https://example.com/in.mp4"}, "video_url", "invalid_value"),
        ({"input_video": "https://example.com/in.mp4"}, "input_video", "invalid_value"),
    ],
)
def test_invalid_request_is_400_naming_the_field(
    octopusx_simulator: Simulator, client: httpx.Client, changes: dict[str, Any], param: str, code: str
) -> None:
    payload = {k: v for k, v in {**VALID, **changes}.items() if v is not None}
    response = client.post("/v1/videos", json=payload)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert param in error["message"]
    assert octopusx_simulator.stats.videos_created == 0


def test_invalid_value_message_lists_allowed_values(client: httpx.Client) -> None:
    message = error_of(client.post("/v1/videos", json={**VALID, "resolution": "8k"}))["message"]
    assert all(value in message for value in ("720p", "1080p", "2k", "4k"))
    message = error_of(client.post("/v1/videos", json={**VALID, "model": "x"}))["message"]
    assert "omni-fast" in message
    assert "omni-fast-v2v" in message


@pytest.mark.parametrize("body", [b"not json", b"", b"[1, 2]", b'"text"'])
def test_non_json_object_body_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v1/videos", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"seconds": 4},
        {"seconds": "30"},
        {"aspect_ratio": "9:16", "resolution": "4k"},
        {"aspect_ratio": "4:3", "resolution": "1080p"},
        {"first_image_url": "https://example.com/first.jpg", "last_image_url": PNG_DATA_URL},
        {"images": [PNG_DATA_URL, *(f"http://example.com/{i}.jpg" for i in range(4))]},
        {"model": "omni-fast-v2v", "video_url": "https://example.com/in.mp4"},
        {"unknown_future_field": 1},
    ],
)
def test_valid_requests_are_accepted(client: httpx.Client, changes: dict[str, Any]) -> None:
    create(client, **changes)


def test_create_returns_exactly_the_documented_shape(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    before = int(time.time())
    body = create(client, model="omni-fast-v2v", video="https://example.com/in.mp4")
    assert set(body) == {"id", "task_id", "object", "model", "status", "progress", "created_at", "video_url"}
    assert re.fullmatch(r"video_[0-9a-f]{24}", body["id"])
    assert body["task_id"] == body["id"]
    assert body["object"] == "video"
    assert body["model"] == "omni-fast-v2v"
    assert body["status"] == "queued"
    assert body["progress"] == 0
    assert body["video_url"] == ""
    assert before <= body["created_at"] <= int(time.time())
    assert create(client)["id"] != body["id"]
    assert octopusx_simulator.stats.videos_created == 2


# -- polling lifecycle ----------------------------------------------------------------------------


def test_lifecycle_queued_in_progress_completed(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    octopusx_simulator.configure(generation_seconds=1.0)
    video_id = create(client)["id"]
    seen: list[tuple[str, int]] = []
    final = None
    while final is None:
        body = client.get(f"/v1/videos/{video_id}").json()
        assert body["id"] == body["task_id"] == video_id
        seen.append((body["status"], body["progress"]))
        if body["status"] == "completed":
            final = body
        else:
            assert body["video_url"] == ""
            time.sleep(0.02)
    statuses = [status for status, _ in seen]
    order = {"queued": 0, "in_progress": 1, "completed": 2}
    assert statuses == sorted(statuses, key=order.__getitem__)
    assert statuses[0] == "queued"
    assert "in_progress" in statuses
    progress = [p for _, p in seen]
    assert progress == sorted(progress)
    running = [p for status, p in seen if status == "in_progress"]
    assert all(1 <= p <= 99 for p in running)
    assert len(set(running)) >= 5
    assert all(p == 0 for status, p in seen if status == "queued")
    assert final["progress"] == 100
    assert "error" not in final
    url = urlsplit(final["video_url"])
    assert f"{url.scheme}://{url.netloc}" == octopusx_simulator.cdn_url
    assert url.path == f"/videos/{video_id}.mp4"
    query = parse_qs(url.query)
    assert abs(int(query["expires"][0]) - (time.time() + 3600)) < 5
    assert re.fullmatch(r"[0-9a-f]{64}", query["signature"][0])


def test_created_videos_are_listed_with_their_prompt(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.configure(generation_seconds=60)
    first = create(client, prompt="first")["id"]
    second = create(client, prompt="second")["id"]
    assert [(v.id, v.prompt) for v in octopusx_simulator.videos] == [(first, "first"), (second, "second")]
    listed = httpx.get(f"{octopusx_simulator.api_url}/_simulator/videos").json()["videos"]
    assert [(v["id"], v["prompt"], v["status"]) for v in listed] == [
        (first, "first", "queued"),
        (second, "second", "queued"),
    ]
    assert octopusx_simulator.stats.gets == 0  # the control route is not counted


def test_unknown_video_is_404(client: httpx.Client) -> None:
    for path in ("/v1/videos/video_missing", "/v1/videos/video_missing/content"):
        response = client.get(path)
        assert response.status_code == 404
        error = error_of(response)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "not_found"


def test_unknown_route_answers_api_style_404(client: httpx.Client) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_fail_next_ends_videos_failed(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    octopusx_simulator.configure(generation_seconds=0.4)
    octopusx_simulator.fail_next(1, code="content_policy_violation", message="Blocked by policy.")
    failing, healthy = create(client)["id"], create(client)["id"]
    failed = wait_until_done(client, failing)
    assert failed["status"] == "failed"
    assert failed["error"] == {"message": "Blocked by policy.", "code": "content_policy_violation"}
    assert failed["video_url"] == ""
    assert 1 <= failed["progress"] <= 99
    time.sleep(0.2)
    again = client.get(f"/v1/videos/{failing}").json()
    assert (again["status"], again["progress"]) == ("failed", failed["progress"])
    assert wait_until_done(client, healthy)["status"] == "completed"
    response = client.get(f"/v1/videos/{failing}/content")
    assert response.status_code == 409
    assert error_of(response)["code"] == "video_not_ready"


def test_finish_videos_ends_every_rendering_now(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    octopusx_simulator.configure(generation_seconds=3600)
    octopusx_simulator.fail_next(1)
    failing, healthy, named = create(client)["id"], create(client)["id"], create(client)["id"]
    octopusx_simulator.finish_videos(named)
    assert client.get(f"/v1/videos/{named}").json()["status"] == "completed"
    assert client.get(f"/v1/videos/{healthy}").json()["status"] in ("queued", "in_progress")
    octopusx_simulator.finish_videos()
    assert client.get(f"/v1/videos/{failing}").json()["status"] == "failed"
    assert client.get(f"/v1/videos/{healthy}").json()["status"] == "completed"
    later = create(client)["id"]  # made after it: renders as configured
    assert client.get(f"/v1/videos/{later}").json()["status"] in ("queued", "in_progress")


@pytest.mark.parametrize(
    ("marker", "code"),
    [("[simulate-failure]", "content_policy_violation"), ("[simulate-failure:server_error]", "server_error")],
)
def test_a_prompt_can_ask_for_a_failed_video(
    octopusx_simulator: Simulator, client: httpx.Client, marker: str, code: str
) -> None:
    octopusx_simulator.configure(generation_seconds=0.4)
    failing = create(client, prompt=f"A storm {marker} at sea")["id"]
    healthy = create(client, prompt="A storm [simulate-failure at sea")["id"]  # not the marker
    failed = wait_until_done(client, failing)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == code
    assert marker in failed["error"]["message"]
    assert wait_until_done(client, healthy)["status"] == "completed"


# -- downloads -------------------------------------------------------------------------------------


def test_content_is_409_until_completed_then_streams_the_mp4(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.configure(generation_seconds=0.5)
    video_id = create(client)["id"]
    early = client.get(f"/v1/videos/{video_id}/content")
    assert early.status_code == 409
    assert error_of(early) == {
        "message": error_of(early)["message"],
        "type": "invalid_request_error",
        "param": None,
        "code": "video_not_ready",
    }
    wait_until_done(client, video_id)
    response = client.get(f"/v1/videos/{video_id}/content")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(SAMPLE)
    assert response.content == SAMPLE
    assert octopusx_simulator.stats.content_gets == 2


def test_empty_video_url_setting_forces_content_endpoint(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.configure(empty_video_url=True)
    video = completed_video(octopusx_simulator, client)
    assert video["video_url"] == ""
    assert client.get(f"/v1/videos/{video['id']}/content").content == SAMPLE


def test_content_redirect_sends_clients_to_the_signed_cdn_link(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.configure(content_redirect=True, video_size_bytes=2 * 1024 * 1024)
    video = completed_video(octopusx_simulator, client)
    redirect = client.get(f"/v1/videos/{video['id']}/content")
    assert redirect.status_code == 302
    location = redirect.headers["location"]
    assert location.startswith(f"{octopusx_simulator.cdn_url}/videos/{video['id']}.mp4?expires=")
    assert octopusx_simulator.stats.bytes_served == 0
    # httpx drops the Authorization header when a redirect leaves the origin; the CDN sees no key.
    followed = client.get(f"/v1/videos/{video['id']}/content", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.content[: len(SAMPLE)] == SAMPLE
    stats = octopusx_simulator.stats
    assert (stats.content_gets, stats.cdn_gets) == (2, 1)
    assert stats.cdn_authorization_headers == ()
    # A client that re-sends the key to the redirect target is caught.
    httpx.get(location, headers=auth(octopusx_simulator))
    assert octopusx_simulator.stats.cdn_authorization_headers == (f"Bearer {octopusx_simulator.api_key}",)


def test_cdn_serves_without_auth_and_records_authorization(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    url = completed_video(octopusx_simulator, client)["video_url"]
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(SAMPLE) == len(response.content)
    assert response.content == SAMPLE
    assert httpx.get(url, headers={"Authorization": "Bearer leaked"}).status_code == 200
    stats = octopusx_simulator.stats
    assert stats.cdn_gets == 2
    assert stats.cdn_authorization_headers == ("Bearer leaked",)
    assert octopusx_simulator.api_key not in stats.cdn_authorization_headers


def test_served_mp4_decodes_with_pyav(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    frames = decode_frames(httpx.get(completed_video(octopusx_simulator, client)["video_url"]).content)
    assert len(frames) == 48
    assert (frames[0].width, frames[0].height) == (320, 180)
    # A moving pattern, not a still: the first and last frames differ.
    assert bytes(frames[0].planes[0]) != bytes(frames[-1].planes[0])


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items() if v)).geturl()


def test_cdn_rejects_bad_signatures_with_403(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    url = completed_video(octopusx_simulator, client)["video_url"]
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    for bad in (
        _with_query(url, signature="0" * 64),
        _with_query(url, expires=str(expires + 60)),
        _with_query(url, signature=""),
        url.split("?")[0],
    ):
        response = httpx.get(bad)
        assert response.status_code == 403, bad
        assert response.headers["content-type"].startswith("application/xml")
        assert re.search(r"<Code>(AccessDenied|SignatureDoesNotMatch)</Code>", response.text)
    other = create(client)["id"]
    assert httpx.get(url.replace(urlsplit(url).path, f"/videos/{other}.mp4")).status_code == 403


def test_cdn_link_expires_and_each_poll_gives_a_fresh_link(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.configure(url_ttl_seconds=1)
    video = completed_video(octopusx_simulator, client)
    expires = int(parse_qs(urlsplit(video["video_url"]).query)["expires"][0])
    assert expires >= time.time() + 1 - 0.5  # valid for the TTL, give or take the poll's own time
    assert httpx.get(video["video_url"]).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    expired = httpx.get(video["video_url"])
    assert expired.status_code == 403
    assert "Request has expired" in expired.text
    fresh = client.get(f"/v1/videos/{video['id']}").json()["video_url"]
    assert fresh != video["video_url"]
    assert httpx.get(fresh).status_code == 200
    octopusx_simulator.configure(url_ttl_seconds=-1)
    already_expired = client.get(f"/v1/videos/{video['id']}").json()["video_url"]
    assert httpx.get(already_expired).status_code == 403


def test_cdn_unknown_video_is_404(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    url = completed_video(octopusx_simulator, client)["video_url"]
    octopusx_simulator.reset()  # the signature stays valid, the video is gone
    response = httpx.get(url)
    assert response.status_code == 404
    assert "<Code>NoSuchKey</Code>" in response.text
    assert httpx.get(f"{octopusx_simulator.cdn_url}/elsewhere").status_code == 404


@pytest.mark.parametrize("origin", ["cdn", "content"])
def test_single_range_requests_get_206(
    octopusx_simulator: Simulator, client: httpx.Client, origin: str
) -> None:
    video = completed_video(octopusx_simulator, client)
    if origin == "cdn":
        url, headers = video["video_url"], {}
    else:
        url, headers = (
            f"{octopusx_simulator.api_url}/v1/videos/{video['id']}/content",
            auth(octopusx_simulator),
        )
    total = len(SAMPLE)
    cases = {
        "bytes=0-99": (0, 100),
        "bytes=100-": (100, total),
        f"bytes=10-{total + 500}": (10, total),
        "bytes=-10": (total - 10, total),
    }
    for range_header, (start, stop) in cases.items():
        response = httpx.get(url, headers={**headers, "Range": range_header})
        assert response.status_code == 206, range_header
        assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{total}"
        assert int(response.headers["content-length"]) == stop - start
        assert response.content == SAMPLE[start:stop]
    unsatisfiable = httpx.get(url, headers={**headers, "Range": f"bytes={total}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{total}"
    head = httpx.head(url, headers=headers)
    assert head.status_code == 200
    assert head.headers["accept-ranges"] == "bytes"
    assert int(head.headers["content-length"]) == total
    stats = octopusx_simulator.stats
    assert stats.ranged_responses == len(cases)
    assert stats.bytes_served == sum(stop - start for start, stop in cases.values())


def test_padded_video_has_exact_size_and_still_plays(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    size = 3 * 1024 * 1024 + 12345
    octopusx_simulator.configure(video_size_bytes=size)
    video = completed_video(octopusx_simulator, client)
    data = httpx.get(video["video_url"]).content
    assert len(data) == size
    assert data.startswith(SAMPLE)
    assert struct.unpack(">I4s", data[len(SAMPLE) : len(SAMPLE) + 8]) == (size - len(SAMPLE), b"free")
    assert data[len(SAMPLE) + 8 :] == bytes(size - len(SAMPLE) - 8)
    assert len(decode_frames(data)) == 48
    tail = httpx.get(video["video_url"], headers={"Range": f"bytes={size - 1_500_000}-"})
    assert tail.status_code == 206
    assert tail.content == data[size - 1_500_000 :]
    content = client.get(f"/v1/videos/{video['id']}/content")
    assert content.content == data


def test_video_size_without_room_for_padding_is_rejected(octopusx_simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="free"):
        octopusx_simulator.configure(video_size_bytes=len(SAMPLE) + 3)
    assert octopusx_simulator.configure(video_size_bytes=100).video_size_bytes == 100  # bare sample


def test_one_gib_video_streams_in_flat_memory(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    size = 1 << 30
    octopusx_simulator.configure(video_size_bytes=size)
    url = completed_video(octopusx_simulator, client)["video_url"]
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    received = 0
    head = b""
    with httpx.stream("GET", url, timeout=60) as response:
        assert int(response.headers["content-length"]) == size
        for chunk in response.iter_raw(1 << 20):
            if len(head) < len(SAMPLE):
                head += chunk[: len(SAMPLE) - len(head)]
            received += len(chunk)
    assert received == size
    assert head == SAMPLE
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert growth_mib < 64, f"peak RSS grew by {growth_mib:.0f} MiB while streaming 1 GiB"


# -- faults ----------------------------------------------------------------------------------------


def test_status_fault_429_with_retry_after_seconds(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.inject(Fault(route="POST /v1/videos", status=429, retry_after=7))
    response = client.post("/v1/videos", json=VALID)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    error = error_of(response)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert octopusx_simulator.stats.videos_created == 0
    create(client)  # one-shot: the next request is served normally
    stats = octopusx_simulator.stats
    assert (stats.posts, stats.videos_created, stats.faults_fired) == (2, 1, 1)


def test_status_fault_retry_after_as_http_date(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    video_id = create(client)["id"]
    octopusx_simulator.inject(
        Fault(route="GET /v1/videos/{id}", status=503, retry_after=30, retry_after_http_date=True)
    )
    response = client.get(f"/v1/videos/{video_id}")
    assert response.status_code == 503
    retry_at = email.utils.parsedate_to_datetime(response.headers["retry-after"]).timestamp()
    assert 25 <= retry_at - time.time() <= 31
    assert error_of(response)["type"] == "server_error"


@pytest.mark.parametrize("status", [401, 500, 502, 503, 504])
def test_status_faults_fire_times_then_stop(
    octopusx_simulator: Simulator, client: httpx.Client, status: int
) -> None:
    octopusx_simulator.inject(
        Fault(route="POST /v1/videos", status=status, times=2, message="custom", code="c1")
    )
    for _ in range(2):
        response = client.post("/v1/videos", json=VALID)
        assert response.status_code == status
        assert "retry-after" not in response.headers
        assert (error_of(response)["message"], error_of(response)["code"]) == ("custom", "c1")
    assert octopusx_simulator.stats.videos_created == 0
    assert octopusx_simulator.pending_faults == ()
    create(client)


def test_faults_only_hit_their_route(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    octopusx_simulator.inject(Fault(route="GET /v1/videos/{id}/content", status=500))
    video_id = create(client)["id"]
    assert client.get(f"/v1/videos/{video_id}").status_code == 200
    assert octopusx_simulator.pending_faults == (Fault(route="GET /v1/videos/{id}/content", status=500),)


def test_delay_fault_makes_clients_time_out_without_blocking_the_server(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    video_id = create(client)["id"]
    octopusx_simulator.inject(Fault(route="GET /v1/videos/{id}", kind="delay", delay_seconds=0.6, times=2))
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/v1/videos/{video_id}", timeout=0.2)
    result: dict[str, float] = {}

    def slow() -> None:
        started = time.monotonic()
        assert client.get(f"/v1/videos/{video_id}").status_code == 200
        result["elapsed"] = time.monotonic() - started
        result["answered_at"] = time.monotonic()

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.1)
    assert httpx.post(f"{octopusx_simulator.api_url}/v1/videos", json=VALID, headers=auth(octopusx_simulator))
    post_answered_at = time.monotonic()
    thread.join()
    assert result["elapsed"] >= 0.55
    assert post_answered_at < result["answered_at"]  # served while the delayed request waits


def test_reset_fault_drops_the_connection_and_creates_nothing(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.inject(Fault(route="POST /v1/videos", kind="reset"))
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post("/v1/videos", json=VALID)
    assert octopusx_simulator.stats.videos_created == 0
    create(client)
    assert octopusx_simulator.stats.posts == 2


def test_reset_fault_on_cdn(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    url = completed_video(octopusx_simulator, client)["video_url"]
    octopusx_simulator.inject(Fault(route="GET cdn", kind="reset"))
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url)
    assert httpx.get(url).content == SAMPLE


@pytest.mark.parametrize("route", ["GET cdn", "GET /v1/videos/{id}/content"])
def test_truncate_fault_sends_half_the_body_then_closes(
    octopusx_simulator: Simulator, client: httpx.Client, route: str
) -> None:
    size = 2 * 1024 * 1024 + 1001
    octopusx_simulator.configure(video_size_bytes=size)
    video = completed_video(octopusx_simulator, client)
    if route == "GET cdn":
        url, headers = video["video_url"], {}
    else:
        url, headers = (
            f"{octopusx_simulator.api_url}/v1/videos/{video['id']}/content",
            auth(octopusx_simulator),
        )
    octopusx_simulator.inject(Fault(route=route, kind="truncate"))
    received = bytearray()
    with httpx.stream("GET", url, headers=headers) as response:
        assert int(response.headers["content-length"]) == size
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|without sending complete"):  # noqa: PT012
            for chunk in response.iter_raw():
                received += chunk
    assert len(received) == size // 2
    assert bytes(received).startswith(SAMPLE)
    assert len(httpx.get(url, headers=headers).content) == size


def test_cdn_status_fault_answers_like_a_cdn(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    url = completed_video(octopusx_simulator, client)["video_url"]
    octopusx_simulator.inject(Fault(route="GET cdn", status=503, retry_after=2))
    response = httpx.get(url)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert "<Code>SlowDown</Code>" in response.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"route": "GET /v1/videos"},
        {"route": "POST /v1/videos", "kind": "truncate"},
        {"route": "POST /v1/videos", "kind": "explode"},
        {"route": "POST /v1/videos", "status": 200},
        {"route": "POST /v1/videos", "times": 0},
        {"route": "POST /v1/videos", "delay_seconds": -1},
    ],
)
def test_invalid_faults_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages differ per field
        Fault(**kwargs)


def test_delay_fault_drops_the_request_of_a_client_that_left(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.inject(Fault(route="POST /v1/videos", kind="delay", delay_seconds=0.4))
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/videos", json=VALID, timeout=0.1)
    time.sleep(0.6)  # past the delay: the request would have been handled by now
    assert octopusx_simulator.stats.videos_created == 0
    octopusx_simulator.inject(Fault(route="POST /v1/videos", kind="delay", delay_seconds=0.2))
    create(client)  # a patient client is answered
    assert octopusx_simulator.stats.videos_created == 1


# -- faults after handling: the ambiguous submission ---------------------------------------------


def test_reset_after_handling_creates_the_video_but_loses_the_answer(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.inject(Fault(route="POST /v1/videos", kind="reset_after_handling"))
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post("/v1/videos", json=VALID)
    stats = octopusx_simulator.stats
    assert (stats.posts, stats.videos_created) == (1, 1)
    assert stats.faults_by_route == {"POST /v1/videos": {"reset_after_handling": 1}}


@pytest.mark.parametrize("status", [502, 504])
def test_status_after_handling_creates_the_video_then_answers_an_error(
    octopusx_simulator: Simulator, client: httpx.Client, status: int
) -> None:
    octopusx_simulator.inject(Fault(route="POST /v1/videos", kind="status_after_handling", status=status))
    response = client.post("/v1/videos", json=VALID)
    assert response.status_code == status
    assert error_of(response)["type"] == "server_error"
    stats = octopusx_simulator.stats
    assert (stats.posts, stats.videos_created) == (1, 1)
    assert stats.faults_by_route == {"POST /v1/videos": {f"status {status} after handling": 1}}


def test_delay_after_handling_creates_the_video_before_the_client_times_out(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.inject(
        Fault(route="POST /v1/videos", kind="delay_after_handling", delay_seconds=0.5, times=2)
    )
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/videos", json=VALID, timeout=0.2)
    assert octopusx_simulator.stats.videos_created == 1  # already, while the answer is held back
    started = time.monotonic()
    create(client)  # a patient client gets the answer late
    assert time.monotonic() - started >= 0.45
    assert octopusx_simulator.stats.videos_created == 2


# -- random faults ----------------------------------------------------------------------------------


def test_random_faults_are_reproducible_per_seed_and_close_to_the_rate() -> None:
    mix = Settings(fault_rate=0.2, fault_seed=123).random_faults
    draws = [mix.draw("GET /v1/videos/{id}", f"prompt {i % 50}", i // 50) for i in range(20_000)]
    assert draws == [mix.draw("GET /v1/videos/{id}", f"prompt {i % 50}", i // 50) for i in range(20_000)]
    fired = [fault for fault in draws if fault is not None]
    assert 0.18 < len(fired) / len(draws) < 0.22
    labels = {fault.label for fault in fired}
    assert labels == {"status 429", "status 500", "status 502", "status 503", "status 504", "reset", "delay"}
    assert {fault.retry_after for fault in fired if fault.status == 429 and fault.kind == "status"} == {0, 1}
    assert {fault.delay_seconds for fault in fired if fault.kind == "delay"} == {2.0}
    other_seed = Settings(fault_rate=0.2, fault_seed=124).random_faults
    assert draws != [
        other_seed.draw("GET /v1/videos/{id}", f"prompt {i % 50}", i // 50) for i in range(20_000)
    ]
    assert Settings().random_faults.draw("POST /v1/videos", "prompt", 0) is None


def test_random_faults_repeat_for_the_same_seed_and_prompts(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    """Video ids are random, so the draws follow each video's prompt and the request's ordinal."""

    def run() -> list[tuple[int, str | None]]:
        octopusx_simulator.reset()
        octopusx_simulator.configure(
            generation_seconds=0, fault_rate=0.4, fault_seed=5, fault_kinds=["server_error", "rate_limit"]
        )
        seen = []
        for i in range(12):
            response = client.post("/v1/videos", json={**VALID, "prompt": f"prompt {i}"})
            seen.append((response.status_code, response.headers.get("retry-after")))
            if response.status_code == 200:
                for _ in range(3):
                    poll = client.get(f"/v1/videos/{response.json()['id']}")
                    seen.append((poll.status_code, poll.headers.get("retry-after")))
        return seen

    first = run()
    assert {status for status, _ in first} > {200}
    assert run() == first


@pytest.mark.parametrize(
    ("route", "labels"),
    [
        ("POST /v1/videos", {"status 429", "status 5xx", "reset", "delay"}),
        ("GET /v1/videos/{id}", {"status 429", "status 5xx", "reset", "delay"}),
        ("GET /v1/videos/{id}/content", {"status 429", "status 5xx", "reset", "delay", "truncate"}),
        ("GET cdn", {"status 429", "status 5xx", "reset", "delay", "truncate", "status 403"}),
    ],
)
def test_random_faults_fit_their_route_and_leave_out_ambiguous_ones(route: str, labels: set[str]) -> None:
    mix = Settings(fault_rate=1.0, slow_seconds=0.5, max_retry_after_seconds=0).random_faults
    faults = [mix.draw(route, "a prompt", n) for n in range(2_000)]
    assert all(fault is not None for fault in faults)
    assert {re.sub(r"status 5\d\d", "status 5xx", f.label) for f in faults if f is not None} == labels
    expired = [f for f in faults if f is not None and f.status == 403 and f.kind == "status"]
    assert all((f.code, f.message) == ("AccessDenied", "Request has expired") for f in expired)


def test_random_faults_do_not_cut_a_content_redirect() -> None:
    mix = Settings(fault_rate=1.0, fault_kinds=("truncate", "reset"), content_redirect=True).random_faults
    route = "GET /v1/videos/{id}/content"
    assert {f.label for n in range(200) if (f := mix.draw(route, "a prompt", n))} == {"reset"}
    assert {f.label for n in range(200) if (f := mix.draw("GET cdn", "a prompt", n))} == {"reset", "truncate"}


def test_after_handling_faults_join_the_mix_only_on_request_and_only_on_post() -> None:
    kinds = ("server_error_after_handling", "reset_after_handling", "delay_after_handling")
    mix = Settings(fault_rate=1.0, fault_kinds=kinds).random_faults
    labels = {f.label for n in range(200) if (f := mix.draw("POST /v1/videos", "a prompt", n))}
    assert labels == {
        *(f"status {status} after handling" for status in (500, 502, 503, 504)),
        "reset_after_handling",
        "delay_after_handling",
    }
    assert mix.draw("GET /v1/videos/{id}", "a prompt", 0) is None
    assert mix.draw("GET cdn", "a prompt", 0) is None


def test_random_faulted_submissions_never_create_a_video(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    octopusx_simulator.configure(fault_rate=0.5, fault_seed=7, slow_seconds=0.3)
    answered = 0
    for _ in range(60):
        try:
            response = client.post("/v1/videos", json=VALID, timeout=0.15)
        except httpx.TransportError:  # reset, or slow past the client's timeout
            continue
        answered += response.status_code == 200
    time.sleep(0.4)  # let slow requests whose client left reach their end
    stats = octopusx_simulator.stats
    by_kind = stats.faults_by_kind
    assert stats.posts == 60
    assert stats.faults_fired == sum(by_kind.values()) == 60 - answered
    assert {"reset", "delay", "status 429"} <= set(by_kind)
    assert stats.videos_created == answered


def test_random_faults_hit_downloads_and_count_bytes(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    size = 1024 * 1024 + 100
    octopusx_simulator.configure(video_size_bytes=size)
    url = completed_video(octopusx_simulator, client)["video_url"]
    octopusx_simulator.configure(fault_rate=1.0, fault_kinds=["truncate"])
    assert octopusx_simulator.settings.fault_kinds == ("truncate",)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(url)
    octopusx_simulator.configure(fault_kinds=["expired_link"])
    expired = httpx.get(url)
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in expired.text
    octopusx_simulator.configure(fault_rate=0)
    assert len(httpx.get(url).content) == size
    stats = octopusx_simulator.stats
    assert stats.faults_by_route == {"GET cdn": {"truncate": 1, "status 403": 1}}
    assert stats.bytes_served == size // 2 + size


@pytest.mark.parametrize(
    "changes",
    [
        {"fault_rate": 1.5},
        {"fault_rate": -0.1},
        {"fault_rate": True},
        {"fault_seed": "x"},
        {"fault_kinds": ["nope"]},
        {"fault_kinds": "reset"},
        {"slow_seconds": -1},
        {"slow_seconds": float("inf")},
        {"max_retry_after_seconds": -1},
        {"max_retry_after_seconds": 0.5},
        {"content_redirect": "yes"},
    ],
)
def test_invalid_fault_settings_are_rejected(octopusx_simulator: Simulator, changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages differ per field
        octopusx_simulator.configure(**changes)
    assert octopusx_simulator.settings == Settings()


# -- stats -----------------------------------------------------------------------------------------


def test_stats_count_routes_and_distinct_connections(
    octopusx_simulator: Simulator, client: httpx.Client
) -> None:
    video = completed_video(octopusx_simulator, client)
    url, video_id = video["video_url"], video["id"]
    for _ in range(3):
        client.get(f"/v1/videos/{video_id}")
    client.get(f"/v1/videos/{video_id}/content")
    with httpx.Client() as cdn_client:
        for _ in range(2):
            cdn_client.get(url)
    httpx.get(url)  # a new connection
    stats = octopusx_simulator.stats
    assert stats.posts == 1
    assert stats.gets == 4
    assert stats.content_gets == 1
    assert stats.cdn_gets == 3
    assert stats.videos_created == 1
    assert stats.api_connections == 1  # one keep-alive client for every API call
    assert stats.cdn_connections == 2
    assert stats.connections == 3
    assert stats.cdn_authorization_headers == ()
    assert stats.bytes_served == 4 * len(SAMPLE)
    assert stats.faults_by_route == {}


# -- HTTP controls -----------------------------------------------------------------------------------


def test_http_controls(octopusx_simulator: Simulator, client: httpx.Client) -> None:
    with httpx.Client(base_url=f"{octopusx_simulator.api_url}/_simulator") as controls:
        settings = controls.post("/settings", json={"generation_seconds": 0.2, "empty_video_url": True})
        assert settings.status_code == 200
        assert settings.json()["generation_seconds"] == 0.2
        assert octopusx_simulator.settings.empty_video_url is True
        assert controls.get("/settings").json() == octopusx_simulator.settings.to_dict()
        assert controls.post("/settings", json={"bogus": 1}).status_code == 400
        assert controls.post("/settings", json={"generation_seconds": -1}).status_code == 400

        assert controls.post("/fail-next", json={"n": 1, "code": "nsfw", "message": "no"}).status_code == 200
        failed = wait_until_done(client, create(client)["id"])
        assert failed["error"] == {"message": "no", "code": "nsfw"}

        armed = controls.post(
            "/faults",
            json=[
                {"route": "POST /v1/videos", "status": 429, "retry_after": 1},
                {"route": "GET cdn", "kind": "reset", "times": 2},
            ],
        )
        assert armed.status_code == 200
        assert [(f["route"], f["times"]) for f in armed.json()["faults"]] == [
            ("POST /v1/videos", 1),
            ("GET cdn", 2),
        ]
        assert controls.post("/faults", json={"route": "POST /v1/videos", "kind": "nope"}).status_code == 400
        assert controls.post("/faults", json={"route": "GET cdn", "surprise": 1}).status_code == 400
        assert client.post("/v1/videos", json=VALID).status_code == 429
        assert len(controls.get("/faults").json()["faults"]) == 1
        assert controls.delete("/faults").json() == {"faults": []}
        assert octopusx_simulator.pending_faults == ()

        stats = controls.get("/stats").json()
        assert stats == octopusx_simulator.stats.to_dict()
        assert (stats["posts"], stats["videos_created"], stats["faults_fired"]) == (2, 1, 1)
        assert stats["faults_by_route"] == {"POST /v1/videos": {"status 429": 1}}

        random_faults = {"fault_rate": 1, "fault_seed": 123, "fault_kinds": ["server_error"]}
        settings = controls.post("/settings", json=random_faults)
        assert settings.status_code == 200
        assert {k: settings.json()[k] for k in random_faults} == random_faults
        assert octopusx_simulator.settings.fault_kinds == ("server_error",)
        assert client.post("/v1/videos", json=VALID).status_code in (500, 502, 503, 504)
        assert controls.post("/settings", json={"fault_kinds": ["bogus"]}).status_code == 400
        assert controls.post("/settings", json={"fault_rate": 2}).status_code == 400

        assert controls.post("/reset").status_code == 200
        assert octopusx_simulator.settings == Settings()
        assert controls.get("/stats").json()["posts"] == 0
        assert controls.get("/health").json() == {"status": "ok"}
