"""The client library's ``connect()`` and ``open_websocket()`` for the bench.

These once let trio-websocket's pong-while-closing ``LocalProtocolError``
pass at close; the client library now never raises it (see
``trioctl._client.open_websocket``), so they are plain re-exports kept for
the scenarios' imports.
"""

from __future__ import annotations

from trioctl._client import connect, open_websocket as open_ws

__all__ = ["connect", "open_ws"]
