"""DownloadVideoOperator against the simulator over real sockets: where the file lands, that it is whole
and playable, that it appears atomically, and how each failure leaves the destination."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from airflow.sdk import ObjectStoragePath

from airflow_octopusx._compat import hook_lineage_is_read
from airflow_octopusx.exceptions import OctopusXError, TransportError, VideoDownloadError, VideoFailedError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import VideoRequest, VideoTask
from airflow_octopusx.operators.octopusx import DownloadVideoOperator
from airflow_octopusx.simulator import Fault, Simulator, Stats
from airflow_octopusx.simulator.media import VideoBody, sample_mp4
from tests.conftest import AIRFLOW_3_3, BOTH_FLAVOURS, when_a_fault_fires, xcom_values

REPO = Path(__file__).parents[2]
GENERATION_SECONDS = 0.1
LARGE_SIZE = 24 * 1024 * 1024


def submit(simulator: Simulator, *, wait: bool = True) -> VideoTask:
    """Submit one video through the real API and, by default, poll until it has finished."""
    with OctopusXHook() as hook:
        video = hook.submit_video(VideoRequest.build({"prompt": "A red kite over green hills"}))
        deadline = time.monotonic() + 10
        while wait and not video.is_finished:
            assert time.monotonic() < deadline, f"video {video.id} did not finish in time"
            time.sleep(0.05)
            video = hook.get_video(video.id)
    return video


@pytest.fixture
def video_id(octopusx_conn: Simulator) -> str:
    octopusx_conn.configure(generation_seconds=GENERATION_SECONDS)
    video = submit(octopusx_conn)
    assert video.is_completed
    return video.id


def download(video_id: str, destination: Any, context: dict[str, Any], **kwargs: Any) -> str:
    return DownloadVideoOperator(
        task_id="download_video", video_id=video_id, destination=destination, **kwargs
    ).execute(context)


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones included), relative to it."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def download_counts(simulator: Simulator) -> tuple[int, int, int]:
    stats = simulator.stats
    return stats.gets, stats.cdn_gets, stats.content_gets


# Each case: how to spell the destination for tmp_path, and where the file must then be (relative).
DESTINATIONS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "folder with trailing slash, parents created": (lambda tmp: f"{tmp}/new/nested/", "new/nested/{id}.mp4"),
    "explicit file path": (lambda tmp: str(tmp / "clip.mp4"), "clip.mp4"),
    "file URI string, parents created": (lambda tmp: (tmp / "sub" / "clip.mp4").as_uri(), "sub/clip.mp4"),
    "existing folder without slash": (lambda tmp: str(tmp), "{id}.mp4"),
    "ObjectStoragePath of an existing folder": (lambda tmp: ObjectStoragePath(tmp.as_uri()), "{id}.mp4"),
    "ObjectStoragePath of a file": (lambda tmp: ObjectStoragePath((tmp / "o.mp4").as_uri()), "o.mp4"),
}


@pytest.mark.parametrize("case", DESTINATIONS)
def test_destination_forms_store_the_exact_playable_mp4(
    case: str, video_id: str, context: dict[str, Any], tmp_path: Path
) -> None:
    spell, relative = DESTINATIONS[case]
    expected = tmp_path / relative.format(id=video_id)

    result = download(video_id, spell(tmp_path), context)

    assert result == expected.as_uri()
    assert isinstance(result, str)
    assert expected.read_bytes() == sample_mp4()
    assert decoded_frames(expected) > 0
    assert files_under(tmp_path) == [relative.format(id=video_id)]  # no temporary file left behind


def test_the_stored_file_is_recorded_once_as_hook_lineage(
    lineage_reader_plugin: None,
    video_id: str,
    context: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hook_lineage_is_read()
    try:
        from airflow.sdk.lineage import HookLineageCollector
    except ImportError:  # Airflow < 3.2
        from airflow.lineage.hook import HookLineageCollector  # type: ignore[no-redef]
    collector = HookLineageCollector()  # what Airflow hands out when a lineage reader (OpenLineage) is on
    monkeypatch.setattr("airflow_octopusx.operators.octopusx.get_hook_lineage_collector", lambda: collector)

    result = download(video_id, f"{tmp_path}/clip.mp4", context)

    lineage = collector.collected_assets
    assert lineage.inputs == []
    assert [(info.asset.uri, info.count) for info in lineage.outputs] == [(result, 1)]


@pytest.mark.skipif(not AIRFLOW_3_3, reason="Airflow 3.1's ObjectStoragePath looks its filesystem up itself")
def test_a_local_download_does_not_make_airflow_import_every_providers_filesystem(
    video_id: str, tmp_path: Path
) -> None:
    # Airflow's first filesystem lookup in a process imports each provider's filesystem module (the
    # Amazon provider's brings boto3): seconds in each task run that stores a video on local disk.
    code = f"""
from airflow.sdk.execution_time.context import OutletEventAccessors
from airflow.sdk.io.fs import _register_filesystems
from airflow_octopusx._compat import hook_lineage_is_read
from airflow_octopusx.operators.octopusx import DownloadVideoOperator
from tests.support.task_context import minimal_context
task = DownloadVideoOperator(task_id="store", video_id={video_id!r}, destination={f"{tmp_path}/"!r})
task.execute(minimal_context() | {{"outlet_events": OutletEventAccessors()}})
print("filesystem lookups:", _register_filesystems.cache_info().currsize)
import sys
print("boto3 imported:", "boto3" in sys.modules)
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    # Nor does recording hook lineage that no reader takes (Airflow builds every provider's asset factory).
    assert ran.stdout.splitlines()[-2:] == ["filesystem lookups: 0", "boto3 imported: False"]
    assert (tmp_path / f"{video_id}.mp4").read_bytes() == sample_mp4()


def test_relative_destination_is_resolved_against_the_working_directory(
    video_id: str, context: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = download(video_id, "videos/", context)

    assert result == (tmp_path / "videos" / f"{video_id}.mp4").as_uri()
    assert (tmp_path / "videos" / f"{video_id}.mp4").read_bytes() == sample_mp4()


def test_plain_path_with_space_and_percent_is_used_literally(
    video_id: str, context: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "my videos" / "100% real"

    download(video_id, f"{folder}/", context)

    assert files_under(tmp_path) == [f"my videos/100% real/{video_id}.mp4"]


def test_existing_file_is_refused_untouched_without_any_request(
    video_id: str, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"keep me")
    before = download_counts(octopusx_conn)

    with pytest.raises(AirflowFailException, match=r"already exists.*overwrite=True"):
        download(video_id, str(target), context)

    assert target.read_bytes() == b"keep me"
    assert download_counts(octopusx_conn) == before
    assert files_under(tmp_path) == ["clip.mp4"]


def test_existing_file_in_a_destination_folder_is_refused_too(
    video_id: str, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / f"{video_id}.mp4").write_bytes(b"an earlier copy")
    before = download_counts(octopusx_conn)

    with pytest.raises(AirflowFailException, match="already exists"):
        download(video_id, f"{tmp_path}/", context)

    assert (tmp_path / f"{video_id}.mp4").read_bytes() == b"an earlier copy"
    assert download_counts(octopusx_conn) == before


def test_overwrite_true_replaces_an_existing_file(
    video_id: str, context: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old, longer than nothing but not an mp4")

    assert download(video_id, str(target), context, overwrite=True) == target.as_uri()

    assert target.read_bytes() == sample_mp4()
    assert files_under(tmp_path) == ["clip.mp4"]


def test_file_created_during_the_download_is_not_replaced_without_overwrite(
    video_id: str, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "clip.mp4"
    # The download's fresh look-up of the video is held back, and the file appears meanwhile: after the
    # operator's check that the destination is free, before the video is stored.
    octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", kind="delay", delay_seconds=1))
    writer = when_a_fault_fires(octopusx_conn, lambda: target.write_bytes(b"written by someone else"))
    try:
        with pytest.raises(AirflowFailException, match="already exists"):
            download(video_id, str(target), context)
    finally:
        writer.join()
    assert target.read_bytes() == b"written by someone else"


def test_large_video_arrives_whole_and_only_ever_appears_complete(
    octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    octopusx_conn.configure(generation_seconds=GENERATION_SECONDS, video_size_bytes=LARGE_SIZE)
    video_id = submit(octopusx_conn).id
    target = tmp_path / "large.mp4"
    sizes_seen: list[int] = []
    partials_seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                sizes_seen.append(target.stat().st_size)
            partials_seen.extend(p.name for p in tmp_path.glob(".*.partial"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = download(video_id, str(target), context)
    finally:
        done.set()
        watcher.join()

    assert result == target.as_uri()
    assert target.stat().st_size == LARGE_SIZE
    expected = hashlib.sha256(b"".join(VideoBody.build(sample_mp4(), LARGE_SIZE).iter_bytes(0, LARGE_SIZE)))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected.hexdigest()
    assert decoded_frames(target) > 0
    # The watcher really ran during the transfer (it saw the temporary file) ...
    assert partials_seen, "the watcher never saw the download in progress"
    assert all(name.startswith(".large.mp4.") for name in partials_seen)
    # ... and the destination itself never showed a partial size.
    assert set(sizes_seen) <= {LARGE_SIZE}
    assert files_under(tmp_path) == ["large.mp4"]


@pytest.mark.parametrize(
    ("route", "empty_video_url"),
    [("GET cdn", False), ("GET /v1/videos/{id}/content", True)],
    ids=["cdn", "content"],
)
@BOTH_FLAVOURS
def test_a_cut_transfer_resumes_to_the_exact_bytes(
    route: str, empty_video_url: bool, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    size = 4 * 1024 * 1024
    octopusx_conn.configure(
        generation_seconds=GENERATION_SECONDS, video_size_bytes=size, empty_video_url=empty_video_url
    )
    video_id = submit(octopusx_conn).id
    octopusx_conn.inject(Fault(route=route, kind="truncate"))
    folder = tmp_path / "out"

    download(video_id, f"{folder}/", context)

    stored = (folder / f"{video_id}.mp4").read_bytes()
    assert len(stored) == size
    assert stored.startswith(sample_mp4())
    assert octopusx_conn.stats.faults_fired == 1
    assert files_under(tmp_path) == [f"out/{video_id}.mp4"]


@pytest.mark.parametrize(
    ("route", "empty_video_url"),
    [("GET cdn", False), ("GET /v1/videos/{id}/content", True)],
    ids=["cdn", "content"],
)
def test_a_transfer_broken_every_time_fails_and_leaves_nothing_behind(
    route: str, empty_video_url: bool, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    octopusx_conn.configure(
        generation_seconds=GENERATION_SECONDS,
        video_size_bytes=4 * 1024 * 1024,
        empty_video_url=empty_video_url,
    )
    video_id = submit(octopusx_conn).id
    octopusx_conn.inject(Fault(route=route, kind="reset", times=100))
    folder = tmp_path / "out"

    with pytest.raises(TransportError, match="broke after 0 bytes"):
        download(video_id, f"{folder}/", context)

    assert octopusx_conn.stats.faults_fired == 5  # the hook's attempt budget: no attempt added a byte
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("route", "empty_video_url"),
    [("GET cdn", False), ("GET /v1/videos/{id}/content", True)],
    ids=["cdn", "content"],
)
def test_a_transfer_cut_every_time_is_resumed_until_the_download_timeout(
    route: str, empty_video_url: bool, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    """Each cut attempt adds bytes (half of what is left), so none costs an attempt; the timeout ends it.

    22 halvings of 4 MiB, each after a backoff of at least 0.25 s, outlast the 2 s timeout on any machine.
    """
    octopusx_conn.configure(
        generation_seconds=GENERATION_SECONDS,
        video_size_bytes=4 * 1024 * 1024,
        empty_video_url=empty_video_url,
    )
    video_id = submit(octopusx_conn).id
    octopusx_conn.inject(Fault(route=route, kind="truncate", times=100))
    folder = tmp_path / "out"

    # Not a TransportError after the hook's 5 attempts: cut transfers that add bytes cost none.
    with pytest.raises(VideoDownloadError, match="did not finish in time"):
        download(video_id, f"{folder}/", context, timeout=2)

    assert octopusx_conn.stats.faults_fired < 22
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("settings", "fault", "cdn_gets", "content_gets"),
    [
        ({"empty_video_url": True}, None, 0, 1),
        ({"url_ttl_seconds": 0}, None, 2, 1),
        ({}, Fault(route="GET cdn", status=403), 2, 0),
        ({}, Fault(route="GET cdn", status=410), 2, 0),
        ({}, Fault(route="GET cdn", status=403, times=2), 2, 1),
    ],
    ids=["empty-video-url", "expired-signed-link", "cdn-403-once", "cdn-410-once", "cdn-403-twice"],
)
def test_a_refused_link_is_renewed_then_replaced_by_the_content_endpoint(
    settings: dict[str, Any],
    fault: Fault | None,
    cdn_gets: int,
    content_gets: int,
    octopusx_conn: Simulator,
    context: dict[str, Any],
    tmp_path: Path,
) -> None:
    octopusx_conn.configure(generation_seconds=GENERATION_SECONDS, **settings)
    video_id = submit(octopusx_conn).id
    if fault:
        octopusx_conn.inject(fault)
    before = octopusx_conn.stats

    result = download(video_id, f"{tmp_path}/", context)

    target = tmp_path / f"{video_id}.mp4"
    assert result == target.as_uri()
    assert target.read_bytes() == sample_mp4()
    after = octopusx_conn.stats
    assert after.content_gets - before.content_gets == content_gets
    assert after.cdn_gets - before.cdn_gets == cdn_gets
    assert files_under(tmp_path) == [target.name]


def test_the_api_key_never_reaches_the_cdn(
    video_id: str, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    download(video_id, f"{tmp_path}/", context)

    stats = octopusx_conn.stats
    assert stats.cdn_gets == 1  # the CDN was really used ...
    assert stats.content_gets == 0
    assert not any(octopusx_conn.api_key in value for value in stats.cdn_authorization_headers)
    assert stats.cdn_authorization_headers == ()  # ... and got no credentials of any kind


def test_video_not_completed_yet_is_a_download_error_naming_it(
    octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    octopusx_conn.configure(generation_seconds=60)
    video_id = submit(octopusx_conn, wait=False).id

    with pytest.raises(VideoDownloadError, match=f"{video_id}.*not completed") as raised:
        download(video_id, f"{tmp_path}/", context)

    assert raised.value.video_id == video_id
    assert download_counts(octopusx_conn)[1:] == (0, 0)
    assert files_under(tmp_path) == []


def test_failed_video_raises_with_the_api_code(
    octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    octopusx_conn.configure(generation_seconds=GENERATION_SECONDS)
    octopusx_conn.fail_next(code="nsfw_blocked", message="Blocked by the safety system.")
    video = submit(octopusx_conn)
    assert video.is_failed

    with pytest.raises(VideoFailedError, match="Blocked by the safety system") as raised:
        download(video.id, f"{tmp_path}/", context)

    assert (raised.value.video_id, raised.value.code) == (video.id, "nsfw_blocked")
    assert download_counts(octopusx_conn)[1:] == (0, 0)
    assert files_under(tmp_path) == []


@BOTH_FLAVOURS
def test_unknown_video_is_reported_not_stored(
    octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(OctopusXError, match="video_does_not_exist"):
        download("video_does_not_exist", f"{tmp_path}/", context)

    assert files_under(tmp_path) == []


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", "-leading-dash", "x" * 201, "id with space"])
def test_bad_video_id_fails_before_any_request(
    bad_id: str, octopusx_conn: Simulator, context: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(AirflowFailException, match="video_id"):
        download(bad_id, f"{tmp_path}/videos/", context)

    assert octopusx_conn.stats == Stats()
    assert list(tmp_path.iterdir()) == []  # not even the destination folder was created


@BOTH_FLAVOURS
@pytest.mark.usefixtures("airflow_db")
def test_dag_test_submits_once_and_stores_the_video(octopusx_conn: Simulator, tmp_path: Path) -> None:
    from tests.dags.download_submit_and_store import dag

    octopusx_conn.configure(generation_seconds=0.3)

    run = dag.test(run_conf={"destination": f"{tmp_path}/stored/"})

    assert run.state == "success"
    video_id = xcom_values(run, "video_id")["submit_video"]
    target = tmp_path / "stored" / f"{video_id}.mp4"
    assert xcom_values(run, "return_value")["download_video"] == target.as_uri()
    assert target.read_bytes() == sample_mp4()
    assert decoded_frames(target) > 0
    assert files_under(tmp_path) == [f"stored/{video_id}.mp4"]
    stats = octopusx_conn.stats
    assert stats.posts == stats.videos_created == 1
    assert stats.cdn_gets == 1
