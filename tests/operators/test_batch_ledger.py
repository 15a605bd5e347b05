"""GenerateVideosOperator's money promises, over real sockets, across kills, retries and hostile answers.

The state machine drives one batch against a scriptable API (``tests/support/batch_api.py``): tries killed
between any two writes to the task state store, retries, requests inserted, swapped and repeated, status
blips, a 4xx for one video, an id answered for two POSTs, an answer about another video. It holds that no
request is sent again once its record may say it left, that every id the API handed out ends stored or
reported by its id (or its request reported ambiguous), one result per request in order, each credited to
the right request, and nothing at the destination but whole MP4s of their ids.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from airflow_octopusx.operators.batch import GenerateVideosOperator
from airflow_octopusx.storage.video_destination import file_name
from airflow_octopusx.triggers.batch import VideoBatchTrigger
from tests.conftest import hostile_connection
from tests.hostile import Answer, HostileServer
from tests.storage.test_input_files import PNG
from tests.support.batch_api import FakeVideoApi, mp4_of
from tests.support.task_context import MemoryTaskStateStore, RecordingTaskInstance


class WorkerKilled(BaseException):
    """Ends a try where it stands, as a killed worker would (no ``except Exception`` catches it)."""


class KillingStore(MemoryTaskStateStore):
    """A task state store whose ``kill_at``-th write (from 1) kills the try before it is written."""

    kill_at: int | None = None
    writes = 0

    def set(self, key: str, value: Any) -> None:
        self.writes += 1
        if self.writes == self.kill_at:
            raise WorkerKilled
        super().set(key, value)


#: The manifest a batch of task ``generate`` writes beside its videos.
MANIFEST = file_name(f"generate.{RecordingTaskInstance().run_id}.jsonl")


def generate(prompts: list[str], folder: Path, **kwargs: Any) -> GenerateVideosOperator:
    arguments: dict[str, Any] = {
        "task_id": "generate",
        "requests": [{"prompt": prompt} for prompt in prompts],
        "destination": f"{folder}/",
        "deferrable": False,
        "poll_interval": 0.01,
        "timeout": 0.5,
        "max_failed": 1000,
        "max_concurrent_requests": 3,
        "asset_alias": None,
    }
    return GenerateVideosOperator(**(arguments | kwargs))


@pytest.fixture
def api(hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> FakeVideoApi:
    hostile_connection(hostile_server, monkeypatch, timeout=5)
    return FakeVideoApi(hostile_server).start()


class BatchLedgerMachine(RuleBasedStateMachine):
    server: HostileServer  # set by the test below, before the machine runs

    @initialize()
    def start(self) -> None:
        self.api = FakeVideoApi(self.server).start()
        self.folder = Path(tempfile.mkdtemp(prefix="octopusx-ledger-"))
        self.store = KillingStore()
        self.prompts = ["a fox", "a kite", "a lake"]
        self.most_wanted = collections.Counter(self.prompts)
        self.fresh = 0
        # A try that succeeds ends the task: its ledger is deleted, and clearing the task later is a new
        # batch that pays anew, as with SubmitVideoOperator. The machine tries no more then (a no-op rule
        # rather than a precondition: whether a try is killed depends on timing, what is drawn must not).
        self.results: list[dict[str, Any]] | None = None

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- what happens to the batch ------------------------------------------------------------------------

    @rule(kill_at=st.none() | st.integers(1, 8))
    def a_try(self, kill_at: int | None) -> None:
        if self.results is not None:
            return
        self.store.kill_at = None if kill_at is None else self.store.writes + kill_at
        with contextlib.suppress(WorkerKilled):
            self.results = self._run()
            self.final_prompts = list(self.prompts)

    @rule()
    def a_request_is_inserted_first(self) -> None:
        self.fresh += 1
        self.prompts.insert(0, f"a new request {self.fresh}")
        self._wanted()

    @precondition(lambda self: len(self.prompts) > 1)
    @rule(data=st.data())
    def two_requests_swap(self, data: st.DataObject) -> None:
        first, second = data.draw(st.lists(st.integers(0, len(self.prompts) - 1), min_size=2, max_size=2))
        self.prompts[first], self.prompts[second] = self.prompts[second], self.prompts[first]

    @rule(data=st.data())
    def a_request_is_repeated(self, data: st.DataObject) -> None:
        self.prompts.append(data.draw(st.sampled_from(self.prompts)))
        self._wanted()

    @rule()
    def the_next_post_gets_an_id_already_handed_out(self) -> None:
        self.api.duplicate_next = True

    @rule(blips=st.integers(1, 6))
    def the_next_video_status_blips(self, blips: int) -> None:
        self.api.blips_next = blips

    @rule(status=st.sampled_from([400, 403, 409, 410, 422]))
    def the_next_video_is_refused_alone(self, status: int) -> None:
        self.api.refusal_next = status

    @rule()
    def the_next_video_is_described_as_another(self) -> None:
        self.api.foreign_next = True

    # -- what must hold -----------------------------------------------------------------------------

    @invariant()
    def no_request_is_paid_twice(self) -> None:
        for prompt, posts in collections.Counter(self.api.posts).items():
            assert posts <= self.most_wanted[prompt], f"{prompt!r} was sent {posts} times"

    @invariant()
    def the_destination_holds_only_whole_mp4s_of_their_ids_and_a_whole_manifest(self) -> None:
        names = {file_name(video_id): video_id for video_id in self.api.made}
        for path in self.folder.iterdir():
            if path.name == MANIFEST:
                assert all(json.loads(line) for line in path.read_text().splitlines())
                continue
            assert path.suffix == ".mp4", path.name
            assert not path.name.startswith("."), path.name
            assert path.read_bytes() == mp4_of(names[path.stem]), path.name

    def check_the_end(self) -> None:
        """A last try, not killed: one result per request in order, every paid video accounted for."""
        self.store.kill_at = None
        if self.results is None:
            self.results, self.final_prompts = self._run(), list(self.prompts)
        results, prompts = self.results, self.final_prompts
        assert [result["index"] for result in results] == list(range(len(prompts)))
        reported = set()
        for prompt, result in zip(prompts, results, strict=True):
            if result["video_id"] is not None:
                assert self.api.made[result["video_id"]] == prompt, "a video credited to another request"
                reported.add(result["video_id"])
            if result["status"] == "stored":
                assert (self.folder / f"{file_name(result['video_id'])}.mp4").is_file()
        ambiguous = {
            prompt
            for prompt, result in zip(prompts, results, strict=True)
            if (result["error"] or {}).get("code") == "ambiguous_submission"
        }
        for video_id, prompt in self.api.made.items():
            assert video_id in reported or prompt in ambiguous, f"{video_id} ({prompt!r}) is unaccounted for"
        manifest = [json.loads(line) for line in (self.folder / MANIFEST).read_text().splitlines()]
        assert manifest == [
            result | {"prompt": prompt} for result, prompt in zip(results, prompts, strict=True)
        ]

    def _run(self) -> list[dict[str, Any]]:
        context = {"ti": RecordingTaskInstance(), "task_state_store": self.store}
        return generate(self.prompts, self.folder).execute(context)

    def _wanted(self) -> None:
        for prompt, count in collections.Counter(self.prompts).items():
            self.most_wanted[prompt] = max(self.most_wanted[prompt], count)


def test_the_batch_keeps_its_money_promises(api: FakeVideoApi) -> None:
    class Machine(BatchLedgerMachine):
        pass

    Machine.server = api.server

    def end_then_teardown(self: BatchLedgerMachine) -> None:
        try:
            self.check_the_end()
        finally:
            BatchLedgerMachine.teardown(self)

    Machine.teardown = end_then_teardown  # type: ignore[method-assign]
    Machine.TestCase.settings = settings(max_examples=40, stateful_step_count=8)
    Machine.TestCase().runTest()


# -- each promise on its own ----------------------------------------------------------------------------


def run(prompts: list[str], folder: Path, store: MemoryTaskStateStore, **kwargs: Any) -> list[dict[str, Any]]:
    context = {"ti": RecordingTaskInstance(), "task_state_store": store}
    return generate(prompts, folder, **kwargs).execute(context)


@pytest.mark.parametrize(
    ("request_fields", "named"),
    [
        ({"prompt": "a fox \ud800"}, "prompt"),
        (
            {"prompt": "a fox", "model": "omni-fast-v2v", "extra_body": {"strength": float("nan")}},
            "extra_body",
        ),
        (
            {"prompt": "a fox", "model": "omni-fast-v2v", "extra_body": {"fps": [float("inf")]}},
            "extra_body.fps",
        ),
    ],
)
def test_a_request_json_cannot_carry_is_refused_naming_its_field_before_any_post(
    api: FakeVideoApi, tmp_path: Path, request_fields: dict[str, Any], named: str
) -> None:
    task = generate(["a kite"], tmp_path)
    task.requests = [*task.requests, request_fields]
    with pytest.raises(AirflowFailException, match=rf"requests\[1\]: {re.escape(named)}\b.*strict JSON"):
        task.execute({"ti": RecordingTaskInstance(), "task_state_store": MemoryTaskStateStore()})
    assert api.posts == []


def test_a_try_killed_while_posts_are_out_never_sends_them_again(api: FakeVideoApi, tmp_path: Path) -> None:
    store = KillingStore()
    store.kill_at = 2  # the first write marks three requests sending; the second would record outcomes
    prompts = [f"a boat, take {n}" for n in range(6)]
    with pytest.raises(WorkerKilled):
        run(prompts, tmp_path, store)
    assert len(api.posts) == 3
    store.kill_at = None
    results = run(prompts, tmp_path, store)
    assert collections.Counter(api.posts) == collections.Counter(prompts)  # each sent once, ever
    assert [result["status"] for result in results] == ["not_submitted"] * 3 + ["stored"] * 3
    assert {result["error"]["code"] for result in results[:3]} == {"ambiguous_submission"}


def test_a_request_inserted_before_a_retry_resubmits_nothing(api: FakeVideoApi, tmp_path: Path) -> None:
    store = KillingStore()
    prompts = ["a fox", "a kite"]
    store.kill_at = 4  # after submitting, before storing
    with pytest.raises(WorkerKilled):
        run(prompts, tmp_path, store)
    store.kill_at = None
    results = run(["a lake", *prompts], tmp_path, store)
    assert api.posts.count("a fox") == api.posts.count("a kite") == 1
    assert [api.made[result["video_id"]] for result in results] == ["a lake", "a fox", "a kite"]


def test_an_input_file_rewritten_after_its_request_left_is_never_read_again(
    api: FakeVideoApi, tmp_path: Path
) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(PNG)
    store = KillingStore()
    store.kill_at = 4  # after submitting, before storing
    fields = {"prompt": "a fox", "first_image_url": str(image)}
    task = generate([], tmp_path / "videos", requests=[fields])
    with pytest.raises(WorkerKilled):
        task.execute({"ti": RecordingTaskInstance(), "task_state_store": store})
    image.write_bytes(b"not an image any more")
    store.kill_at = None
    task = generate([], tmp_path / "videos", requests=[fields])
    [result] = task.execute({"ti": RecordingTaskInstance(), "task_state_store": store})
    assert result["status"] == "stored"
    assert api.posts == ["a fox"]


def test_where_airflow_deletes_state_on_success_a_lost_success_report_pays_for_nothing(
    api: FakeVideoApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS", "True")
    store = MemoryTaskStateStore()
    run(["a fox", "a kite"], tmp_path, store)
    assert store.values  # left for Airflow to delete as it records the success
    # The success report was lost: Airflow runs the task again.
    results = run(["a fox", "a kite"], tmp_path, store)
    assert [result["status"] for result in results] == ["stored", "stored"]
    assert sorted(api.posts) == ["a fox", "a kite"]


def test_a_status_that_cannot_be_read_for_a_while_never_fails_the_video(
    api: FakeVideoApi, tmp_path: Path
) -> None:
    api.blips_next = 8  # more failed polls in a row than a single wait sits out
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore(), timeout=30)
    assert [result["status"] for result in results] == ["stored", "stored"]


@pytest.mark.parametrize("status", [400, 403, 409, 410, 422])
def test_a_4xx_for_one_video_ends_that_video_alone(api: FakeVideoApi, tmp_path: Path, status: int) -> None:
    api.refusal_next = status
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore(), max_concurrent_requests=1)
    assert [result["status"] for result in results] == ["failed", "stored"]
    assert results[0]["video_id"] == "video_0"
    assert results[0]["error"]["code"] == f"c{status}"


def test_an_id_answered_for_two_posts_is_credited_once_and_the_other_reported(
    api: FakeVideoApi, tmp_path: Path
) -> None:
    api.duplicate_next = True  # the second POST is answered with the first one's id
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore(), max_concurrent_requests=1)
    assert (results[0]["status"], results[0]["video_id"]) == ("stored", "video_0")
    assert (results[1]["status"], results[1]["error"]["code"]) == ("not_submitted", "ambiguous_submission")
    assert "video_0" in results[1]["error"]["message"]
    assert api.posts == ["a fox", "a kite"]


def test_an_id_answered_for_two_posts_in_flight_together_is_credited_to_neither(
    api: FakeVideoApi, tmp_path: Path
) -> None:
    # Which of two submissions on their way at once made the video cannot be told: crediting the one
    # whose answer was read first once credited a video to the wrong request (seen on a loaded machine).
    api.duplicate_next = True
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore(), max_concurrent_requests=2)
    for result in results:
        assert (result["status"], result["video_id"]) == ("not_submitted", None)
        assert result["error"]["code"] == "ambiguous_submission"
        assert "video_0" in result["error"]["message"]
    assert sorted(api.posts) == ["a fox", "a kite"]
    assert not list(tmp_path.glob("*.mp4"))


def test_ids_whose_file_names_would_collide_store_one_and_report_the_other(
    api: FakeVideoApi, tmp_path: Path
) -> None:
    api.ids_next = ["vid:1", "vid_1"]
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore(), max_concurrent_requests=1)
    assert [result["status"] for result in results] == ["stored", "failed"]
    assert results[1]["video_id"] == "vid_1"
    assert results[1]["error"]["code"] == "file_name_taken"
    assert (tmp_path / "vid_1.mp4").read_bytes() == mp4_of("vid:1")


def test_only_a_file_this_batch_was_storing_counts_as_stored(api: FakeVideoApi, tmp_path: Path) -> None:
    (tmp_path / "video_0.mp4").mkdir()
    (tmp_path / "video_1.mp4").write_bytes(b"someone else's")
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore())
    assert [result["status"] for result in results] == ["failed", "failed"]
    assert {result["error"]["code"] for result in results} == {"download_failed"}
    assert (tmp_path / "video_1.mp4").read_bytes() == b"someone else's"


def test_a_status_answer_dripping_a_byte_at_a_time_holds_no_wait_past_its_deadline(
    hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before, a round of polls waited for its slowest answer, each read bounded only by the 30 s read
    timeout: a batch with a 2 s deadline was held 42 s. Now each poll gets the time left at most."""
    hostile_connection(hostile_server, monkeypatch, timeout=30)
    status = json.dumps({"id": "video_1", "status": "completed", "video_url": ""}).encode()
    hostile_server.script("POST /v1/videos", Answer.json('{"id": "video_1", "status": "queued"}'))
    hostile_server.script(
        "GET /v1/videos/video_1", Answer(200, (), lambda: (bytes([b]) for b in status), pause=0.5)
    )
    started = time.monotonic()
    [result] = run(["a fox"], tmp_path, MemoryTaskStateStore(), timeout=2)
    assert result["status"] == "timeout"
    assert time.monotonic() - started < 15  # the drip alone would take 40 s

    trigger = VideoBatchTrigger(["video_1"], "octopusx_default", poll_interval=0.1, deadline=time.time() + 2)

    async def events() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    started = time.monotonic()
    [event] = asyncio.run(events())
    assert event["videos"]["video_1"]["status"] == "timeout"
    assert time.monotonic() - started < 15


def test_each_stored_video_is_recorded_once_as_hook_lineage(
    lineage_reader_plugin: None, api: FakeVideoApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        from airflow.sdk.lineage import HookLineageCollector
    except ImportError:  # Airflow < 3.2
        from airflow.lineage.hook import HookLineageCollector  # type: ignore[no-redef]
    collector = HookLineageCollector()  # what Airflow hands out when a lineage reader (OpenLineage) is on
    monkeypatch.setattr("airflow_octopusx.operators.batch.get_hook_lineage_collector", lambda: collector)
    results = run(["a fox", "a kite"], tmp_path, MemoryTaskStateStore())
    outputs = collector.collected_assets.outputs
    assert sorted((info.asset.uri, info.count) for info in outputs) == sorted((r["uri"], 1) for r in results)


async def test_a_batch_wait_killed_in_the_triggerer_says_its_videos_may_still_render(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trigger = VideoBatchTrigger(["video_1", "video_2"], "octopusx_default", poll_interval=1, deadline=0)
    await trigger.on_kill()
    # Airflow's structured logging prints trigger logs to stdout.
    [killed] = [line for line in capsys.readouterr().out.splitlines() if "Stopped waiting" in line]
    assert "Stopped waiting for 2 videos" in killed
    assert "resumes them" in killed


@pytest.mark.parametrize("event", [None, {"status": "success", "video_id": "v"}, {"status": "nope"}, "done"])
def test_a_batch_refuses_an_event_no_octopusx_trigger_fires(event: Any, tmp_path: Path) -> None:
    context = {"ti": RecordingTaskInstance(), "task_state_store": MemoryTaskStateStore()}
    with pytest.raises(AirflowException, match=r"Unexpected event|Waiting for the batch failed"):
        generate(["a fox"], tmp_path).execute_complete(context, event)
