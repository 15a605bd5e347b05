"""A real Airflow deployment on SQLite with LocalExecutor: the example DAGs triggered through the REST API,
and what happens when the triggerer, or a worker's task, is killed while a video renders."""

from __future__ import annotations

import os
import re
import signal
from collections import defaultdict
from pathlib import Path

import pytest

from tests.e2e.conftest import assert_one_post_per_playable_video, decoded_frames
from tests.e2e.deployment import Deployment, SimulatorProcess, parent_pid, wait_until

# Videos each example submits, and its tasks that wait in the triggerer.
EXAMPLES: dict[str, tuple[int, tuple[str, ...]]] = {
    "example_octopusx_text_to_video": (1, ("submit_video",)),
    "example_octopusx_image_to_video": (2, ("first_frame", "first_and_last_frame")),
    "example_octopusx_reference_images": (1, ("submit_video",)),
    "example_octopusx_submit_then_sense": (1, ("wait_for_video",)),
}
MAPPED = "octopusx_e2e_mapped"
ENDED_IN_TRIGGERER = "octopusx_e2e_mapped_ended_in_triggerer"
BATCH = "octopusx_e2e_batch"
RESUME = "octopusx_e2e_resume"
STARTED_IN_TRIGGERER = "octopusx_e2e_started_in_triggerer"


def test_examples_defer_to_the_triggerer_and_store_playable_mp4s(
    deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    # Long enough that the sensor, which starts only after its submit task ends, still finds it running.
    simulator.configure(generation_seconds=10)
    runs = {dag_id: deployment.trigger(dag_id) for dag_id in EXAMPLES}
    states: dict[tuple[str, str], set[str]] = defaultdict(set)

    def record_states() -> None:
        for dag_id, run_id in runs.items():
            for ti in deployment.api.task_instances(dag_id, run_id):
                states[dag_id, ti["task_id"]].add(ti["state"])

    for dag_id, run_id in runs.items():
        assert deployment.wait_for_run(dag_id, run_id, timeout=120, on_poll=record_states) == "success"

    triggerer = deployment.triggerer.job_id
    for dag_id, (_, waiting_tasks) in EXAMPLES.items():
        for task_id in waiting_tasks:
            assert "deferred" in states[dag_id, task_id], (dag_id, task_id)
            # The trigger's own log lines, written by the triggerer process's job.
            trigger_log = deployment.task_log(dag_id, runs[dag_id], task_id, triggerer_job=triggerer)
            assert re.search(r"Video \S+: completed, 100%", trigger_log), (dag_id, task_id)
            assert "Trigger fired event" in trigger_log
    assert_one_post_per_playable_video(simulator, videos, sum(count for count, _ in EXAMPLES.values()))


def test_killed_triggerer_is_replaced_and_every_video_is_submitted_once(
    deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    simulator.configure(generation_seconds=15)
    run_id = deployment.trigger(MAPPED, {"videos": 4})
    old = deployment.triggerer
    holders = deployment.wait_for_deferred(MAPPED, run_id, "submit_video", count=4)
    assert set(holders.values()) == {old.job_id}

    old.component.kill()
    new = deployment.start_triggerer()

    assert deployment.wait_for_run(MAPPED, run_id, timeout=120) == "success"
    for map_index in holders:
        log = deployment.task_log(MAPPED, run_id, "submit_video", 1, map_index, triggerer_job=new.job_id)
        assert "Trigger fired event" in log, map_index
    assert_one_post_per_playable_video(simulator, videos, 4)


@pytest.mark.parametrize("victim", ["task process", "supervisor and task process"])
def test_killed_worker_task_is_retried_and_resumes_the_same_video(
    deployment: Deployment, simulator: SimulatorProcess, victim: str
) -> None:
    """Killing the task alone is reported by its supervisor at once; killing the supervisor too leaves
    the scheduler to notice the missing heartbeats. Either way the retry must not pay for a new video."""
    simulator.configure(generation_seconds=20)
    run_id = deployment.trigger(RESUME)

    def polling_task() -> int | None:
        (ti,) = deployment.api.task_instances(RESUME, run_id)
        # Submitted, looked up once, and now in the wait loop.
        if ti["state"] != "running" or simulator.stats()["gets"] < 2:
            return None
        return deployment.task_process(ti["id"])

    task_pid = wait_until(polling_task, timeout=60, what="the first try to poll its video")
    supervisor = parent_pid(task_pid)
    assert supervisor is not None
    for pid in [task_pid] if victim == "task process" else [supervisor, task_pid]:
        os.kill(pid, signal.SIGKILL)

    assert deployment.wait_for_run(RESUME, run_id, timeout=120) == "success"
    tries = deployment.api.tries(RESUME, run_id, "submit_video")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]
    submitted = re.search(r"Submitted video (\S+)", deployment.task_log(RESUME, run_id, "submit_video", 1))
    assert submitted is not None
    assert deployment.api.xcom(RESUME, run_id, "submit_video") == submitted.group(1)
    stats = simulator.stats()
    assert stats["posts"] == stats["videos_created"] == 1


def test_a_batch_waits_in_one_trigger_and_stores_every_video_once(
    deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    simulator.configure(generation_seconds=6)
    run_id = deployment.trigger(BATCH, {"videos": 6})
    holders = deployment.wait_for_deferred(BATCH, run_id, "generate_videos", count=1)

    assert deployment.wait_for_run(BATCH, run_id, timeout=180) == "success"
    [job] = set(holders.values())
    trigger_log = deployment.task_log(BATCH, run_id, "generate_videos", triggerer_job=job)
    assert "6/6 completed, 0 failed, 0 rendering" in trigger_log
    results = deployment.api.xcom(BATCH, run_id, "generate_videos")
    assert [result["status"] for result in results] == ["stored"] * 6
    # Two task runs for six videos: one try, deferred once.
    [only_try] = deployment.api.tries(BATCH, run_id, "generate_videos")
    assert only_try["try_number"] == 1
    assert_one_post_per_playable_video(simulator, videos, 6)


def test_as_the_gateway_answers_the_text_to_video_and_batch_examples_store_every_video_from_its_link(
    deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    """The new-api gateway's shapes: links in metadata.url, no video_url key, unknown before queued,
    task errors at the top level, billing ratios on each submission (docs/answers.md)."""
    simulator.configure(flavour="new-api", generation_seconds=6)
    text_to_video = deployment.trigger("example_octopusx_text_to_video")
    batch = deployment.trigger("example_octopusx_batch")

    assert deployment.wait_for_run("example_octopusx_text_to_video", text_to_video, timeout=120) == "success"
    assert deployment.wait_for_run("example_octopusx_batch", batch, timeout=180) == "success"
    results = deployment.api.xcom("example_octopusx_batch", batch, "generate_videos")
    # The batch example fails one of its four videos on purpose (max_failed=1).
    assert [result["status"] for result in results] == ["stored", "stored", "stored", "failed"]
    assert all(result["billing"]["ratios"] == {"seconds": 6, "size": 1} for result in results)
    stats = simulator.stats()
    assert stats["posts"] == stats["videos_created"] == 5
    stored = sorted(videos.glob("*.mp4"))
    assert len(stored) == 4
    assert all(decoded_frames(path) > 0 for path in stored)
    assert not list(videos.glob(".*"))
    # Every MP4 came from its own link (metadata.url), none through the API's /content.
    assert (stats["cdn_gets"], stats["content_gets"]) == (4, 0)
    print(
        f"gateway flavour: {len(stored)} files, {stats['posts']} POSTs for 5 videos, "
        f"{stats['cdn_gets']} link downloads, {stats['content_gets']} /content downloads"
    )


def test_submits_ended_in_the_triggerer_need_no_worker_to_resume_them(
    deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    simulator.configure(generation_seconds=6)
    run_id = deployment.trigger(ENDED_IN_TRIGGERER, {"videos": 3})
    holders = deployment.wait_for_deferred(ENDED_IN_TRIGGERER, run_id, "submit_video", count=3)

    assert deployment.wait_for_run(ENDED_IN_TRIGGERER, run_id, timeout=180) == "success"
    for map_index, job in holders.items():
        trigger_log = deployment.task_log(ENDED_IN_TRIGGERER, run_id, "submit_video", 1, map_index, job)
        assert re.search(r"Video \S+: completed, 100%", trigger_log), map_index
        # The worker ran the task once: it submitted and deferred, and nothing resumed it.
        worker_log = deployment.task_log(ENDED_IN_TRIGGERER, run_id, "submit_video", 1, map_index)
        assert worker_log.count("::group::Pre Execute") == 1, map_index
        [only_try] = deployment.api.tries(ENDED_IN_TRIGGERER, run_id, "submit_video", map_index)
        assert only_try["state"] == "success"
    # The downloads read each id from the return value the submit pushed before deferring.
    assert_one_post_per_playable_video(simulator, videos, 3)


def test_sensors_started_in_the_triggerer_run_on_a_worker_only_once_their_video_is_finished(
    deployment: Deployment, simulator: SimulatorProcess
) -> None:
    simulator.configure(generation_seconds=6)
    run_id = deployment.trigger(STARTED_IN_TRIGGERER)

    assert deployment.wait_for_run(STARTED_IN_TRIGGERER, run_id, timeout=180) == "success"
    video_id = deployment.api.xcom(STARTED_IN_TRIGGERER, run_id, "submit_video")
    triggerer = deployment.triggerer.job_id
    for task_id in ("wait_by_xcom_arg", "wait_by_template"):
        trigger_log = deployment.task_log(STARTED_IN_TRIGGERER, run_id, task_id, triggerer_job=triggerer)
        # The triggerer rendered the id; the deadline, from Airflow's trigger timeout, is a clock time.
        clock = r"\d\d\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        waiting = rf"Waiting for video {video_id}: a status check every 1 s, until {clock}"
        assert re.search(waiting, trigger_log), task_id
        assert re.search(r"Video \S+: completed, 100%", trigger_log), task_id
        # One run on a worker, the resumption after the trigger fired: none started the wait.
        worker_log = deployment.task_log(STARTED_IN_TRIGGERER, run_id, task_id)
        assert worker_log.count("::group::Pre Execute") == 1, task_id
        assert deployment.api.xcom(STARTED_IN_TRIGGERER, run_id, task_id) == video_id
    # The sensor that could not start in the triggerer says why in its own task log (the worker parses
    # the DAG file, and Airflow logs the warning that raises).
    worker_log = deployment.task_log(STARTED_IN_TRIGGERER, run_id, "wait_on_a_worker")
    assert "wait_on_a_worker: start_from_trigger needs Airflow 3.3+" in worker_log
    assert deployment.api.xcom(STARTED_IN_TRIGGERER, run_id, "wait_on_a_worker") == video_id
    assert simulator.stats()["posts"] == 1
