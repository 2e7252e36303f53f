"""The hub: one reader for every socket monitor of a Trio run.

Monitors over real sockets (socket pairs with a scripted QMP peer, and real
QEMU) are read and written by one system task on a nested epoll; a caller
that is the only one waiting reads its reply itself. These tests pin what
that must keep: readiness dispatched to the right monitor, EOF and errors
closing it (and calling it back), a descriptor closed while registered,
cancellation of a caller that reads, many monitors with no task each.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trioctl import ConnectionLost
from trioctl._launcher import LaunchSpec
from trioctl._monitor import Monitor, _hub, connect_monitor, open_monitor, open_monitor_stream
from trioctl._sansio.qmp import Event, QmpConnection

from .helpers import launched
from .test_monitor import FakeQemu, echo_status


def _tasks() -> int:
    """Tasks of the run, system tasks included."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count, stack = 0, [root]
    while stack:
        task = stack.pop()
        count += 1
        stack.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return count


@asynccontextmanager
async def socket_monitor(
    handler: Any = echo_status,
) -> AsyncIterator[tuple[Monitor, FakeQemu, trio.socket.SocketType]]:
    a, b = trio.socket.socketpair()
    fake = FakeQemu(trio.SocketStream(b), handler)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.serve)
            async with open_monitor_stream(trio.SocketStream(a)) as monitor:
                # The peer's reply to qmp_capabilities has left its send_all.
                await trio.testing.wait_all_tasks_blocked()
                yield monitor, fake, b
            nursery.cancel_scope.cancel()
    finally:
        b.close()


async def test_many_monitors_have_no_task_and_get_their_own_replies_and_events() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            monitors: list[tuple[Monitor, FakeQemu]] = []
            peers = []
            for _ in range(50):
                a, b = trio.socket.socketpair()
                fake = FakeQemu(trio.SocketStream(b), echo_status)
                nursery.start_soon(fake.serve)
                peers.append(fake)
                monitor = await nursery.start(_hold, a)
                monitors.append((monitor, fake))
            await trio.testing.wait_all_tasks_blocked()
            before = _tasks()
            assert len(_hub()) >= 50
            seen: list[list[str]] = [[] for _ in monitors]
            for names, (monitor, _) in zip(seen, monitors, strict=True):
                monitor.add_event_handler(functools.partial(_record, names))
            # Events of idle monitors go to their own handlers, by the hub.
            for i, (_, fake) in enumerate(monitors):
                await fake.send(
                    {"event": f"E{i}", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}}
                )
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [[f"E{i}"] for i in range(50)]
            # Replies go to their callers, one at a time and all at once.
            results: dict[int, Any] = {}

            async def call(i: int) -> None:
                results[i] = await monitors[i][0].execute(f"cmd{i}")

            async with trio.open_nursery() as calls:
                for i in range(50):
                    calls.start_soon(call, i)
            assert all(results[i]["cmd"] == f"cmd{i}" for i in range(50))
            assert _tasks() == before  # no task per monitor came or stayed
            nursery.cancel_scope.cancel()
        for peer in peers:
            assert isinstance(peer.stream, trio.SocketStream)
            peer.stream.socket.close()


def _record(names: list[str], event: Event) -> None:
    names.append(event.name)


async def _hold(sock: trio.socket.SocketType, *, task_status: Any) -> None:
    async with open_monitor_stream(trio.SocketStream(sock)) as monitor:
        task_status.started(monitor)
        await trio.sleep_forever()


async def test_eof_while_idle_closes_the_monitor_and_calls_back() -> None:
    with trio.fail_after(10):
        async with socket_monitor() as (monitor, _, peer):
            closed = trio.Event()
            monitor.on_close(closed.set)
            fd = monitor._fd
            peer.close()
            await closed.wait()
            assert monitor.closed
            assert fd not in _hub()._monitors
            with pytest.raises(ConnectionLost):
                await monitor.execute("query-status")
            # A callback added after the close is called at once.
            late = trio.Event()
            monitor.on_close(late.set)
            assert late.is_set()


async def test_a_reset_fails_the_caller_that_reads_its_reply() -> None:
    with trio.fail_after(10):
        async with socket_monitor(lambda cmd: None) as (monitor, _, peer):

            async def reset() -> None:
                await trio.testing.wait_all_tasks_blocked()
                peer.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                peer.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reset)
                with pytest.raises(ConnectionLost):
                    await monitor.execute("hang")
            assert monitor.closed


async def test_a_descriptor_closed_behind_the_hub_and_reused() -> None:
    """A monitor's socket closed without the monitor knowing (the kernel
    drops it from the epoll): a new monitor that gets the same descriptor
    number is served, the stale one is closed, and the stale one's
    unregistration does not take the new one's registration away."""
    with trio.fail_after(10):
        a, b = trio.socket.socketpair()
        stale = Monitor(trio.SocketStream(a), QmpConnection())
        hub = stale._hub = _hub()
        fd = a.fileno()
        hub.register(fd, stale)
        a.close()  # behind the hub's back
        b.close()
        async with socket_monitor() as (monitor, _, _):
            assert monitor._fd == fd
            assert stale.closed
            hub.unregister(fd, stale)  # does nothing: not its fd any more
            assert _hub()._monitors[fd] is monitor
            assert (await monitor.execute("query-status"))["cmd"] == "query-status"


async def test_cancelling_the_caller_that_reads_hands_the_socket_back() -> None:
    """The only caller reads its reply itself; cancelled, the hub reads again:
    events while nobody waits, and a late reply is dropped, not lost in the
    socket."""
    with trio.fail_after(10):
        async with socket_monitor(lambda cmd: None) as (monitor, fake, _):
            events: list[str] = []
            monitor.add_event_handler(lambda ev: events.append(ev.name))
            with trio.move_on_after(0.5) as scope:
                await monitor.execute("hang")
            assert scope.cancelled_caught
            assert not monitor._direct
            (held,) = fake.held
            await fake.send(
                {"return": {}, "id": held["id"]},
                {"event": "LATE", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}},
            )
            await trio.testing.wait_all_tasks_blocked()
            assert events == ["LATE"]
            assert monitor.statistics().replies_dropped == 1


async def test_callers_that_come_while_one_reads_are_served() -> None:
    with trio.fail_after(10):
        async with socket_monitor(lambda cmd: None) as (monitor, fake, _):
            results: dict[str, Any] = {}

            async def call(name: str) -> None:
                results[name] = await monitor.execute(name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "first")
                await trio.testing.wait_all_tasks_blocked()
                assert monitor._direct
                nursery.start_soon(call, "second")
                nursery.start_soon(call, "third")
                await trio.testing.wait_all_tasks_blocked()
                # Answered in reverse order: the first caller reads the
                # others' replies, then leaves; the hub reads its own.
                held = {cmd["execute"]: cmd["id"] for cmd in fake.held}
                await fake.send(
                    {"return": 3, "id": held["third"]}, {"return": 2, "id": held["second"]}
                )
                await trio.testing.wait_all_tasks_blocked()
                assert results == {"second": 2, "third": 3}
                await fake.send({"return": 1, "id": held["first"]})
            assert results == {"first": 1, "second": 2, "third": 3}


async def test_closing_the_monitor_wakes_the_caller_that_reads() -> None:
    with trio.fail_after(10):
        async with socket_monitor(lambda cmd: None) as (monitor, _, _):
            async with trio.open_nursery() as nursery:

                async def close_soon() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    assert monitor._direct
                    monitor._close(ConnectionLost("closed by the test"))

                nursery.start_soon(close_soon)
                with pytest.raises(ConnectionLost):
                    await monitor.execute("hang")


async def test_a_flooding_monitor_does_not_hold_the_loop() -> None:
    """The hub reads one buffer per monitor per pass, then waits again."""
    with trio.fail_after(20):
        async with socket_monitor() as (monitor, fake, _):
            count = 0

            def on_event(_: object) -> None:
                nonlocal count
                count += 1

            monitor.add_event_handler(on_event)
            line = json.dumps(
                {
                    "event": "FLOOD",
                    "data": {"x": "y" * 200},
                    "timestamp": {"seconds": 1, "microseconds": 0},
                }
            )
            flood = (line.encode() + b"\r\n") * 2000
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fake.stream.send_all, flood)
                ticks = 0
                while count < 2000:
                    await trio.lowlevel.checkpoint()
                    ticks += 1
                assert ticks > 5  # other tasks ran while the flood was read


async def test_connect_monitor_lives_until_closed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        spec = LaunchSpec(name="vm1", qmp_path=str(tmp_path / "q.sock"), emulator="sim")
        async with launched(spec, tmp_path):
            monitor = await connect_monitor(spec.qmp_path)
            closed = trio.Event()
            monitor.on_close(closed.set)
            assert (await monitor.execute("query-status"))["status"] == "running"
            monitor.close()
            assert closed.is_set()
            with pytest.raises(ConnectionLost):
                await monitor.execute("query-status")


@pytest.mark.slow
@pytest.mark.qemu
async def test_real_qemu_direct_reads_events_while_idle_and_eof(tmp_path: Path) -> None:
    """Real QEMU: sequential commands read directly by their caller, events
    read by the hub while nobody waits, a kill is EOF (the close callback)."""
    with trio.fail_after(30):
        spec = LaunchSpec(name="vm1", qmp_path=str(tmp_path / "q.sock"), emulator="qemu")
        async with launched(spec, tmp_path) as proc:
            async with open_monitor(spec.qmp_path) as control:
                names: list[str] = []
                closed = trio.Event()
                control.add_event_handler(lambda ev: names.append(ev.name))
                control.on_close(closed.set)
                for _ in range(200):
                    assert (await control.execute("query-status"))["running"] is True
                await control.execute("stop")
                await control.execute("cont")
                with trio.fail_after(5):
                    while names[-2:] != ["STOP", "RESUME"]:
                        await trio.sleep(0.01)
                os.kill(proc.pid, signal.SIGKILL)
                await closed.wait()
                with pytest.raises(ConnectionLost):
                    await control.execute("query-status")


def test_hub_reads_through_one_buffer_into_bytes_of_the_length_read() -> None:
    """Each read goes through the run's one buffer and comes back as bytes
    of exactly what was read (no 64 KiB object per read); EOF is b""."""
    from trioctl._monitor import _Hub

    hub = _Hub()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.sendall(b'{"return": {}}\r\n')
        first = hub.read(a.fileno())
        assert first == b'{"return": {}}\r\n' and type(first) is bytes
        b.sendall(b"x" * 70_000)
        chunk = hub.read(a.fileno())
        assert len(chunk) == 65536 and chunk == b"x" * 65536
        assert first == b'{"return": {}}\r\n'  # not overwritten by the next read
        assert hub.read(a.fileno()) == b"x" * (70_000 - 65536)
        with pytest.raises(BlockingIOError):
            hub.read(a.fileno())
        b.close()
        assert hub.read(a.fileno()) == b""
    finally:
        a.close()
        b.close()
        hub._epoll.close()
