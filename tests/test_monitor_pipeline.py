"""``query-status`` pipelined behind ``qmp_capabilities`` (issue 14 goal 4).

:func:`connect_monitor` with ``first_command`` sends both commands in one
write, before the negotiation's reply: one round trip less per reconnect.
Pinned here: both go before any reply (a peer that answers only once it has
both lines), a refused negotiation fails the whole connect with the
refusal's error, and real QEMU 7.2 and the simulator answer a command sent
back-to-back behind ``qmp_capabilities`` alike: negotiated, after the
negotiation's reply; and ``CommandNotFound`` after a refused negotiation.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trioctl import LocalProtocolError, RemoteProtocolError
from trioctl._launcher import MONITOR_SOCKET, LaunchSpec
from trioctl._models import DomainDefinition, DomainState, MonitorState
from trioctl._monitor import connect_monitor
from trioctl._sansio.qmp import Event

from .helpers import launched, wait_until
from .test_driver import driver_at
from .test_monitor import GREETING

Answer = Callable[[list[dict[str, Any]]], bytes]


async def _serve_two_lines(listener: trio.socket.SocketType, answer: Answer) -> None:
    """Greet, wait for two whole command lines, then send ``answer(both)``."""
    conn, _ = await listener.accept()
    with conn:
        await conn.send(GREETING)
        buf = b""
        while buf.count(b"\n") < 2:
            data = await conn.recv(4096)
            if not data:
                return
            buf += data
        await conn.send(answer([json.loads(line) for line in buf.splitlines()]))
        while await conn.recv(4096):
            pass


async def _connect_with(path: Path, answer: Answer, **kwargs: Any) -> Any:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        await listener.bind(str(path))
        listener.listen(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_two_lines, listener, answer)
            try:
                try:
                    monitor = await connect_monitor(str(path), handshake_timeout=5, **kwargs)
                except RemoteProtocolError as exc:
                    return None, exc
                try:
                    return monitor, await monitor.first_reply()
                finally:
                    monitor.close()
            finally:
                nursery.cancel_scope.cancel()


def _line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode() + b"\r\n"


async def test_the_first_command_goes_before_the_negotiation_reply(tmp_path: Path) -> None:
    events: list[str] = []

    def answer(cmds: list[dict[str, Any]]) -> bytes:
        negotiate, status = cmds
        assert negotiate["execute"] == "qmp_capabilities"
        assert status["execute"] == "query-status"
        return (
            _line({"return": {}, "id": negotiate["id"]})
            + _line({"return": {"status": "paused", "running": False}, "id": status["id"]})
            + _line({"event": "RESUME", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})
        )

    def record(event: Event) -> None:
        events.append(event.name)

    with trio.fail_after(10):
        monitor, status = await _connect_with(
            tmp_path / "q.sock", answer, first_command="query-status", event_handler=record
        )
    assert status == {"status": "paused", "running": False}
    # The event came in the same read as the replies: the handler saw it.
    assert events == ["RESUME"]
    assert monitor.statistics().replies_dropped == 0
    with pytest.raises(LocalProtocolError):
        await monitor.first_reply()  # once


async def test_a_refused_negotiation_fails_the_connect_and_its_first_command(
    tmp_path: Path,
) -> None:
    def answer(cmds: list[dict[str, Any]]) -> bytes:
        negotiate, status = cmds
        return _line(
            {"id": negotiate["id"], "error": {"class": "GenericError", "desc": "refused"}}
        ) + _line(
            {
                "id": status["id"],
                "error": {
                    "class": "CommandNotFound",
                    "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
                },
            }
        )

    with trio.fail_after(10):
        monitor, error = await _connect_with(
            tmp_path / "q.sock", answer, first_command="query-status"
        )
    assert monitor is None
    assert isinstance(error, RemoteProtocolError)
    assert "capabilities negotiation refused: refused" in str(error)


async def _raw_exchange(path: str, wire: bytes, replies: int) -> list[dict[str, Any]]:
    """Send ``wire`` in one write after the greeting; the next ``replies`` messages."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(path)
        buf = b""
        while b"\n" not in buf:
            buf += await sock.recv(4096)
        assert b'"QMP"' in buf
        buf = buf.split(b"\n", 1)[1]
        await sock.send(wire)
        while buf.count(b"\n") < replies:
            data = await sock.recv(4096)
            assert data, "the monitor closed"
            buf += data
    return [json.loads(line) for line in buf.splitlines() if line.strip()]


@pytest.fixture(params=[pytest.param("qemu", marks=pytest.mark.qemu), "sim"])
async def qmp_path(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[str]:
    spec = LaunchSpec(name="vm1", qmp_path=str(sock_dir / "vm1.qmp"), emulator=request.param)
    async with launched(spec, sock_dir):
        yield spec.qmp_path


@pytest.mark.slow
async def test_back_to_back_after_qmp_capabilities_like_qemu(qmp_path: str) -> None:
    """What the pipelining relies on, on real QEMU and on the simulator alike."""
    with trio.fail_after(20):
        ok = await _raw_exchange(
            qmp_path,
            b'{"execute": "qmp_capabilities", "id": "n"}\n{"execute": "query-status", "id": 1}\n',
            2,
        )
        assert ok[0] == {"return": {}, "id": "n"}
        assert ok[1]["id"] == 1 and ok[1]["return"]["running"] is True
        refused = await _raw_exchange(
            qmp_path,
            b'{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}, "id": "n"}\n'
            b'{"execute": "query-status", "id": 1}\n',
            2,
        )
        assert [(r["id"], r["error"]["class"]) for r in refused] == [
            ("n", "GenericError"),
            (1, "CommandNotFound"),
        ]
        assert "Expecting capabilities negotiation" in refused[1]["error"]["desc"]
        monitor = await connect_monitor(qmp_path, first_command="query-status")
        try:
            assert (await monitor.first_reply())["running"] is True
            assert (await monitor.execute("query-status"))["running"] is True
        finally:
            monitor.close()


@pytest.mark.slow
@pytest.mark.parametrize("emulator", [pytest.param("qemu", marks=pytest.mark.qemu), "sim"])
async def test_a_restart_learns_a_pause_made_while_the_daemon_was_away(
    sock_dir: Path, emulator: str
) -> None:
    """The reconnect's pipelined query-status sets the state: paused behind
    the daemon's back, then resumed behind it again."""
    with trio.fail_after(60):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="vm", emulator=emulator))
            await driver.start("vm")
            pid = driver.get_info("vm").pid
            qmp = str(driver.store.domain_run_dir("vm") / MONITOR_SOCKET)
        assert pid is not None
        try:
            for command, state in (("stop", DomainState.PAUSED), ("cont", DomainState.RUNNING)):
                monitor = await connect_monitor(qmp)
                try:
                    await monitor.execute(command)
                finally:
                    monitor.close()
                async with driver_at(sock_dir) as driver:
                    await wait_until(lambda: driver.get_info("vm").monitor is MonitorState.OK)
                    assert driver.get_info("vm").state is state
        finally:
            os.kill(pid, signal.SIGKILL)
