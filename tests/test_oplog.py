"""Log lines for operators (``docs/configuration.md``, "Log lines").

One test per kind of line: its level, its text and its fields. The domain
tests drive the simulator (real processes, a hang is SIGSTOP: real time under
``fail_after``); the server's limit refusals run over in-memory streams in
virtual time. The list in the docs is checked against the lines the code
can write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from trioctl import LaunchError, MonitorTimeout, MonitorUnresponsive, TrioctlError, procfs
from trioctl._cli._daemon_cmd import _JsonFormatter
from trioctl._driver import Driver, DriverConfig, open_driver
from trioctl._jobs import JobKind
from trioctl._log import RefusalLog, log
from trioctl._models import DomainDefinition, DomainState, MonitorState

from .test_server_virtual_time import UPGRADE, MemoryListener, memory_server

ROOT = Path(__file__).resolve().parent.parent


class Lines:
    """The records of the ``trioctl`` loggers, whatever the logging setup."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []

    def of(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if fields(r).get("event") == event]

    def one(self, event: str) -> logging.LogRecord:
        found = self.of(event)
        assert len(found) == 1, [r.getMessage() for r in self.records]
        return found[0]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, "fields", {})
    assert isinstance(value, dict)
    return value


@pytest.fixture
def lines() -> Iterator[Lines]:
    collected = Lines()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.records.append(record)

    handler = Collect(logging.DEBUG)
    root = logging.getLogger("trioctl")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield collected
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def config(sock_dir: Path, **kw: Any) -> DriverConfig:
    settings: dict[str, Any] = {
        "monitor_timeout": 0.5,
        "probe_interval": 0.1,
        "job_wait_timeout": 5.0,
        "shutdown_timeout": 5.0,
        "reconnect_timeout": 0.5,
        "destroy_grace": 0.5,
    }
    settings.update(kw)
    return DriverConfig(state_dir=sock_dir, **settings)


@asynccontextmanager
async def driver_at(sock_dir: Path, **kw: Any) -> AsyncIterator[Driver]:
    async with open_driver(config(sock_dir, **kw)) as driver:
        try:
            yield driver
        finally:
            for info in driver.list_domains():
                if info.pid is not None:
                    os.kill(info.pid, signal.SIGKILL)


async def until(condition: Any) -> None:
    while not condition():
        await trio.sleep(0.01)


# -- the helpers ---------------------------------------------------------------------------


def test_log_passes_fields_and_leaves_out_none(lines: Lines) -> None:
    logger = logging.getLogger("trioctl.test")
    log(logger, logging.INFO, "x %s", "y", event="e", domain="d", client=None)
    (record,) = lines.records
    assert record.getMessage() == "x y"
    assert fields(record) == {"event": "e", "domain": "d"}
    assert record.funcName == "test_log_passes_fields_and_leaves_out_none"


def test_json_format_writes_fields_as_keys() -> None:
    record = logging.LogRecord(
        "trioctl._driver", logging.WARNING, __file__, 1, "m %s", ("a",), None
    )
    record.fields = {"event": "crashed", "domain": "vm1", "message": "not replaced", "pid": 7}
    entry = json.loads(_JsonFormatter().format(record))
    assert entry["message"] == "m a"  # a field never replaces the four base keys
    assert (entry["event"], entry["domain"], entry["pid"], entry["level"]) == (
        "crashed",
        "vm1",
        7,
        "warning",
    )


def test_refusals_first_at_once_then_one_line_per_interval_with_counts(lines: Lines) -> None:
    refusals = RefusalLog(logging.getLogger("trioctl.test"), interval=10)
    refusals.refused("max_clients", "a", now=100.0)
    assert [fields(r)["count"] for r in lines.of("limit_refused")] == [1]
    for i in range(50):
        refusals.refused("max_clients", f"b{i}", now=101.0 + i / 10)
    refusals.refused("job_queue", "q", now=102.0, domain="vm1", client="c3")
    refusals.flush(now=109.9)
    counts = [(fields(r)["limit"], fields(r)["count"]) for r in lines.of("limit_refused")]
    assert counts == [("max_clients", 1), ("job_queue", 1)]
    refusals.flush(now=110.0)
    last = lines.of("limit_refused")[-1]
    assert (fields(last)["limit"], fields(last)["count"]) == ("max_clients", 50)
    assert "latest: b49" in last.getMessage() and last.levelno == logging.WARNING
    refusals.flush(now=200.0)  # nothing new: nothing said
    assert len(lines.of("limit_refused")) == 3
    assert refusals.total == {"max_clients": 51, "job_queue": 1}


# -- domains -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_start_destroy_and_shutdown_are_said_as_such(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="a", emulator="sim"))
            info = await driver.start("a", client="c1")
            assert info.job is None  # not the start's own job
            started = lines.one("started")
            assert started.levelno == logging.INFO
            assert fields(started) | {"pid": 0} == {
                "event": "started",
                "domain": "a",
                "pid": 0,
                "client": "c1",
                "procedure": "domain.start",
            }
            await driver.destroy("a", client="c2")
            destroyed = lines.one("destroyed")
            assert destroyed.levelno == logging.INFO
            assert fields(destroyed)["client"] == "c2"
            assert fields(destroyed)["reason"] == "destroyed"
            assert "domain a destroyed (pid" in destroyed.getMessage()

            await driver.start("a")
            await driver.shutdown("a", client="c3")
            down = lines.one("shutdown")
            assert down.levelno == logging.INFO
            assert (fields(down)["client"], fields(down)["reason"]) == ("c3", "shutdown")
            assert "exit status 0" in down.getMessage()
            assert not lines.of("crashed") and not lines.of("monitor_closed")


@pytest.mark.slow
async def test_crash_taint_and_dropped_monitor(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="c", emulator="sim"))
            await driver.start("c")
            # A command outside the allow-list taints the run.
            await driver.monitor_command("c", "x-trioctl-sim-fault", {"mode": "none"}, client="c7")
            taint = lines.one("tainted")
            assert taint.levelno == logging.WARNING
            assert fields(taint)["taint"] == "custom-monitor"
            assert (fields(taint)["client"], fields(taint)["domain"]) == ("c7", "c")

            # The QMP connection drops while the process runs.
            with contextlib.suppress(TrioctlError):  # the reply may or may not come
                await driver.monitor_command("c", "x-trioctl-sim-fault", {"mode": "drop"})
            await until(lambda: lines.of("monitor_closed"))
            assert lines.one("monitor_closed").levelno == logging.WARNING
            await until(lambda: driver.get_info("c").monitor is MonitorState.OK)

            pid = driver.get_info("c").pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: driver.get_info("c").state is DomainState.CRASHED)
            crash = lines.one("crashed")
            assert crash.levelno == logging.WARNING
            assert fields(crash)["signal"] == "SIGKILL"
            assert f"domain c crashed (pid {pid}, killed by SIGKILL)" == crash.getMessage()
            assert len(lines.of("monitor_closed")) == 1  # the crash is not a "closed" line


@pytest.mark.slow
async def test_crash_with_exit_status(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="e", emulator="sim"))
            await driver.start("e")
            with contextlib.suppress(TrioctlError):  # the reply may or may not come
                await driver.monitor_command(
                    "e", "x-trioctl-sim-fault", {"mode": "crash", "exit-code": 3}
                )
            await until(lambda: driver.get_info("e").state is DomainState.CRASHED)
            crash = lines.one("crashed")
            assert fields(crash)["exit_status"] == 3 and "exit status 3" in crash.getMessage()


@pytest.mark.slow
async def test_monitor_timeout_unresponsive_and_recovered(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="h", emulator="sim"))
            await driver.start("h")
            pid = driver.get_info("h").pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            with pytest.raises(MonitorTimeout):
                await driver.get_stats("h", client="c5")
            timeout = lines.one("monitor_timeout")
            assert timeout.levelno == logging.WARNING
            assert fields(timeout) == {
                "event": "monitor_timeout",
                "domain": "h",
                "command": "query-status",
                "reason": "MONITOR_TIMEOUT",
                "client": "c5",
                "procedure": "domain.get_stats",
            }
            down = lines.one("monitor_unresponsive")
            assert down.levelno == logging.WARNING
            assert fields(down)["reason"] == "query-status did not answer within 0.5 s"
            with pytest.raises(MonitorUnresponsive, match=r"\(query-status did not answer"):
                await driver.get_stats("h")
            os.kill(pid, signal.SIGCONT)
            await until(lambda: lines.of("monitor_recovered"))
            up = lines.one("monitor_recovered")
            assert up.levelno == logging.INFO and fields(up)["seconds"] > 0


@pytest.mark.slow
async def test_launch_failure_carries_the_emulators_stderr(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="f", emulator="sim", extra_args=("-bogus",)))
            with pytest.raises(LaunchError):
                await driver.start("f", client="c9")
            tainted = lines.one("tainted")  # extra_args: said before the launch
            assert fields(tainted)["taint"] == "custom-argv"
            failed = lines.one("launch_failed")
            assert failed.levelno == logging.WARNING
            assert fields(failed)["reason"] == "LAUNCH_FAILED"
            assert fields(failed)["client"] == "c9"
            assert "bogus" in fields(failed)["stderr"]
            assert "bogus" in failed.getMessage()


# -- after a restart -------------------------------------------------------------------------


@pytest.mark.slow
async def test_reason_of_a_stopped_domain_survives_a_restart(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            for name in ("d", "s", "k", "never"):
                await driver.define(DomainDefinition(name=name, emulator="sim"))
            for name in ("d", "s", "k"):
                await driver.start(name)
            await driver.destroy("d")
            await driver.shutdown("s")
            pid = driver.get_info("k").pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: driver.get_info("k").state is DomainState.CRASHED)
        async with driver_at(sock_dir) as driver:
            seen = {i.name: (i.state, i.reason) for i in driver.list_domains()}
            assert seen == {
                "d": (DomainState.SHUTOFF, "destroyed"),
                "s": (DomainState.SHUTOFF, "shutdown"),
                "k": (DomainState.CRASHED, "crashed"),
                "never": (DomainState.SHUTOFF, "defined"),
            }
            # A start replaces it; an undefine forgets it.
            await driver.start("d")
            assert driver.get_info("d").reason == "booted"
            await driver.destroy("d")
            await driver.undefine("d")
            assert not (sock_dir / "domains" / "d.exit").exists()
            await driver.define(DomainDefinition(name="d", emulator="sim"))
        async with driver_at(sock_dir) as driver:
            assert driver.get_info("d").reason == "defined"


async def test_unusable_saved_reasons_are_ignored(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            for name in ("a", "b", "c"):
                await driver.define(DomainDefinition(name=name, emulator="sim"))
        domains = sock_dir / "domains"
        (domains / "a.exit").write_text('{"state": "running", "reason": "booted"}')
        (domains / "b.exit").write_text("not json")
        os.symlink(domains / "a.json", domains / "c.exit")
        async with driver_at(sock_dir) as driver:
            assert {i.reason for i in driver.list_domains()} == {"defined"}
        assert len([r for r in lines.records if "ignoring" in r.getMessage()]) == 3


async def test_a_saved_reason_nested_too_deeply_is_ignored(sock_dir: Path, lines: Lines) -> None:
    """A ``.exit`` file within its 1 KiB bound but nested deeper than the
    recursion limit (RecursionError, not a ValueError) used to stop the
    daemon from starting."""
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="a", emulator="sim"))
        (sock_dir / "domains" / "a.exit").write_text("[" * 1020)
        async with driver_at(sock_dir) as driver:
            assert driver.get_info("a").reason == "defined"
        assert len([r for r in lines.records if "ignoring" in r.getMessage()]) == 1


@pytest.mark.slow
async def test_emulator_that_died_while_the_daemon_was_down(sock_dir: Path, lines: Lines) -> None:
    with trio.fail_after(30):
        async with open_driver(config(sock_dir)) as driver:
            await driver.define(DomainDefinition(name="z", emulator="sim"))
            await driver.start("z")
            pid = driver.get_info("z").pid
            assert pid is not None
            # Leaving the driver leaves the emulator running.
            run_dir = sock_dir / "run"
            assert (run_dir / "z" / "qmp.sock").exists()
        os.kill(pid, signal.SIGKILL)
        await until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid))
        async with open_driver(config(sock_dir)) as driver:
            info = driver.get_info("z")
            assert (info.state, info.reason) == (DomainState.CRASHED, "crashed")
            crash = lines.one("crashed")
            assert "while the daemon was down" in crash.getMessage()
            assert fields(crash)["pid"] == pid
        assert not (run_dir / "z.json").exists()
        assert not (run_dir / "z" / "qmp.sock").exists()
        assert not (run_dir / "z" / "ctl.sock").exists()
        async with open_driver(config(sock_dir)) as driver:
            assert driver.get_info("z").reason == "crashed"  # and after the next restart


def _zombie(pid: int) -> bool:
    try:
        return procfs.read_stat(pid).ended
    except OSError:
        return True


@pytest.mark.slow
async def test_call_waiting_for_a_hung_reconnect_says_so(sock_dir: Path) -> None:
    """A call that arrives while the reconnect holds the job waits for it (the
    documented job wait, at most ``reconnect_timeout``), then fails saying
    the reconnect is why; the next calls fail at once."""
    with trio.fail_after(30):
        async with open_driver(config(sock_dir)) as driver:
            await driver.define(DomainDefinition(name="h", emulator="sim"))
            await driver.start("h")
            pid = driver.get_info("h").pid
            assert pid is not None
        try:
            os.kill(pid, signal.SIGSTOP)
            async with open_driver(config(sock_dir, reconnect_timeout=1.0)) as driver:
                job = driver.jobs.job_info("h")
                assert job is not None and job.kind is JobKind.RECONNECT
                start = trio.current_time()
                with pytest.raises(MonitorUnresponsive) as caught:
                    await driver.get_stats("h")
                waited = trio.current_time() - start
                assert 0.5 < waited < 5.0
                assert "calls waited for the reconnect until then" in caught.value.message
                assert "within 1 s of reconnecting" in caught.value.message
                # Now the call fails at once (its message says so) without a wait.
                with pytest.raises(MonitorUnresponsive, match="fail at once"):
                    await driver.get_stats("h")
        finally:
            os.kill(pid, signal.SIGKILL)


# -- the server's lines ------------------------------------------------------------------------


@asynccontextmanager
async def client(
    listener: MemoryListener, nursery: trio.Nursery
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    stream = await listener.connect()
    # trio-websocket types the stream as a socket; any trio Stream works.
    ws = await trio_websocket.wrap_client_stream(nursery, stream, "x", "/")  # type: ignore[arg-type]
    try:
        yield ws
    finally:
        await ws.aclose()


async def call(ws: trio_websocket.WebSocketConnection, method: str, **params: Any) -> Any:
    await ws.send_message(
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    )
    return json.loads(await ws.get_message())


async def test_connects_at_debug_and_max_clients_refusals_counted(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, lines: Lines
) -> None:
    async with (
        memory_server(sock_dir, **{"server.max_clients": 1}) as (server, listener),
        trio.open_nursery() as nursery,
    ):
        async with client(listener, nursery) as ws:
            assert "result" in await call(ws, "connect.get_version")
            connected = lines.one("client_connected")
            assert connected.levelno == logging.DEBUG
            assert fields(connected)["client"] == "c1"
            for _ in range(5):
                stream = await listener.connect()
                await stream.send_all(UPGRADE)
                assert b" 503 " in await stream.receive_some()
                await stream.aclose()
            refused = lines.of("limit_refused")
            assert [fields(r)["count"] for r in refused] == [1]  # the rest are counted
            assert fields(refused[0])["limit"] == "max_clients"
            await trio.sleep(server.refusals.interval + 0.1)
            refused = lines.of("limit_refused")
            assert [fields(r)["count"] for r in refused] == [1, 4]
        await until(lambda: lines.of("client_disconnected"))
        gone = lines.one("client_disconnected")
        assert gone.levelno == logging.DEBUG and fields(gone)["calls"] == 1
        nursery.cancel_scope.cancel()


async def test_job_queue_full_refusal_names_client_and_domain(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, lines: Lines
) -> None:
    async with (
        memory_server(sock_dir, **{"driver.max_queued": 1}) as (server, listener),
        trio.open_nursery() as nursery,
    ):
        await server.driver.define(DomainDefinition(name="q", emulator="sim"))
        async with (
            server.driver.jobs.job("q", JobKind.MODIFY, procedure="test", client="t"),
            client(listener, nursery) as first,
            client(listener, nursery) as second,
        ):
            await first.send_message(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "domain.suspend", "params": {"name": "q"}}
                )
            )
            await until(lambda: (server.driver.jobs.job_info("q") or _no_job()).queued == 1)
            reply = await call(second, "domain.suspend", name="q")
            assert reply["error"]["data"]["reason"] == "JOB_QUEUE_FULL"
            refused = lines.one("limit_refused")
            assert refused.levelno == logging.WARNING
            assert {k: fields(refused)[k] for k in ("limit", "domain", "procedure", "reason")} == {
                "limit": "job_queue",
                "domain": "q",
                "procedure": "domain.suspend",
                "reason": "JOB_QUEUE_FULL",
            }
            assert fields(refused)["client"].startswith("c")
        nursery.cancel_scope.cancel()


def _no_job() -> Any:
    class NoJob:
        queued = 0

    return NoJob()


# -- the documentation -----------------------------------------------------------------------


def test_every_event_is_documented() -> None:
    """Each ``event=`` the code can log has a row in docs/configuration.md."""
    code = "".join(
        (ROOT / "trioctl" / name).read_text()
        for name in ("_driver.py", "_supervisor.py", "_server.py", "_log.py")
    )
    events = set(re.findall(r'event="([a-z_]+)"', code))
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc[doc.index("## Log lines") :]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE)) - {"event"}
    assert events == documented


# -- the real daemon, JSON format --------------------------------------------------------------

JSON_CONFIG = """
[server]
listen = "127.0.0.1:0"
keepalive_interval = 0
[log]
format = "json"
level = "debug"
"""


@pytest.mark.slow
async def test_daemon_writes_json_lines_with_fields(sock_dir: Path) -> None:
    """``trioctl daemon`` with ``log.format = "json"``: every stderr line is
    one JSON object; operator lines carry their fields as keys. And
    ``trioctl --json start`` shows no job (its own is released)."""
    config = sock_dir / "trioctl.toml"
    config.write_text(JSON_CONFIG)
    ready = sock_dir / "ready.json"
    stderr = sock_dir / "stderr.log"
    argv = [sys.executable, "-m", "trioctl", "daemon", "--config", str(config)]
    argv += ["--state-dir", str(sock_dir), "--ready-file", str(ready)]
    with stderr.open("wb") as err:
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        with trio.fail_after(30):
            while not ready.exists():
                assert proc.poll() is None, stderr.read_text()
                await trio.sleep(0.02)
            url, token = (json.loads(ready.read_text())[k] for k in ("url", "token"))
            cli = [sys.executable, "-m", "trioctl", "-c", url, "--token", token, "--json"]
            for args in (["define", "-"], ["start", "j1"], ["destroy", "j1"]):
                done = await trio.run_process(
                    cli + args,
                    stdin=b'{"name": "j1", "emulator": "sim"}',
                    capture_stdout=True,
                    check=True,
                )
                if args[0] == "start":
                    shown = json.loads(done.stdout)
                    assert shown["state"] == "running" and shown["job"] is None
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
    entries = [json.loads(line) for line in stderr.read_text().splitlines()]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        by_event.setdefault(entry.get("event", ""), []).append(entry)
    connected = by_event["client_connected"]
    assert len(connected) == 3 and {e["level"] for e in connected} == {"debug"}
    (started,) = by_event["started"]
    assert (started["domain"], started["procedure"], started["level"]) == (
        "j1",
        "domain.start",
        "info",
    )
    assert started["client"] == connected[1]["client"]
    (destroyed,) = by_event["destroyed"]
    assert (destroyed["domain"], destroyed["client"], destroyed["reason"]) == (
        "j1",
        connected[2]["client"],
        "destroyed",
    )
    assert "monitor_closed" not in by_event


async def test_handshake_bounds_are_refusals(
    autojump_clock: trio.testing.MockClock, sock_dir: Path, lines: Lines
) -> None:
    overrides = {"server.max_anonymous_clients": 1, "server.handshake_timeout": 5}
    async with memory_server(sock_dir, **overrides) as (server, listener):
        silent = await listener.connect()  # holds the one anonymous slot
        await trio.sleep(1)
        second = await listener.connect()
        # The oldest handshake makes room for the newcomer: closed at once.
        assert await silent.receive_some() == b""
        (anonymous,) = lines.of("limit_refused")
        assert fields(anonymous)["limit"] == "max_anonymous_clients"
        assert await second.receive_some() == b""  # closed at its deadline
        limits = [fields(r)["limit"] for r in lines.of("limit_refused")]
        assert limits == ["max_anonymous_clients", "handshake_timeout"]
        assert server.refusals.total == {"max_anonymous_clients": 1, "handshake_timeout": 1}
