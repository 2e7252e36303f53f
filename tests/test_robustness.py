"""Regression tests for failure modes found in review: each once took a
domain, a session or the daemon somewhere it could not come back from."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pytest
import trio
import trio_websocket

import trioctl
from trioctl import procfs
from trioctl._driver import DriverConfig, open_driver
from trioctl._launcher import LaunchSpec, QemuProcess, launch
from trioctl._models import DomainDefinition, DomainState, MonitorState
from trioctl._store import RuntimeRecord, Store

from .helpers import raw_ws, running_daemon, wait_until

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},'
    b' "capabilities": ["oob"]}}\r\n'
)


def proc_state(pid: int) -> str:
    try:
        return procfs.read_stat(pid).state
    except procfs.ProcessGone:
        return "gone"


async def resetting_qmp_peer(
    path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Greets, then closes with the client's negotiation unread (a reset)."""
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen(16)
    task_status.started()
    with sock:
        while True:
            conn, _ = await sock.accept()
            with conn:
                await conn.send(GREETING)
                await trio.sleep(0.05)


@pytest.mark.slow
async def test_reset_during_handshake_does_not_wedge_the_domain(sock_dir: Path) -> None:
    store = Store(sock_dir, sock_dir / "run")
    (sock_dir / "run" / "vm1").mkdir()
    qmp = str(sock_dir / "run" / "vm1" / "qmp.sock")
    # A stand-in emulator: its command line names the domain's monitor socket,
    # as the daemon checks before adopting a record.
    sleeper = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(300)", f"unix:{qmp},server=on,wait=off"]
    )
    try:
        held = QemuProcess.attach(sleeper.pid)
        ticks = held.start_ticks
        held.close()
        store.save_definition(DomainDefinition(name="vm1", emulator="sim"))
        store.save_record(RuntimeRecord("vm1", sleeper.pid, ticks, "sim", time.time()))
        config = DriverConfig(sock_dir, monitor_timeout=0.5, reconnect_timeout=0.5)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                await nursery.start(resetting_qmp_peer, qmp)
                async with open_driver(config) as driver:
                    with driver.subscribe() as sub:
                        async for event in sub:
                            if event.detail == "unresponsive":
                                break
                    assert driver.get_info("vm1").state is DomainState.RUNNING
                    info = await driver.destroy("vm1")
                    assert (info.state, info.monitor) == (DomainState.SHUTOFF, MonitorState.NONE)
                nursery.cancel_scope.cancel()
    finally:
        sleeper.kill()
        with trio.CancelScope(shield=True):
            await sleeper.wait()


@pytest.mark.slow
async def test_cancelled_launch_leaves_no_emulator_behind() -> None:
    for delay in (0.02, 0.08, 0.15):
        state_dir = Path(tempfile.mkdtemp(prefix="tc-"))
        spec = LaunchSpec(name="v", qmp_path=str(state_dir / "q"))
        spawned: list[int] = []

        async def on_spawn(proc: QemuProcess, spawned: list[int] = spawned) -> None:
            spawned.append(proc.pid)

        with trio.fail_after(20):
            with trio.move_on_after(delay):
                proc = await launch(spec, run_dir=state_dir, on_spawn=on_spawn)
                # The launch finished before the deadline: our own kill must
                # not be cut short by it (a SIGKILLed process is still "R"
                # until the kernel has torn it down).
                with trio.CancelScope(shield=True):
                    await proc.kill(grace=0)
                proc.close()
            for pid in spawned:
                assert proc_state(pid) in ("Z", "X", "gone")


@pytest.mark.slow
async def test_unread_replies_stop_the_reader(sock_dir: Path) -> None:
    """Slots are held until replies are written: a client that never reads
    cannot make the session buffer replies without bound."""
    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, raw_ws(daemon.url, daemon.token) as ws:
            request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "connect.list_domains"})
            with trio.move_on_after(3):
                for _ in range(20_000):
                    await ws.send_message(request)
            (session,) = daemon.server._sessions.values()
            assert session.in_flight <= daemon.server.max_client_requests
            assert session.nursery is not None
            assert len(session.nursery.child_tasks) <= 2 * daemon.server.max_client_requests + 2


@pytest.mark.slow
async def test_subscribe_twice_in_one_batch(sock_dir: Path) -> None:
    def req(i: int, method: str, params: dict[str, object] | None = None) -> dict[str, object]:
        return {"jsonrpc": "2.0", "id": i, "method": method, "params": params or {}}

    async def notifications(ws: trio_websocket.WebSocketConnection, expected: int) -> int:
        """Wait for the ``expected`` notifications, then count any more in 0.5 s."""
        count = 0
        with trio.fail_after(10):
            while count < expected:
                count += "method" in json.loads(await ws.get_message())
        with trio.move_on_after(0.5):
            while True:
                count += "method" in json.loads(await ws.get_message())
        return count

    with trio.fail_after(30):
        async with running_daemon(sock_dir) as daemon, raw_ws(daemon.url, daemon.token) as ws:
            sub = req(1, "events.subscribe")
            await ws.send_message(json.dumps([sub, sub]))
            await ws.get_message()
            await ws.send_message(
                json.dumps(req(2, "domain.define", {"definition": {"name": "a"}}))
            )
            assert await notifications(ws, 1) == 1
            await ws.send_message(json.dumps(req(3, "events.unsubscribe")))
            await ws.send_message(
                json.dumps(req(4, "domain.define", {"definition": {"name": "b"}}))
            )
            assert await notifications(ws, 0) == 0


async def test_max_clients_holds_under_concurrent_handshakes(sock_dir: Path) -> None:
    accepted: list[int] = []
    refused: list[int] = []
    release = trio.Event()
    with trio.fail_after(30):
        async with running_daemon(sock_dir, server__max_clients=2) as daemon:

            async def one(i: int) -> None:
                try:
                    async with raw_ws(daemon.url, daemon.token):
                        accepted.append(i)
                        await release.wait()
                except trioctl.ConnectionRejected as exc:
                    refused.append(exc.status)

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
                # Every handshake answered while the accepted ones stay connected.
                await wait_until(lambda: len(accepted) + len(refused) == 8)
                assert len(daemon.server._sessions) <= 2
                release.set()
    assert len(accepted) == 2
    assert refused == [503] * 6
