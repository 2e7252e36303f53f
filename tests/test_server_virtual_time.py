"""Server timing rules in virtual time: the WebSocket endpoint runs over
in-memory streams (a listener that hands out ``memory_stream_pair`` ends),
so ``autojump_clock`` makes keepalive deadlines exact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
import trio_websocket

from trioctl._config import load_config
from trioctl._dispatch import Dispatcher
from trioctl._driver import open_driver
from trioctl._pools import open_worker_pools
from trioctl._server import Server


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Connections are in-memory stream pairs; ``connect()`` is the client side."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](8)

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        await self._receive.aclose()

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client


@asynccontextmanager
async def memory_server(
    state_dir: Path, **settings: object
) -> AsyncIterator[tuple[Server, MemoryListener]]:
    config = load_config(
        None,
        overrides={
            "driver.state_dir": str(state_dir),
            # ``max_clients=1`` means server.max_clients; a dotted key is as given.
            **{k if "." in k else f"server.{k}": v for k, v in settings.items()},
        },
    )
    listener = MemoryListener()
    async with (
        open_driver(config.driver_config()) as driver,
        open_worker_pools(config.pools) as pools,
        trio.open_nursery() as nursery,
    ):
        server = Server(config.server, driver, Dispatcher(pools, driver.jobs), tokens=None)
        await nursery.start(server.run, [listener])
        yield server, listener
        nursery.cancel_scope.cancel()


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_silent_peer_is_closed_after_interval_times_count_plus_one(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, keepalive_interval=5, keepalive_count=5) as (
        server,
        listener,
    ):
        stream = await listener.connect()
        await stream.send_all(UPGRADE)
        assert b" 101 " in await stream.receive_some()
        start = trio.current_time()
        assert len(server._sessions) == 1
        # Never read again, never answer a ping: 5 s * (5 + 1), libvirt's rule,
        # plus at most the 1 s the server gives the closing handshake.
        await trio.sleep_until(start + 29.99)
        assert len(server._sessions) == 1
        while server._sessions:
            await trio.sleep(0.01)
        assert 30.0 <= trio.current_time() - start <= 31.0
        assert server.list_clients().clients == []
        # The peer sees the connection closed: the pings it never answered, then EOF.
        with trio.fail_after(1):
            while await stream.receive_some():
                pass
        await stream.aclose()


async def test_answering_peer_stays_connected(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, keepalive_interval=5, keepalive_count=2) as (
        server,
        listener,
    ):
        stream = await listener.connect()
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
            await trio.sleep(300)  # 60 keepalive rounds, each answered by the client
            assert len(server._sessions) == 1
            await ws.send_message('{"jsonrpc": "2.0", "id": 1, "method": "connect.get_version"}')
            assert '"protocol":1' in str(await ws.get_message())
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_keepalive_disabled_with_zero_interval(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(UPGRADE)
        await stream.receive_some()
        await trio.sleep(3600)
        assert len(server._sessions) == 1


async def test_handshake_deadline_and_early_leavers(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(sock_dir, handshake_timeout=5, max_anonymous_clients=3) as (
        server,
        listener,
    ):
        # A slow-loris request that never ends is closed at the deadline.
        slow = await listener.connect()
        start = trio.current_time()
        await slow.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert await slow.receive_some() == b""
        assert 5.0 <= trio.current_time() - start <= 5.01
        # A peer that leaves without a byte is let go at once, not at the deadline.
        gone = await listener.connect()
        start = trio.current_time()
        while server._anonymous == 0:
            await trio.sleep(0.001)
        await gone.aclose()
        while server._anonymous:
            await trio.sleep(0.001)
        assert trio.current_time() - start < 0.1
        # Beyond max_anonymous_clients, the oldest handshake is closed at
        # once and the newcomer keeps its chance.
        held = []
        for _ in range(3):
            held.append(await listener.connect())
            await trio.sleep(0.01)
        while server._anonymous < 3:
            await trio.sleep(0.001)
        extra = await listener.connect()
        start = trio.current_time()
        assert await held[0].receive_some() == b""
        assert trio.current_time() - start < 0.1
        assert (server.anonymous_refused, server._anonymous) == (1, 3)
        await extra.send_all(UPGRADE)
        assert b" 101 " in await extra.receive_some()
        assert len(server._anonymous_slots) == 2
        for stream in [*held[1:], extra]:
            await stream.aclose()


async def test_a_live_client_with_stuck_calls_is_not_dropped_by_keepalive(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with memory_server(
        sock_dir, keepalive_interval=5, keepalive_count=2, max_client_requests=1
    ) as (server, listener):
        gate = trio.Event()
        real = server._invoke

        async def stuck(*args: Any) -> Any:
            await gate.wait()
            return await real(*args)

        server._invoke = stuck  # type: ignore[method-assign,assignment]
        stream = await listener.connect()
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
            call = '{"jsonrpc": "2.0", "id": 1, "method": "connect.get_version"}'
            for _ in range(3):  # one in flight, one queued, one behind it
                await ws.send_message(call)
            await trio.sleep(120)  # far beyond interval * (count + 1)
            assert len(server._sessions) == 1
            gate.set()
            for _ in range(3):
                assert '"protocol":1' in str(await ws.get_message())
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_stalled_handshakes_being_renewed_do_not_lock_clients_out(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """The outside tester's attack: 20+ connections that send half a request
    and stall, renewed as soon as they are closed, about 4 a second. The
    oldest stalled handshake is evicted for a newcomer, so a real client (and
    an admin) is served."""
    async with memory_server(sock_dir, max_anonymous_clients=20) as (server, listener):
        opened = 0

        async def stall_and_renew() -> None:
            nonlocal opened
            while True:
                stream = await listener.connect()
                opened += 1
                await stream.send_all(b"GET / HTTP/1.1\r\n")
                while await stream.receive_some():
                    pass  # closed: evicted or at the deadline
                await stream.aclose()
                await trio.sleep(0.25)

        async with trio.open_nursery() as attackers:
            for _ in range(25):
                attackers.start_soon(stall_and_renew)
                await trio.sleep(0.25)  # ~4 connections a second
            while server._anonymous < 20:
                await trio.sleep(0.01)
            for path, method in (
                ("/", "connect.list_domains"),
                ("/admin", "admin.get_stats"),
            ):
                stream = await listener.connect()
                async with trio.open_nursery() as nursery:
                    ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", path)  # type: ignore[arg-type]
                    await ws.send_message(f'{{"jsonrpc": "2.0", "id": 1, "method": "{method}"}}')
                    assert '"result"' in str(await ws.get_message())
                    await ws.aclose()
                    nursery.cancel_scope.cancel()
            await trio.sleep(5)
            assert server.anonymous_refused > 0
            assert server._anonymous <= 20
            attackers.cancel_scope.cancel()
        assert opened > 25


async def test_an_idle_session_does_not_wake_the_daemon(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """No timer per idle session: with keepalive off, an hour of an idle
    session runs no task of the server (the hang-up poll runs only while the
    session's reader is stopped)."""

    class Steps(trio.abc.Instrument):
        count = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.count += 1

    async with memory_server(sock_dir, keepalive_interval=0) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(UPGRADE)
        assert b" 101 " in await stream.receive_some()
        await trio.sleep(1)
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        try:
            await trio.sleep(3600)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert len(server._sessions) == 1
        # This task's own sleep, and the clock's: a few steps, not 4 a second.
        assert steps.count < 20
        await stream.aclose()


def _server_tasks() -> int:
    """Tasks of the server and of trio-websocket now running."""
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    pending = [root]
    while pending:
        task = pending.pop()
        if task.name.startswith(("trioctl._server.", "trio_websocket.")):
            count += 1
        pending.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return count


async def _answer_ping(stream: trio.abc.Stream) -> None:
    """Read the server's ping (one unmasked frame) and answer it with a pong
    (masked with zeros, as a client must mask)."""
    data = await stream.receive_some()
    assert data[0] == 0x89, data  # FIN + ping
    length = data[1]
    assert len(data) == 2 + length
    await stream.send_all(bytes([0x8A, 0x80 | length]) + b"\0\0\0\0" + data[2:])


async def test_idle_sessions_keep_two_tasks_each_and_one_keepalive_serves_them_all(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """An idle session is its connection's task and trio-websocket's reader;
    the keepalive pings every session every interval from one server task,
    and a silent session among answering ones is closed on time."""
    async with memory_server(sock_dir, keepalive_interval=5, keepalive_count=2) as (
        server,
        listener,
    ):
        await trio.testing.wait_all_tasks_blocked()
        before = _server_tasks()
        streams = []
        for _ in range(4):
            stream = await listener.connect()
            await stream.send_all(UPGRADE)
            assert b" 101 " in await stream.receive_some()
            streams.append(stream)
        start = trio.current_time()
        answering = streams[:-1]  # the last one never answers
        await trio.testing.wait_all_tasks_blocked()
        assert _server_tasks() - before == 2 * len(streams)
        for round_ in range(1, 7):
            # Each answering peer gets one ping per interval.
            for stream in answering:
                await _answer_ping(stream)
            assert 5.0 * round_ <= trio.current_time() - start < 5.0 * round_ + 0.01
            await trio.testing.wait_all_tasks_blocked()
            if round_ < 3:
                assert len(server._sessions) == 4
                # The silent peer's ping waits for its pong in a task of its own.
                assert _server_tasks() - before == 2 * len(streams) + 1
            elif round_ > 3:
                # The silent one went after two pings in a row without a pong
                # (at 15 s), plus at most the 1 s closing handshake.
                assert len(server._sessions) == 3
                assert _server_tasks() - before == 2 * len(answering)
        for stream in streams:
            await stream.aclose()
