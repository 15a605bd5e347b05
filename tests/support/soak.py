"""Soak: many videos through the provider's real operators and trigger, against a simulator that faults a
share of all requests at random; checks that no video is paid for twice or left unstored, and that each
video is stored byte-exact unless its submission's answer was lost (then its task must fail loudly).

Each video runs the way a DAG run would: ``SubmitVideoOperator.execute`` (deferrable) until it defers, the
trigger's ``run()`` to its event in one shared event loop (the triggerer), ``execute_complete`` on a fresh
operator, then ``DownloadVideoOperator.execute`` into a folder. Each task runs inside an Airflow-like
retry loop: a try that raises is run again on a fresh operator, up to ``task_retries`` times, except after
``AirflowFailException``; the task's state store outlives its tries, as Airflow 3.3's does.

:func:`run_soak` is the driver: ``tests/test_soak.py`` runs it at CI size against its in-process
simulator, and ``python -m benchmarks.soak`` at 500 videos against a simulator in its own process.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import httpx

from airflow_octopusx.simulator.media import VideoBody, sample_mp4
from tests.support.task_context import MemoryTaskStateStore

CONN_ID = "octopusx_default"
#: The routes of the simulated service, as its stats name them.
ROUTE_COUNTERS = {
    "POST /v1/videos": "posts",
    "GET /v1/videos/{id}": "gets",
    "GET /v1/videos/{id}/content": "content_gets",
    "GET cdn": "cdn_gets",
}


@dataclass(frozen=True)
class SoakConfig:
    """How big and how hostile a soak is; the defaults are the benchmark's, the test shrinks them.

    ``client_timeout`` replaces the hooks' 30 s HTTP timeout (the operators offer no way to set it), so
    that a ``slow`` fault of ``slow_seconds`` outlasts it within seconds, as a stalled server would.
    Videos above twice the hook's 1 MiB read size can resume a cut transfer with ``Range``; smaller ones
    start over, as nothing was written yet. ``empty_video_url`` sends every download through the API's
    ``/content``, which with ``content_redirect`` answers 302 to the CDN.
    """

    videos: int = 500
    fault_rate: float = 0.2
    fault_seed: int = 123
    concurrency: int = 50
    task_retries: int = 5
    retry_delay: float = 0.2
    generation_seconds: float = 2.0
    poll_interval: float = 0.5
    wait_timeout: float = 600.0
    video_size_bytes: int = 2304 * 1024
    client_timeout: float = 2.0
    slow_seconds: float = 3.0
    content_redirect: bool = True
    empty_video_url: bool = False
    #: No reset or timeout on POST: then every video must be stored, none may fail loudly.
    unambiguous_posts: bool = False

    def simulator_settings(self) -> dict[str, Any]:
        return {
            "generation_seconds": self.generation_seconds,
            "video_size_bytes": self.video_size_bytes,
            "fault_rate": self.fault_rate,
            "fault_seed": self.fault_seed,
            "slow_seconds": self.slow_seconds,
            "content_redirect": self.content_redirect,
            "empty_video_url": self.empty_video_url,
            "unambiguous_posts": self.unambiguous_posts,
        }


class SoakTaskInstance:
    """``context["ti"]`` for one try: records XComs (which, in Airflow, do not survive into the next try)."""

    def __init__(self, task_id: str, try_number: int, run_id: str) -> None:
        self.task_id = task_id
        self.try_number = try_number
        self.run_id = run_id
        self.map_index = -1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class TaskFailed(Exception):
    """A task ran out of tries, or failed without retries (``AirflowFailException``)."""


class Triggerer:
    """One event loop in its own thread that runs every deferred task's trigger, as Airflow's triggerer."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="soak-triggerer", daemon=True)

    def __enter__(self) -> Triggerer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def run(self, trigger: Any) -> list[dict[str, Any]]:
        """Every event the trigger yields before its ``run()`` returns (it should be exactly one)."""
        return asyncio.run_coroutine_threadsafe(_events(trigger), self.loop).result()


async def _events(trigger: Any) -> list[dict[str, Any]]:
    # The triggerer rebuilds a trigger from its serialised form: only what survives that is used.
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(import_module(module), name)(**kwargs)
    return [event.payload async for event in rebuilt.run()]


@dataclass
class TaskRun:
    """One task instance across its tries: its state store, and what each failed try raised."""

    task_id: str
    retries: int
    retry_delay: float
    store: MemoryTaskStateStore = field(default_factory=MemoryTaskStateStore)
    tries: int = 0
    errors: list[BaseException] = field(default_factory=list)
    trigger_events: list[int] = field(default_factory=list)
    #: The DAG run's id, the same in every try (a batch names its manifest after it).
    run_id: str = field(default_factory=lambda: f"soak__{uuid.uuid4().hex[:12]}")

    def run(self, make_operator: Callable[[], Any], triggerer: Triggerer) -> Any:
        from airflow.providers.common.compat.sdk import AirflowFailException
        from airflow.sdk.execution_time.context import OutletEventAccessors

        while True:
            self.tries += 1
            ti = SoakTaskInstance(self.task_id, self.tries, self.run_id)
            context = {
                "ti": ti,
                "task_instance": ti,
                "task_state_store": self.store,
                "outlet_events": OutletEventAccessors(),
            }
            try:
                return self._execute(make_operator, context, triggerer)
            except AirflowFailException as error:
                self.errors.append(error)
                raise TaskFailed(f"try {self.tries}: {_describe(error)} (no retry)") from error
            except Exception as error:
                self.errors.append(error)
                if self.tries > self.retries:
                    raise TaskFailed(f"try {self.tries}: {_describe(error)}") from error
            time.sleep(self.retry_delay)

    def _execute(
        self, make_operator: Callable[[], Any], context: dict[str, Any], triggerer: Triggerer
    ) -> Any:
        from airflow.providers.common.compat.sdk import TaskDeferred

        try:
            return make_operator().execute(context)
        except TaskDeferred as deferred:
            events = triggerer.run(deferred.trigger)
            self.trigger_events.append(len(events))
            if not events:
                raise RuntimeError("the trigger ended without an event") from None
            # Airflow resumes a deferred task on a fresh copy of the operator, in a new process.
            resume = getattr(make_operator(), deferred.method_name)
            return resume(context, **(deferred.kwargs or {}), event=events[0])


def is_ambiguous(error: BaseException | None) -> bool:
    """Whether ``error`` is, or was caused by, an ``AmbiguousSubmissionError``."""
    from airflow_octopusx.exceptions import AmbiguousSubmissionError

    while error is not None:
        if isinstance(error, AmbiguousSubmissionError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _error_name(error: BaseException) -> str:
    """``AirflowFailException <- AmbiguousSubmissionError``: the type, and what it was raised from."""
    cause = error.__cause__
    return type(error).__name__ + (f" <- {type(cause).__name__}" if cause is not None else "")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


@dataclass(eq=False)
class VideoRun:
    """One video's two tasks and where they got to."""

    index: int
    prompt: str
    submit: TaskRun
    download: TaskRun
    video_id: str | None = None
    stored: Path | None = None
    failure: str | None = None


def _run_video(index: int, config: SoakConfig, folder: Path, triggerer: Triggerer) -> VideoRun:
    from airflow_octopusx.operators.octopusx import DownloadVideoOperator, SubmitVideoOperator

    prompt = f"Soak video {index}: a paper boat drifting down a rainy street"
    run = VideoRun(
        index=index,
        prompt=prompt,
        submit=TaskRun("submit_video", config.task_retries, config.retry_delay),
        download=TaskRun("download_video", config.task_retries, config.retry_delay),
    )
    try:
        run.video_id = run.submit.run(
            lambda: SubmitVideoOperator(
                task_id="submit_video",
                prompt=prompt,
                seconds=4,
                octopusx_conn_id=CONN_ID,
                deferrable=True,
                poll_interval=config.poll_interval,
                timeout=config.wait_timeout,
            ),
            triggerer,
        )
        video_id = run.video_id
        run.download.run(
            lambda: DownloadVideoOperator(
                task_id="download_video",
                video_id=video_id,
                destination=f"{folder}/",
                octopusx_conn_id=CONN_ID,
            ),
            triggerer,
        )
        run.stored = folder / f"{video_id}.mp4"
    except TaskFailed as error:
        run.failure = str(error)
    except Exception:  # a bug in the soak itself: keep the other videos going, report it
        run.failure = traceback.format_exc(limit=5)
    return run


class SimulatorControls:
    """The simulator's ``/_simulator`` endpoints (not counted in its stats), in or out of process."""

    def __init__(self, api_url: str) -> None:
        self.base_url = f"{api_url}/_simulator"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        response = httpx.request(method, f"{self.base_url}/{path}", json=payload, timeout=30)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._call("POST", "reset")

    def configure(self, settings: dict[str, Any]) -> None:
        self._call("POST", "settings", settings)

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "stats"))

    def videos(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "videos")["videos"])


@contextmanager
def hooks_time_out_after(seconds: float, conn_id: str = "octopusx_default") -> Iterator[None]:
    """Give the connection (set as a JSON ``AIRFLOW_CONN_*`` variable) the extra ``timeout``.

    Every hook of that connection, on workers and in the triggerer, then gives up on an answer after
    ``seconds`` instead of 30, so a slow answer outlasts the client's patience within a test's time.
    """
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    original = os.environ[variable]
    connection = json.loads(original)
    extra = {**connection.get("extra", {}), "timeout": seconds}
    os.environ[variable] = json.dumps({**connection, "extra": extra})
    try:
        yield
    finally:
        os.environ[variable] = original


class _RecordCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


@contextmanager
def _http_retries_counted() -> Iterator[_RecordCounter]:
    """Count the retry policy's "retrying in ..." warnings: each is one HTTP request sent again."""
    logger = logging.getLogger("airflow_octopusx.hooks.retry")
    level, propagate = logger.level, logger.propagate
    if not logger.isEnabledFor(logging.WARNING):
        # Logging is turned down (the benchmark's quiet run): count the warnings without printing them.
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    counter = _RecordCounter()
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        logger.propagate = propagate


@dataclass
class SoakReport:
    """The figures of one soak, and every way it fell short of the guarantees."""

    config: SoakConfig
    runs: list[VideoRun]
    stats: dict[str, Any]
    created: list[dict[str, Any]]
    byte_exact: int
    leftovers: list[str]
    http_retries: int
    wall_seconds: float

    @property
    def stored(self) -> int:
        return sum(run.stored is not None for run in self.runs)

    @property
    def created_per_prompt(self) -> collections.Counter[str]:
        return collections.Counter(video["prompt"] for video in self.created)

    @property
    def duplicated_tasks(self) -> list[str]:
        """Submit tasks that created more than one video: a video paid twice."""
        return sorted(prompt for prompt, count in self.created_per_prompt.items() if count > 1)

    @property
    def failed_runs(self) -> list[VideoRun]:
        """Videos whose tasks failed, except those that failed loudly on an ambiguous submission."""
        loud = self.loud_failures
        return [run for run in self.runs if run.failure is not None and run not in loud]

    @property
    def loud_failures(self) -> list[VideoRun]:
        """Submit tasks that failed after a submission which may have created a video.

        Failing is the right end for a submission whose answer was lost (sending it again may pay twice);
        the random faults only lose answers before the API does any work, so no video is left behind.
        """
        return [
            run
            for run in self.runs
            if run.video_id is None and any(is_ambiguous(error) for error in run.submit.errors)
        ]

    @property
    def odd_trigger_runs(self) -> int:
        """Trigger runs that did not yield exactly one event."""
        return sum(count != 1 for run in self.runs for count in run.submit.trigger_events)

    def problems(self) -> dict[str, str]:
        """Each guarantee the soak broke, by name; empty when all held."""
        found: dict[str, str] = {}
        videos = self.config.videos
        if self.failed_runs:
            first = self.failed_runs[0]
            found["all tasks succeed"] = (
                f"{len(self.failed_runs)} of {videos} videos failed; "
                f"e.g. video {first.index}: {first.failure}"
            )
        if self.stored + len(self.loud_failures) != videos:
            found["every video stored"] = (
                f"{self.stored} of {videos} stored, {len(self.loud_failures)} failed loudly as ambiguous"
            )
        if self.byte_exact != self.stored:
            found["stored videos byte-exact"] = f"{self.byte_exact} of {self.stored} match the served bytes"
        if self.duplicated_tasks:
            found["one video per submit task"] = (
                f"{len(self.duplicated_tasks)} tasks created more than one video, "
                f"e.g. {self.duplicated_tasks[0]!r} x{self.created_per_prompt[self.duplicated_tasks[0]]}"
            )
        found.update(_store_problems(len(self.created), self.stored, self.leftovers, self.stats))
        if self.odd_trigger_runs:
            found["one event per trigger run"] = (
                f"{self.odd_trigger_runs} trigger runs did not yield one event"
            )
        return found

    def rows(self) -> list[tuple[str, str]]:
        stored = max(self.stored, 1)
        submit_tries = sum(run.submit.tries for run in self.runs)
        download_tries = sum(run.download.tries for run in self.runs)
        submit_retries = sum(max(run.submit.tries - 1, 0) for run in self.runs)
        download_retries = sum(max(run.download.tries - 1, 0) for run in self.runs)
        trigger_runs = sum(len(run.submit.trigger_events) for run in self.runs)
        requests = sum(self.stats[name] for name in ROUTE_COUNTERS.values())
        per_video = ", ".join(
            f"{self.stats[name] / stored:.2f} {route}" for route, name in ROUTE_COUNTERS.items()
        )
        return [
            ("videos (submit + download task pairs)", str(self.config.videos)),
            ("videos stored", str(self.stored)),
            ("byte-exact matches", str(self.byte_exact)),
            ("videos created by the API", str(len(self.created))),
            ("videos created per stored video", f"{len(self.created) / stored:.2f}"),
            ("submit tasks that created > 1 video", str(len(self.duplicated_tasks))),
            ("POSTs per stored video (refused ones included)", f"{self.stats['posts'] / stored:.2f}"),
            ("requests per stored video", f"{requests / stored:.2f}: {per_video}"),
            ("task tries: submit, download", f"{submit_tries}, {download_tries}"),
            (
                "task retries: submit, download",
                f"{submit_retries}, {download_retries}",
            ),
            ("trigger runs (deferrals)", str(trigger_runs)),
            ("HTTP retries by the retry policy", str(self.http_retries)),
            ("faults fired / requests", f"{self.stats['faults_fired']} / {requests}"),
            ("ranged (206) answers", str(self.stats.get("ranged_responses", "n/a"))),
            ("video bytes served per stored video", f"{self.stats['bytes_served'] / stored / 1024:.0f} KiB"),
            ("failed videos", str(len(self.failed_runs))),
            ("submit tasks that failed loudly as ambiguous", str(len(self.loud_failures))),
            ("partial or stray files", str(len(self.leftovers))),
            ("Authorization headers seen by the CDN", str(len(self.stats["cdn_authorization_headers"]))),
            ("wall time", f"{self.wall_seconds:.1f} s"),
        ]

    def failed_try_rows(self) -> list[tuple[str, str, int]]:
        """Why tries failed: task, exception type, count."""
        counts = collections.Counter(
            (task.task_id, _error_name(error))
            for run in self.runs
            for task in (run.submit, run.download)
            for error in task.errors
        )
        return [(task_id, name, count) for (task_id, name), count in sorted(counts.items())]

    def fault_rows(self) -> list[tuple[str, str, int]]:
        return [
            (route, label, count)
            for route, labels in sorted(self.stats["faults_by_route"].items())
            for label, count in sorted(labels.items())
        ]

    def format(self) -> str:
        c = self.config
        lines = [
            f"Soak: {c.videos} videos, {c.fault_rate:.0%} of requests faulted (seed {c.fault_seed}), "
            f"{c.concurrency} at a time, retries={c.task_retries}, {c.video_size_bytes // 1024} KiB videos",
        ]
        width = max(len(name) for name, _ in self.rows())
        lines += [f"  {name:<{width}}  {value}" for name, value in self.rows()]
        lines.append("  failed task tries, by task and error:")
        lines += [f"    {task:<28} {name:<50} {count:>6}" for task, name, count in self.failed_try_rows()]
        lines.append("  faults fired, by route and kind:")
        lines += [f"    {route:<28} {label:<22} {count:>6}" for route, label, count in self.fault_rows()]
        problems = self.problems()
        lines.append("  guarantees: " + ("all held" if not problems else "BROKEN"))
        lines += [f"    - {name}: {detail}" for name, detail in problems.items()]
        return "\n".join(lines)


def expected_video(size: int) -> bytes:
    """The exact bytes the simulator serves for every video of this size."""
    body = VideoBody.build(sample_mp4(), size)
    return b"".join(body.iter_bytes(0, body.total))


def run_soak(api_url: str, config: SoakConfig, folder: Path) -> SoakReport:
    """Run the soak against the simulator at ``api_url``, storing MP4s in ``folder`` (created if needed).

    The ``octopusx_default`` connection must already point at that simulator. Its state is reset first.
    """
    controls = SimulatorControls(api_url)
    controls.reset()
    controls.configure(config.simulator_settings())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (
        hooks_time_out_after(config.client_timeout),
        _http_retries_counted() as http_retries,
        Triggerer() as triggerer,
        ThreadPoolExecutor(config.concurrency, thread_name_prefix="soak-worker") as workers,
    ):
        runs = list(workers.map(lambda i: _run_video(i, config, folder, triggerer), range(config.videos)))
    wall = time.monotonic() - started
    digest = hashlib.sha256(expected_video(config.video_size_bytes)).digest()
    byte_exact = sum(
        run.stored is not None
        and run.stored.is_file()
        and hashlib.sha256(run.stored.read_bytes()).digest() == digest
        for run in runs
    )
    wanted = {run.stored.name for run in runs if run.stored is not None}
    leftovers = sorted(str(path) for path in folder.rglob("*") if path.is_file() and path.name not in wanted)
    return SoakReport(
        config=config,
        runs=runs,
        stats=controls.stats(),
        created=controls.videos(),
        byte_exact=byte_exact,
        leftovers=leftovers,
        http_retries=http_retries.count,
        wall_seconds=wall,
    )


@dataclass
class BatchSoakReport:
    """A soak of ``GenerateVideosOperator``: each request's final record, and the guarantees it broke."""

    config: SoakConfig
    batch_size: int
    records: list[dict[str, Any] | None]
    tasks: list[TaskRun]
    stats: dict[str, Any]
    created: list[dict[str, Any]]
    byte_exact: int
    leftovers: list[str]
    wall_seconds: float

    @property
    def stored(self) -> int:
        return sum(record is not None and record["status"] == "stored" for record in self.records)

    def reasons(self) -> collections.Counter[str]:
        """Why requests ended unstored, by status and code ("unrecorded" if nothing says why)."""
        return collections.Counter(
            "unrecorded" if record is None else f"{record['status']}: {(record['error'] or {}).get('code')}"
            for record in self.records
            if record is None or record["status"] != "stored"
        )

    def problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if "unrecorded" in self.reasons():
            found["every video stored or reported"] = (
                f"{self.reasons()['unrecorded']} requests have no record"
            )
        ambiguous = self.reasons()["not_submitted: ambiguous_submission"]
        if self.stored + ambiguous != self.config.videos:
            found["every video stored"] = (
                f"{self.stored} stored, {ambiguous} ambiguous: {dict(self.reasons())}"
            )
        if self.byte_exact != self.stored:
            found["stored videos byte-exact"] = f"{self.byte_exact} of {self.stored} match the served bytes"
        duplicated = [p for p, n in collections.Counter(v["prompt"] for v in self.created).items() if n > 1]
        if duplicated:
            found["one video per request"] = f"{len(duplicated)} prompts made twice, e.g. {duplicated[0]!r}"
        found.update(_store_problems(len(self.created), self.stored, self.leftovers, self.stats))
        if any(count != 1 for task in self.tasks for count in task.trigger_events):
            found["one event per trigger run"] = "a batch trigger run did not yield exactly one event"
        return found

    def format(self) -> str:
        c = self.config
        stored = max(self.stored, 1)
        rows = [
            ("videos / batches", f"{c.videos} / {len(self.tasks)} of {self.batch_size}"),
            ("videos stored, byte-exact", f"{self.stored}, {self.byte_exact}"),
            ("videos created per stored video", f"{len(self.created) / stored:.2f}"),
            ("POSTs per stored video (refused ones included)", f"{self.stats['posts'] / stored:.2f}"),
            ("task tries (batches)", str(sum(task.tries for task in self.tasks))),
            ("trigger runs (deferrals)", str(sum(len(task.trigger_events) for task in self.tasks))),
            (
                "not stored, by reason",
                ", ".join(f"{k} x{n}" for k, n in sorted(self.reasons().items())) or "none",
            ),
            ("faults fired", str(self.stats["faults_fired"])),
            ("wall time", f"{self.wall_seconds:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [
            f"Batch soak: {c.videos} videos in batches of {self.batch_size}, {c.fault_rate:.0%} of requests "
            f"faulted (seed {c.fault_seed}), retries={c.task_retries}"
        ]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        problems = self.problems()
        lines.append("  guarantees: " + ("all held" if not problems else "BROKEN"))
        lines += [f"    - {name}: {detail}" for name, detail in problems.items()]
        return "\n".join(lines)


def run_batch_soak(api_url: str, config: SoakConfig, folder: Path, batch_size: int) -> BatchSoakReport:
    """``config.videos`` videos through ``GenerateVideosOperator`` in batches of ``batch_size``, each batch
    one task with ``config.task_retries`` retries; the batches run ``config.concurrency`` at a time.

    A request's final state is read from the task state store, which keeps it until the task succeeds;
    a task that succeeded returned every request's result instead.
    """
    from airflow_octopusx.operators.batch import GenerateVideosOperator, fingerprint
    from airflow_octopusx.operators.ledger import Ledger

    controls = SimulatorControls(api_url)
    controls.reset()
    controls.configure(config.simulator_settings())
    folder.mkdir(parents=True, exist_ok=True)
    batches = [
        list(range(start, min(start + batch_size, config.videos)))
        for start in range(0, config.videos, batch_size)
    ]
    tasks = [TaskRun("generate_videos", config.task_retries, config.retry_delay) for _ in batches]

    def run_batch(number: int) -> list[dict[str, Any] | None]:
        requests = [
            {"prompt": f"Soak video {i}: a paper boat drifting down a rainy street"} for i in batches[number]
        ]
        task = tasks[number]
        try:
            results = task.run(
                lambda: GenerateVideosOperator(
                    task_id="generate_videos",
                    requests=requests,
                    defaults={"seconds": 4},
                    destination=f"{folder}/",
                    octopusx_conn_id=CONN_ID,
                    deferrable=True,
                    poll_interval=config.poll_interval,
                    timeout=config.wait_timeout,
                ),
                triggerer,
            )
        except TaskFailed:
            fingerprints = [fingerprint({"seconds": 4, **request}) for request in requests]
            return Ledger(task.store, fingerprints, logging.getLogger(__name__)).results(str)
        return list(results)

    started = time.monotonic()
    with (
        hooks_time_out_after(config.client_timeout),
        Triggerer() as triggerer,
        ThreadPoolExecutor(config.concurrency, thread_name_prefix="soak-batch") as workers,
    ):
        records = [record for batch in workers.map(run_batch, range(len(batches))) for record in batch]
    wall = time.monotonic() - started
    digest = hashlib.sha256(expected_video(config.video_size_bytes)).digest()
    # A record from the task state store has no uri: the file is named after the video.
    stored = [
        folder / f"{record['video_id']}.mp4" for record in records if record and record["status"] == "stored"
    ]
    byte_exact = sum(
        path.is_file() and hashlib.sha256(path.read_bytes()).digest() == digest for path in stored
    )
    # Each batch's manifest is wanted too (its lines are checked in tests/operators/test_batch*.py).
    manifests = {f"generate_videos.{task.run_id}.jsonl" for task in tasks}
    wanted = {path.name for path in stored} | manifests
    leftovers = sorted(str(path) for path in folder.rglob("*") if path.is_file() and path.name not in wanted)
    return BatchSoakReport(
        config=config,
        batch_size=batch_size,
        records=records,
        tasks=tasks,
        stats=controls.stats(),
        created=controls.videos(),
        byte_exact=byte_exact,
        leftovers=leftovers,
        wall_seconds=wall,
    )


def _store_problems(created: int, stored: int, leftovers: list[str], stats: dict[str, Any]) -> dict[str, str]:
    """The guarantees both soaks share: one video made per video stored, no stray files, no key to the CDN."""
    found: dict[str, str] = {}
    if created != stored:
        found["videos created == videos stored"] = f"{created} created, {stored} stored"
    if leftovers:
        found["no partial files"] = f"{len(leftovers)} stray files, e.g. {leftovers[0]}"
    if stats["cdn_authorization_headers"]:
        found["no key to the CDN"] = f"{len(stats['cdn_authorization_headers'])} Authorization headers"
    return found
