"""``/_simulator/*`` JSON endpoints: the Python control API over HTTP, for tests in other processes.

They need no API key (they are test plumbing, not part of the simulated service) and do not
count towards :class:`~airflow_octopusx.simulator.state.Stats`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from airflow_octopusx.simulator.faults import Fault
from airflow_octopusx.simulator.state import (
    DEFAULT_FAILURE_CODE,
    DEFAULT_FAILURE_MESSAGE,
    SimulatorState,
)

_Handler = Callable[[Request], Awaitable[JSONResponse]]


def control_routes(state: SimulatorState) -> list[BaseRoute]:
    """Routes for reset, settings, failures, faults, stats and the list of created videos."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def reset(request: Request) -> JSONResponse:
        state.reset()
        return JSONResponse({"settings": state.settings.to_dict()})

    async def get_settings(request: Request) -> JSONResponse:
        return JSONResponse(state.settings.to_dict())

    async def set_settings(request: Request) -> JSONResponse:
        payload = await _json_object(request)
        return JSONResponse(state.configure(payload).to_dict())

    async def fail_next(request: Request) -> JSONResponse:
        payload = await _json_object(request)
        state.fail_next(
            payload.get("n", 1),
            payload.get("code", DEFAULT_FAILURE_CODE),
            payload.get("message", DEFAULT_FAILURE_MESSAGE),
        )
        return JSONResponse({"ok": True})

    async def get_faults(request: Request) -> JSONResponse:
        return JSONResponse({"faults": [f.to_dict() for f in state.pending_faults]})

    async def add_faults(request: Request) -> JSONResponse:
        payload = await _json(request)
        items = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(item, dict) for item in items):
            raise ValueError("Send a fault object or a list of fault objects")
        faults = [Fault.from_dict(item) for item in items]  # validate all before arming any
        for fault in faults:
            state.inject(fault)
        return await get_faults(request)

    async def clear_faults(request: Request) -> JSONResponse:
        state.clear_faults()
        return JSONResponse({"faults": []})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(state.stats().to_dict())

    async def videos(request: Request) -> JSONResponse:
        return JSONResponse({"videos": [video.to_dict() for video in state.videos]})

    return [
        Route("/_simulator/health", _guarded(health), methods=["GET"]),
        Route("/_simulator/reset", _guarded(reset), methods=["POST"]),
        Route("/_simulator/settings", _guarded(get_settings), methods=["GET"]),
        Route("/_simulator/settings", _guarded(set_settings), methods=["POST"]),
        Route("/_simulator/fail-next", _guarded(fail_next), methods=["POST"]),
        Route("/_simulator/faults", _guarded(get_faults), methods=["GET"]),
        Route("/_simulator/faults", _guarded(add_faults), methods=["POST"]),
        Route("/_simulator/faults", _guarded(clear_faults), methods=["DELETE"]),
        Route("/_simulator/stats", _guarded(stats), methods=["GET"]),
        Route("/_simulator/videos", _guarded(videos), methods=["GET"]),
    ]


def _guarded(handler: _Handler) -> _Handler:
    """Turn bad control input (ValueError/TypeError) into a 400 that says what was wrong."""

    async def wrapper(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error"}}, 400)

    return wrapper


async def _json(request: Request) -> Any:
    body = await request.body()
    return json.loads(body) if body.strip() else {}


async def _json_object(request: Request) -> dict[str, Any]:
    payload = await _json(request)
    if not isinstance(payload, dict):
        raise ValueError("Send a JSON object")
    return payload
