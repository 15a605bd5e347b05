"""Hundreds of videos in one DAG run, through a real Airflow deployment and its real triggerer.

It starts the simulator and Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
SQLite) as separate processes, exactly as ``tests/e2e`` does, and triggers ``octopusx_e2e_mapped``:
``SubmitVideoOperator.partial(deferrable=True).expand(prompt=[...])`` then a mapped
``DownloadVideoOperator``. While the run goes it samples the triggerer's process group in ``/proc``.
It prints the run's wall time, the triggerer's peak memory and CPU seconds, the most videos deferred at
once, and the POSTs per video (which must be 1).

    .venv/bin/python -m benchmarks.e2e_scale                 # 200 videos
    .venv/bin/python -m benchmarks.e2e_scale --videos 50 --parallelism 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.deployment import (
    Deployment,
    DeploymentSettings,
    SimulatorProcess,
    session_members,
    session_usage,
)

DAG_ID = "octopusx_e2e_mapped"
IDLE_SECONDS = 10


@dataclass
class Peak:
    """Highest values seen while sampling."""

    rss_bytes: int = 0
    pss_bytes: int = 0
    deferred: int = 0


def pss_bytes(sid: int) -> int:
    """Proportional set size of a session: shared pages split between their users, unlike RSS."""
    total = 0
    for pid in session_members(sid):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--videos", type=int, default=200, help="mapped videos in the run (default: 200)")
    parser.add_argument("--generation-seconds", type=float, default=30, help="simulated render time")
    parser.add_argument("--parallelism", type=int, default=4, help="[core] parallelism (worker slots)")
    parser.add_argument("--timeout", type=float, default=900, help="give up on the run after this long")
    parser.add_argument("--keep", action="store_true", help="keep the Airflow home (logs) afterwards")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="octopusx-e2e-scale-"))
    simulator = SimulatorProcess.start(home / "simulator", generation_seconds=args.generation_seconds)
    airflow = Deployment(home / "airflow", simulator, DeploymentSettings(parallelism=args.parallelism))
    try:
        airflow.start()
        return run(airflow, simulator, args)
    finally:
        airflow.stop()
        simulator.stop()
        if args.keep:
            print(f"Airflow home kept: {home / 'airflow'}")
        else:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


def run(airflow: Deployment, simulator: SimulatorProcess, args: argparse.Namespace) -> int:
    triggerer = airflow.triggerer.component
    # The triggerer's own cost with no trigger (heartbeats, looking for work), to tell apart from the run's.
    before_idle = session_usage(triggerer.pid)
    time.sleep(IDLE_SECONDS)
    idle = session_usage(triggerer.pid)
    idle_cpu_rate = (idle.cpu_seconds - before_idle.cpu_seconds) / IDLE_SECONDS
    idle_pss = pss_bytes(triggerer.pid)
    peak = Peak(idle.rss_bytes, idle_pss)
    last_count = 0.0

    def sample() -> None:
        nonlocal last_count
        usage = session_usage(triggerer.pid)
        peak.rss_bytes = max(peak.rss_bytes, usage.rss_bytes)
        if time.monotonic() - last_count >= 2:  # a full task-instance listing is a few API pages
            last_count = time.monotonic()
            peak.pss_bytes = max(peak.pss_bytes, pss_bytes(triggerer.pid))
            peak.deferred = max(peak.deferred, len(airflow.deferred_holders(DAG_ID, run_id, "submit_video")))

    started = time.monotonic()
    run_id = airflow.trigger(DAG_ID, {"videos": args.videos})
    state = airflow.wait_for_run(DAG_ID, run_id, timeout=args.timeout, on_poll=sample)
    wall = time.monotonic() - started
    used = session_usage(triggerer.pid)
    stats = simulator.stats()
    stored = len(list(airflow.videos.glob("*.mp4")))

    mib = 1024 * 1024
    rows = [
        ("run state", state),
        ("videos", f"{args.videos} requested, {stats['videos_created']} created, {stored} MP4s stored"),
        ("POSTs per video", f"{stats['posts'] / max(stats['videos_created'], 1):.2f}"),
        ("wall time (trigger to run end)", f"{wall:.1f} s ({args.generation_seconds:g} s per render)"),
        ("most videos deferred at once", f"{peak.deferred}"),
        ("triggerer RSS idle / peak", f"{idle.rss_bytes / mib:.0f} / {peak.rss_bytes / mib:.0f} MiB"),
        ("triggerer PSS idle / peak", f"{idle_pss / mib:.0f} / {peak.pss_bytes / mib:.0f} MiB"),
        ("triggerer CPU during the run", f"{used.cpu_seconds - idle.cpu_seconds:.1f} s"),
        ("triggerer CPU when idle", f"{idle_cpu_rate * wall:.1f} s per {wall:.0f} s"),
        ("status GETs", f"{stats['gets']} ({stats['gets'] / max(stats['videos_created'], 1):.1f} per video)"),
        ("parallelism / cores", f"{args.parallelism} / {os.cpu_count()}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    ok = state == "success" and stats["posts"] == stats["videos_created"] == stored == args.videos
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
