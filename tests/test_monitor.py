"""The monitor shell against a scripted QMP peer over an in-memory stream.

Virtual time (``autojump_clock``) makes deadlines exact: a command under
``move_on_after(5)`` against a silent peer returns at exactly t=5.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trioctl import ConnectionLost, MonitorTimeout, QmpCommandError
from trioctl._monitor import Monitor, open_monitor_stream

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
    b'"package": ""}, "capabilities": ["oob"]}}\r\n'
)

Handler = Callable[[dict[str, Any]], list[dict[str, Any]] | None]


class FakeQemu:
    """A scripted QMP server: answers each command with what ``handler`` returns.

    ``handler`` returns the messages to send (replies and events), or None to
    stay silent (a hung QEMU).
    """

    def __init__(self, stream: trio.abc.Stream, handler: Handler) -> None:
        self.stream = stream
        self.handler = handler
        self.held: list[dict[str, Any]] = []
        self.received: list[str] = []

    async def send(self, *msgs: dict[str, Any]) -> None:
        await self.stream.send_all(b"".join(json.dumps(m).encode() + b"\r\n" for m in msgs))

    async def serve(self) -> None:
        await self.stream.send_all(GREETING)
        buf = b""
        while True:
            try:
                data = await self.stream.receive_some()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return  # the test closed our end
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                self.received.append(cmd["execute"])
                if cmd["execute"] == "qmp_capabilities":
                    await self.send({"return": {}, "id": cmd["id"]})
                    continue
                out = self.handler(cmd)
                if out is None:
                    self.held.append(cmd)
                else:
                    await self.send(*out)


def echo_status(cmd: dict[str, Any]) -> list[dict[str, Any]] | None:
    if cmd["execute"] == "hang":
        return None
    if cmd["execute"] == "fail":
        return [{"error": {"class": "GenericError", "desc": "nope"}, "id": cmd["id"]}]
    return [{"return": {"status": "running", "cmd": cmd["execute"]}, "id": cmd["id"]}]


@asynccontextmanager
async def monitor_with(handler: Handler = echo_status) -> AsyncIterator[tuple[Monitor, FakeQemu]]:
    client, server = trio.testing.memory_stream_pair()
    fake = FakeQemu(server, handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve)
        async with open_monitor_stream(client) as monitor:
            yield monitor, fake
        nursery.cancel_scope.cancel()


async def test_execute_routes_replies_and_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with monitor_with() as (monitor, _fake):
        assert monitor.greeting.version == (7, 2, 0)
        assert await monitor.execute("query-status") == {"status": "running", "cmd": "query-status"}
        with pytest.raises(QmpCommandError) as info:
            await monitor.execute("fail")
        assert info.value.error_class == "GenericError"
        assert info.value.command == "fail"


async def test_deadline_on_silent_peer_and_late_reply_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with monitor_with() as (monitor, fake):
        with trio.move_on_after(5) as scope:
            await monitor.execute("hang")
        assert scope.cancelled_caught
        assert trio.current_time() == 5.0
        assert monitor.statistics().pending == 0
        # Other commands keep working while the late reply is outstanding...
        assert (await monitor.execute("query-status"))["cmd"] == "query-status"
        # ...and when it finally comes it is dropped, not delivered to anyone.
        late = fake.held.pop()
        await fake.send({"return": {"late": True}, "id": late["id"]})
        assert (await monitor.execute("query-name"))["cmd"] == "query-name"
        assert monitor.statistics().replies_dropped == 1


async def test_concurrent_commands_answered_out_of_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with monitor_with(lambda cmd: None) as (monitor, fake):
        results: dict[str, Any] = {}

        async def run(name: str) -> None:
            results[name] = await monitor.execute(name)

        async with trio.open_nursery() as nursery:
            for name in ("a", "b", "c"):
                nursery.start_soon(run, name)
            await trio.sleep(1)
            assert len(fake.held) == 3
            for cmd in reversed(fake.held):
                await fake.send({"return": cmd["execute"].upper(), "id": cmd["id"]})
        assert results == {"a": "A", "b": "B", "c": "C"}


async def test_eof_fails_every_waiter_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with monitor_with(lambda cmd: None) as (monitor, fake):
        failures: list[BaseException] = []

        async def run() -> None:
            try:
                await monitor.execute("query-status")
            except ConnectionLost as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(run)
            await trio.sleep(1)
            await fake.stream.aclose()
        assert len(failures) == 4
        assert trio.current_time() == 1.0
        assert monitor.closed
        with pytest.raises(ConnectionLost):
            await monitor.execute("query-status")
        # Failing at once still checkpoints: a retry loop cannot hold the loop.
        with trio.testing.assert_checkpoints(), pytest.raises(ConnectionLost):
            await monitor.execute("query-status")


async def test_garbage_from_peer_fails_waiters(autojump_clock: trio.testing.MockClock) -> None:
    async def garbage(fake: FakeQemu) -> None:
        await trio.sleep(1)
        await fake.stream.send_all(b"}}}not json\r\n")

    async with monitor_with(lambda cmd: None) as (monitor, fake), trio.open_nursery() as nursery:
        nursery.start_soon(garbage, fake)
        with pytest.raises(ConnectionLost, match="protocol"):
            await monitor.execute("query-status")


async def test_events_reach_subscribers_and_overflow_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def emit(cmd: dict[str, Any]) -> list[dict[str, Any]]:
        ev = {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}
        return [ev, ev, ev, {"return": {}, "id": cmd["id"]}]

    async with monitor_with(emit) as (monitor, _fake):
        seen: list[str] = []
        monitor.add_event_handler(lambda ev: seen.append(ev.name))
        with monitor.subscribe(max_buffer=2) as slow, monitor.subscribe(max_buffer=10) as fast:
            # Nobody reads the subscriptions: the reply still comes at once.
            await monitor.execute("stop")
            assert trio.current_time() == 0.0
            assert slow.dropped == 1
            assert fast.dropped == 0
            assert [ev.name for ev in (slow.receive_channel.receive_nowait(),) * 1] == ["STOP"]
        assert seen == ["STOP"] * 3
        stats = monitor.statistics()
        assert stats.events_received == 3
        assert stats.events_dropped == 1


async def test_subscription_ends_when_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with monitor_with() as (monitor, fake):
        with monitor.subscribe() as sub:
            await fake.send({"event": "RESUME", "timestamp": {"seconds": 2, "microseconds": 5}})
            await fake.stream.aclose()
            names = [ev.name async for ev in sub]
        assert names == ["RESUME"]


async def test_handshake_timeout_on_silent_server(autojump_clock: trio.testing.MockClock) -> None:
    client, _server = trio.testing.memory_stream_pair()
    with pytest.raises(MonitorTimeout, match="no QMP handshake"):
        async with open_monitor_stream(client, handshake_timeout=3):
            pass
    assert trio.current_time() == 3.0


async def test_body_exception_is_not_wrapped(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(FakeQemu(server, echo_status).serve)
        with pytest.raises(KeyError):
            async with open_monitor_stream(client):
                raise KeyError("mine")
        nursery.cancel_scope.cancel()


async def test_leaving_the_block_fails_pending_commands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcome: list[BaseException] = []
    async with trio.open_nursery() as nursery, monitor_with(lambda cmd: None) as (monitor, _):

        async def waiter() -> None:
            try:
                await monitor.execute("hang")
            except ConnectionLost as exc:
                outcome.append(exc)

        nursery.start_soon(waiter)
        await trio.sleep(1)
    assert len(outcome) == 1
