"""The OctopusX API origin: ``/v1/videos`` create, poll and authenticated download."""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from airflow_octopusx.simulator import signing
from airflow_octopusx.simulator.faults import ROUTE_CONTENT, ROUTE_CREATE, ROUTE_RETRIEVE
from airflow_octopusx.simulator.media import VideoBody
from airflow_octopusx.simulator.responses import VideoResponse, api_error, serve_with_fault, task_error
from airflow_octopusx.simulator.state import QUEUED_FRACTION, Settings, SimulatorState, Video
from airflow_octopusx.simulator.validation import InvalidRequest, validate_create


class VideosApi:
    """Handlers for the documented endpoints, answering like the real service (errors included), in the
    shapes of the simulator's ``flavour``: the doc's, or the new-api gateway's (docs/answers.md)."""

    def __init__(self, state: SimulatorState, *, cdn_url: str) -> None:
        self.state = state
        self.cdn_url = cdn_url

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/videos", self.create, methods=["POST"]),
            Route("/v1/videos/{video_id}", self.retrieve, methods=["GET"]),
            Route("/v1/videos/{video_id}/content", self.content, methods=["GET"]),
        ]

    @property
    def _gateway(self) -> bool:
        return self.state.settings.flavour != "doc"

    async def create(self, request: Request) -> ASGIApp:
        fault = self.state.admit(ROUTE_CREATE, _client(request), prompt=_prompt_of(await request.body()))
        return await serve_with_fault(
            fault, request.scope, lambda: self._create(request), cdn=False, task_shaped=self._gateway
        )

    async def retrieve(self, request: Request) -> ASGIApp:
        return await self._serve_video(ROUTE_RETRIEVE, request, self._retrieve)

    async def content(self, request: Request) -> ASGIApp:
        return await self._serve_video(ROUTE_CONTENT, request, self._content)

    async def _serve_video(
        self, route: str, request: Request, handler: Callable[[Request], Awaitable[ASGIApp]]
    ) -> ASGIApp:
        video_id = request.path_params["video_id"]
        fault = self.state.admit(route, _client(request), video_id=video_id)
        return await serve_with_fault(fault, request.scope, lambda: handler(request), cdn=False)

    async def _create(self, request: Request) -> ASGIApp:
        if denied := self._deny_unauthenticated(request):
            return denied
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return self._error(
                400,
                "We could not parse the JSON body of your request. Send a JSON object "
                "with 'Content-Type: application/json'.",
                code="invalid_json",
            )
        try:
            model = validate_create(payload)
        except InvalidRequest as exc:
            return self._error(400, exc.message, code=exc.code, param=exc.param)
        seconds, resolution = payload.get("seconds"), payload.get("resolution")
        video = self.state.create_video(
            model, payload["prompt"], None if seconds is None else str(seconds), resolution
        )
        if video is None:
            if self._gateway:  # its pre-consume of the estimated price failed
                return task_error(403, "user quota is not enough", code="insufficient_user_quota")
            return api_error(
                429,
                "You exceeded your current quota.",
                code="insufficient_quota",
                error_type="insufficient_quota",
            )
        headers = None
        if self._gateway:  # the multipliers of the price the gateway reserved
            ratios = {"seconds": int(video.seconds or 4), "size": 1}
            headers = {"X-New-Api-Other-Ratios": json.dumps(ratios)}
        return JSONResponse(self._render(video), headers=headers)

    async def _retrieve(self, request: Request) -> ASGIApp:
        if denied := self._deny_unauthenticated(request):
            return denied
        video = self.state.get_video(request.path_params["video_id"])
        if video is None:
            return self._video_not_found(request.path_params["video_id"])
        if self.state.settings.flavour == "new-api-task-dto":
            return JSONResponse({"code": "success", "data": self._task_dto(video)})
        # A retrieved video also echoes what was asked for (the create answer keeps its documented shape).
        described = {"prompt": video.prompt, "seconds": video.seconds, "resolution": video.resolution}
        rendered = self._render(video) | {key: value for key, value in described.items() if value is not None}
        return JSONResponse(rendered)

    async def _content(self, request: Request) -> ASGIApp:
        if denied := self._deny_unauthenticated(request):
            return denied
        video = self.state.get_video(request.path_params["video_id"])
        if video is None:
            return self._video_not_found(request.path_params["video_id"])
        status, _ = video.progress_at(time.monotonic())
        if status != "completed" and self._gateway:
            return api_error(400, "Task is not completed yet", code="invalid_request")
        if status != "completed":
            return api_error(
                409,
                f"Video '{video.id}' is {status}; its content is only available once it is completed.",
                code="video_not_ready",
            )
        settings = self.state.settings
        if settings.content_redirect:
            # Like an API that proxies to object storage: the client must follow it to another origin.
            return RedirectResponse(self._signed_url(video.id, settings), status_code=302)
        body = VideoBody.build(self.state.sample, settings.video_size_bytes)
        return VideoResponse(
            body,
            etag=f'"{video.id}-{body.total}"',
            cut_after=settings.content_cut_bytes,
            on_sent=self.state.record_video_served,
        )

    def _deny_unauthenticated(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        accepted = self.state.api_key.encode()
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), accepted):
            return None
        self.state.record_unauthorized()
        # The supplied key is never echoed back, not even partially.
        return api_error(
            401,
            "Invalid API key provided.",
            code="invalid_api_key",
            error_type="authentication_error",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _render(self, video: Video) -> dict[str, Any]:
        status, progress = video.progress_at(time.monotonic())
        rendered: dict[str, Any] = {
            "id": video.id,
            "task_id": video.id,
            "object": "video",
            "model": video.model,
            "status": status,
            "progress": progress,
            "created_at": video.created_at,
            "video_url": "",
        }
        settings = self.state.settings
        link = self._signed_url(video.id, settings) if status == "completed" else ""
        if settings.empty_video_url:
            link = ""
        if status == "failed" and video.failure is not None:
            rendered["error"] = {"message": video.failure.message, "code": video.failure.code}
        if not self._gateway:
            rendered["video_url"] = link
            return rendered
        # The gateway: NOT_START reads "unknown"; most vendors' link is in metadata.url and there is no
        # video_url key; a finished video carries what was billed.
        del rendered["video_url"]
        if (
            status == "queued"
            and time.monotonic() - video.started < video.generation_seconds * QUEUED_FRACTION / 2
        ):
            rendered["status"] = "unknown"
        if status in ("completed", "failed"):
            rendered["metadata"] = {"url": link or None, "usage": {"seconds": int(video.seconds or 4)}}
        return rendered

    def _task_dto(self, video: Video) -> dict[str, Any]:
        """The gateway's internal task record, which one of its releases answered this route with."""
        status, progress = video.progress_at(time.monotonic())
        failed = status == "failed" and video.failure is not None
        link = self._signed_url(video.id, self.state.settings) if status == "completed" else ""
        return {
            "task_id": video.id,
            "status": {"queued": "SUBMITTED", "in_progress": "IN_PROGRESS"}.get(status, status.upper()),
            "progress": f"{progress}%",
            "fail_reason": video.failure.message if failed and video.failure else "",
            "result_url": "" if self.state.settings.empty_video_url else link,
        }

    def _error(self, status: int, message: str, *, code: str, param: str | None = None) -> Response:
        """An error of the service itself (not of its middleware): the gateway's task shape, or the doc's."""
        if self._gateway:
            return task_error(status, message, code=code)
        return api_error(status, message, code=code, param=param)

    def _video_not_found(self, video_id: str) -> Response:
        if self._gateway:
            return task_error(400, "task_not_exist", code="task_not_exist")
        return api_error(404, f"No video found with id '{video_id}'.", code="not_found", param="video_id")

    def _signed_url(self, video_id: str, settings: Settings) -> str:
        """A fresh link on every poll, valid for at least ``url_ttl_seconds`` from now.

        ``expires`` is whole seconds, so a positive TTL rounds up (rounding down could hand out a link
        that lapses within milliseconds) and a TTL <= 0 rounds down (the link is already expired).
        """
        deadline = time.time() + settings.url_ttl_seconds
        expires = math.ceil(deadline) if settings.url_ttl_seconds > 0 else math.floor(deadline)
        signature = signing.sign(self.state.secret, video_id, expires)
        return f"{self.cdn_url}/videos/{video_id}.mp4?expires={expires}&signature={signature}"


def build_api_app(api: VideosApi, control_routes: list[BaseRoute]) -> Starlette:
    """API origin app: the documented routes plus the unauthenticated ``/_simulator`` controls."""
    return Starlette(
        routes=[*api.routes(), *control_routes],
        exception_handlers={HTTPException: _http_exception},
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the API's own error format."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    message = f"{request.method} {request.url.path}: {exc.detail if isinstance(exc, HTTPException) else exc}"
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return api_error(status, message, code=code, headers=dict(headers) if headers else None)


def _prompt_of(body: bytes) -> str:
    """The prompt a submission asks for, or "" if the body has none (it will be refused anyway)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return ""
    prompt = payload.get("prompt") if isinstance(payload, dict) else None
    return prompt if isinstance(prompt, str) else ""


def _client(request: Request) -> tuple[str, int] | None:
    client = request.scope.get("client")
    return (str(client[0]), int(client[1])) if client else None
