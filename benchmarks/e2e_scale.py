"""Hundreds of videos in one DAG run, through a real Airflow deployment and its real triggerer.

It starts the simulator and Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor on
SQLite) as separate processes, exactly as ``tests/e2e`` does, and runs, one after the other with the
same renders, ``octopusx_e2e_mapped`` (``SubmitVideoOperator.partial(deferrable=True).expand(...)`` then
a mapped ``DownloadVideoOperator``: three task runs per video), the same with ``end_from_trigger=True``
(two per video) and ``octopusx_e2e_batch`` (``GenerateVideosOperator``: two task runs in all). While
each runs it samples the triggerer's process group in ``/proc``. It prints, side by side, wall time, task
runs, the triggerer's CPU seconds and peak memory, the most tasks deferred at once, and the POSTs per
video (which must be 1).

    .venv/bin/python -m benchmarks.e2e_scale                 # 200 videos, the three DAGs
    .venv/bin/python -m benchmarks.e2e_scale --videos 1000 --dags octopusx_e2e_batch
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.deployment import (
    Deployment,
    DeploymentSettings,
    SimulatorProcess,
    session_members,
    session_usage,
)

#: The DAGs measured side by side, the task each waits in, and how the table names them.
WAITING_TASK = {
    "octopusx_e2e_mapped": "submit_video",
    "octopusx_e2e_mapped_ended_in_triggerer": "submit_video",
    "octopusx_e2e_batch": "generate_videos",
}
LABELS = {
    "octopusx_e2e_mapped": "mapped",
    "octopusx_e2e_mapped_ended_in_triggerer": "mapped, end_from_trigger",
    "octopusx_e2e_batch": "GenerateVideosOperator",
}
IDLE_SECONDS = 10
#: How often the run's state is read, and the deferred tasks counted (a listing of every task instance).
#: The api-server has one worker, which the tasks' own calls need: reading the run every 0.5 s and
#: listing the tasks every 2 s took about 48 s of its time in a 200-video run, a quarter of the run.
POLL_SECONDS = 2
COUNT_SECONDS = 10


@dataclass
class Peak:
    """Highest values seen while sampling."""

    deferred: int = 0
    pss_bytes: int = 0


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
    parser.add_argument("--videos", type=int, default=200, help="videos in each run (default: 200)")
    parser.add_argument(
        "--dags",
        nargs="+",
        choices=sorted(WAITING_TASK),
        default=list(WAITING_TASK),
        help="the DAGs to run one after the other on one deployment (default: all)",
    )
    parser.add_argument("--generation-seconds", type=float, default=30, help="simulated render time")
    # At 4 the two cores were about 70 % busy: the task runs wait on the api-server, one at a time, not the
    # CPU. 8 took 200 mapped videos from 146.5 s to 103.9 s; 16 was no faster (107.1 s).
    parser.add_argument("--parallelism", type=int, default=8, help="[core] parallelism (worker slots)")
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
    results = {dag_id: measure(airflow, simulator, args, dag_id, idle_pss) for dag_id in args.dags}

    mib = 1024 * 1024
    rows: list[tuple[str, ...]] = [("", *(LABELS[dag_id] for dag_id in args.dags))]

    def row(name: str, value: Callable[[Result], str]) -> None:
        rows.append((name, *(value(results[dag_id]) for dag_id in args.dags)))

    row("run state", lambda r: r.state)
    # Not implied by the run's state: Airflow 3.3.2 has marked a run successful and its task failed after.
    row(
        "task states",
        lambda r: ", ".join(f"{count} {state}" for state, count in sorted(r.task_states.items())),
    )
    row("videos created / MP4s stored", lambda r: f"{r.created} / {r.stored} of {args.videos}")
    row("POSTs per video", lambda r: f"{r.posts / max(r.created, 1):.2f}")
    row("wall time (trigger to run end)", lambda r: f"{r.wall:.1f} s")
    row("task runs (tries + resumes)", lambda r: f"{r.task_runs} ({r.task_runs / args.videos:.2f} per video)")
    row("most tasks deferred at once", lambda r: str(r.deferred))
    row(
        "triggerer CPU during the run",
        lambda r: f"{r.triggerer_cpu:.1f} s (idle: {idle_cpu_rate * r.wall:.1f} s)",
    )
    row("machine CPU busy (2 cores = 100 %)", lambda r: f"{r.machine_busy:.0%}")
    row("triggerer PSS peak", lambda r: f"{r.pss_bytes / mib:.0f} MiB (idle {idle_pss / mib:.0f})")
    row("status GETs per video", lambda r: f"{r.gets / max(r.created, 1):.1f}")
    print(
        f"{args.videos} videos, {args.generation_seconds:g} s renders, parallelism {args.parallelism}, "
        f"{os.cpu_count()} cores"
    )
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)))
    ok = all(
        r.state == "success"
        and set(r.task_states) == {"success"}
        and r.posts == r.created == r.stored == args.videos
        for r in results.values()
    )
    return 0 if ok else 1


@dataclass
class Result:
    state: str
    task_states: Counter[str]
    wall: float
    created: int
    stored: int
    posts: int
    gets: int
    task_runs: int
    deferred: int
    triggerer_cpu: float
    pss_bytes: int
    machine_busy: float


def machine_jiffies() -> tuple[int, int]:
    """Busy and total CPU time of the whole machine so far, from ``/proc/stat`` (idle and iowait are idle)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def measure(
    airflow: Deployment, simulator: SimulatorProcess, args: argparse.Namespace, dag_id: str, idle_pss: int
) -> Result:
    """One run of ``dag_id`` with ``args.videos`` videos, on a simulator and video folder emptied first."""
    simulator.reset()
    simulator.configure(generation_seconds=args.generation_seconds)
    for path in airflow.videos.iterdir():
        path.unlink()
    triggerer = airflow.triggerer.component
    peak = Peak(0, idle_pss)
    last_count = 0.0
    waiting_task = WAITING_TASK[dag_id]

    def sample() -> None:
        nonlocal last_count
        if time.monotonic() - last_count >= COUNT_SECONDS:
            last_count = time.monotonic()
            peak.pss_bytes = max(peak.pss_bytes, pss_bytes(triggerer.pid))
            peak.deferred = max(peak.deferred, len(airflow.deferred_holders(dag_id, run_id, waiting_task)))

    before = session_usage(triggerer.pid)
    busy_before, total_before = machine_jiffies()
    started = time.monotonic()
    run_id = airflow.trigger(dag_id, {"videos": args.videos})
    state = airflow.wait_for_run(dag_id, run_id, timeout=args.timeout, on_poll=sample, interval=POLL_SECONDS)
    wall = time.monotonic() - started
    used = session_usage(triggerer.pid)
    busy_after, total_after = machine_jiffies()
    stats = simulator.stats()
    instances = airflow.api.task_instances(dag_id, run_id)
    # Each run of a task on a worker, first start or resumption after a deferral, opens this group in the
    # try's log; a task ended in the triggerer has no second one.
    worker_logs = (airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}").rglob("attempt=*.log")
    task_runs = sum(log.read_text(errors="replace").count("::group::Pre Execute") for log in worker_logs)
    return Result(
        state=state,
        task_states=Counter(str(ti["state"]) for ti in instances),
        wall=wall,
        created=stats["videos_created"],
        stored=len(list(airflow.videos.glob("*.mp4"))),
        posts=stats["posts"],
        gets=stats["gets"],
        task_runs=task_runs,
        deferred=peak.deferred,
        triggerer_cpu=used.cpu_seconds - before.cpu_seconds,
        pss_bytes=peak.pss_bytes,
        machine_busy=(busy_after - busy_before) / max(total_after - total_before, 1),
    )


if __name__ == "__main__":
    sys.exit(main())
