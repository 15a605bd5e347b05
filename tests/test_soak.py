"""A CI-sized soak: 40 videos through the real operators and trigger while the simulator faults 20 % of
all requests (seeded), with Airflow-like task retries. The driver is ``tests/support/soak.py``, which
``python -m benchmarks.soak`` runs at 500 videos; the figures are printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from airflow_octopusx.simulator import Fault, Simulator
from tests.conftest import connection_uri
from tests.support.soak import (
    SoakConfig,
    SoakReport,
    TaskFailed,
    TaskRun,
    Triggerer,
    hooks_time_out_after,
    run_batch_soak,
    run_soak,
)

# Random faults are a pure function of seed, prompt and the request's ordinal, so a seed fixes which
# faults each video meets; these two make every kind fire, an expired CDN link included.
CI_SOAK = SoakConfig(
    videos=40,
    fault_rate=0.2,
    fault_seed=5,
    concurrency=40,
    task_retries=5,
    retry_delay=0.1,
    generation_seconds=1.0,
    poll_interval=0.25,
    video_size_bytes=2304 * 1024,  # over 2 MiB, so a transfer cut in half can resume with Range
    # A client gives up after 5 s and a "delay" fault holds its answer 6 s, so the fault loses the answer
    # with a second to spare (were it answered, the video would simply be stored). Only a stall of over
    # 5 s could lose another; with 1 s, 7 of 40 POST answers came late on a loaded machine.
    client_timeout=5.0,
    slow_seconds=6.0,
)
SOAKS = {
    "signed-links": CI_SOAK,
    # Every download through /content, which redirects to the CDN: the key must stay behind.
    "content-redirect": replace(CI_SOAK, videos=20, fault_seed=43, empty_video_url=True),
    # No lost POST answers: nothing is ambiguous, so every single video must be stored. A client timeout
    # far above the faults' delays, so that a delayed POST is answered.
    "unambiguous-posts": replace(CI_SOAK, unambiguous_posts=True, client_timeout=15.0),
}


@pytest.fixture(scope="module", params=list(SOAKS))
def soak(
    request: pytest.FixtureRequest,
    octopusx_simulator_session: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[SoakReport]:
    """One soak per configuration for the whole module; each test checks one guarantee against it."""
    config = SOAKS[request.param]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_simulator_session))
        report = run_soak(octopusx_simulator_session.api_url, config, tmp_path_factory.mktemp("soak"))
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[{request.param}] {report.format()}")
    yield report
    octopusx_simulator_session.reset()


def test_every_task_succeeds_within_its_retries(soak: SoakReport) -> None:
    failures = {run.index: run.failure for run in soak.failed_runs}
    assert failures == {}


def test_every_video_is_stored_byte_exact(soak: SoakReport) -> None:
    assert soak.stored + len(soak.loud_failures) == soak.config.videos
    assert soak.byte_exact == soak.stored
    if soak.config.unambiguous_posts:
        assert soak.stored == soak.config.videos


def test_only_submissions_whose_answer_was_lost_fail_loudly(soak: SoakReport) -> None:
    """A reset or a timeout on POST is ambiguous to the client, so its task must stop; nothing else may."""
    post_faults = soak.stats["faults_by_route"].get("POST /v1/videos", {})
    lost_answers = post_faults.get("reset", 0) + post_faults.get("delay", 0)
    assert len(soak.loud_failures) <= lost_answers
    assert all(run.submit.tries == 1 for run in soak.loud_failures)


def test_each_submit_task_creates_exactly_one_video(soak: SoakReport) -> None:
    assert soak.duplicated_tasks == []
    assert len(soak.created) == soak.stored
    stored = [run for run in soak.runs if run.stored is not None]
    assert sorted(soak.created_per_prompt) == sorted(run.prompt for run in stored)
    assert {video["id"] for video in soak.created} == {run.video_id for run in stored}


def test_no_partial_or_stray_files_are_left(soak: SoakReport) -> None:
    assert soak.leftovers == []


def test_the_api_key_never_reaches_the_cdn_even_through_redirects(soak: SoakReport) -> None:
    assert soak.config.content_redirect
    assert soak.stats["cdn_authorization_headers"] == []
    if soak.config.empty_video_url:
        assert soak.stats["content_gets"] >= soak.config.videos  # every download took the redirect


def test_each_trigger_run_fires_exactly_one_event(soak: SoakReport) -> None:
    assert soak.odd_trigger_runs == 0
    # Most tasks defer; one whose status check was held up by faults may find its video finished already.
    assert sum(len(run.submit.trigger_events) for run in soak.runs) >= soak.config.videos // 2


def test_the_soak_met_every_kind_of_fault(soak: SoakReport) -> None:
    """Guards the soak itself: a seed or mix that skipped a kind would prove less than it claims."""
    fired = {label for labels in soak.stats["faults_by_route"].values() for label in labels}
    assert {"status 429", "reset", "delay", "truncate"} <= fired
    assert any(label.startswith("status 5") for label in fired)
    assert "status 403" in soak.stats["faults_by_route"]["GET cdn"]
    assert soak.stats["faults_fired"] >= 0.1 * sum(
        soak.stats[name] for name in ("posts", "gets", "content_gets", "cdn_gets")
    )


@pytest.mark.parametrize(
    "lost_answer",
    [
        Fault(route="POST /v1/videos", kind="reset_after_handling"),
        Fault(route="POST /v1/videos", kind="delay_after_handling", delay_seconds=1.5),
    ],
    ids=["reset", "timeout"],
)
def test_an_ambiguous_submission_fails_loudly_and_is_not_sent_again(
    octopusx_conn: Simulator, lost_answer: Fault
) -> None:
    """The video was created but its answer was lost: no task retry may submit (and pay for) another."""
    from airflow_octopusx.operators.octopusx import SubmitVideoOperator

    octopusx_conn.configure(generation_seconds=0.2)
    octopusx_conn.inject(lost_answer)
    task = TaskRun("submit_video", retries=2, retry_delay=0)
    ended = "succeeded"
    with hooks_time_out_after(0.5), Triggerer() as triggerer:
        try:
            task.run(
                lambda: SubmitVideoOperator(
                    task_id="submit_video", prompt="A paper boat", deferrable=True, poll_interval=0.1
                ),
                triggerer,
            )
        except TaskFailed:
            ended = "failed"
    assert (octopusx_conn.stats.videos_created, ended, task.tries) == (1, "failed", 1)


def test_a_batch_soak_stores_every_video_once_or_reports_why(
    octopusx_simulator_session: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GenerateVideosOperator under the same random faults: 40 videos in batches of 10, 4 at a time."""
    monkeypatch.setenv("AIRFLOW_CONN_OCTOPUSX_DEFAULT", connection_uri(octopusx_simulator_session))
    config = replace(CI_SOAK, concurrency=4)
    report = run_batch_soak(octopusx_simulator_session.api_url, config, tmp_path, batch_size=10)
    print(f"\n{report.format()}")
    assert report.problems() == {}
    assert report.stats["faults_fired"] > 0
    octopusx_simulator_session.reset()
