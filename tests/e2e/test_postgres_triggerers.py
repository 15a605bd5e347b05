"""Two triggerers on PostgreSQL: when the one holding the videos' triggers is killed, the other adopts
them, and every video is still submitted exactly once."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.conftest import assert_one_post_per_playable_video
from tests.e2e.deployment import Deployment, SimulatorProcess, wait_until

MAPPED = "octopusx_e2e_mapped"
VIDEOS = 6


def test_surviving_triggerer_adopts_the_killed_triggerers_videos(
    postgres_deployment: Deployment, simulator: SimulatorProcess, videos: Path
) -> None:
    airflow = postgres_deployment
    simulator.configure(generation_seconds=20)
    run_id = airflow.trigger(MAPPED, {"videos": VIDEOS})
    holders = airflow.wait_for_deferred(MAPPED, run_id, "submit_video", count=VIDEOS)
    victim = next(t for t in airflow.triggerers if t.job_id == holders[0])
    (survivor,) = [t for t in airflow.triggerers if t is not victim]
    orphaned = [index for index, job in holders.items() if job == victim.job_id]

    killed_at = time.monotonic()
    victim.component.kill()

    def adopted() -> bool:
        held = airflow.deferred_holders(MAPPED, run_id, "submit_video")
        return all(held.get(index) == survivor.job_id for index in orphaned)

    wait_until(adopted, timeout=60, what="the survivor to adopt", diagnostics=airflow.diagnostics)
    adoption = time.monotonic() - killed_at
    assert airflow.wait_for_run(MAPPED, run_id, timeout=120) == "success"
    done = time.monotonic() - killed_at
    print(f"{len(orphaned)} triggers adopted {adoption:.1f} s after the kill; run done {done:.1f} s after it")

    for index in orphaned:
        log = airflow.task_log(MAPPED, run_id, "submit_video", 1, index, triggerer_job=survivor.job_id)
        assert "Trigger fired event" in log, index
    assert_one_post_per_playable_video(simulator, videos, VIDEOS)
