"""Random sequences of lifecycle operations against the simulator.

After every step the driver's state must agree with a simple model and with
the processes themselves: a running or paused domain has a live process, a
shut-off or crashed one has none. Operations the model says are invalid must
fail with OPERATION_INVALID and change nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings, strategies as st

from trioctl import OperationInvalid, procfs
from trioctl._driver import Driver, DriverConfig, open_driver
from trioctl._models import DomainDefinition, DomainState

pytestmark = pytest.mark.slow

NAMES = ("a", "b")
OPS = ("start", "start_paused", "suspend", "resume", "reset", "destroy", "shutdown", "kill")

steps = st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(NAMES)), max_size=8)


def alive(pid: int) -> bool:
    try:
        return not procfs.read_stat(pid).ended
    except procfs.ProcessGone:
        return False


def check(driver: Driver, model: dict[str, DomainState]) -> None:
    for name, expected in model.items():
        info = driver.get_info(name)
        assert info.state is expected, (name, info)
        if expected in (DomainState.RUNNING, DomainState.PAUSED):
            assert info.pid is not None
            assert alive(info.pid)
        else:
            assert info.pid is None


async def apply(driver: Driver, model: dict[str, DomainState], op: str, name: str) -> None:
    state = model[name]
    up = state in (DomainState.RUNNING, DomainState.PAUSED)
    valid = {
        "start": not up,
        "start_paused": not up,
        "suspend": state is DomainState.RUNNING,
        "resume": state is DomainState.PAUSED,
        "reset": up,
        "destroy": up,
        "shutdown": state is DomainState.RUNNING,
        "kill": up,
    }[op]
    if op == "kill":
        if valid:
            pid = driver.get_info(name).pid
            assert pid is not None
            with driver.subscribe(frozenset([name])) as sub:
                os.kill(pid, signal.SIGKILL)
                async for event in sub:
                    if event.kind == "lifecycle":
                        break
            model[name] = DomainState.CRASHED
        return

    async def call() -> object:
        if op in ("start", "start_paused"):
            return await driver.start(name, paused=op == "start_paused")
        method = {
            "suspend": driver.suspend,
            "resume": driver.resume,
            "reset": driver.reset,
            "destroy": driver.destroy,
            "shutdown": driver.shutdown,
        }[op]
        return await method(name)

    if not valid:
        try:
            await call()
        except OperationInvalid:
            return
        raise AssertionError(f"{op} {name} in state {state} should be refused")
    await call()
    model[name] = {
        "start": DomainState.RUNNING,
        "start_paused": DomainState.PAUSED,
        "suspend": DomainState.PAUSED,
        "resume": DomainState.RUNNING,
        "reset": state,
        "destroy": DomainState.SHUTOFF,
        "shutdown": DomainState.SHUTOFF,
    }[op]


@settings(max_examples=15)
@given(steps=steps)
async def test_lifecycle_sequences_keep_state_consistent(steps: list[tuple[str, str]]) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="tc-"))
    try:
        with trio.fail_after(60):
            async with open_driver(
                DriverConfig(state_dir=state_dir, monitor_timeout=2.0, shutdown_timeout=5.0)
            ) as driver:
                try:
                    model = {}
                    for name in NAMES:
                        await driver.define(DomainDefinition(name=name, emulator="sim"))
                        model[name] = DomainState.SHUTOFF
                    for op, name in steps:
                        await apply(driver, model, op, name)
                        check(driver, model)
                finally:
                    for info in driver.list_domains():
                        if info.pid is not None:
                            os.kill(info.pid, signal.SIGKILL)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
