"""The ASGI app behind both listening sockets: API origin or CDN origin, chosen by local port."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from airflow_octopusx.simulator.api import VideosApi, build_api_app
from airflow_octopusx.simulator.cdn import CdnOrigin
from airflow_octopusx.simulator.connection import SCOPE_KEY, ConnectionControl
from airflow_octopusx.simulator.controls import control_routes
from airflow_octopusx.simulator.state import SimulatorState


class SimulatorApp:
    """One ASGI app for two origins, so a single uvicorn server (one thread, one loop) serves both.

    Requests to ``cdn_port`` go to the CDN; everything else to the API. The CDN must be another
    origin than the API so clients are tested on not sending credentials to it.
    """

    def __init__(self, state: SimulatorState, *, cdn_url: str, cdn_port: int) -> None:
        self.cdn_port = cdn_port
        self.api = build_api_app(VideosApi(state, cdn_url=cdn_url), control_routes(state))
        self.cdn = CdnOrigin(state).app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not part of the simulated API
        scope[SCOPE_KEY] = ConnectionControl(send)
        server = scope.get("server")
        app = self.cdn if server is not None and server[1] == self.cdn_port else self.api
        await app(scope, receive, send)
