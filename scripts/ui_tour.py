"""A repeatable tour of a real Airflow 3.3 deployment's web UI, with this checkout's provider and examples.

Usage (from a checkout, with the venv that has this checkout's package, Airflow 3.3 and ``playwright``)::

    python scripts/ui_tour.py OUTPUT_DIR [--keep-home]

It starts the api-server, scheduler, dag-processor, triggerer and the OctopusX simulator on 127.0.0.1
(``tests/e2e/deployment.py`` of this checkout), drives the UI in headless Debian Chromium
(``/usr/bin/chromium``) through Playwright, and writes numbered full-page PNGs (1400 px wide), the
report ``report.md`` and copies of the component and task logs (``logs/``) into OUTPUT_DIR:

``--part basics`` runs steps 1-4, ``--part batch`` steps 1 (connections through REST), 5 and 6:

1. log in, create the ``octopusx_default`` connection through Admin -> Connections -> Add (the
   deployment has no connection in its environment, so the DAGs use this one), press the list's Test
   button, and call ``POST /api/v2/connections/test``;
2. run ``example_octopusx_text_to_video``: grid, logs while deferred and after success, Details (Extra
   Links), Storage (Task State Store, XCom), asset events, the Assets list and the asset's page;
3. run ``example_octopusx_mapped``: the mapped task instances, one instance's log, its assets;
4. add a second connection with a wrong key through the form and run a one-task DAG that uses it
   (written into the deployment's own dags folder, not the repository's): the failed log with the 401;
5. batches (a DAG file the tour writes into the deployment's dags folder): one with a wrong key and
   ``max_failed=5``; one whose videos fail, with an ``all_done`` downstream task; the example batch,
   its XCom and asset event, and the run of the asset consumer it starts;
6. a sensor started in the triggerer that times out, one whose template cannot start there, and a
   batch past its deadline: their logs;

and lists every distinct ERROR-level line of the component and task logs written during the
successful runs (steps 2-3), with counts; then the same for the rest of the tour.

Every wait has a deadline; all processes (Airflow, simulator, Chromium) are stopped at the end, also on
failure or SIGTERM. A failed step is recorded in the report (with a screenshot of the screen at that
moment) and the tour goes on; the exit status is 1 if any step failed. "Full page": the UI scrolls inside
panels, so before each screenshot the viewport is made as tall as the tallest scrolled panel (at most
8000 px), then set back to 1400x900.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

try:
    from playwright.sync_api import Page, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # pragma: no cover - a message instead of a traceback
    raise SystemExit(
        "This venv has no Playwright: pip install playwright (it drives Debian's /usr/bin/chromium, so no "
        "browser download is needed)."
    ) from None

from tests.e2e.deployment import (  # noqa: E402
    E2E_DAGS,
    Deployment,
    DeploymentSettings,
    SimulatorProcess,
    wait_until,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH, HEIGHT, MAX_HEIGHT = 1400, 900, 8000
API_KEY = "ui-tour-key"
WRONG_KEY = "ui-tour-wrong-key"
T2V = "example_octopusx_text_to_video"
MAPPED = "example_octopusx_mapped"
WRONG_DAG = "ui_tour_wrong_key"
WRONG_CONN = "octopusx_wrong_key"
WRONG_DAG_FILE = f'''"""Written by scripts/ui_tour.py into its own dags folder: a submit with a wrong key."""

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import SubmitVideoOperator

with DAG(
    dag_id="{WRONG_DAG}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ui-tour"],
):
    SubmitVideoOperator(
        task_id="submit_video",
        prompt="A lighthouse at dusk, seen from the sea",
        seconds=8,
        aspect_ratio="16:9",
        resolution="720p",
        deferrable=True,
        retries=0,
        octopusx_conn_id="{WRONG_CONN}",
    )
'''
BATCH = "example_octopusx_batch"
CONSUMER = "example_octopusx_asset_consumer"
BATCH_WRONG_KEY = "ui_tour_batch_wrong_key"
BATCH_FAILURES = "ui_tour_batch_failures"
BATCH_DEADLINE = "ui_tour_batch_deadline"
SENSOR_TIMEOUT = "ui_tour_sensor_timeout"
SENSOR_TEMPLATE = "ui_tour_sensor_template"
BATCH_DAGS_FILE = f'''"""Written by scripts/ui_tour.py into its own dags folder: batches and sensors."""

import os

import pendulum
from airflow.sdk import DAG, task

from airflow_octopusx.operators.batch import GenerateVideosOperator
from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.sensors.octopusx import VideoTaskSensor

VIDEOS = os.environ["OCTOPUSX_OUTPUT_DIR"]
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def dag(dag_id):
    return DAG(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["ui-tour"])


with dag("{BATCH_WRONG_KEY}"):
    GenerateVideosOperator(
        task_id="generate_videos",
        requests=[{{"prompt": "A fox in the snow"}}, {{"prompt": "A kite"}}, {{"prompt": "A lake"}}],
        destination=VIDEOS + "wrong-key/",
        octopusx_conn_id="{WRONG_CONN}",
        max_failed=5,
        deferrable=True,
        poll_interval=2,
        retries=0,
    )

with dag("{BATCH_FAILURES}"):
    generate = GenerateVideosOperator(
        task_id="generate_videos",
        requests=[
            {{"prompt": "A fox in the snow"}},
            {{"prompt": "A storm over the harbour [simulate-failure]"}},
            {{"prompt": "A flooded street at night [simulate-failure]"}},
            {{"prompt": "An earthquake seen from a drone [simulate-failure:server_error]"}},
        ],
        destination=VIDEOS + "failures/",
        deferrable=True,
        poll_interval=2,
        retries=0,
    )

    @task(trigger_rule="all_done")
    def publish_stored(results):
        return [result["uri"] for result in results if result["status"] == "stored"]

    publish_stored(generate.output)

with dag("{BATCH_DEADLINE}"):
    GenerateVideosOperator(
        task_id="generate_videos",
        requests=[{{"prompt": "A glacier calving, slow motion"}}],
        destination=VIDEOS + "deadline/",
        deferrable=True,
        poll_interval=2,
        timeout=8,
        retries=0,
    )

with dag("{SENSOR_TIMEOUT}"):
    submit = SubmitVideoOperator(task_id="submit_video", prompt="A glacier", wait_for_completion=False)
    VideoTaskSensor(
        task_id="wait_for_video",
        video_id=submit.output,
        deferrable=True,
        start_from_trigger=True,
        poke_interval=2,
        timeout=15,
    )
'''
# In a file of its own: its parse-time warning is logged by every task of the file it is in.
SENSOR_TEMPLATE_FILE = f'''"""Written by scripts/ui_tour.py: a template its triggerer cannot render."""

import pendulum
from airflow.sdk import DAG

from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.sensors.octopusx import VideoTaskSensor

with DAG(
    dag_id="{SENSOR_TEMPLATE}",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ui-tour"],
):
    submit = SubmitVideoOperator(task_id="submit_video", prompt="A harbour", wait_for_completion=False)
    submit >> VideoTaskSensor(
        task_id="wait_for_video",
        video_id="{{{{ ti.xcom_pull(task_ids='submit_video') }}}}",
        deferrable=True,
        start_from_trigger=True,
        poke_interval=2,
        timeout=300,
    )
'''
ANY_LINE = re.compile(r"\S")
# The Task State Store tab has loaded: its table, or the text it shows when the store is empty.
STATE_STORE_LOADED = re.compile(r"Updated at|persist across retries", re.IGNORECASE)
NAV_WORDS = {"Home", "Dags", "Assets", "Browse", "Admin", "Docs", "User", "+00:00", "Search Dags", "Ctrl+K"}
# The height of the document or of its tallest scrolled panel, whichever is larger.
CONTENT_HEIGHT_JS = """() => {
  let h = document.documentElement.scrollHeight;
  for (const el of document.querySelectorAll('*')) {
    const s = getComputedStyle(el);
    if ((s.overflowY === 'auto' || s.overflowY === 'scroll') && el.scrollHeight > el.clientHeight + 2) {
      const r = el.getBoundingClientRect();
      h = Math.max(h, r.top + window.scrollY + el.scrollHeight + 40);
    }
  }
  return Math.ceil(h);
}"""


class TourError(RuntimeError):
    pass


# -- the deployment ---------------------------------------------------------------------------------


class TourDeployment(Deployment):
    """The e2e deployment with the UI's Test button enabled, no connection in the environment (the tour
    creates it through the form) and, in its private dags folder, the examples plus the wrong-key DAG."""

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.pop("AIRFLOW_CONN_OCTOPUSX_DEFAULT", None)
        env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
        return env

    def _prepare_home(self) -> None:
        super()._prepare_home()
        for source in E2E_DAGS.glob("*.py"):  # only the examples, as a user would have them
            (self.dags / source.name).unlink(missing_ok=True)
        (self.dags / f"{WRONG_DAG}.py").write_text(WRONG_DAG_FILE)
        (self.dags / "ui_tour_batch.py").write_text(BATCH_DAGS_FILE)
        (self.dags / f"{SENSOR_TEMPLATE}.py").write_text(SENSOR_TEMPLATE_FILE)

    def log_files(self) -> list[Path]:
        components = [*self.components.values(), *(t.component for t in self.triggerers)]
        return [c.log for c in components] + [self.simulator.component.log]


# -- the report -------------------------------------------------------------------------------------


@dataclass
class Report:
    out: Path
    lines: list[str] = field(default_factory=list)
    shots: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    counter: int = 0

    def add(self, text: str = "") -> None:
        self.lines.append(text)

    def write(self, header: list[str], footer: list[str]) -> None:
        body = [*header, *self.lines, *footer]
        (self.out / "report.md").write_text("\n".join(body).rstrip() + "\n")


def quote_block(text: str, limit: int = 2500) -> list[str]:
    text = text.strip()
    if len(text) > limit:
        text = text[:limit] + " [...]"
    return ["```text", *(text.splitlines() or [""]), "```"]


def screen_text(page: Page) -> str:
    """The visible text of the page's widest panel (the part right of the grid), or of the whole page;
    without the navigation rail."""
    widest_panel = """() => {
      const panels = [...document.querySelectorAll('[data-panel-id]')];
      panels.sort((a, b) => b.getBoundingClientRect().width - a.getBoundingClientRect().width);
      return (panels[0] || document.body).innerText;
    }"""
    try:
        text = str(page.evaluate(widest_panel))
    except Exception:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in NAV_WORDS]
    return "\n".join(kept)


# -- the browser ------------------------------------------------------------------------------------


class Browser:
    def __init__(self, page: Page, base_url: str, password: str, report: Report) -> None:
        self.page = page
        self.base_url = base_url
        self.password = password
        self.report = report

    def login(self) -> None:
        page = self.page
        page.goto(f"{self.base_url}/auth/login?next=/", wait_until="load")
        page.get_by_label("Username").fill("admin", timeout=30_000)
        page.get_by_label("Password").fill(self.password)
        self.shot("login", "The simple auth manager's sign-in page, filled in (user admin).", text=False)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)
        page.get_by_role("button", name="Admin").wait_for(timeout=30_000)
        # The log viewer's "Wrap" setting lives in localStorage: long log lines stay readable.
        page.evaluate("() => localStorage.setItem('log_wrap', 'true')")

    def goto(self, path: str, expect: list[str | re.Pattern[str]] | None = None, settle: float = 1.0) -> None:
        page = self.page
        page.goto(self.base_url + path, wait_until="load", timeout=60_000)
        if "/auth/login" in page.url:  # the token expired: sign in again
            self.login()
            page.goto(self.base_url + path, wait_until="load", timeout=60_000)
        for text in expect or []:
            page.get_by_text(text).first.wait_for(timeout=45_000)
        self.settle(settle)

    def settle(self, seconds: float = 1.0) -> None:
        """Let visible spinners and progress bars finish (best effort, 6 s at most: a running task's log
        streams with its bar on), then wait ``seconds``."""
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            busy = self.page.locator("[role=progressbar], .chakra-spinner").evaluate_all(
                "els => els.filter(e => e.checkVisibility({visibilityProperty: true, opacityProperty: true}))"
                ".length"
            )
            if not busy:
                break
            time.sleep(0.25)
        time.sleep(seconds)

    def shot(self, slug: str, description: str, text: bool | str = True) -> Path:
        """Save a full-page PNG and its notes; ``text`` may be the text to quote instead of the screen's."""
        page = self.page
        self.report.counter += 1
        name = f"{self.report.counter:02d}-{slug}.png"
        path = self.report.out / name
        height = min(max(int(page.evaluate(CONTENT_HEIGHT_JS)), HEIGHT), MAX_HEIGHT)
        try:
            if height > HEIGHT:
                page.set_viewport_size({"width": WIDTH, "height": height})
                time.sleep(0.8)  # virtualised lists render the rows that now fit
            page.screenshot(path=str(path), full_page=True, timeout=60_000)
        finally:
            page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
        if "/auth/login" in page.url and slug != "login":
            raise TourError(f"{name} shows the login page")
        self.report.shots.append((name, description))
        self.report.add(f"### {name}")
        self.report.add("")
        self.report.add(f"{description} URL: `{page.url.removeprefix(self.base_url)}`")
        self.report.add("")
        if text:
            self.report.add("What the screen says:")
            self.report.add("")
            self.report.lines += quote_block(text if isinstance(text, str) else screen_text(page))
            self.report.add("")
        print(f"  {name}", flush=True)
        return path

    # -- parts of screens --------------------------------------------------------------------------

    def log_lines(self) -> str:
        return "\n".join(
            line.strip()
            for line in self.page.locator("[data-testid^=virtualized-item]").all_inner_texts()
            if line.strip()
        )

    def expand_log_groups(self) -> None:
        """Open the log's "Pre Execute"/"Post Execute" groups (Log Settings -> Expand)."""
        with contextlib.suppress(PlaywrightTimeout):
            self.page.get_by_role("button", name="Log Settings").click(timeout=10_000)
            item = self.page.get_by_role("menuitem", name=re.compile(r"^Expand"))
            if item.count():
                item.first.click(timeout=10_000)
            else:
                self.page.keyboard.press("Escape")
            time.sleep(0.5)

    def wait_for_log(self, text: str | re.Pattern[str], timeout: float = 60) -> None:
        pattern = re.compile(re.escape(text)) if isinstance(text, str) else text
        wait_until(
            lambda: bool(pattern.search(self.log_lines())),
            timeout=timeout,
            interval=0.5,
            what=f"the log to show {pattern.pattern!r}",
        )

    def form_values(self, scope: Any) -> str:
        """The visible inputs of a form as ``name = value`` lines (a password as its length only)."""
        values = scope.locator("input[name], textarea[name]").evaluate_all(
            """els => els.filter(e => e.checkVisibility()).map(e => e.name + ' = ' + (e.type === 'password'
                ? '<' + e.value.length + ' characters, masked>' : e.type === 'checkbox'
                ? String(e.checked) : JSON.stringify(e.value)))"""
        )
        return "\n".join(values)

    def toasts(self) -> str:
        return "\n".join(
            t.strip()
            for t in self.page.locator("[data-scope=toast][data-part=root]").all_inner_texts()
            if t.strip()
        )

    def unfold_json(self, limit: int = 5) -> None:
        """Unfold the collapsed JSON editors (asset event extras)."""
        folds = self.page.locator(".codicon-folding-collapsed")
        for index in range(min(folds.count(), limit)):
            with contextlib.suppress(Exception):
                folds.nth(index).click(timeout=5_000)
        time.sleep(0.5)

    # -- the connection form -----------------------------------------------------------------------

    def add_connection(
        self, conn_id: str, host: str, key: str, description: str, slug: str
    ) -> dict[str, Any]:
        """Fill Admin -> Connections -> Add Connection, screenshot it, save; returns what the form posted."""
        page = self.page
        self.goto("/connections", expect=["Add Connection"])
        page.get_by_role("button", name="Add Connection").click()
        dialog = page.get_by_role("dialog")
        dialog.locator("input[name=connection_id]").fill(conn_id, timeout=30_000)
        kind = dialog.get_by_role("combobox", name="Connection Type")
        kind.click()
        kind.fill("OctopusX")
        page.get_by_role("option", name="OctopusX").first.wait_for(timeout=30_000)
        page.keyboard.press("Enter")
        dialog.locator("input[name=host]").wait_for(timeout=30_000)
        with contextlib.suppress(PlaywrightTimeout):
            dialog.locator("textarea[name=description]").fill(description, timeout=5_000)
        dialog.locator("input[name=host]").fill(host)
        dialog.locator("input[name=password]").fill(key)
        time.sleep(0.5)
        self.shot(
            f"{slug}-form-standard-fields",
            f"Add Connection form for `{conn_id}`, type OctopusX, Standard Fields filled "
            "(host = the simulator's URL; the key field is masked).",
            text=f"{dialog.inner_text()}\n\nField values:\n{self.form_values(dialog)}",
        )
        extra = dialog.get_by_role("button", name="Extra Fields", exact=True)
        if extra.count():
            extra.click()
            time.sleep(0.8)
            self.shot(
                f"{slug}-form-extra-fields",
                f"The same form with its Extra Fields section open (`{conn_id}`).",
                text=f"{dialog.inner_text()}\n\nField values:\n{self.form_values(dialog)}",
            )
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.rstrip("/").endswith("/api/v2/connections"),
            timeout=30_000,
        ) as saved:
            dialog.get_by_role("button", name="Save").click()
        response = saved.value
        body = json.loads(response.request.post_data or "{}")
        if body.get("password"):
            body["password"] = "<the key typed>"
        page.get_by_text(conn_id, exact=True).first.wait_for(timeout=30_000)
        self.settle(1.0)
        return {"status": response.status, "body": body}

    def press_test(self, conn_id: str, slug: str) -> dict[str, Any]:
        """Press the Test Connection button on the connection's row of the list; returns the exchange."""
        page = self.page
        self.goto("/connections", expect=[conn_id])
        row = page.get_by_role("row").filter(has=page.get_by_text(conn_id, exact=True))
        with page.expect_response(lambda r: "/api/v2/connections/test" in r.url, timeout=60_000) as tested:
            row.get_by_role("button", name="Test Connection").click()
        response = tested.value
        page.locator("[data-scope=toast][data-part=root]").first.wait_for(timeout=30_000)
        time.sleep(0.8)
        toast = self.toasts()
        body = json.loads(response.request.post_data or "{}")
        self.shot(
            f"{slug}-test-button",
            f"Admin -> Connections after pressing the Test Connection button of `{conn_id}`; the toast "
            "in the lower right is the result.",
            text=f"Toast: {toast}\n\nThe button posted: {json.dumps(body)}\n"
            f"The API answered {response.status}: {response.text()}",
        )
        return {"toast": toast, "status": response.status, "answer": response.text(), "posted": body}


# -- the tour ---------------------------------------------------------------------------------------


def run_path(dag_id: str, run_id: str, tail: str = "") -> str:
    return f"/dags/{dag_id}/runs/{urllib.parse.quote(run_id, safe='')}{tail}"


def task_path(dag_id: str, run_id: str, task_id: str, tail: str = "") -> str:
    return run_path(dag_id, run_id, f"/tasks/{task_id}{tail}")


class Tour:
    def __init__(self, out: Path, home: Path, part: str = "all") -> None:
        self.out = out
        self.home = home
        self.part = part
        self.report = Report(out)
        self.started = time.monotonic()
        self.simulator: SimulatorProcess | None = None
        self.deployment: TourDeployment | None = None
        self.browser: Browser | None = None
        self.rest: httpx.Client | None = None
        self.runs: dict[str, str] = {}
        self.rest_tests: dict[str, tuple[int, str]] = {}
        self.form_posts: dict[str, dict[str, Any]] = {}
        self.button_tests: dict[str, dict[str, Any]] = {}
        self.log_marks: dict[str, dict[Path, int]] = {}

    # -- steps ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        print(f"== {title}", flush=True)
        self.report.add(f"## {title}")
        self.report.add("")
        began = time.monotonic()
        try:
            yield
        except Exception as error:  # one failed step is reported; the tour goes on
            detail = "".join(traceback.format_exception(error)).strip()
            self.report.failures.append(f"{title}: {type(error).__name__}: {str(error).splitlines()[0]}")
            self.report.add(f"**STEP FAILED**: `{type(error).__name__}: {str(error).splitlines()[0]}`")
            self.report.add("")
            self.report.lines += quote_block(detail, limit=6000)
            print(detail, file=sys.stderr, flush=True)
            if self.browser is not None:
                with contextlib.suppress(Exception):
                    self.browser.shot("error", f"The screen when step '{title}' failed.")
        finally:
            self.report.timings.append((title, time.monotonic() - began))
            self.report.add("")

    def note(self, text: str) -> None:
        self.report.add(text)
        self.report.add("")

    def note_state(self, dag_id: str, run_id: str, task_id: str) -> None:
        """Record the task's state just after a screenshot meant to show it deferred."""
        assert self.deployment is not None
        states = sorted({ti["state"] for ti in self.deployment.api.task_instances(dag_id, run_id, task_id)})
        self.note(f"{task_id} was `{', '.join(map(str, states))}` just after this screenshot.")

    def show_assets(self, count: int, timeout: float = 30) -> None:
        """Open the Assets list; reload it until it lists ``count`` assets (at most ``timeout`` s)."""
        assert self.browser is not None
        browser = self.browser
        deadline = time.monotonic() + timeout
        while True:
            browser.goto("/assets", expect=[re.compile(r"\d+ Assets?")])
            shown = browser.page.get_by_text(re.compile(r"^\d+ Assets?$")).first.inner_text()
            if int(shown.split()[0]) >= count or time.monotonic() >= deadline:
                return
            time.sleep(3)

    def wait_for_assets(self, timeout: float = 60) -> int:
        """The number of assets the asset events name, once the list (REST) has them all, or after
        ``timeout`` s: assets announced through an alias are listed only once the scheduler has marked
        them active."""
        assert self.deployment is not None
        api = self.deployment.api
        began = time.monotonic()
        named = {event["asset_id"] for event in api.get("assets/events", limit=100)["asset_events"]}

        def listed() -> int:
            return int(api.get("assets", limit=1)["total_entries"])

        try:
            wait_until(lambda: listed() >= len(named), timeout=timeout, interval=1, what="the asset list")
            self.note(
                f"Asset events name {len(named)} assets; the list showed all of them after "
                f"{time.monotonic() - began:.0f} s."
            )
        except Exception:
            self.note(
                f"Asset events name {len(named)} assets; after {timeout:.0f} s the list has {listed()}."
            )
        return len(named)

    def mark_logs(self, name: str) -> None:
        assert self.deployment is not None
        self.log_marks[name] = {
            path: path.stat().st_size if path.exists() else 0 for path in self.deployment.log_files()
        }

    def rest_test(self, conn_id: str, host: str) -> tuple[int, str]:
        assert self.rest is not None
        response = self.rest.post(
            "/api/v2/connections/test",
            json={"connection_id": conn_id, "conn_type": "octopusx", "host": host},
        )
        return response.status_code, response.text

    def wait_state(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], count: int = 1, timeout: float = 120
    ) -> list[dict[str, Any]]:
        assert self.deployment is not None
        api = self.deployment.api

        def reached() -> list[dict[str, Any]] | None:
            tis = [ti for ti in api.task_instances(dag_id, run_id, task_id) if ti["state"] in states]
            return tis if len(tis) >= count else None

        return wait_until(
            reached,
            timeout=timeout,
            interval=0.5,
            what=f"{count} {task_id} in {states}",
            diagnostics=self.deployment.diagnostics,
        )

    # -- the whole tour ------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._run()
        except BaseException as error:  # SIGTERM, Ctrl-C, or a bug outside the steps
            self.report.failures.append(f"interrupted: {type(error).__name__} {error}")
            raise
        finally:
            self.stop()
            self.finish()
        return 1 if self.report.failures else 0

    def _run(self) -> None:
        with self.step("0. Start the deployment and the browser"):
            self.simulator = SimulatorProcess.start(
                self.home / "simulator", generation_seconds=10, api_key=API_KEY
            )
            self.deployment = TourDeployment(self.home / "airflow", self.simulator, DeploymentSettings())
            began = time.monotonic()
            self.deployment.start()
            token = self.deployment.api.login()
            self.rest = httpx.Client(
                base_url=self.deployment.base_url, timeout=60, headers={"Authorization": f"Bearer {token}"}
            )
            self.note(
                f"Airflow components healthy after {time.monotonic() - began:.0f} s; "
                f"api-server {self.deployment.base_url}, simulator {self.simulator.api_url}."
            )
        if self.deployment is None or self.rest is None:
            return
        with sync_playwright() as playwright:
            profile = tempfile.mkdtemp(prefix="ui-tour-chromium-")
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": WIDTH, "height": HEIGHT},
            )
            try:
                context.set_default_timeout(30_000)
                context.set_default_navigation_timeout(60_000)
                page = context.pages[0] if context.pages else context.new_page()
                self.browser = Browser(page, self.deployment.base_url, self.deployment.password, self.report)
                self.tour()
            finally:
                context.close()
                shutil.rmtree(profile, ignore_errors=True)

    def tour(self) -> None:
        if self.part in ("all", "basics"):
            self.basics()
        else:
            assert self.browser is not None
            assert self.rest is not None
            assert self.simulator is not None
            with self.step("1. Log in; create octopusx_default and the wrong-key connection through REST"):
                self.browser.login()
                for conn_id, key in (("octopusx_default", API_KEY), (WRONG_CONN, WRONG_KEY)):
                    self.rest.post(
                        "/api/v2/connections",
                        json={
                            "connection_id": conn_id,
                            "conn_type": "octopusx",
                            "host": self.simulator.api_url,
                            "password": key,
                        },
                    ).raise_for_status()
        if self.part in ("all", "batch"):
            self.batches_and_sensors()

    def log_shot(
        self, dag_id: str, run_id: str, task_id: str, slug: str, description: str, expect: str = ""
    ) -> str:
        """Open a task's log, wait for ``expect`` (a regex) if given, expand it, and take a screenshot."""
        assert self.browser is not None
        browser = self.browser
        browser.goto(task_path(dag_id, run_id, task_id))
        browser.wait_for_log(ANY_LINE)
        if expect:
            with contextlib.suppress(Exception):
                browser.wait_for_log(re.compile(expect), timeout=20)
        browser.expand_log_groups()
        text = browser.log_lines()
        browser.shot(slug, description, text=text)
        return text

    def batches_and_sensors(self) -> None:
        """Issue 20: what a user sees of a batch, of a sensor in the triggerer, and of their messages."""
        assert self.browser is not None
        assert self.deployment is not None
        assert self.simulator is not None
        browser, deployment, simulator = self.browser, self.deployment, self.simulator

        with self.step("5. Batches: a wrong key, failures, the example batch and the asset consumer"):
            simulator.configure(generation_seconds=4)
            deployment.api.unpause(CONSUMER)
            runs = {dag_id: deployment.trigger(dag_id) for dag_id in (BATCH_WRONG_KEY, BATCH_FAILURES, BATCH)}
            self.runs.update(runs)
            for dag_id, run_id in runs.items():
                self.note(
                    f"Run of `{dag_id}` ended: **{deployment.wait_for_run(dag_id, run_id, timeout=300)}**."
                )

            run_id = runs[BATCH_WRONG_KEY]
            browser.goto(run_path(BATCH_WRONG_KEY, run_id), expect=["Task Instances"])
            browser.shot(
                "batch-wrong-key-run", f"{BATCH_WRONG_KEY}: a batch with a wrong key and max_failed=5."
            )
            self.log_shot(
                BATCH_WRONG_KEY,
                run_id,
                "generate_videos",
                "batch-wrong-key-log",
                "Its generate_videos log (expanded).",
                expect="401|API key",
            )

            run_id = runs[BATCH_FAILURES]
            browser.goto(run_path(BATCH_FAILURES, run_id), expect=["Task Instances"])
            browser.shot(
                "batch-failures-run",
                f"{BATCH_FAILURES}: 4 requests, 3 of which fail (two content-policy failures, one "
                "server_error), max_failed=0, and a downstream publish_stored task with "
                "trigger_rule='all_done'.",
            )
            self.log_shot(
                BATCH_FAILURES,
                run_id,
                "generate_videos",
                "batch-failures-log",
                "generate_videos's log (expanded): the wait, each unstored request, the failure.",
                expect="were not stored",
            )
            browser.goto(task_path(BATCH_FAILURES, run_id, "generate_videos", "/xcom"))
            browser.settle(2)
            browser.unfold_json()
            browser.shot("batch-failures-xcom", "generate_videos's XCom tab after the failure.")
            self.log_shot(
                BATCH_FAILURES,
                run_id,
                "publish_stored",
                "batch-failures-publish-log",
                "publish_stored's log: what the all_done downstream task got.",
            )
            states = {
                ti["task_id"]: ti["state"] for ti in deployment.api.task_instances(BATCH_FAILURES, run_id)
            }
            self.note(f"Task states: `{json.dumps(states)}`.")

            run_id = runs[BATCH]
            browser.goto(task_path(BATCH, run_id, "generate_videos", "/xcom"))
            browser.settle(2)
            browser.unfold_json()
            browser.shot("batch-example-xcom", f"{BATCH}'s generate_videos XCom tab.")
            browser.goto(task_path(BATCH, run_id, "generate_videos", "/asset_events"), expect=["Asset Event"])
            browser.unfold_json()
            browser.shot("batch-example-asset-events", "Its Asset Events tab, event extra unfolded.")
            consumer_runs = wait_until(
                lambda: (
                    [
                        run
                        for run in deployment.api.get(f"dags/{CONSUMER}/dagRuns", limit=20)["dag_runs"]
                        if run["state"] in ("success", "failed")
                    ]
                    or None
                ),
                timeout=120,
                interval=2,
                what=f"a finished run of {CONSUMER}",
            )
            consumer = consumer_runs[-1]
            self.runs[CONSUMER] = consumer["dag_run_id"]
            self.note(
                f"`{CONSUMER}` ran after the batch: **{consumer['state']}** (`{consumer['dag_run_id']}`)."
            )
            browser.goto(run_path(CONSUMER, consumer["dag_run_id"]), expect=["Task Instances"])
            browser.shot("consumer-run", f"The run of {CONSUMER} the batch's asset event started.")
            self.log_shot(
                CONSUMER,
                consumer["dag_run_id"],
                "annotate_new_videos",
                "consumer-log",
                "annotate_new_videos's log: the sidecars it wrote.",
            )
            written = deployment.api.xcom(CONSUMER, consumer["dag_run_id"], "annotate_new_videos")
            self.note(f"annotate_new_videos returned: `{json.dumps(written)}`.")
            files = sorted(path.name for path in deployment.videos.iterdir() if path.is_file())
            self.note(f"Files at the top of the videos folder: `{json.dumps(files)}`.")

        with self.step(
            "6. A sensor that times out in the triggerer, one that cannot start there, a batch deadline"
        ):
            simulator.configure(generation_seconds=40)
            runs = {
                dag_id: deployment.trigger(dag_id)
                for dag_id in (SENSOR_TIMEOUT, SENSOR_TEMPLATE, BATCH_DEADLINE)
            }
            self.runs.update(runs)
            for dag_id, run_id in runs.items():
                self.note(
                    f"Run of `{dag_id}` ended: **{deployment.wait_for_run(dag_id, run_id, timeout=300)}**."
                )
            self.log_shot(
                SENSOR_TIMEOUT,
                runs[SENSOR_TIMEOUT],
                "wait_for_video",
                "sensor-timeout-log",
                "A sensor started in the triggerer (timeout=15) for a 40 s video: its log (expanded).",
                expect="timeout",
            )
            self.log_shot(
                SENSOR_TEMPLATE,
                runs[SENSOR_TEMPLATE],
                "wait_for_video",
                "sensor-template-log",
                "A sensor with start_from_trigger=True and a template without map_indexes: its log.",
            )
            self.log_shot(
                BATCH_DEADLINE,
                runs[BATCH_DEADLINE],
                "generate_videos",
                "batch-deadline-log",
                "A batch with timeout=8 for a 40 s video: its log (expanded).",
                expect="were not stored",
            )

    def basics(self) -> None:
        assert self.browser is not None
        assert self.deployment is not None
        assert self.simulator is not None
        assert self.rest is not None
        browser, deployment, simulator, rest = self.browser, self.deployment, self.simulator, self.rest

        with self.step("1. Log in; create octopusx_default through the form; Test button; REST test"):
            browser.login()
            self.note(
                "The deployment uses the simple auth manager with one user, `admin` (password from "
                "`passwords.json`); it is not in all-admins mode, so the tour signs in through the form."
            )
            try:
                self.form_posts["octopusx_default"] = browser.add_connection(
                    "octopusx_default",
                    simulator.api_url,
                    API_KEY,
                    "The simulator, added by the UI tour",
                    "connection",
                )
            finally:
                if not any(
                    c["connection_id"] == "octopusx_default"
                    for c in deployment.api.get("connections", limit=100)["connections"]
                ):
                    # So that the DAG steps can still run; the failure is reported all the same.
                    rest.post(
                        "/api/v2/connections",
                        json={
                            "connection_id": "octopusx_default",
                            "conn_type": "octopusx",
                            "host": simulator.api_url,
                            "password": API_KEY,
                        },
                    ).raise_for_status()
                    self.note("**The form did not create the connection; it was created through REST.**")
            posted = self.form_posts["octopusx_default"]
            self.note(f"Saving the form posted ({posted['status']}): `{json.dumps(posted['body'])}`")
            browser.shot("connections-list", "Admin -> Connections with the new connection.")
            self.button_tests["octopusx_default"] = browser.press_test("octopusx_default", "connection")
            self.rest_tests["octopusx_default"] = self.rest_test("octopusx_default", simulator.api_url)
            status, answer = self.rest_tests["octopusx_default"]
            self.note(
                f"REST `POST /api/v2/connections/test` with the stored fields "
                f"(`connection_id`, `conn_type`, `host`): {status} `{answer}`"
            )
            # The same connection with the Base URL's port stored, as docs/connection.md advises.
            port = int(simulator.api_url.rsplit(":", 1)[1])
            rest.post(
                "/api/v2/connections",
                json={
                    "connection_id": "octopusx_with_port",
                    "conn_type": "octopusx",
                    "host": simulator.api_url,
                    "port": port,
                    "password": API_KEY,
                },
            ).raise_for_status()
            self.button_tests["octopusx_with_port"] = browser.press_test("octopusx_with_port", "with-port")
            self.note(
                f"Test button with the port stored: `{self.button_tests['octopusx_with_port']['toast']}`"
            )

        self.mark_logs("successful runs begin")
        with self.step(f"2. Run {T2V}"):
            simulator.configure(generation_seconds=60)  # a long enough deferral to look at it
            run_id = self.runs[T2V] = deployment.trigger(T2V)
            self.wait_state(T2V, run_id, "submit_video", {"deferred"})
            browser.goto(
                task_path(T2V, run_id, "submit_video", "/task-state-store"),
                expect=["Task State Store", STATE_STORE_LOADED],
                settle=1.5,
            )
            browser.shot(
                "t2v-submit-state-store-deferred",
                "Storage -> Task State Store of submit_video "
                "while deferred (Airflow 3.3's task state store).",
            )
            self.note_state(T2V, run_id, "submit_video")
            browser.goto(task_path(T2V, run_id, "submit_video", "/details"), expect=["Task ID"])
            browser.shot(
                "t2v-submit-details-deferred",
                "submit_video's Details tab while deferred: Extra Links (no link yet) and Triggerer Info.",
            )
            self.note_state(T2V, run_id, "submit_video")
            browser.goto(run_path(T2V, run_id), expect=["Task Instances"])
            browser.shot(
                "t2v-grid-deferred",
                "The run's page: grid on the left (submit_video deferred, "
                "purple), task instances on the right.",
            )
            self.note_state(T2V, run_id, "submit_video")
            browser.goto(task_path(T2V, run_id, "submit_video"))
            browser.wait_for_log(ANY_LINE)
            with contextlib.suppress(Exception):  # a progress line from the triggerer, if it comes in time
                browser.wait_for_log("in_progress", timeout=15)
            browser.shot(
                "t2v-submit-log-deferred",
                "submit_video's Logs tab while it is deferred (the triggerer's progress lines appear inside "
                "the task log).",
                text=browser.log_lines(),
            )
            self.note_state(T2V, run_id, "submit_video")
            state = deployment.wait_for_run(T2V, run_id, timeout=180)
            self.note(f"Run ended: **{state}**.")
            if state != "success":
                raise TourError(f"{T2V} ended {state}")
            browser.goto(run_path(T2V, run_id), expect=["Task Instances", "Success"])
            browser.shot("t2v-grid-success", "The run's page after success.")
            browser.goto(task_path(T2V, run_id, "submit_video"))
            browser.wait_for_log(ANY_LINE)
            browser.expand_log_groups()
            browser.shot(
                "t2v-submit-log-success",
                "submit_video's log after success, all groups expanded "
                "(Log Settings -> Expand; lines wrapped).",
                text=browser.log_lines(),
            )
            browser.goto(task_path(T2V, run_id, "submit_video", "/details"), expect=["Extra Links"])
            browser.shot(
                "t2v-submit-details-extra-links",
                "submit_video's Details tab after success: the "
                "Extra Links section at the top holds the provider's link button.",
            )
            browser.goto(task_path(T2V, run_id, "submit_video", "/xcom"), expect=["return_value"])
            browser.shot("t2v-submit-xcom", "Storage -> XCom of submit_video.")
            browser.goto(
                task_path(T2V, run_id, "submit_video", "/task-state-store"),
                expect=["Task State Store", STATE_STORE_LOADED],
                settle=1.5,
            )
            browser.shot("t2v-submit-state-store-success", "Storage -> Task State Store after success.")
            browser.goto(task_path(T2V, run_id, "download_video"))
            browser.wait_for_log(ANY_LINE)
            browser.expand_log_groups()
            browser.shot("t2v-download-log", "download_video's log (expanded).", text=browser.log_lines())
            browser.goto(task_path(T2V, run_id, "download_video", "/asset_events"), expect=["Asset Event"])
            browser.unfold_json()
            browser.shot(
                "t2v-download-asset-events", "download_video's Asset Events tab, event extra unfolded."
            )
            self.show_assets(self.wait_for_assets())
            browser.shot("assets-list", "Assets (left rail) after the text-to-video run.")
            events = deployment.api.get("assets/events", source_dag_id=T2V, source_run_id=run_id, limit=10)[
                "asset_events"
            ]
            if not events:
                raise TourError("the text-to-video run emitted no asset event")
            asset_id = events[0]["asset_id"]
            browser.goto(f"/assets/{asset_id}", expect=["Asset Event"], settle=2)
            browser.unfold_json()
            browser.shot(
                "asset-page",
                f"The page of the asset the run stored (asset {asset_id}): graph, "
                "producing tasks, and its events with their extra unfolded.",
            )
            self.note(
                f"REST: the run's asset events: `{json.dumps([e['uri'] for e in events])}`; asset "
                f"`extra` = `{json.dumps(deployment.api.get(f'assets/{asset_id}')['extra'])}`."
            )

        with self.step(f"3. Run {MAPPED}"):
            simulator.configure(generation_seconds=15)
            run_id = self.runs[MAPPED] = deployment.trigger(MAPPED)
            self.wait_state(MAPPED, run_id, "submit_video", {"deferred"}, count=2)
            browser.goto(task_path(MAPPED, run_id, "submit_video", "/mapped"), expect=["Map Index"])
            browser.shot(
                "mapped-submit-instances-running",
                "submit_video [ ] -> Task Instances while "
                "the mapped submits run: one row per map index, labelled by the Map Index column.",
            )
            state = deployment.wait_for_run(MAPPED, run_id, timeout=300)
            self.note(f"Run ended: **{state}**.")
            if state != "success":
                raise TourError(f"{MAPPED} ended {state}")
            browser.goto(task_path(MAPPED, run_id, "submit_video", "/mapped"), expect=["Map Index"])
            browser.shot("mapped-submit-instances", "The mapped submit_video task instances after success.")
            browser.goto(run_path(MAPPED, run_id), expect=["Task Instances", "Success"])
            browser.shot(
                "mapped-run",
                "The mapped run's page: grid (submit_video [ ], download_video [ ]) "
                "and all 20 task instances.",
            )
            browser.goto(task_path(MAPPED, run_id, "submit_video", "/mapped/3"))
            browser.wait_for_log(ANY_LINE)
            browser.shot(
                "mapped-submit-3-log",
                "One mapped instance (map index 3): header and log.",
                text=browser.log_lines(),
            )
            browser.goto(task_path(MAPPED, run_id, "download_video", "/mapped"), expect=["Map Index"])
            browser.shot("mapped-download-instances", "The mapped download_video task instances.")
            browser.goto(
                task_path(MAPPED, run_id, "download_video", "/mapped/0/asset_events"), expect=["Asset Event"]
            )
            browser.unfold_json()
            browser.shot(
                "mapped-download-0-asset-events",
                "Asset Events of the mapped download_video, "
                "map index 0 (the events it created; the DAG sets no outlets).",
            )
            events = deployment.api.get(
                "assets/events", source_dag_id=MAPPED, source_run_id=run_id, limit=100
            )
            self.note(f"REST: the mapped run emitted {events['total_entries']} asset events.")
            self.show_assets(self.wait_for_assets())
            browser.shot("assets-list-after-mapped", "Assets after the mapped run.")
        self.mark_logs("successful runs end")

        with self.step("4. A connection with a wrong key, and a run that uses it"):
            self.form_posts[WRONG_CONN] = browser.add_connection(
                WRONG_CONN, simulator.api_url, WRONG_KEY, "A wrong key, added by the UI tour", "wrong-key"
            )
            self.button_tests[WRONG_CONN] = browser.press_test(WRONG_CONN, "wrong-key")
            self.rest_tests[WRONG_CONN] = self.rest_test(WRONG_CONN, simulator.api_url)
            status, answer = self.rest_tests[WRONG_CONN]
            self.note(f"REST `POST /api/v2/connections/test` for `{WRONG_CONN}`: {status} `{answer}`")
            simulator.configure(generation_seconds=10)
            run_id = self.runs[WRONG_DAG] = deployment.trigger(WRONG_DAG)
            state = deployment.wait_for_run(WRONG_DAG, run_id, timeout=180)
            self.note(
                f"Run of `{WRONG_DAG}` (submit with `octopusx_conn_id={WRONG_CONN!r}`, retries=0) "
                f"ended: **{state}**."
            )
            browser.goto(run_path(WRONG_DAG, run_id), expect=["Task Instances", "Failed"])
            browser.shot("wrong-key-run", "The failed run's page.")
            browser.goto(task_path(WRONG_DAG, run_id, "submit_video"))
            browser.wait_for_log(ANY_LINE)
            with contextlib.suppress(Exception):
                browser.wait_for_log(re.compile(r"401|API key|unauthori[sz]ed", re.IGNORECASE), timeout=20)
            browser.expand_log_groups()
            browser.shot(
                "wrong-key-submit-log",
                "The failed submit_video's log (expanded): the 401 message.",
                text=browser.log_lines(),
            )

    # -- the end -------------------------------------------------------------------------------------

    def stop(self) -> None:
        began = time.monotonic()
        if self.rest is not None:
            with contextlib.suppress(Exception):
                self.rest.close()
        if self.deployment is not None:
            with contextlib.suppress(Exception):
                self.mark_logs("tour end")
            try:
                self.deployment.stop()
            except Exception as error:
                self.report.failures.append(f"stopping Airflow: {error}")
        if self.simulator is not None:
            try:
                self.simulator.stop()
            except Exception as error:
                self.report.failures.append(f"stopping the simulator: {error}")
        self.report.timings.append(("Stop every process", time.monotonic() - began))

    def finish(self) -> None:
        errors = self.error_section()
        self.copy_logs()
        total = time.monotonic() - self.started
        failures = self.report.failures
        result = f"FAILED: {'; '.join(failures)}" if failures else "every step passed"
        header = [
            "# UI tour of a real Airflow deployment",
            "",
            f"- Checkout: `{REPO}` at `{git(['rev-parse', '--short', 'HEAD'])}`{changes()}",
            f"- Package: `{package_origin()}`",
            f"- Airflow {airflow_version()}; Chromium `{CHROMIUM}`; viewport {WIDTH}x{HEIGHT}, full page",
            f"- Tour time: {total:.0f} s ("
            + ", ".join(f"{title.split(' ', 1)[0]} {seconds:.0f} s" for title, seconds in self.report.timings)
            + ")",
            f"- Result: {result}",
            "",
            "## Screenshots",
            "",
            *(f"- `{name}`: {description}" for name, description in self.report.shots),
            "",
        ]
        self.report.write(header, errors)
        print(f"Report: {self.out / 'report.md'} ({len(self.report.shots)} screenshots, {total:.0f} s)")

    def error_section(self) -> list[str]:
        lines = ["## 5. ERROR-level lines", ""]
        if self.deployment is None:
            return [*lines, "No deployment was started.", ""]
        begin = self.log_marks.get("successful runs begin")
        end = self.log_marks.get("successful runs end") or self.log_marks.get("tour end")
        ok_runs = [(dag, run) for dag, run in self.runs.items() if dag in (T2V, MAPPED)]
        if begin is not None and end is not None:
            found = error_lines(self.deployment, begin, end, ok_runs)
            lines += [
                "During the successful runs (steps 2-3: component logs between the two marks, and every "
                f"task and trigger log of those runs). Numbers, ids and dates are replaced by `N`, "
                f"`<id>`, `<run>`; {sum(found.values())} lines, {len(found)} distinct:",
                "",
                *format_counts(found),
                "",
            ]
        lines += [
            "`Could not read served logs` (if listed) comes from the api-server reading a running task's "
            "log: the deployment starts the scheduler and triggerer with `--skip-serve-logs` and the UI "
            "then reads the same files from disk, so it is an artefact of this deployment, not the "
            "provider's.",
            "",
        ]
        rest_begin = end or {}
        rest_end = self.log_marks.get("tour end")
        if rest_end is not None:
            other = [(dag, run) for dag, run in self.runs.items() if dag not in (T2V, MAPPED)]
            found = error_lines(self.deployment, rest_begin, rest_end, other)
            before = error_lines(self.deployment, {}, begin or {}, []) if begin else Counter()
            lines += [
                f"For comparison, step 4 (wrong key; its run is meant to fail): {sum(found.values())} lines:",
                "",
                *format_counts(found),
                "",
                f"And steps 0-1 (start, connection form, Test button): {sum(before.values())} lines:",
                "",
                *format_counts(before),
                "",
            ]
        return lines

    def copy_logs(self) -> None:
        if self.deployment is None:
            return
        target = self.out / "logs"
        with contextlib.suppress(Exception):
            target.mkdir(exist_ok=True)
            for path in self.deployment.log_files():
                if path.exists():
                    shutil.copy2(path, target / path.name)
            task_logs = self.deployment.home / "logs"
            for dag_id in self.runs:
                folder = task_logs / f"dag_id={dag_id}"
                if folder.exists():
                    shutil.copytree(folder, target / "tasks" / f"dag_id={dag_id}", dirs_exist_ok=True)


# -- ERROR lines ------------------------------------------------------------------------------------

ERROR_TEXT = re.compile(r"\[(error|critical)\s*\]|\bERROR\b|\bCRITICAL\b")
NORMALISE = [
    (re.compile(r"^\S*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z?\s*"), ""),
    (re.compile(r"\[\d{4}-\d\d-\d\d[ T][\d:.,]+[^\]]*\]\s*"), ""),
    (re.compile(r"(manual|scheduled|asset_triggered)__\d{4}-[\d\-T:.+]+"), "<run>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (re.compile(r"video_[0-9a-f]{8,}"), "video_<id>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:N"),
    (re.compile(r"\d+"), "N"),
    (re.compile(r"\s+"), " "),
]


def normalise(line: str) -> str:
    for pattern, replacement in NORMALISE:
        line = pattern.sub(replacement, line)
    line = line.strip()
    return line if len(line) <= 400 else line[:400] + " [...]"


def error_lines(
    deployment: TourDeployment, begin: dict[Path, int], end: dict[Path, int], runs: list[tuple[str, str]]
) -> Counter[str]:
    found: Counter[str] = Counter()
    for path, stop in end.items():
        start = begin.get(path, 0)
        if not path.exists() or stop <= start:
            continue
        with path.open("rb") as file:
            file.seek(start)
            chunk = file.read(stop - start).decode(errors="replace")
        for line in chunk.splitlines():
            if ERROR_TEXT.search(line):
                found[f"{path.stem}: {normalise(line)}"] += 1
    for dag_id, run_id in runs:
        folder = deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for path in sorted(folder.rglob("*.log")) if folder.exists() else []:
            kind = "trigger log" if ".trigger." in path.name else "task log"
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    if ERROR_TEXT.search(line):
                        found[f"{kind} ({dag_id}): {normalise(line)}"] += 1
                    continue
                if isinstance(record, dict) and str(record.get("level", "")).lower() in {"error", "critical"}:
                    text = f"[{record.get('level')}] {record.get('event')} [{record.get('logger', '')}]"
                    if record.get("error_detail"):
                        text += f" {json.dumps(record['error_detail'])[:200]}"
                    found[f"{kind} ({dag_id}): {normalise(text)}"] += 1
    return found


def format_counts(found: Counter[str]) -> list[str]:
    if not found:
        return ["- none"]
    return [f"- {count} x `{line.replace('`', chr(39))}`" for line, count in found.most_common()]


# -- helpers ------------------------------------------------------------------------------------------


def git(args: list[str]) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    return "?"


def changes() -> str:
    paths = [line[3:] for line in git(["status", "--porcelain"]).splitlines() if line.strip()]
    if not paths:
        return ""
    shown = ", ".join(f"`{path}`" for path in paths[:6])
    return f", not committed: {shown}{' and more' if len(paths) > 6 else ''}"


def package_origin() -> str:
    spec = importlib.util.find_spec("airflow_octopusx")
    return str(Path(spec.origin).parent) if spec and spec.origin else "?"


def airflow_version() -> str:
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        return version("apache-airflow-core")
    return "?"


def check_environment() -> None:
    origin = package_origin()
    if not Path(origin).resolve().is_relative_to(REPO):
        raise SystemExit(
            f"airflow_octopusx is imported from {origin}, not from this checkout ({REPO}): "
            f"run with the venv that has this checkout installed (editable)."
        )
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument(
        "--part",
        choices=["all", "basics", "batch"],
        default="all",
        help="basics: steps 1-4 (connections, single videos, a wrong key); batch: steps 5-6 (batches, "
        "sensors in the triggerer); all: both",
    )
    parser.add_argument(
        "--keep-home",
        action="store_true",
        help="keep the private AIRFLOW_HOME (database, logs) and print where it is",
    )
    args = parser.parse_args()
    check_environment()
    out: Path = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("[0-9][0-9]-*.png"), out / "report.md"]:
        old.unlink(missing_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: processes are stopped

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    home = Path(tempfile.mkdtemp(prefix="ui-tour-home-"))
    try:
        return Tour(out, home, args.part).run()
    finally:
        if args.keep_home:
            print(f"AIRFLOW_HOME kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
