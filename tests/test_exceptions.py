"""Every error of the provider survives pickle and copy whole: Airflow and executors pass them between
processes, and an error that cannot be rebuilt hides the one that happened."""

from __future__ import annotations

import copy
import pickle

import pytest

from airflow_octopusx import exceptions
from airflow_octopusx.exceptions import OctopusXError

EXAMPLES: list[OctopusXError] = [
    exceptions.OctopusXError("plain"),
    exceptions.InvalidVideoRequest("seconds", "must be a whole number", 99),
    exceptions.APIError(
        "Nope", status_code=418, code="teapot", request_id="r", video_id="v", retry_after=1.0
    ),
    exceptions.AuthenticationError("Invalid API key provided.", status_code=401, code="invalid_api_key"),
    exceptions.QuotaExceededError(
        "user quota is not enough", status_code=403, code="insufficient_user_quota"
    ),
    exceptions.BadRequestError("bad", status_code=400, code="invalid_request"),
    exceptions.NotFoundError("task_not_exist", status_code=400, code="task_not_exist", video_id="v"),
    exceptions.RateLimitError("slow down", status_code=429, retry_after=2.0),
    exceptions.ServerError("down", status_code=503, code="service_unavailable", nothing_created=True),
    exceptions.TransportError("reset", request_sent=True),
    exceptions.InvalidResponseError("not JSON"),
    exceptions.AmbiguousSubmissionError("lost", request_sent=True),
    exceptions.VideoFailedError("video_1", "blocked", "content_policy_violation"),
    exceptions.VideoTimeoutError("video_1", 1_800_000_000.0, 42.0),
    exceptions.VideoDownloadError("video_1", "not an MP4"),
]


def test_every_error_class_has_an_example() -> None:
    classes = {
        cls for cls in vars(exceptions).values() if isinstance(cls, type) and issubclass(cls, OctopusXError)
    }
    assert classes == {type(error) for error in EXAMPLES} | {exceptions.AccountError}


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("rebuild", [lambda e: pickle.loads(pickle.dumps(e)), copy.copy, copy.deepcopy])
def test_an_error_is_rebuilt_whole(error: OctopusXError, rebuild: object) -> None:
    named = copy.copy(error)
    if isinstance(named, exceptions.AccountError):
        named.name_connection("octopusx_default")
    rebuilt = rebuild(named)  # type: ignore[operator]
    assert type(rebuilt) is type(named)
    assert str(rebuilt) == str(named)
    assert vars(rebuilt) == vars(named)
