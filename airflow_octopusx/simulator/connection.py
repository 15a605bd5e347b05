"""Raw control over the TCP connection under one request, which ASGI itself does not offer.

The ``reset`` and ``truncate`` faults must break the connection the way a flaky network or proxy
does; the app reaches uvicorn's transport through the server's own ``send`` callable for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any

from starlette.types import Scope, Send

SCOPE_KEY = "octopusx.connection"
_CLOSE_WAIT_SECONDS = 5.0


class ConnectionControl:
    """Abort or close the connection a request arrived on."""

    def __init__(self, raw_send: Send) -> None:
        # uvicorn's ``send`` is a bound method of its request cycle, which holds the transport.
        self._cycle: Any = getattr(raw_send, "__self__", None)
        self._transport: asyncio.Transport | None = getattr(self._cycle, "transport", None)

    @classmethod
    def of(cls, scope: Scope) -> ConnectionControl:
        control = scope.get(SCOPE_KEY)
        if not isinstance(control, ConnectionControl):
            raise RuntimeError("The simulator app must be served through SimulatorApp")
        return control

    @property
    def client_gone(self) -> bool:
        """True once the client has closed or dropped the connection (e.g. it timed out)."""
        return bool(getattr(self._cycle, "disconnected", False))

    async def reset(self) -> None:
        """Drop the connection with a TCP RST, discarding anything not yet sent."""
        transport = self._require_transport()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        await self._wait_closed()

    async def close(self) -> None:
        """Close after flushing what was sent (a FIN mid-body), as a dying upstream would."""
        self._require_transport().close()
        await self._wait_closed()

    def _require_transport(self) -> asyncio.Transport:
        if self._transport is None:
            # Not uvicorn: the server will close the connection after this error instead.
            raise ConnectionAbortedError("simulated connection fault")
        return self._transport

    async def _wait_closed(self) -> None:
        # Return only once uvicorn has seen the disconnect, so it does not try to answer itself.
        deadline = time.monotonic() + _CLOSE_WAIT_SECONDS
        while not getattr(self._cycle, "disconnected", True) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
