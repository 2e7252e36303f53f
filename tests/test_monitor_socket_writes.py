"""Writes to a monitor over a real socket: in the caller's task while the
socket takes them, through the writer task when it is full, in order, and
never half a line, whatever callers are cancelled meanwhile."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.lowlevel

import trioctl
from trioctl._monitor import open_monitor_stream

from .test_monitor import GREETING

BIG = "x" * 50_000  # a few of these fill a UNIX socket's buffer


async def _fake_qemu(
    stream: trio.SocketStream, gate: trio.Event, received: list[dict[str, Any]]
) -> None:
    """Negotiate, then read nothing until ``gate``; then answer each command
    with its argument's length (a line that is not whole JSON fails here)."""
    async with stream:
        await _serve(stream, gate, received)


async def _serve(
    stream: trio.SocketStream, gate: trio.Event, received: list[dict[str, Any]]
) -> None:
    await stream.send_all(GREETING)
    buf = b""
    while True:
        if b"\n" not in buf:
            if received and not gate.is_set():
                await gate.wait()
            data = await stream.receive_some()
            if not data:
                return
            buf += data
            continue
        line, buf = buf.split(b"\n", 1)
        cmd = json.loads(line)
        received.append(cmd)
        value: Any = {} if cmd["execute"] == "qmp_capabilities" else len(cmd["arguments"]["s"])
        await stream.send_all(json.dumps({"return": value, "id": cmd["id"]}).encode() + b"\r\n")


async def test_a_full_socket_queues_whole_lines_in_order() -> None:
    with trio.fail_after(30):
        a, b = trio.socket.socketpair()
        gate = trio.Event()
        received: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fake_qemu, trio.SocketStream(b), gate, received)
            async with open_monitor_stream(trio.SocketStream(a)) as monitor:
                results: dict[int, int] = {}
                cancelled = []

                async def call(i: int) -> None:
                    with trio.CancelScope() as scope:
                        if i % 3 == 0:
                            cancelled.append(scope)
                        results[i] = await monitor.execute("echo", {"s": BIG + str(i)})

                async with trio.open_nursery() as calls:
                    for i in range(30):
                        calls.start_soon(call, i)
                        await trio.lowlevel.checkpoint()
                    # The socket is full: the rest waits for the writer task.
                    await trio.testing.wait_all_tasks_blocked()
                    assert monitor._writing
                    for scope in cancelled:
                        scope.cancel()
                    gate.set()
                assert not monitor._writing
                # Every command reached QEMU whole, in order, cancelled or not.
                sent = [c for c in received if c["execute"] == "echo"]
                assert [c["arguments"]["s"][len(BIG) :] for c in sent] == [
                    str(i) for i in range(30)
                ]
                assert results == {i: len(BIG + str(i)) for i in range(30) if i % 3}
                # And the socket path is back once it drained.
                assert await monitor.execute("echo", {"s": "short"}) == 5
                assert not monitor._writing
            nursery.cancel_scope.cancel()


async def test_the_socket_reader_keeps_the_monitors_guarantees() -> None:
    """Over a socket the reader reads the descriptor itself: replies longer
    than one read, many replies in one read, a late reply dropped and
    counted, and EOF failing every waiter."""
    with trio.fail_after(30):
        a, b = trio.socket.socketpair()
        qemu = trio.SocketStream(b)
        async with trio.open_nursery() as nursery, qemu:
            await qemu.send_all(GREETING)

            async def next_command() -> dict[str, Any]:
                line = b""
                while not line.endswith(b"\n"):
                    line += await qemu.receive_some(1)
                cmd: dict[str, Any] = json.loads(line)
                return cmd

            async def negotiate() -> None:
                cmd = await next_command()
                await qemu.send_all(json.dumps({"return": {}, "id": cmd["id"]}).encode() + b"\n")

            nursery.start_soon(negotiate)
            async with open_monitor_stream(trio.SocketStream(a)) as monitor:
                # A reply of 300 kB: several full reads before the newline.
                async def big() -> None:
                    cmd = await next_command()
                    reply = {"return": {"s": BIG * 6}, "id": cmd["id"]}
                    await qemu.send_all(json.dumps(reply).encode() + b"\r\n")

                nursery.start_soon(big)
                assert await monitor.execute("big") == {"s": BIG * 6}

                # A cancelled caller; then three replies in one write, the
                # cancelled one's first.
                with trio.move_on_after(0.01):
                    await monitor.execute("slow")
                late = (await next_command())["id"]
                results: dict[int, Any] = {}
                answered = trio.Event()

                async def call(i: int) -> None:
                    results[i] = await monitor.execute("n", {"i": i})
                    if len(results) == 3:
                        answered.set()

                for i in range(3):
                    nursery.start_soon(call, i)
                ids = [(await next_command())["id"] for _ in range(3)]
                await qemu.send_all(
                    b"".join(
                        json.dumps({"return": n, "id": n}).encode() + b"\r\n" for n in [late, *ids]
                    )
                )
                await answered.wait()
                assert sorted(results.values()) == sorted(ids)
                assert monitor.statistics().replies_dropped == 1

                # EOF fails every waiter at once.
                failures: list[BaseException] = []

                async def doomed() -> None:
                    try:
                        await monitor.execute("never")
                    except trioctl.ConnectionLost as exc:
                        failures.append(exc)

                async with trio.open_nursery() as waiters:
                    for _ in range(4):
                        waiters.start_soon(doomed)
                    for _ in range(4):
                        await next_command()
                    await qemu.send_eof()
                assert len(failures) == 4 and monitor.closed
