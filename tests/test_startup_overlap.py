"""Start-up that listens while the domains load (issue 14 goal 5).

``open_daemon`` opens its listener before the definitions and records are
loaded; a call that arrives meanwhile waits for the load (within its
deadline) and never sees a half-loaded registry; a load failure still fails
start-up with the load's own exception; the checks on state files still run
before anything is used; a parallel reconnect's supervisors wait for the
first answer (or a patience)."""

from __future__ import annotations

import errno
import itertools
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given, strategies as st

from trioctl import _driver
from trioctl._config import load_config
from trioctl._daemon import open_daemon
from trioctl._dispatch import Dispatcher
from trioctl._driver import DriverConfig, open_driver
from trioctl._launcher import MONITOR_SOCKET, QemuProcess, monitor_matcher, names_monitor
from trioctl._models import DomainDefinition, JobKind
from trioctl._pools import open_worker_pools
from trioctl._server import Server
from trioctl._store import RuntimeRecord, Store

from .helpers import FAST
from .test_server_virtual_time import MemoryListener

LIST = '{"jsonrpc": "2.0", "id": 1, "method": "connect.list_domains"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(state_dir: Path, port: int) -> Any:
    return load_config(
        None,
        overrides={
            "server.listen": f"127.0.0.1:{port}",
            "driver.state_dir": str(state_dir),
            "driver.run_dir": str(state_dir / "run"),
            "auth.required": False,
            **FAST,
        },
    )


async def _connect(nursery: trio.Nursery, port: int) -> trio_websocket.WebSocketConnection:
    """A WebSocket to the daemon, retried until it listens (bounded by the caller)."""
    while True:
        try:
            return await trio_websocket.connect_websocket(
                nursery, "127.0.0.1", port, "/", use_ssl=False
            )
        except (OSError, trio_websocket.HandshakeError):
            await trio.sleep(0.01)


class _GatedLoad:
    """Store.load_records that blocks (in its worker thread) until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = trio.Event()
        self.release = threading.Event()
        token = trio.lowlevel.current_trio_token()
        original = Store.load_records

        def gated(store: Store) -> Any:
            token.run_sync_soon(self.started.set)
            assert self.release.wait(20)
            return original(store)

        monkeypatch.setattr(Store, "load_records", gated)


async def test_a_call_during_the_load_waits_and_then_succeeds(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(sock_dir, sock_dir / "run").save_definition(DomainDefinition(name="a", emulator="sim"))
    gate = _GatedLoad(monkeypatch)
    port = _free_port()
    daemon_up = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def run_daemon() -> None:
                async with open_daemon(_config(sock_dir, port)) as daemon:
                    assert daemon.driver.loaded.is_set()
                    daemon_up.set()
                    await trio.sleep_forever()

            nursery.start_soon(run_daemon)
            await gate.started.wait()  # the records are loading, the definitions are in
            ws = await _connect(nursery, port)  # listening, handshake done, mid-load
            await ws.send_message(LIST)
            with trio.move_on_after(0.3) as waited:
                await ws.get_message()
            assert waited.cancelled_caught  # no answer from a half-loaded registry
            assert not daemon_up.is_set()
            gate.release.set()
            reply = json.loads(await ws.get_message())
            assert [d["name"] for d in reply["result"]["domains"]] == ["a"]
            await daemon_up.wait()
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_a_load_failure_fails_start_up_with_its_own_exception(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(store: Store) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(store.domains_dir))

    monkeypatch.setattr(Store, "load_definitions", unreadable)
    port = _free_port()
    with trio.fail_after(20):
        with pytest.raises(PermissionError) as raised:
            async with open_daemon(_config(sock_dir, port)):
                pytest.fail("the daemon started without its domains")
    assert str(raised.value) == f"[Errno 13] Permission denied: '{sock_dir / 'domains'}'"
    # The listener is closed again, and the state directory is free.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    monkeypatch.undo()
    with trio.fail_after(20):
        async with open_daemon(_config(sock_dir, port)) as daemon:
            assert daemon.driver.list_domains() == []


@pytest.mark.slow
async def test_a_record_naming_a_stranger_is_still_refused(sock_dir: Path) -> None:
    """The early listener changes nothing of the checks: the record is
    discarded before the domain is used, and the stranger never signalled."""
    stranger = await trio.lowlevel.open_process(["sleep", "60"])
    try:
        held = QemuProcess.attach(stranger.pid)
        start_ticks = held.start_ticks
        held.close()
        store = Store(sock_dir, sock_dir / "run")
        store.save_definition(DomainDefinition(name="s", emulator="sim"))
        record = RuntimeRecord("s", stranger.pid, start_ticks, "sim", time.time())
        (sock_dir / "run").mkdir(mode=0o700, exist_ok=True)
        (sock_dir / "run" / "s.json").write_text(json.dumps(attrs.asdict(record)))
        port = _free_port()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery, open_daemon(_config(sock_dir, port)):
                ws = await _connect(nursery, port)
                await ws.send_message(LIST)
                (info,) = json.loads(await ws.get_message())["result"]["domains"]
                assert info["name"] == "s" and info["pid"] is None
                assert info["state"] != "running"
                await ws.aclose()
        assert stranger.poll() is None  # never signalled
        assert not (sock_dir / "run" / "s.json").exists()
    finally:
        stranger.kill()
        await stranger.wait()


# -- virtual time: the wait is bounded by the call's deadline -----------------------------


@asynccontextmanager
async def _unloaded_server(state_dir: Path) -> AsyncIterator[tuple[Any, MemoryListener]]:
    config = load_config(None, overrides={"driver.state_dir": str(state_dir)})
    listener = MemoryListener()
    async with (
        open_driver(config.driver_config(), load=False) as driver,
        open_worker_pools(config.pools) as pools,
        trio.open_nursery() as nursery,
    ):
        server = Server(config.server, driver, Dispatcher(pools, driver.jobs), tokens=None)
        await nursery.start(server.run, [listener])
        yield driver, listener
        nursery.cancel_scope.cancel()


async def test_a_call_waits_for_the_load_within_its_deadline(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with _unloaded_server(sock_dir) as (driver, listener), trio.open_nursery() as nursery:
        stream = await listener.connect()
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
        start = trio.current_time()
        await ws.send_message(LIST)
        reply = json.loads(await ws.get_message())
        # connect.list_domains has a deadline of 5 s; the load never came.
        assert reply["error"]["data"]["reason"] == "DEADLINE_EXCEEDED"
        assert trio.current_time() - start == pytest.approx(5.0)
        assert not driver.loaded.is_set()
        # A call sent now, and the load a second later: answered then.
        await ws.send_message(LIST)
        await trio.sleep(1)
        # The load runs in worker threads: no autojump while they work.
        autojump_clock.autojump_threshold = math.inf
        await driver.load()
        reply = json.loads(await ws.get_message())
        assert reply.get("result") == {"domains": []}, reply
        assert trio.current_time() - start == pytest.approx(6.0)
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_metrics_wait_for_the_load(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    async with _unloaded_server(sock_dir) as (driver, listener):
        get = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        stream = await listener.connect()
        await stream.send_all(get)
        start = trio.current_time()
        # No half-loaded figures: closed unanswered at the handshake deadline.
        assert await stream.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(5.0)  # handshake_timeout
        await stream.aclose()
        stream = await listener.connect()
        await stream.send_all(get)
        await trio.sleep(0.5)
        autojump_clock.autojump_threshold = math.inf  # the load's threads
        await driver.load()
        body = b""
        while b"trioctl_domains" not in body:
            body += await stream.receive_some()
        assert body.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()


# -- the supervisors of a parallel reconnect wait for the first answer ---------------------


@attrs.define
class _FakeRun:
    started: list[float]
    connected: trio.Event = attrs.Factory(trio.Event)
    exited: trio.Event = attrs.Factory(trio.Event)

    async def supervise(self, reconnect: bool) -> None:
        assert reconnect
        self.started.append(trio.current_time())


@pytest.mark.parametrize("answered_at", [0.1, None])
async def test_supervisors_start_after_the_first_answer_or_the_patience(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, answered_at: float | None
) -> None:
    started: list[float] = []
    async with open_driver(DriverConfig(state_dir=sock_dir)) as driver:
        driver.serve_first = served = trio.Event()
        start = trio.current_time()
        runs: Any = [_FakeRun(started) for _ in range(_driver._SUPERVISORS_PER_PASS + 1)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver._start_supervisors, runs)
            if answered_at is not None:
                await trio.sleep(answered_at)
                served.set()
            while len(started) < len(runs):
                await trio.sleep(0.001)
    first = min(started) - start
    expected = answered_at if answered_at is not None else _driver._SERVE_FIRST_PATIENCE
    assert first == pytest.approx(expected, abs=1e-6)


# -- a parallel reconnect bounds the young handshakes in flight ------------------------------


async def test_handshake_room_frees_a_slot_when_a_monitor_answers_or_the_handshake_ages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit, age = _driver._YOUNG_HANDSHAKES, _driver._YOUNG_HANDSHAKE_S
    start = trio.current_time()
    runs = [_FakeRun([]) for _ in range(limit)]
    young: Any = [(start, run) for run in runs]
    # Room at once while fewer than the limit are young and negotiating.
    assert len(await _driver._wait_for_handshake_room(young[:-1])) == limit - 1
    assert trio.current_time() == start
    # Full: one monitor answering (or its process exiting) frees its slot.
    async with trio.open_nursery() as nursery:

        async def answer() -> None:
            await trio.sleep(0.1)
            runs[3].connected.set()
            runs[5].exited.set()

        nursery.start_soon(answer)
        left: Any = await _driver._wait_for_handshake_room(young)
    assert trio.current_time() - start == pytest.approx(0.1, abs=_driver._HANDSHAKE_ROOM_POLL)
    assert len(left) == limit - 2 and (start, runs[3]) not in left
    # Hung handshakes hold their slots only while young: the others start
    # at most `age` seconds after them, whatever the hung ones do.
    full: Any = left + [(start, _FakeRun([])) for _ in range(2)]
    assert await _driver._wait_for_handshake_room(full) == []
    assert trio.current_time() - start == pytest.approx(age, abs=_driver._HANDSHAKE_ROOM_POLL)


async def test_supervisors_wait_for_handshake_room(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two passes' worth of young handshakes allowed, the third pass of
    supervisors waits until the first ones have aged (none answers here)."""
    per_pass = _driver._SUPERVISORS_PER_PASS
    monkeypatch.setattr(_driver, "_YOUNG_HANDSHAKES", 2 * per_pass)
    started: list[float] = []
    async with open_driver(DriverConfig(state_dir=sock_dir)) as driver:
        start = trio.current_time()
        runs: Any = [_FakeRun(started) for _ in range(3 * per_pass)]
        await driver._start_supervisors(runs)
        while len(started) < len(runs):
            await trio.sleep(0.001)
    first_passes, third = started[: 2 * per_pass], started[2 * per_pass :]
    assert max(first_passes) - start < _driver._YOUNG_HANDSHAKE_S
    assert min(third) - min(first_passes) >= _driver._YOUNG_HANDSHAKE_S


# -- the records' loop reads a shared process's command line once ---------------------------


def _names_monitor_before(argv: list[str], qmp_path: str) -> bool:
    """names_monitor as it was before monitor_matcher (the reference)."""
    prefix = f"unix:{qmp_path},"
    if any(arg.startswith(prefix) for arg in argv):
        return True
    if "many" not in argv or "--vm-dirs" not in argv:
        return False
    options = dict(itertools.pairwise(argv))
    path = Path(qmp_path)
    if path.name != MONITOR_SOCKET or options.get("--dir") != str(path.parent.parent):
        return False
    name, prefix_opt, count = (
        path.parent.name,
        options.get("--prefix", "vm"),
        options.get("--count"),
    )
    index = name[len(prefix_opt) :] if name.startswith(prefix_opt) else ""
    return index.isdigit() and count is not None and count.isdigit() and int(index) < int(count)


_WORDS = st.sampled_from(
    ["many", "--vm-dirs", "--dir", "--count", "--prefix", "/run/t", "/run", "vm", "h", "3", "10",
     "0", "-qmp", "unix:/run/t/vm1/qmp.sock,server=on", "unix:/run/t/vm1/qmp.sock", "unix:/a,b,c",
     "unix:", "unix:,", "x,y"]
)  # fmt: skip
_PATHS = st.sampled_from(
    ["/run/t/vm1/qmp.sock", "/run/t/vm2/qmp.sock", "/run/t/h1/qmp.sock", "/run/t/vm10/qmp.sock",
     "/run/t/vm/qmp.sock", "/run/t/vm1/other.sock", "/run/vm1/qmp.sock", "/a", "/a,b", "",
     "qmp.sock", "/run/t/vm01/qmp.sock", "/run/t/h0/qmp.sock"]
)  # fmt: skip


@given(argv=st.lists(_WORDS | st.text(max_size=8), max_size=12), paths=st.lists(_PATHS, max_size=6))
def test_monitor_matcher_answers_as_names_monitor_did(argv: list[str], paths: list[str]) -> None:
    matches = monitor_matcher(argv)
    for path in paths:
        try:
            expected = _names_monitor_before(argv, path)
        except ValueError:  # int() of a digit that is not decimal ("²")
            expected = False
        assert matches(path) is expected
        assert names_monitor(argv, path) is expected


async def test_a_call_that_needs_a_domain_job_releases_the_supervisors(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """A first call queued behind a reconnect job must not wait for the
    patience: the supervisors that end the reconnect start at once."""
    Store(sock_dir, sock_dir / "run").save_definition(DomainDefinition(name="a", emulator="sim"))
    config = load_config(None, overrides={"driver.state_dir": str(sock_dir)})
    listener = MemoryListener()
    async with (
        open_driver(config.driver_config()) as driver,
        open_worker_pools(config.pools) as pools,
        trio.open_nursery() as nursery,
    ):
        server = Server(config.server, driver, Dispatcher(pools, driver.jobs), tokens=None)
        await nursery.start(server.run, [listener])
        held = driver.jobs.claim("a", JobKind.RECONNECT, procedure="reconnect", client="daemon")
        ws = await trio_websocket.wrap_client_stream(nursery, await listener.connect(), "x", "/")  # type: ignore[arg-type]
        await ws.send_message(
            '{"jsonrpc": "2.0", "id": 1, "method": "domain.get_stats", "params": {"name": "a"}}'
        )
        with trio.fail_after(1):
            await server.first_served.wait()
        held.discard()
        reply = json.loads(await ws.get_message())
        assert reply["error"]["data"]["reason"] != "DEADLINE_EXCEEDED", reply
        await ws.aclose()
        nursery.cancel_scope.cancel()
