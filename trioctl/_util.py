"""Small Trio helpers shared by the shells."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_service_nursery"]


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
