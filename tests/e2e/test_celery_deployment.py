"""The e2e DAGs on CeleryExecutor (Redis broker, PostgreSQL metadata and results), two Celery workers and
two triggerers: every task runs on a worker, every video is submitted once; and when the worker
downloading a batch is killed, the retry on the other worker stores the rest without a second POST."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_octopusx.simulator.media import sample_mp4
from tests.e2e.conftest import assert_one_post_per_playable_video
from tests.e2e.deployment import Deployment, SimulatorProcess, wait_until

BATCH = "octopusx_e2e_batch"
MAPPED = "octopusx_e2e_mapped"
BATCH_TASK = "generate_videos"
#: The simulator's downloads are of signed links, on its CDN origin.
CDN = "GET cdn"


def instant(timestamp: str) -> datetime:
    """A timestamp of the REST API (Python 3.10's ``fromisoformat`` does not read its ``Z``)."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


def assert_stored_as_served(videos: Path) -> None:
    """Each stored MP4 holds exactly the bytes the simulator serves (its bare sample)."""
    sample = sample_mp4()
    for path in sorted(videos.glob("*.mp4")):
        assert path.read_bytes() == sample, path.name


def test_batch_and_mapped_dags_run_on_the_celery_workers(
    celery_deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    airflow = celery_deployment
    runs = {BATCH: airflow.trigger(BATCH, {"videos": 4}), MAPPED: airflow.trigger(MAPPED, {"videos": 4})}
    for dag_id, run_id in runs.items():
        assert airflow.wait_for_run(dag_id, run_id, timeout=240) == "success", dag_id

    workers = {worker.hostname for worker in airflow.celery_workers}
    ran_on: Counter[str] = Counter()
    for dag_id, run_id in runs.items():
        for ti in airflow.api.task_instances(dag_id, run_id):
            assert ti["hostname"] in workers, (dag_id, ti["task_id"], ti["map_index"], ti["hostname"])
            ran_on[ti["hostname"]] += 1
    print(f"task instances per Celery worker: {dict(sorted(ran_on.items()))}")

    results = airflow.api.xcom(BATCH, runs[BATCH], BATCH_TASK)
    assert [result["status"] for result in results] == ["stored"] * 4
    [only_try] = airflow.api.tries(BATCH, runs[BATCH], BATCH_TASK)
    assert only_try["try_number"] == 1
    assert_one_post_per_playable_video(simulator, videos, 8)
    assert_stored_as_served(videos)


def test_killed_worker_mid_download_retry_on_the_other_worker_stores_the_rest(
    celery_deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    """The batch's first two downloads get no answer, so the worker is killed with two videos stored and
    two being downloaded. Runs last in this module: it leaves the deployment one worker."""
    airflow = celery_deployment
    # Longer than the client's read timeout (30 s): a held download never completes in the first try.
    simulator.inject({"route": CDN, "kind": "delay", "delay_seconds": 600, "times": 2})
    run_id = airflow.trigger(BATCH, {"videos": 4})

    def two_stored_two_held() -> list[dict[str, Any]] | None:
        # The operator keeps its records in pages: lists of up to 25, None where a request has none.
        pages = airflow.api.state_store(BATCH, run_id, BATCH_TASK).values()
        records = [record for page in pages for record in page if record]
        statuses = Counter(record["status"] for record in records)
        held = simulator.stats()["faults_by_route"].get(CDN, {}).get("delay", 0)
        return records if statuses["stored"] == 2 and held == 2 else None

    records = wait_until(
        two_stored_two_held,
        timeout=180,
        what="two videos stored and two downloads held",
        diagnostics=airflow.diagnostics,
    )
    (ti,) = airflow.api.task_instances(BATCH, run_id, BATCH_TASK)
    victim = next(w for w in airflow.celery_workers if w.hostname == ti["hostname"])
    (survivor,) = [w for w in airflow.celery_workers if w is not victim]
    task_pid = airflow.task_process(ti["id"])
    assert task_pid is not None
    assert airflow.celery_worker_of(task_pid) is victim
    assert simulator.stats()["cdn_gets"] == 4  # the held downloads are still waiting for their answer

    killed_at = datetime.now(timezone.utc)
    victim.component.kill()

    assert airflow.wait_for_run(BATCH, run_id, timeout=180) == "success"
    done = (datetime.now(timezone.utc) - killed_at).total_seconds()
    tries = airflow.api.tries(BATCH, run_id, BATCH_TASK)
    summary = [(t["try_number"], t["state"], t["hostname"]) for t in tries]
    assert summary == [(1, "failed", victim.hostname), (2, "success", survivor.hostname)]
    failed = (instant(tries[0]["end_date"]) - killed_at).total_seconds()
    retried = (instant(tries[1]["start_date"]) - killed_at).total_seconds()
    print(
        f"tries: {summary}; after the kill, try 1 failed at {failed:.1f} s, try 2 started at "
        f"{retried:.1f} s, the run succeeded by {done:.1f} s"
    )

    retry_log = airflow.task_log(BATCH, run_id, BATCH_TASK, try_number=2)
    assert "Resuming 4 of 4 videos from an earlier try" in retry_log
    assert "Downloading 2 videos" in retry_log
    results = airflow.api.xcom(BATCH, run_id, BATCH_TASK)
    assert [result["status"] for result in results] == ["stored"] * 4
    # Stored by the first try and not downloaded again: two more downloads in all, by the retry.
    stats = simulator.stats()
    assert stats["cdn_gets"] == 6
    assert stats["posts"] == stats["videos_created"] == 4

    stored = sorted(videos.glob("*.mp4"))
    assert [path.stem for path in stored] == sorted(record["video_id"] for record in records)
    assert_stored_as_served(videos)
    # What the killed downloads leave: their empty temporary files, hidden beside the videos.
    held = {record["video_id"] for record in records if record["status"] != "stored"}
    for leftover in videos.glob(".*"):
        match = re.fullmatch(r"\.(\S+)\.mp4\.[0-9a-f]{12}\.partial", leftover.name)
        assert match is not None, leftover.name
        assert match[1] in held, leftover.name
        assert leftover.stat().st_size == 0, leftover.name
    assert airflow.api.state_store(BATCH, run_id, BATCH_TASK) == {}
