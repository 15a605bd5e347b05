"""A real Airflow deployment on loopback: api-server, scheduler, dag-processor and triggerer processes,
and Celery workers when it runs CeleryExecutor.

Each component runs in its own session (``setsid``). Stopping one sends SIGTERM to its process group, then
SIGKILL to whatever is left of its session: the executor's workers, task processes (which move to process
groups of their own) and the triggerer's runner, so nothing is orphaned. The OctopusX simulator runs as a
separate process too, as it would beside a real deployment. Everything listens on 127.0.0.1 only; every
wait has a deadline.

This module imports neither Airflow nor the product: it drives the deployment only through processes,
the REST API and the simulator's HTTP controls, so it also imports cleanly on older Airflow versions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[2]
E2E_DAGS = Path(__file__).resolve().parent / "dags"
BIN = Path(sys.executable).parent
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_T = TypeVar("_T")


class DeploymentError(RuntimeError):
    """A component did not start, or a wait ran out of time; carries the tails of the component logs."""


def free_port() -> int:
    """A loopback port that was free a moment ago (components take a port number, not a socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], _T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.25,
    diagnostics: Callable[[], str] | None = None,
) -> _T:
    """Poll ``check`` until it returns something other than ``None``/``False``, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = f"\n{diagnostics()}" if diagnostics else ""
            raise DeploymentError(f"Timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


# -- processes --------------------------------------------------------------------------------------


@dataclass
class Component:
    """One started command, leader of its own session, with its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def pids(self) -> list[int]:
        """Every live process of its session: the leader and all it started, task processes included."""
        return session_members(self.pid)

    def kill(self) -> None:
        """SIGKILL the whole session at once, as a lost machine would."""
        self._kill_session()
        self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the leader's group, give it ``timeout`` seconds to shut down cleanly (the scheduler stops
        its workers, the triggerer its runner), then SIGKILL whatever is left in the session."""
        stop_together([self], timeout)

    def _terminate(self) -> None:
        _signal_group(self.pid, signal.SIGTERM)

    def _reap(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a terminated component to exit, then SIGKILL its session."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        with contextlib.suppress(DeploymentError):
            wait_until(lambda: not self.pids(), timeout=5, what=f"{self.name} to exit")
        self._kill_session()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def _kill_session(self) -> None:
        # Task processes put themselves in process groups of their own, so a group signal misses them;
        # they stay in the session, which nothing here leaves.
        def killed() -> bool:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not self.pids()

        wait_until(killed, timeout=10, interval=0.1, what=f"{self.name} to die")


def stop_together(components: Sequence[Component], timeout: float = 20) -> None:
    """Stop several components as ``Component.stop`` does, but at once: each shuts down while the others
    do, within ``timeout`` seconds in all."""
    for component in components:
        component._terminate()
    deadline = time.monotonic() + timeout
    for component in components:
        component._reap(max(0.0, deadline - time.monotonic()))


def start_component(
    name: str, argv: Sequence[str], env: Mapping[str, str], logs: Path, cwd: Path | None = None
) -> Component:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Component(name, popen, log)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (index 0 is the state), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _live_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    members = []
    for pid in _live_pids():
        stat = _proc_stat(pid)
        if stat is not None and stat[0] != "Z" and int(stat[3]) == sid:
            members.append(pid)
    return members


def find_processes(title: str) -> list[int]:
    """Pids whose command line (as set by ``setproctitle``) is exactly ``title``."""
    found = []
    for pid in _live_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.replace(b"\0", b" ").strip().decode(errors="replace") == title:
            found.append(pid)
    return found


def parent_pid(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[1]) if stat else None


@dataclass(frozen=True)
class Usage:
    """Resources of a session: the sum of its processes' RSS, and CPU seconds they used so far."""

    rss_bytes: int
    cpu_seconds: float


def session_usage(sid: int) -> Usage:
    page = os.sysconf("SC_PAGE_SIZE")
    ticks = os.sysconf("SC_CLK_TCK")
    rss = cpu = 0
    for pid in session_members(sid):
        stat = _proc_stat(pid)
        if stat is not None:
            # Fields 14-17 of stat (utime, stime, cutime, cstime) and 24 (rss, in pages), counted from 1.
            cpu += sum(int(value) for value in stat[11:15])
            rss += int(stat[21]) * page
    return Usage(rss, cpu / ticks)


# -- the simulator --------------------------------------------------------------------------------


@dataclass
class SimulatorProcess:
    """``python -m airflow_octopusx.simulator`` in its own process, steered over ``/_simulator/*``."""

    component: Component
    api_url: str
    api_key: str

    @classmethod
    def start(cls, logs: Path, *, generation_seconds: float, api_key: str = "e2e-key") -> SimulatorProcess:
        argv = [sys.executable, "-m", "airflow_octopusx.simulator", "--port", "0", "--api-key", api_key]
        argv += ["--generation-seconds", str(generation_seconds)]
        env = {**_clean_environment(), "PYTHONUNBUFFERED": "1"}
        component = start_component("simulator", argv, env, logs, cwd=REPO)
        try:
            url = wait_until(
                lambda: _simulator_url(component),
                timeout=30,
                what="the simulator to listen",
                diagnostics=component.tail,
            )
        except BaseException:
            component.stop()
            raise
        return cls(component, url, api_key)

    @property
    def connection(self) -> str:
        """The ``AIRFLOW_CONN_OCTOPUSX_DEFAULT`` value pointing at this simulator."""
        return json.dumps({"conn_type": "octopusx", "host": self.api_url, "password": self.api_key})

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.api_url}/_simulator/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._control("POST", "reset")

    def configure(self, **settings: Any) -> None:
        self._control("POST", "settings", settings)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "stats")
        return result

    def inject(self, *faults: Mapping[str, Any]) -> None:
        """Arm faults (``airflow_octopusx.simulator.faults.Fault`` fields) for the next requests."""
        self._control("POST", "faults", [dict(fault) for fault in faults])

    def stop(self) -> None:
        # Idle, it exits at once; a request a drill holds (a delay fault) would keep it waiting until the
        # hold ends, and nothing in it needs a clean shutdown.
        self.component.stop(3)


def _simulator_url(component: Component) -> str | None:
    if not component.alive:
        raise DeploymentError(f"The simulator exited:\n{component.tail()}")
    match = re.search(r"OctopusX simulator API: (http://\S+)", component.output())
    return match.group(1) if match else None


def _clean_environment() -> dict[str, str]:
    """This process's environment without Airflow settings (the unit tests' conftest sets its own).

    ``PYTHONDONTWRITEBYTECODE`` goes too: every task process imports the DAG file and the provider
    afresh, and without cached bytecode each one compiled them again (about 0.2 s of CPU per task run
    here), a cost no installed deployment pays.
    """
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW_", "AIRFLOW__", "OCTOPUSX_")) and key != "PYTHONDONTWRITEBYTECODE"
    }


# -- the REST API ---------------------------------------------------------------------------------


class AirflowApi:
    """The public REST API (v2), authenticated with a JWT from the simple auth manager's token endpoint."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self._credentials = {"username": username, "password": password}
        self._http = httpx.Client(base_url=base_url, timeout=30)

    def close(self) -> None:
        self._http.close()

    def login(self) -> str:
        """Get a JWT for the admin user and send it with every later call; returns it."""
        response = self._http.post("/auth/token", json=self._credentials)
        response.raise_for_status()
        token = str(response.json()["access_token"])
        self._http.headers["Authorization"] = f"Bearer {token}"
        return token

    def get(self, path: str, **params: Any) -> Any:
        response = self._http.get(f"/api/v2/{path}", params=params)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any] | None:
        try:
            response = self._http.get("/api/v2/monitor/health", timeout=5)
        except httpx.TransportError:
            return None
        return dict(response.json()) if response.status_code == 200 else None

    def dag_exists(self, dag_id: str) -> bool:
        return self._http.get(f"/api/v2/dags/{dag_id}").status_code == 200

    def unpause(self, dag_id: str) -> None:
        response = self._http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        response.raise_for_status()

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        response = self._http.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.get(f"dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_instances(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[dict[str, Any]]:
        """Every task instance of a run (mapped ones included), following the API's pagination."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100, "order_by": "map_index"}
        if task_id is not None:
            params["task_id"] = task_id
        while True:
            page = self.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances", offset=len(found), **params)
            found += page["task_instances"]
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        tries: list[dict[str, Any]] = self.get(path, map_index=map_index)["task_instances"]
        return tries

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path, deserialize=True)["value"]

    def state_store(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """A task instance's task state store (Airflow 3.3+), as key -> value."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/state-store"
        found: dict[str, Any] = {}
        while True:
            page = self.get(path, map_index=map_index, limit=100, offset=len(found))
            found |= {entry["key"]: entry["value"] for entry in page["task_state_store"]}
            if not page["task_state_store"] or len(found) >= page["total_entries"]:
                return found

    def alive_triggerer_ids(self) -> set[int]:
        jobs = self.get("jobs", job_type="TriggererJob", is_alive=True, limit=100)["jobs"]
        return {int(job["id"]) for job in jobs}


# -- the deployment -------------------------------------------------------------------------------


@dataclass
class DeploymentSettings:
    """What a test chooses about a deployment; everything else is fixed by :class:`Deployment`."""

    database_url: str | None = None
    parallelism: int = 4
    #: Seconds without a triggerer heartbeat before its triggers go to another triggerer.
    triggerer_health_check_threshold: int = 6
    #: Seconds without a task heartbeat before the scheduler fails the task instance.
    task_heartbeat_timeout: int = 10
    #: A Redis URL: run CeleryExecutor with this broker, and ``database_url`` as its result backend
    #: (``db+...``); workers are then started with ``Deployment.start_celery_worker``.
    celery_broker_url: str | None = None
    #: Task processes each Celery worker runs at once.
    celery_worker_concurrency: int = 2

    def __post_init__(self) -> None:
        if self.celery_broker_url and not self.database_url:
            raise ValueError("CeleryExecutor needs a database server (database_url) for its results")


@dataclass(frozen=True)
class Triggerer:
    """A triggerer process and the id of its job (the ``triggerer_id`` of the triggers it holds)."""

    component: Component
    job_id: int


@dataclass(frozen=True)
class CeleryWorker:
    """An ``airflow celery worker`` process and its name, which is also the ``hostname`` Airflow records
    for the task instances it runs (see ``tests/e2e/worker_hostname.py``)."""

    component: Component
    hostname: str


#: The variable ``tests.e2e.worker_hostname.hostname`` reads a Celery worker's name from.
WORKER_HOSTNAME_VARIABLE = "OCTOPUSX_E2E_WORKER_HOSTNAME"


class Deployment:
    """Airflow 3 with LocalExecutor (or CeleryExecutor), one process per component, in a private
    ``AIRFLOW_HOME`` that every component, Celery workers included, shares.

    The dags folder holds copies of the repository's example DAGs and ``tests/e2e/dags``. The connection
    to the simulator is in every component's environment, as ``AIRFLOW_CONN_OCTOPUSX_DEFAULT``.
    """

    def __init__(self, home: Path, simulator: SimulatorProcess, settings: DeploymentSettings) -> None:
        self.home = home
        self.simulator = simulator
        self.settings = settings
        self.dags = home / "dags"
        self.videos = home / "videos"
        self.logs = home / "components"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(16)
        self._secret = secrets.token_urlsafe(32)
        self.components: dict[str, Component] = {}
        self.triggerers: list[Triggerer] = []
        self.celery_workers: list[CeleryWorker] = []
        self.api = AirflowApi(self.base_url, "admin", self.password)

    @property
    def env(self) -> dict[str, str]:
        database = self.settings.database_url or f"sqlite:///{self.home / 'airflow.db'}"
        return {
            **_clean_environment(),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **self._executor_env(database),
            # The default, 32, starts 32 worker processes (about 5 GB).
            "AIRFLOW__CORE__PARALLELISM": str(self.settings.parallelism),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            # Task supervisors reach the execution API through it.
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            # Shared by every component: each would otherwise invent its own and reject the others' tokens.
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret,
            "AIRFLOW__API__SECRET_KEY": self._secret,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(
                self.settings.triggerer_health_check_threshold
            ),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.settings.task_heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            # Task supervisors must heartbeat well within that timeout.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
            "AIRFLOW_CONN_OCTOPUSX_DEFAULT": self.simulator.connection,
            # The example DAGs read it when they are parsed.
            "OCTOPUSX_OUTPUT_DIR": f"{self.videos}/",
        }

    def _executor_env(self, database: str) -> dict[str, str]:
        broker = self.settings.celery_broker_url
        if not broker:
            return {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database}",
        }

    def diagnostics(self) -> str:
        parts = []
        triggerers = [t.component for t in self.triggerers]
        workers = [w.component for w in self.celery_workers]
        for component in [*self.components.values(), *triggerers, *workers, self.simulator.component]:
            state = "running" if component.alive else f"exited {component.popen.returncode}"
            parts.append(f"--- {component.name} (pid {component.pid}, {state}) ---\n{component.tail()}")
        return "\n".join(parts)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, triggerers: int = 1, celery_workers: int = 0) -> Deployment:
        """Migrate the database and start every component; returns once all report healthy.

        If anything fails to start, whatever did start is stopped before the error is raised.
        """
        try:
            return self._start_all(triggerers, celery_workers)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, triggerers: int, celery_workers: int) -> Deployment:
        self._prepare_home()
        migrate = subprocess.run(
            ["airflow", "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=300
        )
        if migrate.returncode != 0:
            raise DeploymentError(f"airflow db migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        # Serve-logs processes bind 0.0.0.0; the components share this home, so logs are read from disk.
        self._start("api-server", "api-server")
        self._start("scheduler", "scheduler", "--skip-serve-logs")
        self._start("dag-processor", "dag-processor")
        # Celery workers need only the database and the broker: they start while the rest gets healthy.
        workers = [self._launch_celery_worker() for _ in range(celery_workers)]
        wait_until(
            lambda: self._healthy("metadatabase", "scheduler", "dag_processor"),
            timeout=180,
            what="the api-server, scheduler and dag-processor to be healthy",
            diagnostics=self.diagnostics,
        )
        self.api.login()
        for _ in range(triggerers):
            self.start_triggerer()
        for worker in workers:
            self._wait_until_consuming(worker)
        return self

    def stop(self) -> None:
        """SIGTERM every component, SIGKILL whatever lingers: Celery workers and triggerers together first,
        then the scheduler and dag-processor, the api-server (which task supervisors report to) last."""
        self.api.close()
        core = dict(self.components)
        api_server = core.pop("api-server", None)
        stop_together([*(w.component for w in self.celery_workers), *(t.component for t in self.triggerers)])
        stop_together(list(core.values()))
        if api_server is not None:
            api_server.stop()

    def start_triggerer(self) -> Triggerer:
        """Start one more triggerer; returns once its job heartbeats, so it can take triggers."""
        known = self.api.alive_triggerer_ids()
        name = f"triggerer-{len(self.triggerers) + 1}"
        argv = ["airflow", "triggerer", "--skip-serve-logs"]
        component = start_component(name, argv, self.env, self.logs, cwd=self.home)
        try:
            new = wait_until(
                lambda: self.api.alive_triggerer_ids() - known or None,
                timeout=60,
                what=f"{name} to heartbeat",
                diagnostics=lambda: f"{self.diagnostics()}\n--- {name} ---\n{component.tail()}",
            )
        except BaseException:
            component.stop()
            raise
        triggerer = Triggerer(component, max(new))
        self.triggerers.append(triggerer)
        return triggerer

    def start_celery_worker(self) -> CeleryWorker:
        """Start one more Celery worker; returns once it consumes from the broker.

        Each worker has its own Celery node name, and reports it as the hostname of the task instances
        it runs, so that two workers on one machine can be told apart in Airflow's records.
        """
        worker = self._launch_celery_worker()
        try:
            self._wait_until_consuming(worker)
        except BaseException:
            self.celery_workers.remove(worker)
            worker.component.stop()
            raise
        return worker

    def _launch_celery_worker(self) -> CeleryWorker:
        if not self.settings.celery_broker_url:
            raise DeploymentError("Celery workers need a deployment with celery_broker_url")
        hostname = f"octopusx-e2e-worker-{len(self.celery_workers) + 1}"
        argv = ["airflow", "celery", "worker", "--celery-hostname", hostname, "--skip-serve-logs"]
        argv += ["--concurrency", str(self.settings.celery_worker_concurrency)]
        # Neither matters to a test, and mingle makes every start wait for the other workers' answers.
        argv += ["--without-mingle", "--without-gossip"]
        python_path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
        env = {
            **self.env,
            "PYTHONPATH": python_path,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_hostname.hostname",
            WORKER_HOSTNAME_VARIABLE: hostname,
        }
        worker = CeleryWorker(start_component(hostname, argv, env, self.logs, cwd=self.home), hostname)
        self.celery_workers.append(worker)
        return worker

    def _wait_until_consuming(self, worker: CeleryWorker) -> None:
        def consuming() -> bool:
            if not worker.component.alive:
                raise DeploymentError(f"Celery worker {worker.hostname} exited:\n{worker.component.tail()}")
            return f"celery@{worker.hostname} ready" in worker.component.output()

        wait_until(
            consuming,
            timeout=90,
            what=f"Celery worker {worker.hostname} to be ready",
            diagnostics=self.diagnostics,
        )

    def celery_worker_of(self, pid: int) -> CeleryWorker | None:
        """The Celery worker whose session holds process ``pid`` (a task process, say), if any."""
        return next((w for w in self.celery_workers if pid in w.component.pids()), None)

    @property
    def triggerer(self) -> Triggerer:
        """The one running triggerer (drills kill triggerers; the dead ones stay listed)."""
        (alive,) = [t for t in self.triggerers if t.component.alive]
        return alive

    def _start(self, name: str, *args: str) -> None:
        self.components[name] = start_component(name, ["airflow", *args], self.env, self.logs, cwd=self.home)

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": self.password}))
        self.dags.mkdir(exist_ok=True)
        self.videos.mkdir(exist_ok=True)
        for source in [*sorted((REPO / "example_dags").glob("*.py")), *sorted(E2E_DAGS.glob("*.py"))]:
            shutil.copy2(source, self.dags / source.name)

    def _healthy(self, *parts: str) -> bool:
        triggerers = [t.component for t in self.triggerers]
        workers = [w.component for w in self.celery_workers]
        for component in [*self.components.values(), *triggerers, *workers]:
            if not component.alive:
                raise DeploymentError(f"{component.name} exited:\n{self.diagnostics()}")
        health = self.api.health()
        return health is not None and all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    # -- DAG runs -------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Wait for the DAG to be parsed, unpause it and start a run; returns the run id."""
        wait_until(
            lambda: self.api.dag_exists(dag_id),
            timeout=90,
            what=f"DAG {dag_id} to be parsed",
            diagnostics=self.diagnostics,
        )
        self.api.unpause(dag_id)
        return self.api.trigger(dag_id, conf)

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        on_poll: Callable[[], None] | None = None,
        interval: float = 0.5,
    ) -> str:
        """Wait for a run to end, calling ``on_poll`` between checks; returns its final state."""

        def finished() -> str | None:
            if on_poll is not None:
                on_poll()
            state = self.api.run_state(dag_id, run_id)
            return state if state in TERMINAL_RUN_STATES else None

        what = f"run {run_id} of {dag_id} to end"
        return wait_until(
            finished, timeout=timeout, interval=interval, what=what, diagnostics=self.diagnostics
        )

    def deferred_holders(self, dag_id: str, run_id: str, task_id: str) -> dict[int, int | None]:
        """The triggerer job holding each deferred instance's trigger, by map index (None: not yet taken)."""
        return {
            ti["map_index"]: (ti.get("trigger") or {}).get("triggerer_id")
            for ti in self.api.task_instances(dag_id, run_id, task_id)
            if ti["state"] == "deferred"
        }

    def wait_for_deferred(self, dag_id: str, run_id: str, task_id: str, count: int) -> dict[int, int]:
        """Wait until ``count`` instances of a task are deferred and a triggerer holds each trigger."""

        def held() -> dict[int, int] | None:
            holders = self.deferred_holders(dag_id, run_id, task_id)
            if len(holders) < count or None in holders.values():
                return None
            return {index: job for index, job in holders.items() if job is not None}

        what = f"{count} deferred {task_id} held by a triggerer"
        return wait_until(held, timeout=90, interval=0.5, what=what, diagnostics=self.diagnostics)

    def task_log(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        try_number: int = 1,
        map_index: int = -1,
        triggerer_job: int | None = None,
    ) -> str:
        """A task try's log file, or the log its trigger wrote in one triggerer job ("" if none).

        The paths follow Airflow's default ``[logging] log_filename_template``; a trigger's log is the
        try's log name plus ``.trigger.<triggerer job id>.log``.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder /= f"map_index={map_index}"
        name = f"attempt={try_number}.log"
        if triggerer_job is not None:
            name += f".trigger.{triggerer_job}.log"
        path = folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    def task_process(self, ti_id: str) -> int | None:
        """The pid of the process running task instance ``ti_id`` (its title is set by the task runner)."""
        pids = find_processes(f"airflow worker -- {ti_id}")
        return pids[0] if pids else None
