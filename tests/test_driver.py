"""The domain driver against real QEMU and the simulator.

A hung QEMU is a SIGSTOPped QEMU. Every test is bounded by ``fail_after``;
waits for state changes use the driver's events, not sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trioctl import (
    DomainExists,
    InvalidParams,
    JobTimeout,
    MonitorTimeout,
    MonitorUnresponsive,
    NoDomain,
    OperationInvalid,
    QmpCommandError,
    procfs,
)
from trioctl._driver import Driver, DriverConfig, EventSubscription, open_driver
from trioctl._models import DomainDefinition, DomainEvent, DomainState, MonitorState, structure

from .helpers import wait_until

BACKENDS = [pytest.param("qemu", marks=pytest.mark.qemu), "sim"]


def config(sock_dir: Path, **kw: object) -> DriverConfig:
    settings: dict[str, object] = {
        "monitor_timeout": 0.5,
        "probe_interval": 0.1,
        "job_wait_timeout": 2.0,
        "shutdown_timeout": 0.5,
        "reconnect_timeout": 0.5,
    }
    settings.update(kw)
    return DriverConfig(state_dir=sock_dir, **settings)  # type: ignore[arg-type]


@asynccontextmanager
async def driver_at(sock_dir: Path, **kw: object) -> AsyncIterator[Driver]:
    async with open_driver(config(sock_dir, **kw)) as driver:
        yield driver


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for init)."""
    try:
        return procfs.read_stat(pid).ended
    except procfs.ProcessGone:
        return True


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP has taken effect)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def kill_all(driver: Driver) -> None:
    for info in driver.list_domains():
        if info.pid is not None:
            os.kill(info.pid, signal.SIGKILL)


async def wait_event(sub: EventSubscription, match: Callable[[DomainEvent], bool]) -> DomainEvent:
    async for event in sub:
        if match(event):
            return event
    raise AssertionError("event stream ended")


@pytest.fixture(params=BACKENDS)
def emulator(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.slow
async def test_lifecycle(sock_dir: Path, emulator: str) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            try:
                info = await driver.define(DomainDefinition(name="vm1", emulator=emulator))
                assert info.state is DomainState.SHUTOFF
                assert info.monitor is MonitorState.NONE
                with pytest.raises(OperationInvalid, match="not running"):
                    await driver.suspend("vm1")

                info = await driver.start("vm1")
                assert (info.state, info.reason, info.monitor) == (
                    DomainState.RUNNING,
                    "booted",
                    MonitorState.OK,
                )
                assert info.pid is not None
                with pytest.raises(OperationInvalid, match="already running"):
                    await driver.start("vm1")
                with pytest.raises(OperationInvalid, match="running"):
                    await driver.undefine("vm1")

                stats = await driver.get_stats("vm1")
                assert stats.status == "running"
                assert stats.rss_kib > 0

                info = await driver.suspend("vm1")
                assert (info.state, info.reason) == (DomainState.PAUSED, "user")
                with pytest.raises(OperationInvalid, match="already paused"):
                    await driver.suspend("vm1")
                assert (await driver.get_stats("vm1")).status == "paused"
                info = await driver.resume("vm1")
                assert (info.state, info.reason) == (DomainState.RUNNING, "unpaused")
                with pytest.raises(OperationInvalid, match="not paused"):
                    await driver.resume("vm1")
                await driver.reset("vm1")

                assert await driver.monitor_command("vm1", "query-name") == {"name": "vm1"}
                with pytest.raises(QmpCommandError, match="CommandNotFound"):
                    await driver.monitor_command("vm1", "no-such-command")

                pid = info.pid
                info = await driver.destroy("vm1")
                assert (info.state, info.reason, info.pid) == (
                    DomainState.SHUTOFF,
                    "destroyed",
                    None,
                )
                assert pid is not None
                assert gone(pid)
                with pytest.raises(OperationInvalid, match="not running"):
                    await driver.destroy("vm1")
                await driver.undefine("vm1")
                with pytest.raises(NoDomain):
                    driver.get_info("vm1")
                assert not (sock_dir / "domains" / "vm1.json").exists()
            finally:
                kill_all(driver)


@pytest.mark.slow
async def test_start_paused_then_resume(sock_dir: Path, emulator: str) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            try:
                await driver.define(DomainDefinition(name="p", emulator=emulator))
                info = await driver.start("p", paused=True)
                assert info.state is DomainState.PAUSED
                assert (await driver.get_stats("p")).running is False
                info = await driver.resume("p")
                assert info.state is DomainState.RUNNING
            finally:
                kill_all(driver)


@pytest.mark.slow
async def test_shutdown_of_a_guest_that_ignores_the_power_button(sock_dir: Path) -> None:
    """The simulator's guest ignores ``system_powerdown`` (``-sim-powerdown
    ignore``): shutdown gives up after ``shutdown_timeout`` with a clear error,
    the domain runs on, and destroy still stops it. (Real QEMU with ``-machine
    none`` has no guest at all: test_shutdown_deadline_with_real_qemu.)"""
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            try:
                await driver.define(
                    DomainDefinition(
                        name="vm1", emulator="sim", extra_args=("-sim-powerdown", "ignore")
                    )
                )
                await driver.start("vm1")
                with pytest.raises(OperationInvalid, match=r"did not power off within 0\.5 s"):
                    await driver.shutdown("vm1")
                info = driver.get_info("vm1")
                assert (info.state, info.monitor) == (DomainState.RUNNING, MonitorState.OK)
                assert (await driver.get_stats("vm1")).status == "running"
                info = await driver.destroy("vm1")
                assert (info.state, info.reason) == (DomainState.SHUTOFF, "destroyed")
            finally:
                kill_all(driver)


@pytest.mark.slow
@pytest.mark.qemu
async def test_shutdown_deadline_with_real_qemu(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            try:
                await driver.define(DomainDefinition(name="vm1", emulator="qemu"))
                await driver.start("vm1")
                with pytest.raises(OperationInvalid, match="did not power off"):
                    await driver.shutdown("vm1")
                assert driver.get_info("vm1").state is DomainState.RUNNING
            finally:
                kill_all(driver)


@pytest.mark.slow
async def test_hung_monitor_timeout_probe_and_fast_destroy(sock_dir: Path, emulator: str) -> None:
    # A long destroy grace: a stopped process gets SIGKILL at once, not after it.
    with trio.fail_after(30):
        async with driver_at(sock_dir, destroy_grace=30) as driver:
            try:
                await driver.define(DomainDefinition(name="hung", emulator=emulator))
                await driver.define(DomainDefinition(name="ok", emulator=emulator))
                await driver.start("hung")
                await driver.start("ok")
                pid = driver.get_info("hung").pid
                assert pid is not None
                with driver.subscribe() as sub:
                    os.kill(pid, signal.SIGSTOP)
                    with pytest.raises(MonitorTimeout, match="unresponsive"):
                        await driver.get_stats("hung")
                    await wait_event(sub, lambda e: e.detail == "unresponsive")
                    assert driver.get_info("hung").monitor is MonitorState.UNRESPONSIVE
                    # Fails fast: waiting for the monitor would end in MonitorTimeout.
                    with pytest.raises(MonitorUnresponsive):
                        await driver.get_stats("hung")
                    assert (await driver.get_stats("ok")).status == "running"

                    os.kill(pid, signal.SIGCONT)
                    await wait_event(sub, lambda e: e.detail == "responsive")
                assert (await driver.get_stats("hung")).status == "running"

                # Hang it again, with a call stuck on it, and destroy it.
                os.kill(pid, signal.SIGSTOP)
                outcome: list[BaseException] = []

                async def stuck_call() -> None:
                    try:
                        await driver.monitor_command("hung", "query-status")
                    except Exception as exc:
                        outcome.append(exc)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stuck_call)
                    await wait_until(lambda: driver.jobs.job_info("hung") is not None)
                    start = trio.current_time()
                    info = await driver.destroy("hung")
                    took = trio.current_time() - start
                assert took < 10  # far below the 30 s grace
                assert (info.state, info.reason) == (DomainState.SHUTOFF, "destroyed")
                assert outcome and type(outcome[0]).__name__ in (
                    "DomainDestroyed",
                    "MonitorTimeout",
                )
                assert driver.get_info("ok").state is DomainState.RUNNING
            finally:
                kill_all(driver)


@pytest.mark.slow
async def test_restart_reconnects_in_parallel(sock_dir: Path, emulator: str) -> None:
    names = ["a", "b", "hung", "dead"]
    with trio.fail_after(40):
        async with driver_at(sock_dir) as driver:
            for name in names:
                await driver.define(DomainDefinition(name=name, emulator=emulator))
                await driver.start(name)
            pids = {name: driver.get_info(name).pid for name in names}
        # The driver is gone; the VMs are not.
        try:
            for pid in pids.values():
                assert pid is not None
                os.kill(pid, 0)
            os.kill(pids["hung"], signal.SIGSTOP)  # type: ignore[arg-type]
            os.kill(pids["dead"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_until(lambda: gone(pids["dead"]) and stopped(pids["hung"]))  # type: ignore[arg-type]

            start = trio.current_time()
            async with driver_at(
                sock_dir, job_wait_timeout=0.2, reconnect_timeout=3, destroy_grace=30
            ) as driver:
                listed = {i.name: i for i in driver.list_domains()}
                # Served at once, not after the hung domain's 3 s reconnect deadline.
                assert trio.current_time() - start < 3
                assert listed["dead"].state is DomainState.CRASHED
                assert listed["hung"].pid == pids["hung"]
                with driver.subscribe() as sub:
                    for name in ("a", "b"):
                        assert (await driver.get_stats(name)).status == "running"
                    # The hung one holds its reconnect job: calls wait, then time out.
                    if driver.get_info("hung").monitor is MonitorState.CONNECTING:
                        with pytest.raises(JobTimeout, match="reconnect"):
                            await driver.get_stats("hung")
                        await wait_event(
                            sub, lambda e: e.domain == "hung" and e.detail == "unresponsive"
                        )
                assert driver.get_info("hung").monitor is MonitorState.UNRESPONSIVE
                start = trio.current_time()
                info = await driver.destroy("hung")
                assert trio.current_time() - start < 10  # far below the 30 s grace
                assert info.state is DomainState.SHUTOFF
                kill_all(driver)
        finally:
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
                except ProcessLookupError:
                    pass


@pytest.mark.slow
async def test_restart_holds_every_reconnect_job_before_serving(sock_dir: Path) -> None:
    """The jobs are taken as the records load: when open_driver returns, and
    before any supervisor has run, a call on any reconnecting domain queues
    behind its reconnect; then every monitor comes back."""
    names = [f"d{i}" for i in range(5)]
    with trio.fail_after(40):
        async with driver_at(sock_dir) as driver:
            for name in names:
                await driver.define(DomainDefinition(name=name))
                await driver.start(name)
            pids = [driver.get_info(name).pid for name in names]
        try:
            async with driver_at(sock_dir) as driver:
                for name in names:
                    job = driver.get_info(name).job
                    assert job is not None
                    assert (job.procedure, job.client) == ("reconnect", "daemon")
                await wait_until(
                    lambda: all(driver.get_info(n).monitor is MonitorState.OK for n in names)
                )
                assert driver.list_jobs() == []
                kill_all(driver)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]


@pytest.mark.slow
async def test_restart_after_sigcont_reconnects_hung_domain(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="h"))
            await driver.start("h")
            pid = driver.get_info("h").pid
        assert pid is not None
        try:
            os.kill(pid, signal.SIGSTOP)
            async with driver_at(sock_dir) as driver:
                with driver.subscribe() as sub:
                    await wait_event(sub, lambda e: e.detail == "unresponsive")
                    os.kill(pid, signal.SIGCONT)
                    await wait_event(sub, lambda e: e.detail == "responsive")
                assert (await driver.get_stats("h")).status == "running"
        finally:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_crash_is_seen_at_once(sock_dir: Path, emulator: str) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="c", emulator=emulator))
            await driver.start("c")
            pid = driver.get_info("c").pid
            assert pid is not None
            with driver.subscribe() as sub:
                os.kill(pid, signal.SIGKILL)
                event = await wait_event(sub, lambda e: e.kind == "lifecycle")
            assert event.detail == "crashed"
            info = driver.get_info("c")
            assert (info.state, info.monitor, info.pid) == (
                DomainState.CRASHED,
                MonitorState.NONE,
                None,
            )
            assert not (sock_dir / "run" / "c.json").exists()
            # A crashed domain can start again.
            await driver.start("c")
            kill_all(driver)


async def test_define_validation_and_uuid_conflict(sock_dir: Path) -> None:
    with trio.fail_after(10):
        async with driver_at(sock_dir) as driver:
            first = await driver.define(structure({"name": "x"}, DomainDefinition))
            with pytest.raises(DomainExists):
                await driver.define(DomainDefinition(name="y", uuid=first.uuid))
            # Redefining the same name keeps one domain.
            await driver.define(DomainDefinition(name="x", uuid=first.uuid, memory_mib=256))
            assert [i.memory_mib for i in driver.list_domains()] == [256]
    with pytest.raises(InvalidParams, match="name"):
        structure({"name": "bad name!"}, DomainDefinition)


async def test_corrupt_files_are_set_aside(sock_dir: Path) -> None:
    domains = sock_dir / "domains"
    domains.mkdir()
    (domains / "good.json").write_text('{"name": "good"}')
    (domains / "torn.json").write_text('{"name": "to')
    (domains / "wrong.json").write_text('{"name": "other"}')
    (domains / "bad.json").write_text('{"name": "bad", "vcpus": "many"}')
    with trio.fail_after(10):
        async with driver_at(sock_dir) as driver:
            assert [i.name for i in driver.list_domains()] == ["good"]
            problems = {Path(p.path).name: p for p in driver.load_problems}
    assert set(problems) == {"torn.json", "wrong.json", "bad.json"}
    assert "vcpus" in problems["bad.json"].reason
    for name in ("torn", "wrong", "bad"):
        assert (domains / f"{name}.json.corrupt").exists()  # never deleted
    assert (domains / "good.json").exists()


@pytest.mark.slow
async def test_destroy_removes_runtime_files(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with driver_at(sock_dir) as driver:
            await driver.define(DomainDefinition(name="f", emulator="sim"))
            await driver.start("f")
            run_dir = sock_dir / "run"
            assert {p.name for p in run_dir.iterdir()} == {"f.json", "f"}
            assert {p.name for p in (run_dir / "f").iterdir()} == {
                "qmp.sock",
                "ctl.sock",
                "stderr.log",
            }
            pid = driver.get_info("f").pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            await driver.destroy("f")
            assert {p.name for p in run_dir.iterdir()} == {"f"}
            # The log stays for diagnosis until the next start.
            assert {p.name for p in (run_dir / "f").iterdir()} == {"stderr.log"}
