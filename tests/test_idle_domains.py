"""An idle domain has no task: its monitor is read by the hub, and its
monitor's close, a call that times out and its process's exit call the run
back (docs/design.md, the domain driver)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from trioctl import DomainDestroyed
from trioctl._driver import Driver
from trioctl._models import DomainDefinition, DomainState, MonitorState

from .helpers import wait_until
from .test_driver import driver_at, kill_all


def _tasks_of(driver: Driver) -> list[str]:
    """Names of the tasks in the driver's nursery, and below."""
    names, stack = [], list(driver._nursery.child_tasks)
    while stack:
        task = stack.pop()
        names.append(task.name)
        stack.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return names


@pytest.mark.slow
async def test_idle_domains_have_no_task_and_reconnect_after_eof(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            try:
                for name in ("a", "b"):
                    await driver.define(DomainDefinition(name=name, emulator="sim"))
                    await driver.start(name)
                run = driver._domains["a"].run
                assert run is not None
                await wait_until(lambda: run.nursery is None)
                # One exit watcher per process; no supervisor, reader or writer.
                assert not [t for t in _tasks_of(driver) if "exit watcher" not in t]
                first = run.monitor
                assert first is not None and not first.closed
                assert (await driver.get_stats("a")).status == "running"

                # The simulator drops the connection: the close calls the run
                # back, a supervision task reconnects, and ends again.
                await first.execute("x-trioctl-sim-fault", {"mode": "drop"})  # after its reply
                await wait_until(lambda: first.closed)
                await wait_until(lambda: run.monitor is not None and run.monitor is not first)
                await wait_until(lambda: run.nursery is None)
                assert driver.get_info("a").monitor is MonitorState.OK
                assert (await driver.get_stats("a")).status == "running"
                assert not [t for t in _tasks_of(driver) if "exit watcher" not in t]

                # A call that times out on an idle domain starts the probe,
                # which ends once the monitor answers again.
                run.mark_unresponsive("the test says so")
                assert run.probing  # in a supervision task started for it
                assert driver.get_info("a").monitor is MonitorState.UNRESPONSIVE
                await wait_until(lambda: driver.get_info("a").monitor is MonitorState.OK)
                await wait_until(lambda: run.nursery is None and not run.probing)

                # Work that comes before its supervision task runs joins it.
                run.mark_unresponsive("the test says so again")
                current = run.monitor
                assert current is not None
                current.close()  # its close callback asks for a reconnect
                assert run.pending_work is not None and len(run.pending_work) == 2
                await wait_until(lambda: run.monitor is not None and run.monitor is not current)
                await wait_until(lambda: driver.get_info("a").monitor is MonitorState.OK)
                await wait_until(lambda: run.nursery is None and not run.probing)
                assert run.pending_work is None

                # The process exits while idle: the exit callback closes the monitor.
                monitor = run.monitor
                assert monitor is not None
                pid = driver.get_info("a").pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                await wait_until(lambda: driver.get_info("a").state is DomainState.CRASHED)
                assert monitor.closed and run.monitor is None
                assert driver.get_info("b").monitor is MonitorState.OK
                idle_b = driver._domains["b"].run
                assert idle_b is not None
                b_monitor = idle_b.monitor
            except BaseException:
                kill_all(driver)
                raise
        # The driver's stop closes the idle domains' monitors; the VMs run on.
        try:
            assert b_monitor is not None and b_monitor.closed
            assert idle_b.detached
        finally:
            pid_b = idle_b.proc.pid
            os.kill(pid_b, signal.SIGKILL)


async def test_a_call_after_the_monitor_closed_for_a_destroy_gets_domain_destroyed(
    sock_dir: Path,
) -> None:
    """Destroy marks the run, then SIGTERMs the emulator, which closes its
    monitor before it exits: a call that takes the job in between used to
    get MONITOR_UNRESPONSIVE (reconnecting), not DOMAIN_DESTROYED."""
    with trio.fail_after(30):
        async with driver_at(sock_dir) as driver:
            try:
                await driver.define(DomainDefinition(name="a", emulator="sim"))
                await driver.start("a")
                run = driver._domains["a"].run
                assert run is not None and run.monitor is not None
                run.destroying = True  # destroy's first step
                run.monitor.close()  # as the emulator closes it on SIGTERM
                assert run.monitor is None
                with pytest.raises(DomainDestroyed):
                    await driver.monitor_command("a", "query-status")
                with pytest.raises(DomainDestroyed):
                    await driver.get_stats("a")
            finally:
                kill_all(driver)
