"""The pools and the job queues are built on Trio's public API only (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio
import trio.testing

import trioctl
from trioctl._jobs import DomainJobs, JobKind

MODULES = ["_pools.py", "_jobs.py"]


@pytest.mark.parametrize("name", MODULES)
def test_no_trio_lowlevel_no_manual_scope_entry_no_foreign_privates(name: str) -> None:
    tree = ast.parse((Path(trioctl.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr != "lowlevel", f"{name}:{node.lineno}: trio.lowlevel"
            assert node.attr not in {"__enter__", "__exit__"}, f"{name}:{node.lineno}"
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                # Private attributes only of ``self``, and open_worker_pools
                # closing the pools it created (``pools._close()``).
                base = node.value
                assert isinstance(base, ast.Name) and base.id in {"self", "pools"}, (
                    f"{name}:{node.lineno}: reaches into {ast.unparse(node)}"
                )
        if isinstance(node, ast.ImportFrom):
            assert node.module != "trio.lowlevel"


async def test_waiter_cancelled_just_before_the_handoff_passes_the_job_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The holder cancels a waiter and releases in one step: the cancellation
    is delivered before the job is handed over, so the job goes to the next
    waiter and the cancelled one counts as abandoned, never as acquired."""
    jobs = DomainJobs()
    w_scope = trio.CancelScope()
    release = trio.Event()
    got: list[str] = []

    async def holder(*, task_status: trio.TaskStatus[None]) -> None:
        async with jobs.job("vm1", JobKind.MODIFY, procedure="p", client="h"):
            task_status.started()
            await release.wait()
            w_scope.cancel()

    async def waiter() -> None:
        with w_scope:
            async with jobs.job("vm1", JobKind.MODIFY, procedure="p", client="w"):
                got.append("w")

    async def third() -> None:
        async with jobs.job("vm1", JobKind.MODIFY, procedure="p", client="x"):
            got.append("x")

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert got == ["x"]
    assert w_scope.cancelled_caught
    s = jobs.statistics()
    assert (s.acquired, s.abandoned, s.queued, s.held) == (2, 1, 0, 0)
