"""The operators against answers and inputs OctopusX documents nowhere, over real sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_octopusx.operators.octopusx import (
    SUBMISSION_STATE_KEY,
    DownloadVideoOperator,
    SubmitVideoOperator,
)
from airflow_octopusx.triggers.octopusx import VideoTaskTrigger
from tests.conftest import hostile_connection
from tests.hostile import Answer, HostileServer

GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 9 + b";"
QUEUED = Answer.json('{"id": "video_1", "status": "queued"}')


@pytest.fixture
def server(hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> HostileServer:
    hostile_connection(hostile_server, monkeypatch)
    return hostile_server


def test_extra_body_strings_are_sent_as_they_are_even_where_a_file_has_that_name(
    server: HostileServer, context: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("cinematic", "blurry"):
        (tmp_path / name).write_bytes(GIF)
    server.script("POST /v1/videos", QUEUED)
    SubmitVideoOperator(
        task_id="v2v",
        prompt="Extend the clip",
        model="omni-fast-v2v",
        extra_body={"negative_prompt": "blurry", "style": "cinematic", "video_url": "https://x.test/v.mp4"},
        wait_for_completion=False,
    ).execute(context)
    sent = json.loads(server.seen("POST /v1/videos")[0].body)
    assert (sent["negative_prompt"], sent["style"]) == ("blurry", "cinematic")


def test_a_garbled_answer_to_the_submission_fails_the_task_without_a_retry(
    server: HostileServer, context: dict[str, Any]
) -> None:
    server.script("POST /v1/videos", Answer(200, (("Content-Type", "text/html"),), b"<html>Proxy</html>"))
    with pytest.raises(AirflowFailException, match="may have reached OctopusX"):
        SubmitVideoOperator(task_id="t", prompt="waves", retries=2).execute(context)
    assert len(server.seen("POST /v1/videos")) == 1


@pytest.mark.parametrize(
    "link", ["javascript:alert(document.cookie)", "file:///etc/passwd", "data:text/html,x"]
)
def test_only_web_links_reach_xcom_and_the_task_page(
    server: HostileServer, context: dict[str, Any], link: str
) -> None:
    server.script("POST /v1/videos", QUEUED)
    server.script(
        "GET /v1/videos/video_1",
        Answer.json(json.dumps({"id": "video_1", "status": "completed", "video_url": link})),
    )
    SubmitVideoOperator(task_id="t", prompt="waves").execute(context)
    assert context["ti"].xcom["video_url"] == ""


def test_a_killed_wait_names_the_video_left_rendering_and_keeps_its_record(
    server: HostileServer, context: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    server.script("POST /v1/videos", QUEUED)
    server.script("GET /v1/videos/video_1", Answer.json('{"id": "video_1", "status": "in_progress"}'))
    submit = SubmitVideoOperator(task_id="t", prompt="waves", deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        submit.execute(context)
    capsys.readouterr()
    submit.on_kill()
    trigger = deferred.value.trigger
    assert isinstance(trigger, VideoTaskTrigger)
    asyncio.run(trigger.on_kill())
    # Airflow's structured logging prints task and trigger logs to stdout.
    killed = [line for line in capsys.readouterr().out.splitlines() if "video_1" in line]
    assert len(killed) == 2
    assert all("no way to cancel a video" in line for line in killed)
    assert context["task_state_store"].get(SUBMISSION_STATE_KEY)["video_id"] == "video_1"


def test_a_dripping_download_fails_by_its_timeout_and_leaves_nothing(
    server: HostileServer, context: dict[str, Any], tmp_path: Path
) -> None:
    def drip() -> Any:
        yield b"\x00\x00\x00\x18ftypmp42"
        while True:
            yield b"\x00"

    video = {"id": "video_1", "status": "completed", "video_url": f"{server.url}/cdn/v.mp4"}
    server.script("GET /v1/videos/video_1", Answer.json(json.dumps(video)))
    server.script("GET /cdn/*", Answer(200, (("Content-Length", str(10**9)),), drip, pause=0.05))
    download = DownloadVideoOperator(task_id="d", video_id="video_1", destination=f"{tmp_path}/", timeout=0.5)
    with pytest.raises(Exception, match="did not finish in time"):
        download.execute(context)
    assert list(tmp_path.iterdir()) == []
