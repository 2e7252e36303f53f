"""Connections to a daemon: the public client, and a raw WebSocket.

``connect`` is :func:`trioctl.connect`. ``open_ws`` is a bare trio-websocket
connection with the daemon's bearer token, for the measurements that must
see the server side alone (the throughput scenario's raw loop, idle
sessions), or none at all for the echo server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio_websocket
import wsproto.utilities

from trioctl import connect

__all__ = ["connect", "open_ws"]


@asynccontextmanager
async def open_ws(
    url: str, token: str | None, *, connect_timeout: float = 10.0
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else None
    try:
        async with trio_websocket.open_websocket_url(
            url,
            extra_headers=headers,
            connect_timeout=connect_timeout,
            max_message_size=64 * 1024 * 1024,
        ) as ws:
            yield ws
    except* wsproto.utilities.LocalProtocolError as group:
        # trio-websocket 0.12 answers a ping that arrives while it closes
        # (the daemon's keepalive) with a pong that wsproto refuses.
        if not all("Pong" in str(exc) for exc in group.exceptions):
            raise
