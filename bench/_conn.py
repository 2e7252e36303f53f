"""The client library's ``connect()`` and ``open_websocket()``, minus one
failure at close.

trio-websocket 0.12.2 answers a ping that arrives while its own side is
closing with a pong that wsproto refuses (``LocalProtocolError: Event Pong
... cannot be sent in state ConnectionState.LOCAL_CLOSING``). The error
escapes trio-websocket's reader task, and ``trioctl._client`` raises it from
the exit of ``connect()``, once the work is done. The daemon pings every
client every ``keepalive_interval``, so a run that opens and closes hundreds of
connections meets it now and then. These wrappers let that one error pass;
anything else propagates. See docs/benchmarks.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_websocket
import wsproto.utilities

from trioctl import _client

__all__ = ["connect", "open_ws"]

logger = logging.getLogger(__name__)


def _closing_pong(exc: wsproto.utilities.LocalProtocolError) -> bool:
    return "LOCAL_CLOSING" in str(exc)


@asynccontextmanager
async def connect(url: str, token: str, **kwargs: Any) -> AsyncIterator[_client.Client]:
    """``trioctl._client.connect(url, token, **kwargs)``."""
    try:
        async with _client.connect(url, token, **kwargs) as client:
            yield client
    except wsproto.utilities.LocalProtocolError as exc:
        if not _closing_pong(exc):
            raise
        logger.debug("ignored at close: %s", exc)


@asynccontextmanager
async def open_ws(url: str, token: str | None) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """``trioctl._client.open_websocket(url, token)``."""
    try:
        async with _client.open_websocket(url, token) as ws:
            yield ws
    except wsproto.utilities.LocalProtocolError as exc:
        if not _closing_pong(exc):
            raise
        logger.debug("ignored at close: %s", exc)
