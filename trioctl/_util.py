"""Small Trio helpers shared by the shells."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["GC_THRESHOLDS", "open_service_nursery", "tune_gc"]

GC_THRESHOLDS = (100_000, 50, 100)
"""Cyclic-GC thresholds of the daemon and the many-VMs simulator.

Python's default (700, 10, 10) starts a young collection every 700 net
allocations. A process that holds thousands of domains, each with its tasks,
sockets and cancel scopes, allocates in bursts (a reconnect, a stop) and keeps
most of it: the collector then re-scans survivors over and over. Measured on
10,000 simulated domains (docs/benchmarks.md, scale): the default thresholds
cost about two thirds of the daemon's CPU during a reconnect (16 s against
5 s) and of its stop (8.7 s against 2.8-4.1 s). Reference counting still frees
everything that is not in a cycle at once; cycles wait a little longer.
"""


def tune_gc() -> None:
    """Apply :data:`GC_THRESHOLDS` (once, at process start)."""
    gc.set_threshold(*GC_THRESHOLDS)


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for background service tasks that handle their own errors.

    Trio wraps anything that leaves a nursery in an ExceptionGroup, including
    an exception raised by the body of ``async with``. For a context manager
    that hides its nursery from its caller (``open_monitor`` and friends), that
    would leak an implementation detail: when the group holds exactly one
    exception, it is raised bare. The background tasks are expected to catch
    their own errors; a group with several exceptions is a bug and propagates
    as it is.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
