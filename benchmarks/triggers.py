"""What waiting for videos costs the triggerer: N ``VideoTaskTrigger`` runs in one event loop, against a
bare ``httpx.AsyncClient`` keep-alive loop doing the same GETs, in the same run, on the same simulator.

A triggerer runs every deferred task's trigger in one event loop on one core, so the cost per poll, the
memory per waiting video, the TCP connections and the loop's lag decide how many videos one triggerer
can wait for. The bare loop is the floor for the same HTTP work; the ratio is our overhead.

The simulator runs in its own process (its CPU is read from ``/proc/<pid>/stat``, apart from ours), and
each measured side runs in a fresh child process, so one side's memory does not pollute the other's.

    .venv/bin/python -m benchmarks.triggers                   # N=1000, 30 s videos, 2 s polls
    .venv/bin/python -m benchmarks.triggers --airflow-runner  # also through Airflow's TriggerRunner
    .venv/bin/python -m benchmarks.triggers --sweep           # capacity of one loop on this machine
    .venv/bin/python -m benchmarks.triggers --sweep bare      # ... of the bare loop, for reference
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common.environment import (
    add_measurement_arguments,
    log_to,
    prepare_airflow_environment,
    raise_open_file_limit,
)
from benchmarks.common.loop_lag import LoopLag
from benchmarks.common.proc import (
    ConnectionCounter,
    Window,
    load_average,
    memory_kib,
    reset_peak_rss,
    wait_until_quiet,
)
from benchmarks.common.product import product_fingerprint, use_product_ref
from benchmarks.common.simulator import SimulatorControl, SimulatorProcess
from benchmarks.common.tables import median, percentile, print_table, ratio, verdict

CONN_ID = "octopusx_default"
TRIGGER_CLASSPATH = "airflow_octopusx.triggers.octopusx.VideoTaskTrigger"
PRODUCT_FILES = ("hooks/octopusx.py", "hooks/shared_clients.py", "triggers/octopusx.py")
GOAL_CPU_RATIO = 1.3
GOAL_CONNECTIONS = 8
GOAL_KIB_PER_VIDEO = 30
GOAL_LAG_P99_MS = 50
# A loop is saturated when it is this busy, or when finished videos are noticed this many intervals late
# (p99; on time it is under one interval). Airflow's runner hands events on once a second: 2 s more.
SATURATED_CORE_SHARE = 0.9
LATE_NOTICE_INTERVALS = 2
RUNNER_EVENT_SLACK = 2.0


@dataclass(frozen=True)
class Setup:
    """Everything a child process needs for one measured run (picklable)."""

    n: int
    interval: float
    generation: float
    tick: float
    bare_connections: int
    #: Bare loop only: queue requests on an ``asyncio.Semaphore(bare_connections)`` before the pool.
    bare_gate: bool
    simulator: SimulatorControl
    simulator_pid: int
    log_file: str
    #: The lag probe in Airflow's runner stops once this file exists.
    stop_file: str = ""
    #: In Airflow's runner: our ``VideoTaskTrigger``, or the bare loop as a trigger (the runner's floor).
    runner_bare: bool = False

    @property
    def deadline_seconds(self) -> float:
        return 3 * self.generation + 120


# -- the two sides, each run in a fresh child process ------------------------------------------------------


def run_triggers(setup: Setup) -> dict[str, Any]:
    """N ``VideoTaskTrigger.run()`` in one asyncio loop, as a triggerer runs them."""
    log_to(setup.log_file)
    from airflow_octopusx.triggers.octopusx import VideoTaskTrigger

    async def wait_for(video_id: str) -> str:
        trigger = VideoTaskTrigger(
            video_id=video_id,
            octopusx_conn_id=CONN_ID,
            poll_interval=setup.interval,
            deadline=time.time() + setup.deadline_seconds,
        )
        events = [event async for event in trigger.run()]
        return str(events[-1].payload["status"]) if events else "no event"

    return asyncio.run(_measure(setup, wait_for))


def run_bare(setup: Setup) -> dict[str, Any]:
    """The floor: one shared keep-alive ``httpx.AsyncClient``, first polls spread over one interval.

    With ``bare_gate`` the requests wait on a semaphore instead of in httpcore's pool, whose every
    hand-over scans all queued requests (quadratic once the queue is long).
    """
    log_to(setup.log_file)
    gate = asyncio.Semaphore(setup.bare_connections) if setup.bare_gate else contextlib.nullcontext()

    async def main() -> dict[str, Any]:
        limits = httpx.Limits(
            max_connections=setup.bare_connections, max_keepalive_connections=setup.bare_connections
        )
        headers = {"Authorization": f"Bearer {setup.simulator.api_key}"}
        async with httpx.AsyncClient(
            base_url=setup.simulator.api_url, headers=headers, limits=limits, timeout=30
        ) as client:

            async def wait_for(video_id: str) -> str:
                await asyncio.sleep(random.uniform(0, setup.interval))
                while True:
                    async with gate:
                        response = await client.get(f"/v1/videos/{video_id}")
                    response.raise_for_status()
                    status = str(response.json()["status"])
                    if status in ("completed", "failed"):
                        return "success" if status == "completed" else status
                    await asyncio.sleep(setup.interval)

            return await _measure(setup, wait_for)

    return asyncio.run(main())


async def _measure(setup: Setup, wait_for: Callable[[str], Awaitable[str]]) -> dict[str, Any]:
    """Warm up on one finished video, then wait for N fresh ones and read CPU, memory, lag and traffic."""
    simulator = setup.simulator
    await wait_for(simulator.submit_videos(1, generation_seconds=0)[0])
    created = simulator.submit_videos_timed(setup.n)
    noticed: dict[str, float] = {}

    async def timed_wait_for(video_id: str) -> str:
        status = await wait_for(video_id)
        noticed[video_id] = time.time()
        return status

    gc.collect()
    rss_before = memory_kib()
    reset_peak_rss()
    stats_before = simulator.stats()
    stop = asyncio.Event()
    lag = LoopLag(setup.tick)
    lag_task = asyncio.create_task(lag.run(stop))
    with Window({"ours": "self", "simulator": setup.simulator_pid}) as window:
        tasks = [asyncio.create_task(timed_wait_for(video_id)) for video_id in created]
        waiting = await _all_waiting(setup, stats_before["gets"], tasks)
        waiting["startup_cpu"] = window.cpu_so_far("ours")
        outcomes = collections.Counter(await asyncio.gather(*tasks))
    stop.set()
    await lag_task
    stats_after = simulator.stats()
    waiting["rss_peak"] = memory_kib(field="VmHWM")
    figures = _figures(setup, window, stats_before, stats_after, rss_before, waiting, outcomes, lag.summary())
    return {**figures, **_notice_delays(setup, created, noticed)}


def _notice_delays(setup: Setup, created: dict[str, float], noticed: dict[str, float]) -> dict[str, float]:
    """How long after each video completed its wait ended: under one interval (plus jitter) when every
    poll is on time; more when the loop falls behind."""
    delays = [noticed[video_id] - created[video_id] - setup.generation for video_id in noticed]
    return {"notice_p50_s": percentile(delays, 50), "notice_p99_s": percentile(delays, 99)}


async def _all_waiting(setup: Setup, gets_before: int, tasks: Sequence[asyncio.Task[str]]) -> dict[str, Any]:
    """Return once every video has been polled (N GETs, one interval passed): all are now waiting."""
    started = time.monotonic()
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0.25)
        gets = (await asyncio.to_thread(setup.simulator.stats))["gets"] - gets_before
        elapsed = time.monotonic() - started
        if gets >= setup.n and elapsed >= setup.interval:
            return {"waiting_after": elapsed, "rss_waiting": memory_kib()}
    return {"waiting_after": float("nan"), "rss_waiting": memory_kib()}


def _figures(
    setup: Setup,
    window: Window,
    before: dict[str, Any],
    after: dict[str, Any],
    rss_before: int,
    waiting: dict[str, Any],
    outcomes: collections.Counter[str],
    lag: dict[str, float],
    own_cpu: float | None = None,
) -> dict[str, Any]:
    polls = after["gets"] - before["gets"]
    cpu = window.cpu["ours"] if own_cpu is None else own_cpu
    return {
        "n": setup.n,
        "polls": polls,
        "polls_per_video": polls / setup.n,
        "cpu": cpu,
        "cpu_ms_per_poll": 1000 * cpu / polls if polls else float("nan"),
        "startup_ms_per_video": 1000 * waiting["startup_cpu"] / setup.n,
        "core_share": cpu / window.wall,
        "connections": after["api_connections"] - before["api_connections"],
        "kib_per_video": (waiting["rss_waiting"] - rss_before) / setup.n,
        "peak_kib_per_video": (waiting["rss_peak"] - rss_before) / setup.n,
        "rss_before_mib": rss_before / 1024,
        "waiting_after": waiting["waiting_after"],
        "simulator_core_share": window.cpu["simulator"] / window.wall,
        "others_core_share": window.others / window.wall,
        "wall": window.wall,
        "outcomes": dict(outcomes),
        "code": product_fingerprint(*PRODUCT_FILES),
        **lag,
    }


# -- the same triggers through Airflow's own trigger runner ------------------------------------------------


def run_airflow_runner(setup: Setup) -> dict[str, Any]:
    """N triggers through ``TriggerRunnerSupervisor`` and its ``TriggerRunner`` subprocess, fed directly.

    The supervisor runs without a metadata-DB job, the extension point its docstring describes (override
    ``heartbeat``, ``load_triggers`` and ``metric_tags``): it hands the runner ``RunTrigger`` workloads
    with encrypted kwargs, as it would after reading them from the DB, and collects the events. The
    runner process is Airflow's, unchanged: comms, per-trigger log routing, greenback portal and all.
    """
    log_to(setup.log_file)
    import structlog
    from airflow.executors.workloads.trigger import RunTrigger
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
    from airflow.models.trigger import Trigger

    from benchmarks._bare_trigger import BarePollTrigger
    from benchmarks._lag_trigger import LoopLagTrigger

    class Supervisor(TriggerRunnerSupervisor):
        """Job-less supervisor: workloads come from ``to_load``, events go to ``fired``."""

        def heartbeat(self) -> None:
            pass

        def clean_unused(self) -> None:
            pass

        def metric_tags(self) -> dict[str, str]:
            return {"hostname": "benchmark"}

        def load_triggers(self) -> None:
            while self.to_load:
                self.creating_triggers.append(self.to_load.popleft())

        def on_trigger_event(self, trigger_id: int, event: Any) -> None:
            self.fired[trigger_id] = {**event.payload, "noticed": time.time()}

        def on_trigger_failure(self, trigger_id: int, exc: list[str] | None) -> None:
            self.fired[trigger_id] = {"status": "trigger failed", "traceback": exc}

    def workload(trigger_id: int, classpath: str, kwargs: dict[str, Any]) -> RunTrigger:
        return RunTrigger(id=trigger_id, classpath=classpath, encrypted_kwargs=Trigger.encrypt_kwargs(kwargs))

    def video_workload(trigger_id: int, video_id: str) -> RunTrigger:
        if setup.runner_bare:
            bare = BarePollTrigger(video_id, setup.interval, setup.bare_connections)
            return workload(trigger_id, *bare.serialize())
        kwargs = {
            "video_id": video_id,
            "octopusx_conn_id": CONN_ID,
            "poll_interval": setup.interval,
            "deadline": time.time() + setup.deadline_seconds,
        }
        return workload(trigger_id, TRIGGER_CLASSPATH, kwargs)

    def run_until(done: Callable[[], bool], timeout: float, every: Callable[[], None] | None = None) -> None:
        give_up = time.monotonic() + timeout
        while not done():
            if not supervisor.is_alive():
                raise RuntimeError(f"The trigger runner died; see {setup.log_file}")
            if time.monotonic() > give_up:
                raise TimeoutError(f"No result after {timeout:.0f} s; see {setup.log_file}")
            supervisor.run_once()
            if every is not None:
                every()

    simulator = setup.simulator
    supervisor = Supervisor.start(capacity=setup.n + 2, logger=structlog.get_logger("benchmark"))
    supervisor.to_load = collections.deque()
    supervisor.fired = {}
    try:
        runner = supervisor.pid
        warm_up = simulator.submit_videos(1, generation_seconds=0)[0]
        supervisor.to_load.append(video_workload(1, warm_up))
        run_until(lambda: 1 in supervisor.fired, 120)
        created = simulator.submit_videos_timed(setup.n)
        rss_before = memory_kib(runner)
        reset_peak_rss(runner)
        before = simulator.stats()
        probe_id = setup.n + 2
        probe = LoopLagTrigger(stop_file=setup.stop_file, tick=setup.tick)
        supervisor.to_load.append(workload(probe_id, *probe.serialize()))
        video_ids = dict(enumerate(created, start=2))
        supervisor.to_load.extend(video_workload(i, video_id) for i, video_id in video_ids.items())
        waiting: dict[str, Any] = {}

        def check_waiting() -> None:
            elapsed = time.monotonic() - window.started
            if waiting or elapsed < setup.interval:
                return
            if simulator.stats()["gets"] - before["gets"] >= setup.n:
                waiting.update(waiting_after=elapsed, rss_waiting=memory_kib(runner))
                waiting["startup_cpu"] = window.cpu_so_far("ours")

        video_events = range(2, setup.n + 2)
        with Window({"ours": runner, "supervisor": "self", "simulator": setup.simulator_pid}) as window:
            run_until(
                lambda: all(i in supervisor.fired for i in video_events),
                2 * setup.deadline_seconds,
                check_waiting,
            )
            Path(setup.stop_file).touch()
            run_until(lambda: probe_id in supervisor.fired, 60)
        after = simulator.stats()
        rss_peak = memory_kib(runner, "VmHWM")
    finally:
        supervisor.kill(escalation_delay=10, force=True)
    outcomes = collections.Counter(str(supervisor.fired[i].get("status")) for i in video_events)
    lag = {k: v for k, v in supervisor.fired[probe_id].items() if k.startswith("lag_")}
    if not waiting:
        waiting = {"waiting_after": float("nan"), "rss_waiting": rss_before, "startup_cpu": float("nan")}
    waiting["rss_peak"] = rss_peak
    figures = _figures(setup, window, before, after, rss_before, waiting, outcomes, lag)
    noticed = {
        video_ids[i]: supervisor.fired[i]["noticed"] for i in video_events if "noticed" in supervisor.fired[i]
    }
    figures.update(_notice_delays(setup, created, noticed))
    polls = figures["polls"] or 1
    figures["supervisor_cpu_ms_per_poll"] = 1000 * window.cpu["supervisor"] / polls
    figures["total_cpu_ms_per_poll"] = 1000 * (window.cpu["ours"] + window.cpu["supervisor"]) / polls
    return figures


# -- running and reporting ---------------------------------------------------------------------------------


def in_child(function: Callable[[Setup], dict[str, Any]], setup: Setup, wait_quiet: float) -> dict[str, Any]:
    """Run one measured side in a fresh interpreter (spawned, so nothing is inherited but the env), once
    other processes have gone quiet (or ``wait_quiet`` seconds have passed)."""
    setup.simulator.reset()
    print(f"    {wait_until_quiet(wait_quiet)}", flush=True)
    port = httpx.URL(setup.simulator.api_url).port or 80
    with (
        ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool,
        ConnectionCounter(port) as connections,
    ):
        figures = pool.submit(function, setup).result()
    return {**figures, "peak_open_connections": connections.peak}


def combined(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median of every figure over repeated runs; outcomes added up; each run's CPU per poll kept."""
    result: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float):
            result[key] = median([run[key] for run in runs])
        elif key == "outcomes":
            result[key] = dict(sum((collections.Counter(run[key]) for run in runs), collections.Counter()))
        else:
            result[key] = value
    result["cpu_runs"] = [round(run["cpu_ms_per_poll"], 3) for run in runs]
    return result


def report_comparison(ours: dict[str, Any], bare: dict[str, Any], label: str) -> None:
    cpu_ratio = ours["cpu_ms_per_poll"] / bare["cpu_ms_per_poll"]
    rows = [
        (
            "CPU per poll (ms)",
            f"{ours['cpu_ms_per_poll']:.3f}",
            f"{bare['cpu_ms_per_poll']:.3f}",
            f"{cpu_ratio:.2f}x",
            f"<= {GOAL_CPU_RATIO}x bare",
            verdict(cpu_ratio <= GOAL_CPU_RATIO),
        ),
        (
            "  of which start-up, per video (ms)",
            f"{ours['startup_ms_per_video']:.2f}",
            f"{bare['startup_ms_per_video']:.2f}",
            ratio(ours["startup_ms_per_video"], bare["startup_ms_per_video"]),
            "",
            "",
        ),
        (
            "TCP connections accepted",
            f"{ours['connections']:g}",
            f"{bare['connections']:g}",
            ratio(ours["connections"], bare["connections"]),
            f"<= {GOAL_CONNECTIONS}",
            verdict(ours["connections"] <= GOAL_CONNECTIONS),
        ),
        (
            "  most open at once (sampled)",
            f"{ours['peak_open_connections']:g}",
            f"{bare['peak_open_connections']:g}",
            "",
            f"<= {GOAL_CONNECTIONS}",
            verdict(ours["peak_open_connections"] <= GOAL_CONNECTIONS),
        ),
        (
            "RSS per waiting video (KiB)",
            f"{ours['kib_per_video']:.1f}",
            f"{bare['kib_per_video']:.1f}",
            ratio(ours["kib_per_video"], bare["kib_per_video"]),
            f"<= {GOAL_KIB_PER_VIDEO}",
            verdict(ours["kib_per_video"] <= GOAL_KIB_PER_VIDEO),
        ),
        (
            "  peak RSS during the wait, per video (KiB)",
            f"{ours['peak_kib_per_video']:.1f}",
            f"{bare['peak_kib_per_video']:.1f}",
            ratio(ours["peak_kib_per_video"], bare["peak_kib_per_video"]),
            "",
            "",
        ),
        *(
            (
                f"loop lag {q} (ms)",
                f"{ours[f'lag_{q}_ms']:.1f}",
                f"{bare[f'lag_{q}_ms']:.1f}",
                ratio(ours[f"lag_{q}_ms"], bare[f"lag_{q}_ms"]),
                f"<= {GOAL_LAG_P99_MS}" if q == "p99" else "",
                verdict(ours["lag_p99_ms"] <= GOAL_LAG_P99_MS) if q == "p99" else "",
            )
            for q in ("p50", "p99", "max")
        ),
        ("polls per video", f"{ours['polls_per_video']:.2f}", f"{bare['polls_per_video']:.2f}", "", "", ""),
        (
            "video done -> wait over, p50 / p99 (s)",
            f"{ours['notice_p50_s']:.2f} / {ours['notice_p99_s']:.2f}",
            f"{bare['notice_p50_s']:.2f} / {bare['notice_p99_s']:.2f}",
            "",
            "",
            "",
        ),
        ("loop busy (share of one core)", _share(ours["core_share"]), _share(bare["core_share"]), "", "", ""),
        (
            "simulator CPU (share of one core)",
            _share(ours["simulator_core_share"]),
            _share(bare["simulator_core_share"]),
            "",
            "",
            "",
        ),
        (
            "other processes (share of one core)",
            _share(ours["others_core_share"]),
            _share(bare["others_core_share"]),
            "",
            "",
            "",
        ),
        ("all waiting after (s)", f"{ours['waiting_after']:.1f}", f"{bare['waiting_after']:.1f}", "", "", ""),
        ("wall time (s)", f"{ours['wall']:.1f}", f"{bare['wall']:.1f}", "", "", ""),
        ("outcomes", _outcomes(ours), _outcomes(bare), "", "", ""),
    ]
    if "total_cpu_ms_per_poll" in ours:
        # Against the bare loop in its own process, or the bare trigger's runner and supervisor together.
        total_ratio = ours["total_cpu_ms_per_poll"] / bare.get(
            "total_cpu_ms_per_poll", bare["cpu_ms_per_poll"]
        )
        rows.insert(
            1,
            (
                "  + supervisor process (ms per poll)",
                f"{ours['supervisor_cpu_ms_per_poll']:.3f}",
                f"{bare['supervisor_cpu_ms_per_poll']:.3f}" if "supervisor_cpu_ms_per_poll" in bare else "",
                f"{total_ratio:.2f}x (both)",
                "",
                "",
            ),
        )
    print_table(label, ("figure", "ours", "bare", "ratio", "goal", "verdict"), rows)
    if len(ours["cpu_runs"]) > 1:
        print(
            f"  medians of {len(ours['cpu_runs'])} runs; CPU ms per poll by run: ours {ours['cpu_runs']}, "
            f"bare {bare['cpu_runs']}"
        )
    print(f"  ours ran {ours['code']}")


def report_sweep(results: Sequence[dict[str, Any]], setup: Setup, where: str) -> None:
    rows = []
    capacity = None
    for result in results:
        limits = _limits(result, setup)
        if limits and capacity is None:
            capacity = (result["n"], limits)
        rows.append(
            (
                result["n"],
                f"{result['polls'] / result['wall']:.0f}",
                f"{result['cpu_ms_per_poll']:.3f}",
                f"{result['supervisor_cpu_ms_per_poll']:.3f}"
                if "supervisor_cpu_ms_per_poll" in result
                else "-",
                _share(result["core_share"]),
                f"{result['lag_p50_ms']:.1f}",
                f"{result['lag_p99_ms']:.1f}",
                f"{result['polls_per_video']:.1f}",
                f"{result['notice_p50_s']:.1f} / {result['notice_p99_s']:.1f}",
                f"{result['kib_per_video']:.1f}",
                f"{result['connections']:g} / {result['peak_open_connections']:g}",
                _share(result["simulator_core_share"]),
                _share(result["others_core_share"]),
                ", ".join(limits) or "-",
            )
        )
    header = (
        "N",
        "polls/s",
        "CPU ms/poll",
        "+supervisor",
        "loop busy",
        "lag p50",
        "lag p99",
        "polls/video",
        "noticed after p50/p99 s",
        "KiB/video",
        "conns accepted / at once",
        "simulator",
        "others",
        "limit reached",
    )
    codes = sorted({result["code"] for result in results})
    print_table(
        f"Sweep: {where}, {setup.interval:g} s polls, {setup.generation:g} s videos",
        header,
        rows,
    )
    print("  ran " + "; ".join(codes))
    if capacity is None:
        print(f"\nNo limit reached up to N={results[-1]['n']}; sweep further (--sweep-n) to find it.")
    else:
        print(f"\nFirst limit at N={capacity[0]}: {', '.join(capacity[1])}.")


def _limits(result: dict[str, Any], setup: Setup) -> list[str]:
    limits = []
    if result["lag_p99_ms"] > GOAL_LAG_P99_MS:
        limits.append(f"lag p99 > {GOAL_LAG_P99_MS} ms")
    if result["core_share"] >= SATURATED_CORE_SHARE:
        limits.append("loop CPU saturated")
    if result["simulator_core_share"] >= SATURATED_CORE_SHARE:
        limits.append("simulator CPU saturated")
    slack = RUNNER_EVENT_SLACK if "supervisor_cpu_ms_per_poll" in result else 0.0
    if result["notice_p99_s"] > LATE_NOTICE_INTERVALS * setup.interval + slack:
        limits.append("finished videos noticed late")
    if set(result["outcomes"]) != {"success"}:
        limits.append(f"outcomes {_outcomes(result)}")
    return limits


def _share(value: float) -> str:
    return f"{100 * value:.0f}%"


def _outcomes(result: dict[str, Any]) -> str:
    return ", ".join(f"{count} {status}" for status, count in sorted(result["outcomes"].items()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=1000, help="videos waited for at once (default: %(default)s)"
    )
    parser.add_argument(
        "--generation", type=float, default=30.0, help="seconds each video takes (default: %(default)s)"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="poll interval, s (default: %(default)s)")
    parser.add_argument(
        "--tick", type=float, default=0.01, help="lag probe's sleep, s (default: %(default)s)"
    )
    parser.add_argument(
        "--bare-connections",
        type=int,
        default=GOAL_CONNECTIONS,
        help="connection limit of the bare loop's pool (default: %(default)s, the goal for ours)",
    )
    parser.add_argument(
        "--bare-gate",
        action="store_true",
        help="the bare loop queues requests on an asyncio.Semaphore(--bare-connections) in front of "
        "httpx's pool (shows what the pool's own queue costs)",
    )
    parser.add_argument(
        "--airflow-runner",
        action="store_true",
        help="also run the N triggers through Airflow's TriggerRunnerSupervisor and TriggerRunner",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of bare/ours(/runner), alternating; figures are medians (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="Airflow logging level in the measured processes; WARNING shows what trigger logs cost "
        "(default: %(default)s, as deployed)",
    )
    add_measurement_arguments(parser)
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="ours",
        choices=("ours", "bare"),
        help="one side only, for each N in --sweep-n, to find the capacity: ours (in one loop, or with "
        "--airflow-runner in Airflow's runner; the default) or the bare loop",
    )
    parser.add_argument(
        "--sweep-n",
        default="1000,1250,1500,2000,3000",
        help="comma-separated N for --sweep (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raise_open_file_limit()
    work = Path(tempfile.mkdtemp(prefix="octopusx-bench-triggers-"))
    if args.product_ref:
        commit = use_product_ref(args.product_ref, work / "product")
        print(f"Measuring airflow_octopusx at {args.product_ref} (commit {commit})")
    print(f"Product code: {product_fingerprint(*PRODUCT_FILES)}")
    print(f"Machine: {os.cpu_count()} cores, {load_average()}")
    print(f"Logs in {work}; Airflow log level {args.log_level}")
    with SimulatorProcess(generation_seconds=args.generation) as simulator:
        prepare_airflow_environment(work / "airflow", {CONN_ID: simulator.control.connection})
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = args.log_level
        setup = Setup(
            n=args.n,
            interval=args.interval,
            generation=args.generation,
            tick=args.tick,
            bare_connections=args.bare_connections,
            bare_gate=args.bare_gate,
            simulator=simulator.control,
            simulator_pid=simulator.pid,
            log_file=str(work / "ours.log"),
        )
        if args.sweep:
            function, where = (
                (run_airflow_runner, "VideoTaskTrigger in Airflow's TriggerRunner process")
                if args.airflow_runner
                else (run_triggers, "VideoTaskTrigger in one event loop")
            )
            if args.sweep == "bare":
                gated = f", gated by a semaphore of {args.bare_connections}" if args.bare_gate else ""
                function, where = run_bare, f"bare httpx loop (pool of {args.bare_connections}{gated})"
            results = []
            for n in (int(text) for text in args.sweep_n.split(",")):
                print(f"  N={n} ...", flush=True)
                files = {"log_file": f"sweep-{n}.log", "stop_file": f"stop-sweep-{n}"}
                step = replace(setup, n=n, **{key: str(work / file) for key, file in files.items()})
                results.append(in_child(function, step, args.wait_quiet))
            report_sweep(results, setup, where)
        else:
            runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            sides = [
                ("bare httpx loop", run_bare, "bare"),
                ("VideoTaskTrigger in one loop", run_triggers, "ours"),
            ]
            if args.airflow_runner:
                sides.append(("through Airflow's TriggerRunnerSupervisor", run_airflow_runner, "runner"))
                sides.append(
                    ("the bare loop as a trigger, through the same", run_airflow_runner, "runner-bare")
                )
            for round_number in range(1, args.repeats + 1):
                for description, function, name in sides:
                    print(f"  {description}, N={args.n}, round {round_number} ...", flush=True)
                    files = {
                        "log_file": f"{name}-{round_number}.log",
                        "stop_file": f"stop-{name}-{round_number}",
                    }
                    round_setup = replace(
                        setup,
                        runner_bare=name == "runner-bare",
                        **{key: str(work / file) for key, file in files.items()},
                    )
                    runs[name].append(in_child(function, round_setup, args.wait_quiet))
            bare = combined(runs["bare"])
            title = (
                f"{args.n} videos of {args.generation:g} s, polled every {args.interval:g} s: "
                "VideoTaskTrigger.run() in one loop vs bare httpx"
            )
            report_comparison(combined(runs["ours"]), bare, title)
            if args.airflow_runner:
                runner = combined(runs["runner"])
                report_comparison(
                    runner, bare, "The same through Airflow's TriggerRunnerSupervisor + TriggerRunner process"
                )
                report_comparison(
                    runner,
                    combined(runs["runner-bare"]),
                    "Both through Airflow's runner: VideoTaskTrigger vs the bare loop as a trigger "
                    "(benchmarks/_bare_trigger.py)",
                )
    print(f"\nMachine: {load_average()} at end.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
