"""The CDN origin: unauthenticated downloads of signed, expiring ``video_url`` links."""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from airflow_octopusx.simulator import signing
from airflow_octopusx.simulator.faults import ROUTE_CDN
from airflow_octopusx.simulator.media import VideoBody
from airflow_octopusx.simulator.responses import VideoResponse, cdn_error, serve_with_fault
from airflow_octopusx.simulator.state import SimulatorState


class CdnOrigin:
    """Serves ``/videos/{id}.mp4?expires=..&signature=..`` the way a signed-URL CDN would.

    It needs no API key and records any ``Authorization`` header it gets, so tests can prove a
    client never leaks the API key to a third-party origin.
    """

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/videos/{video_id}.mp4", self.download, methods=["GET"])],
            exception_handlers={HTTPException: _http_exception},
        )

    async def download(self, request: Request) -> ASGIApp:
        client = request.scope.get("client")
        fault = self.state.admit(
            ROUTE_CDN,
            (str(client[0]), int(client[1])) if client else None,
            video_id=request.path_params["video_id"],
            cdn_authorization=request.headers.getlist("authorization"),
        )
        return await serve_with_fault(fault, request.scope, lambda: self._download(request), cdn=True)

    async def _download(self, request: Request) -> ASGIApp:
        video_id = request.path_params["video_id"]
        if denied := self._deny_unsigned(request, video_id):
            return denied
        video = self.state.get_video(video_id)
        if video is None or video.progress_at(time.monotonic())[0] != "completed":
            return cdn_error(404, "NoSuchKey", "The specified key does not exist.")
        body = VideoBody.build(self.state.sample, self.state.settings.video_size_bytes)
        return VideoResponse(body, etag=f'"{video.id}-{body.total}"', on_sent=self.state.record_video_served)

    def _deny_unsigned(self, request: Request, video_id: str) -> Response | None:
        expires_text = request.query_params.get("expires", "")
        signature = request.query_params.get("signature", "")
        if not expires_text or not signature:
            return cdn_error(403, "AccessDenied", "Request is missing the expires and signature parameters.")
        try:
            expires = int(expires_text)
        except ValueError:
            return cdn_error(403, "AccessDenied", "Invalid expires parameter.")
        if not signing.verify(self.state.secret, video_id, expires, signature):
            return cdn_error(403, "SignatureDoesNotMatch", "The request signature does not match.")
        if time.time() >= expires:
            return cdn_error(403, "AccessDenied", "Request has expired")
        return None


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    codes = {
        404: ("NoSuchKey", "The specified key does not exist."),
        405: ("MethodNotAllowed", "Method not allowed."),
    }
    code, message = codes.get(status, ("InvalidRequest", "Invalid request."))
    return cdn_error(status, code, message)
