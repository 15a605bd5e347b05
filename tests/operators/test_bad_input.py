"""Malformed input is refused before any HTTP request, naming the field and the allowed values."""

from __future__ import annotations

import re
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_octopusx.operators.octopusx import SubmitVideoOperator
from airflow_octopusx.simulator import Simulator, Stats
from tests.test_models import INVALID


@pytest.mark.parametrize(("arguments", "field", "words"), INVALID)
def test_static_arguments_are_refused_when_the_dag_is_parsed(
    arguments: dict[str, Any], field: str, words: str, octopusx_conn: Simulator
) -> None:
    with pytest.raises(ValueError, match=r"SubmitVideoOperator 'clip': ") as caught:
        SubmitVideoOperator(task_id="clip", **{"prompt": "waves", **arguments})
    assert f"{field}: " in str(caught.value)
    assert words in str(caught.value)
    assert octopusx_conn.stats == Stats()


# Templated arguments pass the parse-time check and are validated once Airflow has rendered them.
RENDERED_GARBAGE = [
    ({"seconds": "{{ params.seconds }}"}, {"seconds": "eight"}, "seconds", "4 to 30"),
    ({"seconds": "{{ params.seconds }}"}, {"seconds": "45"}, "seconds", "4 to 30"),
    ({"prompt": "{{ params.prompt }}"}, {"prompt": ""}, "prompt", "non-empty"),
    ({"resolution": "{{ params.resolution }}"}, {"resolution": "8K"}, "resolution", "720p, 1080p, 2k, 4k"),
    ({"aspect_ratio": "{{ params.ratio }}"}, {"aspect_ratio": "1:1"}, "aspect_ratio", "16:9, 9:16"),
    (
        {"first_image_url": "{{ params.image }}"},
        {"first_image_url": "gopher://e.com/a.png"},
        "first_image_url",
        "http(s)",
    ),
    ({"images": "{{ params.images }}"}, {"images": "https://e.com/a.png"}, "images", "list of up to 5"),
]


@pytest.mark.parametrize(("templated", "rendered", "field", "words"), RENDERED_GARBAGE)
def test_templates_that_render_to_garbage_fail_before_any_request(
    templated: dict[str, Any],
    rendered: dict[str, Any],
    field: str,
    words: str,
    octopusx_conn: Simulator,
    context: dict[str, Any],
) -> None:
    task = SubmitVideoOperator(task_id="clip", **{"prompt": "waves", **templated})
    for name, value in rendered.items():  # what Airflow's rendering leaves on the task
        setattr(task, name, value)
    with pytest.raises(AirflowFailException, match=f"{field}: .*{re.escape(words)}"):
        task.execute(context)
    assert octopusx_conn.stats == Stats()
