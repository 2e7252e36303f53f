"""Stopping with calls in flight ends within the grace (issue 14, goal 6).

``Server.drain(grace)`` gives calls in flight the grace less a reserve,
cancels them, then closes the sessions, a closing handshake that gets no
answer cut short too, so that the daemon can exit within the grace. In
virtual time over in-memory streams.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request, TextMessage

from trioctl._procedures import ProcedureTable

from .test_server_virtual_time import memory_server

CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "connect.get_version"})


async def _hang(ctx: Any, params: Any) -> Any:
    await trio.sleep_forever()


def _hanging_table(table: ProcedureTable) -> ProcedureTable:
    return ProcedureTable(
        [attrs.evolve(p, bound=_hang) if p.name == "connect.get_version" else p for p in table]
    )


async def test_calls_in_flight_are_cancelled_early_enough_to_stop_within_the_grace(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        server.table = _hanging_table(server.table)
        async with trio.open_nursery() as nursery:
            replies: list[str] = []

            async def caller() -> None:
                stream = await listener.connect()
                ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
                await ws.send_message(CALL)
                try:
                    replies.append(str(await ws.get_message()))
                except trio_websocket.ConnectionClosed as exc:
                    replies.append(f"closed {exc.reason.code if exc.reason else None}")

            for _ in range(3):
                nursery.start_soon(caller)
            while server._messages < 3:
                await trio.sleep(0.01)
            start = trio.current_time()
            await server.drain(2.0)
            took = trio.current_time() - start
            # The calls had the grace less the reserve (0.3 s), and the
            # sessions were closed after that, with time left for the exit.
            assert 1.7 - 1e-9 <= took <= 1.85, took
            assert not server._sessions
        assert replies == ["closed 1001"] * 3


async def test_a_peer_that_never_answers_the_close_does_not_hold_the_stop(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        server.table = _hanging_table(server.table)
        stream = await listener.connect()
        client = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="x", target="/")))
        client.receive_data(bytes(await stream.receive_some()))
        await stream.send_all(client.send(TextMessage(data=CALL)))
        while server._messages < 1:
            await trio.sleep(0.01)
        # From here on the client reads nothing and never answers the close.
        start = trio.current_time()
        await server.drain(2.0)
        # Cut at 2 - 0.3 / 2 s; drain waits for that until 2 - 0.3 / 4 s.
        assert trio.current_time() - start <= 1.85 + 1e-9
        assert not server._sessions


async def test_drain_returns_at_once_when_nothing_is_in_flight(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        async with trio.open_nursery() as nursery:
            stream = await listener.connect()
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
            await ws.send_message(CALL)
            assert '"protocol"' in str(await ws.get_message())
            start = trio.current_time()
            await server.drain(2.0)
            assert trio.current_time() - start < 0.01
            assert not server._sessions
            nursery.cancel_scope.cancel()
