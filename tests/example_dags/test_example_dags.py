"""Every example DAG runs through ``dag.test()`` against the simulator, deferral included, and leaves
playable MP4s; each video is submitted exactly once."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from airflow.providers.common.compat.sdk import AssetAlias, AssetAny

from airflow_octopusx._compat import DEFAULT_MAP_INDEX_TEMPLATE
from airflow_octopusx.simulator import Simulator
from tests.conftest import AIRFLOW_3_3, REPO, load_dags, xcom_values

EXAMPLES = sorted(path.stem for path in (REPO / "example_dags").glob("example_*.py"))
# Videos each example submits, and the tasks that defer to the triggerer.
EXPECTED: dict[str, tuple[int, set[str]]] = {
    "example_octopusx_text_to_video": (1, {"submit_video"}),
    "example_octopusx_image_to_video": (2, {"first_frame", "first_and_last_frame"}),
    "example_octopusx_reference_images": (1, {"submit_video"}),
    "example_octopusx_submit_then_sense": (1, {"wait_for_video"}),
    "example_octopusx_mapped": (10, {f"submit_video[{i}]" for i in range(10)}),
    "example_octopusx_asset_producer": (1, {"submit_video"}),
}
STRUCTLOG_ERROR = re.compile(r"\[(error|critical)\s*\]")
# DAGs that store no video themselves, or store them in a batch; each has a test of its own below.
CONSUMERS = {"example_octopusx_asset_consumer", "example_octopusx_batch"}


@pytest.fixture(scope="module")
def example_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The examples read OCTOPUSX_OUTPUT_DIR when parsed, so it is set before the DagBag loads them."""
    folder = tmp_path_factory.mktemp("videos")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OCTOPUSX_OUTPUT_DIR", f"{folder}/")
        yield folder


@pytest.fixture(scope="module")
def dagbag(example_output: Path) -> Any:
    return load_dags(REPO / "example_dags")


@pytest.fixture
def output_dir(example_output: Path) -> Iterator[Path]:
    yield example_output
    for path in example_output.iterdir():
        path.unlink()


def test_every_example_imports_cleanly_and_is_covered(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == sorted(EXPECTED.keys() | CONSUMERS)


def asset_events(run: Any) -> list[Any]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    with create_session() as session:
        query = select(AssetEvent).options(joinedload(AssetEvent.asset))
        return list(session.scalars(query.where(AssetEvent.source_run_id == run.run_id)).unique())


def announced_uris(run: Any) -> list[str]:
    # One asset per stored file, whose event also names it in its extra.
    events = asset_events(run)
    for event in events:
        assert event.asset.uri == event.extra["uri"]
    return [event.extra["uri"] for event in events]


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_example_runs_defers_and_stores_playable_mp4s(
    dag_id: str,
    dagbag: Any,
    octopusx_conn: Simulator,
    output_dir: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    finished_once_seen_rendering: list[str],
) -> None:
    # Every wait really defers: each video renders until a wait has seen it rendering.
    videos, deferring_tasks = EXPECTED[dag_id]

    run = dagbag.get_dag(dag_id).test()

    assert run.state == "success"
    # A successful run logs no ERROR line, Airflow's own included (a link looked up too early did):
    # stdlib records, and what structlog prints straight to the process's output.
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    printed = "".join(capfd.readouterr())
    errors += [line for line in printed.splitlines() if STRUCTLOG_ERROR.search(line)]
    assert errors == []
    stored = sorted(output_dir.glob("*.mp4"))
    assert len(stored) == videos
    assert all(decoded_frames(path) > 0 for path in stored)
    assert not list(output_dir.glob(".*"))  # no temporary files left behind
    stats = octopusx_conn.stats
    assert stats.posts == stats.videos_created == videos
    deferred = [r.getMessage() for r in caplog.records if "running trigger in line" in r.getMessage()]
    assert len(deferred) == len(deferring_tasks)
    # The video id is pushed under "video_id" at submission and is the return value once done.
    pushed = xcom_values(run, "video_id")
    returned = xcom_values(run, "return_value")
    assert sorted(pushed.values()) == sorted(path.stem for path in stored)
    for task_id in deferring_tasks:
        assert returned[task_id] in pushed.values()
    # Every stored video is announced as an asset event, mapped downloads included.
    assert sorted(announced_uris(run)) == sorted(path.as_uri() for path in stored)
    # A submit task that waited gets an "OctopusX video" extra link to the finished MP4.
    links = xcom_values(run, "_link_OctopusXVideoLink")
    for task_id in deferring_tasks & pushed.keys():
        assert links[task_id].startswith(f"{octopusx_conn.cdn_url}/videos/{pushed[task_id]}.mp4?")


def map_labels(run: Any, task_id: str) -> list[str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(TaskInstance).where(TaskInstance.run_id == run.run_id, TaskInstance.task_id == task_id)
        return [ti.rendered_map_index for ti in sorted(session.scalars(query), key=lambda ti: ti.map_index)]


@pytest.mark.usefixtures("airflow_db")
def test_mapped_tasks_are_labelled_by_prompt(dagbag: Any, octopusx_conn: Simulator, output_dir: Path) -> None:
    from example_dags.example_octopusx_mapped import PROMPTS

    octopusx_conn.configure(generation_seconds=0.5)
    run = dagbag.get_dag("example_octopusx_mapped").test()

    if AIRFLOW_3_3:
        # The label is the operators' default, declared where .partial() finds it (3.3+), so the
        # scheduler and the task's first rendering (before it defers) know it too.
        submit = dagbag.get_dag("example_octopusx_mapped").get_task("submit_video")
        assert submit.map_index_template == DEFAULT_MAP_INDEX_TEMPLATE
    assert run.state == "success"
    assert map_labels(run, "submit_video") == PROMPTS
    # The simulator echoes each video's prompt, as some API deployments do; downloads show it too.
    assert map_labels(run, "download_video") == PROMPTS


@pytest.mark.usefixtures("airflow_db")
def test_the_asset_consumer_annotates_each_new_video(
    dagbag: Any, octopusx_conn: Simulator, output_dir: Path
) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from example_dags.example_octopusx_assets import write_sidecars

    octopusx_conn.configure(generation_seconds=1)
    producer = dagbag.get_dag("example_octopusx_asset_producer").test()
    assert producer.state == "success"
    [video] = output_dir.glob("*.mp4")
    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == producer.run_id)).all()
        [event] = events
        assert event.asset.uri == event.extra["uri"] == video.as_uri()
        assert event.extra["video_id"] == video.stem
        assert event.extra["bytes"] == video.stat().st_size
        # What the scheduler hands the consumer DAG when it runs for this event: under its asset and
        # under the alias it came through (a stand-in key: Airflow 3.1's AssetAlias is not hashable).
        handed = {event.asset: [event], "alias octopusx_videos": [event]}
        assert write_sidecars(handed) == [video.with_suffix(".json").as_uri()]
    assert json.loads(video.with_suffix(".json").read_text())["video_id"] == video.stem
    consumer = dagbag.get_dag("example_octopusx_asset_consumer")
    # Either alias runs it: single videos, and batches by their manifest.
    condition = consumer.timetable.asset_condition
    assert isinstance(condition, AssetAny)
    assert list(condition.objects) == [AssetAlias("octopusx_videos"), AssetAlias("octopusx_video_batches")]


@pytest.mark.usefixtures("airflow_db")
def test_the_batch_example_stores_every_video_but_the_one_failed_on_purpose(
    dagbag: Any, octopusx_conn: Simulator, output_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    octopusx_conn.configure(generation_seconds=2.5)

    run = dagbag.get_dag("example_octopusx_batch").test()

    assert run.state == "success"
    results = xcom_values(run, "return_value")["generate_videos"]
    assert [result["status"] for result in results] == ["stored", "stored", "stored", "failed"]
    assert results[3]["error"]["code"] == "content_policy_violation"
    stored = sorted(output_dir.glob("*.mp4"))
    assert sorted(path.as_uri() for path in stored) == sorted(r["uri"] for r in results[:3])
    assert all(decoded_frames(path) > 0 for path in stored)
    assert not list(output_dir.glob(".*"))
    stats = octopusx_conn.stats
    assert stats.posts == stats.videos_created == 4
    from example_dags.example_octopusx_batch import PROMPTS

    # One deferral for the whole batch, and one asset event, its manifest's: a line per request.
    deferred = [r.getMessage() for r in caplog.records if "running trigger in line" in r.getMessage()]
    assert len(deferred) == 1
    [manifest] = output_dir.glob("*.jsonl")
    assert manifest.name == f"generate_videos.{run.run_id}.jsonl".replace(":", "_").replace("+", "_")
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines == [result | {"prompt": prompt} for result, prompt in zip(results, PROMPTS, strict=True)]
    [event] = asset_events(run)
    assert (event.asset.uri, event.extra) == (
        manifest.as_uri(),
        {"uri": manifest.as_uri(), "folder": output_dir.as_uri(), "requests": 4, "videos": 3},
    )
    # The example consumer, handed that event, annotates the three stored videos and nothing else.
    from example_dags.example_octopusx_assets import write_sidecars

    handed = {event.asset: [event], "alias octopusx_video_batches": [event]}
    assert sorted(write_sidecars(handed)) == sorted(path.with_suffix(".json").as_uri() for path in stored)
    assert sorted(output_dir.glob("*.json")) == [path.with_suffix(".json") for path in stored]
