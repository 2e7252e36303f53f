"""Small Trio helpers shared by the shells."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar, cast

import trio

__all__ = [
    "GC_THRESHOLDS",
    "Reply",
    "ReplyWaiters",
    "exception_leaves",
    "open_service_nursery",
    "raise_unwrapped",
    "tune_gc",
    "wait_all_tasks_blocked",
]

R = TypeVar("R")

# ``trio.testing.wait_all_tasks_blocked``, the same function, taken from where
# trio defines it: importing ``trio.testing`` imports pytest whenever it is
# installed (for ``RaisesGroup``), 35 ms of CPU and 7 MiB at every daemon start
# (docs/benchmarks.md, restart). tests/test_startup_imports.py checks that it
# is still trio's.
if TYPE_CHECKING:
    from trio.testing import wait_all_tasks_blocked as wait_all_tasks_blocked
else:
    try:
        from trio._core import wait_all_tasks_blocked
    except ImportError:  # a trio that moved it: the public name, at its cost
        from trio.testing import wait_all_tasks_blocked

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
        raise_unwrapped(group)


def raise_unwrapped(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the lone exception of ``group`` bare, or else ``group`` itself.

    Call it in ``except BaseExceptionGroup as group:`` around a nursery whose
    tasks handle their own errors, so that what the body of ``async with``
    raised comes out as it was raised (whatever it is, a group too). The
    exception keeps its own ``__cause__`` and ``__context__``: the group it
    came in is not its context.

    No reference cycle is left behind, so the exception and every frame of
    its traceback are freed as soon as the last reference goes, not by the
    cyclic collector (with 10,000 domains at stop that took seconds): raising
    the lone exception while its group is handled would make the group, which
    holds it, its context, and this frame, in its traceback, holds both.
    """
    try:
        if len(group.exceptions) == 1:
            exc = group.exceptions[0]
            context = exc.__context__
            try:
                raise exc from exc.__cause__
            finally:
                exc.__context__ = context
                del exc, context
        raise group from None
    finally:
        del group


def exception_leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` and its nested groups, depth first
    (``[exc]`` if it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in exception_leaves(sub)]
    return [exc]


class Reply(Generic[R]):
    """One awaited reply: see :meth:`ReplyWaiters.expect`. One task waits.

    Not a ``trio.Event``: a reply is set once and has one waiter, so it
    parks and wakes that task itself (no parking lot per request).
    """

    __slots__ = ("_done", "_error", "_task", "_value")

    def __init__(self) -> None:
        self._done = False
        self._task: trio.lowlevel.Task | None = None
        self._value: R | None = None
        self._error: Callable[[], BaseException] | None = None

    async def wait(self) -> R:
        """Wait for the reply and return it (a checkpoint, as ``Event.wait``).

        Raises:
            BaseException: a fresh ``error()`` of :meth:`ReplyWaiters.fail`.
        """
        if self._done:
            await trio.lowlevel.checkpoint()
        else:
            if self._task is not None:
                raise trio.BusyResourceError("another task waits for this reply")
            self._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._error is not None:
            raise self._error()
        return cast(R, self._value)

    @property
    def done(self) -> bool:
        """The reply (or the failure) is here."""
        return self._done

    def result(self) -> R:
        """The reply, which is here (:attr:`done`), without a checkpoint.

        Raises:
            BaseException: a fresh ``error()`` of :meth:`ReplyWaiters.fail`.
        """
        assert self._done
        if self._error is not None:
            raise self._error()
        return cast(R, self._value)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _set(self) -> None:
        self._done = True
        if self._task is not None:
            trio.lowlevel.reschedule(self._task)
            self._task = None


class _Expect(Generic[R]):
    """The context manager of :meth:`ReplyWaiters.expect` (a class: a
    generator-based one costs about 2 us more per request)."""

    __slots__ = ("_id", "_reply", "_waiting")

    def __init__(self, waiting: dict[int, Reply[R]], request_id: int) -> None:
        self._waiting = waiting
        self._id = request_id
        self._reply: Reply[R] = Reply()

    def __enter__(self) -> Reply[R]:
        self._waiting[self._id] = self._reply
        return self._reply

    def __exit__(self, *exc_info: object) -> None:
        self._waiting.pop(self._id, None)


class ReplyWaiters(Generic[R]):
    """Callers waiting for replies by request id, on one connection.

    A caller registers its id *before* it sends (the reply may come while it
    sends), then waits::

        with waiters.expect(request_id) as reply:
            await send(request)
            value = await reply.wait()

    The connection's reader hands each reply to its caller with
    :meth:`deliver`, and fails every caller at once with :meth:`fail` when the
    connection is lost. A caller that leaves the block (cancelled) is
    forgotten: its reply, if it comes, finds nobody.
    """

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[int, Reply[R]] = {}

    def __len__(self) -> int:
        """How many callers wait now."""
        return len(self._waiting)

    def expect(self, request_id: int) -> AbstractContextManager[Reply[R]]:
        """Wait for the reply to ``request_id`` while the block lasts."""
        return _Expect(self._waiting, request_id)

    def deliver(self, request_id: object, value: R) -> bool:
        """Hand ``value`` to the caller waiting for ``request_id``; False if
        nobody waits for it (not an int id, already answered, or gone)."""
        reply = self._waiting.pop(request_id, None) if isinstance(request_id, int) else None
        if reply is None:
            return False
        reply._value = value
        reply._set()
        return True

    def fail(self, error: Callable[[], BaseException]) -> None:
        """End every wait now: each raises its own ``error()``."""
        for reply in self._waiting.values():
            reply._error = error
            reply._set()
        self._waiting.clear()
