"""SubmitVideoOperator's money promises, over real sockets, across kills, lost answers and retries.

The state machine runs tries of one task instance against a scriptable API (``tests/support/batch_api.py``):
a try killed at any write to the task state store, the answer to a POST lost after the video was made,
status blips, and, where Airflow deletes task state as it records a success
(``[state_store] clear_on_success``), a try after the success (the success report was lost). It holds
that a video is paid for again only after a try said that one may exist, that a try after a success with
that setting pays for nothing, and that the video a try returns is one the API made.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from airflow_octopusx.exceptions import OctopusXError
from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from tests.conftest import hostile_connection
from tests.hostile import HostileServer
from tests.operators.test_batch_ledger import KillingStore, WorkerKilled
from tests.support.batch_api import FakeVideoApi
from tests.support.task_context import RecordingTaskInstance

#: What a try that fails without sending says: the hook's lost answer, or the operator's stopped try.
MAY_EXIST = re.compile(r"may have (reached OctopusX and )?created a billed video")


class SubmitMachine(RuleBasedStateMachine):
    server: HostileServer  # set by the test below, before the machine runs

    @initialize(clear_on_success=st.booleans())
    def start(self, clear_on_success: bool) -> None:
        self.api = FakeVideoApi(self.server).start()
        self.store = KillingStore()
        self.clear_on_success = clear_on_success
        self.warned = 0  # tries that failed saying a billed video may exist
        self.returned: list[str] = []  # what successful tries returned

    # -- what happens to the task -------------------------------------------------------------------

    @rule(kill_at=st.none() | st.integers(1, 3))
    def a_try(self, kill_at: int | None) -> None:
        if self.returned and not self.clear_on_success:
            return  # the task succeeded and dropped its record: running it again is a new video, by design
        self.store.kill_at = None if kill_at is None else self.store.writes + kill_at
        task = SubmitVideoOperator(task_id="submit", prompt="a kite", poll_interval=0.01, timeout=5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS", str(self.clear_on_success))
            context: dict[str, Any] = {"ti": RecordingTaskInstance(), "task_state_store": self.store}
            try:
                self.returned.append(task.execute(context))
            except WorkerKilled:
                pass
            except AirflowFailException as error:
                if not MAY_EXIST.search(str(error)):
                    raise
                self.warned += 1
            except (AirflowException, OctopusXError):
                pass  # a wait that gave up: the retry resumes the video

    @rule()
    def the_answer_to_the_next_post_is_lost(self) -> None:
        self.api.lost_answer_next = True

    @rule(blips=st.integers(1, 8))
    def the_next_video_status_blips(self, blips: int) -> None:
        self.api.blips_next = blips

    # -- what must hold -----------------------------------------------------------------------------

    @invariant()
    def a_video_is_paid_for_again_only_after_a_try_said_one_may_exist(self) -> None:
        assert len(self.api.made) <= 1 + self.warned, (self.api.posts, self.warned)

    @invariant()
    def every_success_returns_the_same_video_the_api_made(self) -> None:
        assert len(set(self.returned)) <= 1, self.returned
        assert all(video_id in self.api.made for video_id in self.returned)


def test_a_submit_task_keeps_its_money_promises(
    hostile_server: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile_connection(hostile_server, monkeypatch, timeout=5)

    class Machine(SubmitMachine):
        server = hostile_server

    Machine.TestCase.settings = settings(max_examples=40, stateful_step_count=8, deadline=None)
    Machine.TestCase().runTest()
