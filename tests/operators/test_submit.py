"""SubmitVideoOperator: validation at parse time and after rendering, XCom, deferral, waiting, errors."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator, TaskDeferred

from airflow_octopusx.exceptions import QuotaExceededError, ServerError, VideoFailedError, VideoTimeoutError
from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import REQUEST_FIELDS
from airflow_octopusx.operators.batch import GenerateVideosOperator
from airflow_octopusx.operators.octopusx import (
    SUBMISSION_STATE_KEY,
    DownloadVideoOperator,
    SubmitVideoOperator,
)
from airflow_octopusx.simulator import Fault, Simulator
from airflow_octopusx.triggers.octopusx import VideoTaskTrigger
from tests.conftest import AIRFLOW_3_3, BOTH_FLAVOURS, RecordingTaskInstance, load_dags, xcom_values


def operator(**kwargs: Any) -> SubmitVideoOperator:
    return SubmitVideoOperator(**{"task_id": "make_video", "prompt": "A kite over a beach", **kwargs})


class TestParseTimeValidation:
    def test_a_bad_static_argument_names_the_task_and_the_field(self) -> None:
        with pytest.raises(ValueError, match=r"SubmitVideoOperator 'make_video': seconds: .*4 to 30"):
            operator(seconds=99)

    @pytest.mark.parametrize(
        "arguments",
        [
            {"seconds": "{{ params.seconds }}"},
            {"prompt": "{{ dag_run.conf['prompt'] }}"},
            {"images": ["https://example.com/a.png", "{{ params.image }}"]},
            {"first_image_url": "{{ params.first }}", "last_image_url": "https://example.com/l.png"},
            {"extra_body": {"video_url": "{{ params.video }}"}, "model": "omni-fast-v2v"},
        ],
    )
    def test_templated_arguments_wait_for_rendering(self, arguments: dict[str, Any]) -> None:
        operator(**arguments)

    def test_static_arguments_beside_templated_ones_are_still_checked(self) -> None:
        with pytest.raises(ValueError, match="resolution"):
            operator(prompt="{{ params.prompt }}", resolution="8k")

    def test_a_dag_file_with_a_bad_argument_fails_to_import_naming_task_and_field(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "bad_dag.py").write_text(
            "import pendulum\n"
            "from airflow.sdk import DAG\n"
            "from airflow_octopusx.operators.octopusx import SubmitVideoOperator\n"
            "with DAG('bad', schedule=None, start_date=pendulum.datetime(2026, 1, 1)):\n"
            "    SubmitVideoOperator(task_id='clip', prompt='x', images=['https://e.com/i.png'] * 6)\n"
        )
        [error] = load_dags(tmp_path).import_errors.values()
        assert "SubmitVideoOperator 'clip': images: takes at most 5 images, got 6" in error


def test_every_request_field_is_an_argument_and_a_template_field() -> None:
    # A field added to VideoRequest is validated and sent; the operator must also take it by name.
    assert set(REQUEST_FIELDS) <= set(inspect.signature(SubmitVideoOperator.__init__).parameters)
    assert set(REQUEST_FIELDS) <= set(SubmitVideoOperator.template_fields)


class TestExecute:
    @BOTH_FLAVOURS
    def test_deferrable_pushes_the_id_then_defers_with_a_keyless_trigger(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=30)
        with pytest.raises(TaskDeferred) as caught:
            operator(deferrable=True, poll_interval=3, timeout=600).execute(context)
        video_id = context["ti"].xcom["video_id"]
        trigger = caught.value.trigger
        assert isinstance(trigger, VideoTaskTrigger)
        assert caught.value.method_name == "execute_complete"
        _, kwargs = trigger.serialize()
        assert kwargs["video_id"] == video_id
        assert kwargs["poll_interval"] == 3
        assert kwargs["deadline"] == pytest.approx(time.time() + 600, abs=5)
        assert octopusx_conn.api_key not in json.dumps(kwargs)
        assert (octopusx_conn.stats.posts, octopusx_conn.stats.gets) == (1, 1)  # submitted, checked once

    def test_a_video_finished_at_the_first_check_needs_no_deferral(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0)
        video_id = operator(deferrable=True).execute(context)
        assert video_id == context["ti"].xcom["video_id"]

    @BOTH_FLAVOURS
    def test_waiting_in_the_worker_returns_the_id(
        self, context: dict[str, Any], finished_once_seen_rendering: list[str]
    ) -> None:
        video_id = operator(deferrable=False, poll_interval=0.05).execute(context)
        assert video_id == context["ti"].xcom["video_id"]
        assert finished_once_seen_rendering == [video_id]

    def test_without_waiting_only_the_submission_is_sent(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        video_id = operator(wait_for_completion=False).execute(context)
        assert video_id == context["ti"].xcom["video_id"]
        assert (octopusx_conn.stats.posts, octopusx_conn.stats.gets) == (1, 0)

    @BOTH_FLAVOURS
    def test_a_failed_video_raises_with_code_message_and_id(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0.2)
        octopusx_conn.fail_next(code="content_policy_violation", message="Prompt refused")
        with pytest.raises(AirflowFailException) as caught:  # no Airflow retry: it would pay again
            operator(deferrable=False, poll_interval=0.05).execute(context)
        failed = caught.value.__cause__
        assert isinstance(failed, VideoFailedError)
        assert failed.video_id == context["ti"].xcom["video_id"]
        assert "Prompt refused (code=content_policy_violation)" in str(caught.value)
        assert "resubmit_failed=True" in str(caught.value)

    @pytest.mark.parametrize(
        ("code", "resubmit_failed"), [("internal_error", False), ("content_policy_violation", True)]
    )
    def test_a_failure_that_may_pass_is_left_to_airflow_retries(
        self, octopusx_conn: Simulator, context: dict[str, Any], code: str, resubmit_failed: bool
    ) -> None:
        octopusx_conn.configure(generation_seconds=0.2)
        octopusx_conn.fail_next(code=code, message="It broke")
        submit = operator(deferrable=False, poll_interval=0.05, resubmit_failed=resubmit_failed)
        with pytest.raises(VideoFailedError, match=f"code={code}"):
            submit.execute(context)

    def test_a_timeout_says_the_video_may_still_finish(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=60)
        with pytest.raises(VideoTimeoutError) as caught:
            operator(deferrable=False, poll_interval=0.1, timeout=0.4).execute(context)
        video_id = context["ti"].xcom["video_id"]
        assert f"Video {video_id} did not finish" in str(caught.value)
        assert "may still complete" in str(caught.value)
        # True of a submit task that has not succeeded: its record is kept, so running it again resumes.
        assert str(caught.value).endswith(
            "running this task again (a retry, or clearing it) resumes this video."
        )

    def test_arguments_that_render_to_garbage_fail_before_any_request(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        task = operator(seconds="{{ params.seconds }}")
        task.seconds = "ninety"  # what rendering would leave
        with pytest.raises(AirflowFailException, match="seconds: must be a whole number"):
            task.execute(context)
        assert octopusx_conn.stats.posts == 0

    def test_an_api_refusal_fails_without_retries_and_shows_the_api_message(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        with pytest.raises(AirflowFailException, match=r"OctopusX refused the request: .*model"):
            operator(model="omni-ultra").execute(context)
        assert octopusx_conn.stats.posts == 1

    @BOTH_FLAVOURS
    def test_an_exhausted_quota_fails_naming_the_quota_and_the_connection(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(quota_videos=0)
        with pytest.raises(QuotaExceededError) as raised:
            operator().execute(context)
        assert "quota" in str(raised.value)
        assert "connection 'octopusx_default'" in str(raised.value)
        assert "refused the API key" not in str(raised.value)
        assert octopusx_conn.stats.posts == 1

    def test_an_ambiguous_submission_fails_without_airflow_retries(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.inject(Fault(route="POST /v1/videos", kind="delay", delay_seconds=3))
        task = operator()
        task.hook.timeout = 1.0
        with pytest.raises(AirflowFailException, match="may have reached OctopusX and created a billed"):
            task.execute(context)
        assert octopusx_conn.stats.posts == 1

    def test_execute_complete_returns_the_id_and_records_a_fresh_link(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0)
        video_id = operator(wait_for_completion=False).execute(context)
        assert operator().execute_complete(context, {"status": "success", "video_id": video_id}) == video_id
        assert context["ti"].xcom["video_url"].startswith(f"{octopusx_conn.cdn_url}/videos/{video_id}.mp4?")

    def test_execute_complete_raises_for_a_failed_video(self, context: dict[str, Any]) -> None:
        with pytest.raises(AirflowFailException, match="Video video_1 failed: nope"):
            operator().execute_complete(
                context, {"status": "failed", "video_id": "video_1", "message": "nope"}
            )


class TestResumeOnRetry:
    """A retry of the same task instance resumes the video an earlier try submitted: it is paid per POST."""

    def fail_after_submit(self, simulator: Simulator, context: dict[str, Any], **kwargs: Any) -> str:
        # Every poll of the first try fails, after the submission was accepted.
        simulator.inject(Fault(route="GET /v1/videos/{id}", status=500, times=5))
        with pytest.raises(ServerError):
            operator(deferrable=False, poll_interval=0.05, **kwargs).execute(context)
        return str(context["ti"].xcom["video_id"])

    @BOTH_FLAVOURS
    def test_a_retry_resumes_the_submitted_video(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0.3)
        first = self.fail_after_submit(octopusx_conn, context)
        retry = {**context, "ti": RecordingTaskInstance()}  # XCom does not survive between tries
        assert operator(deferrable=False, poll_interval=0.05).execute(retry) == first
        assert retry["ti"].xcom["video_id"] == first
        assert octopusx_conn.stats.posts == octopusx_conn.stats.videos_created == 1
        # Done: clearing the task later makes a new video rather than resuming this one.
        assert context["task_state_store"].values == {}

    @BOTH_FLAVOURS
    def test_a_video_that_failed_is_submitted_again(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0.2)
        octopusx_conn.fail_next()
        with pytest.raises(AirflowFailException):
            operator(deferrable=False, poll_interval=0.05).execute(context)
        # Run again (a user cleared it): the failed video is not resumed but made anew.
        second = operator(deferrable=False, poll_interval=0.05).execute(
            {**context, "ti": RecordingTaskInstance()}
        )
        assert second != context["ti"].xcom["video_id"]
        assert octopusx_conn.stats.videos_created == 2

    def test_a_changed_request_is_submitted_again(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.configure(generation_seconds=0.3)
        first = self.fail_after_submit(octopusx_conn, context)
        retry = {**context, "ti": RecordingTaskInstance()}
        assert operator(prompt="Another prompt", deferrable=False, poll_interval=0.05).execute(retry) != first
        assert octopusx_conn.stats.videos_created == 2

    def test_a_try_stopped_while_its_post_was_on_its_way_is_not_sent_again(
        self, octopusx_conn: Simulator, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        octopusx_conn.configure(generation_seconds=0.3)
        store = context["task_state_store"]
        marked_as_the_post_left: list[Any] = []
        submit = OctopusXHook.submit_video

        def stopped_once_the_api_answered(hook: OctopusXHook, request: Any) -> Any:
            marked_as_the_post_left.append(store.get(SUBMISSION_STATE_KEY))
            submit(hook, request)  # the API makes (and bills) the video ...
            raise KeyboardInterrupt("stopped")  # ... and the try stops before its id is stored

        monkeypatch.setattr(OctopusXHook, "submit_video", stopped_once_the_api_answered)
        with pytest.raises(KeyboardInterrupt):
            operator(deferrable=False).execute(context)
        monkeypatch.setattr(OctopusXHook, "submit_video", submit)
        [mark] = marked_as_the_post_left
        assert mark is not None
        assert "video_id" not in mark
        with pytest.raises(AirflowFailException, match="may have created a billed video, so it was not sent"):
            operator(deferrable=False).execute({**context, "ti": RecordingTaskInstance()})
        assert octopusx_conn.stats.posts == 1
        # The failure said what running the task again does: it submits anew.
        operator(deferrable=False, poll_interval=0.05).execute({**context, "ti": RecordingTaskInstance()})
        assert octopusx_conn.stats.posts == octopusx_conn.stats.videos_created == 2

    def test_a_refused_submission_leaves_no_mark(
        self, octopusx_conn: Simulator, context: dict[str, Any]
    ) -> None:
        octopusx_conn.inject(Fault(route="POST /v1/videos", status=400, times=1))
        with pytest.raises(AirflowFailException, match="refused the request"):
            operator(deferrable=False).execute(context)
        assert context["task_state_store"].values == {}

    def test_where_airflow_deletes_state_on_success_a_lost_success_report_pays_for_nothing(
        self, octopusx_conn: Simulator, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS", "True")
        octopusx_conn.configure(generation_seconds=0)
        first = operator(deferrable=False).execute(context)
        # Left for Airflow to delete as it records the success; that report was lost, so it runs again.
        assert context["task_state_store"].get(SUBMISSION_STATE_KEY)["video_id"] == first
        assert operator(deferrable=False).execute({**context, "ti": RecordingTaskInstance()}) == first
        assert octopusx_conn.stats.posts == 1

    def test_without_a_state_store_each_try_submits(self, octopusx_conn: Simulator) -> None:
        octopusx_conn.configure(generation_seconds=0)
        for _ in range(2):
            operator(deferrable=False).execute({"ti": RecordingTaskInstance()})
        assert octopusx_conn.stats.videos_created == 2


@pytest.mark.usefixtures("airflow_db")
class TestDagRuns:
    @BOTH_FLAVOURS
    def test_waiting_in_the_worker(self, octopusx_conn: Simulator) -> None:
        from tests.dags.submit_scenarios import in_worker

        octopusx_conn.configure(generation_seconds=0.3)
        run = in_worker.test()
        assert run.state == "success"
        [video_id] = xcom_values(run, "video_id").values()
        assert xcom_values(run, "return_value") == {"submit": video_id}
        # The task's "OctopusX video" extra link points at the finished MP4.
        [link] = xcom_values(run, "_link_OctopusXVideoLink").values()
        assert link.startswith(f"{octopusx_conn.cdn_url}/videos/{video_id}.mp4?")
        assert octopusx_conn.stats.posts == 1

    @BOTH_FLAVOURS
    @pytest.mark.skipif(not AIRFLOW_3_3, reason="the task state store arrived in Airflow 3.3")
    def test_airflow_retries_resume_the_same_video(self, octopusx_conn: Simulator) -> None:
        from tests.dags.submit_scenarios import retried

        octopusx_conn.configure(generation_seconds=0.3)
        octopusx_conn.inject(Fault(route="GET /v1/videos/{id}", status=500, times=5))  # fails try 1
        run = retried.test()
        assert run.state == "success"
        assert run.get_task_instance("submit").try_number == 2
        assert octopusx_conn.stats.posts == octopusx_conn.stats.videos_created == 1

    @pytest.mark.skipif(not AIRFLOW_3_3, reason="the task state store arrived in Airflow 3.3")
    def test_where_airflow_deletes_state_on_success_it_does(
        self, octopusx_conn: Simulator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow._shared.state import TaskScope
        from airflow.state.metastore import MetastoreBackend

        from tests.dags.submit_scenarios import in_worker

        monkeypatch.setenv("AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS", "True")
        octopusx_conn.configure(generation_seconds=0.2)
        left_by_the_task: list[Any] = []
        original = SubmitVideoOperator._completed

        def completed(task: SubmitVideoOperator, context: Any, video: Any) -> str:
            video_id = original(task, context, video)
            left_by_the_task.append(context["task_state_store"].get(SUBMISSION_STATE_KEY))
            return video_id

        monkeypatch.setattr(SubmitVideoOperator, "_completed", completed)
        run = in_worker.test()
        assert run.state == "success"
        assert [record["video_id"] for record in left_by_the_task] == [*xcom_values(run, "video_id").values()]
        scope = TaskScope(dag_id=run.dag_id, run_id=run.run_id, task_id="submit")
        assert MetastoreBackend().get(scope, SUBMISSION_STATE_KEY) is None  # Airflow deleted it

    @BOTH_FLAVOURS
    def test_ended_from_the_trigger_the_return_value_is_the_video_id(self, octopusx_conn: Simulator) -> None:
        from tests.dags.submit_scenarios import ended_in_triggerer

        octopusx_conn.configure(generation_seconds=0.3)
        run = ended_in_triggerer.test()
        assert run.state == "success"
        [video_id] = xcom_values(run, "video_id").values()
        assert xcom_values(run, "return_value") == {"submit": video_id}
        assert octopusx_conn.stats.posts == 1

    def test_what_the_gateway_billed_is_pushed_to_xcom(self, octopusx_conn: Simulator) -> None:
        from tests.dags.submit_scenarios import templated

        octopusx_conn.configure(flavour="new-api", generation_seconds=0.3)
        run = templated.test()
        assert run.state == "success"
        usage = {"usage": {"seconds": 6}}
        # The submission's price multipliers live in the task state store until the video completes.
        expected = {"ratios": {"seconds": 6, "size": 1}, **usage} if AIRFLOW_3_3 else usage
        assert xcom_values(run, "billing") == {"submit": expected}

    def test_templates_render_then_validate(
        self, octopusx_conn: Simulator, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from tests.dags.submit_scenarios import templated

        octopusx_conn.configure(generation_seconds=0.2)
        assert templated.test().state == "success"
        assert octopusx_conn.stats.posts == 1
        capsys.readouterr()
        assert templated.test(run_conf={"seconds": "99"}).state == "failed"
        assert octopusx_conn.stats.posts == 1  # the bad run sent nothing
        assert "Invalid argument after rendering templates: seconds: must be" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("operator", "arguments"),
    [
        (SubmitVideoOperator, {"prompt": "A kite", "wait_for_completion": False}),
        (DownloadVideoOperator, {"video_id": "video_1", "destination": "/tmp/videos/"}),
        (GenerateVideosOperator, {"requests": [{"prompt": "A kite"}], "destination": "/tmp/videos/"}),
    ],
)
def test_connection_ids_are_templated_on_every_operator(
    operator: type[BaseOperator], arguments: dict[str, Any], octopusx_conn: Simulator, context: dict[str, Any]
) -> None:
    conn_ids = {"octopusx_conn_id", "destination_conn_id", "input_conn_id"} & set(operator.template_fields)
    assert conn_ids >= {"octopusx_conn_id"}
    task = operator(task_id="task", **arguments, **{name: "{{ params.conn }}_x" for name in conn_ids})
    task.render_template_fields({"params": {"conn": "rendered"}})
    assert {name: getattr(task, name) for name in conn_ids} == dict.fromkeys(conn_ids, "rendered_x")
    if operator is SubmitVideoOperator:
        # The rendered id is the connection the task talks to.
        task = operator(task_id="task", **arguments, octopusx_conn_id="{{ params.conn }}")
        task.render_template_fields({"params": {"conn": "octopusx_default"}})
        assert task.execute(context).startswith("video_")
        assert octopusx_conn.stats.posts == 1
