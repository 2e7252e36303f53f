"""Priority worker pools: libvirt's ``virThreadPool`` limits on Trio tasks.

A waiting task costs nothing in Trio, so there are no long-lived workers: a
**worker** is a token, and a job runs while it holds one: a ``run()`` job
that gets a token at once runs in its caller's task (the caller waits for it
anyway; a task of its own would cost a spawn and two scheduler passes per
call), every other job in a task of its own (``trioctl-worker`` or
``trioctl-prio-worker``). Either way it counts against the same limits, and
closing the pools cancels it. ``max_workers`` general tokens
run any job; ``prio_workers`` priority tokens run only HIGH jobs, so those are
served when every general worker is stuck. A HIGH job takes a free priority
token, else a free general one; a LOW job a free general one. Otherwise it
waits in its priority's FIFO queue of at most ``max_pending`` jobs; beyond
that, :class:`~trioctl.ServerBusy` at once. A token freed goes to the oldest
HIGH job, else (a general token) to the oldest LOW job. Tokens are counters
and each queued job has a :class:`trio.Event` its ``run()`` caller waits on;
every decision is synchronous, so ``statistics()`` is exact at every moment.
``docs/dispatch.md`` explains why not a ``CapacityLimiter`` or a channel.

``max_workers == 0`` is libvirt's "no pool" mode: ``run()`` runs the job in
the caller's task, ``submit_nowait()`` in a task of its own (at most
``max_pending`` at once); ``max_workers`` cannot switch to or from zero later.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar, TypeVarTuple

import attrs
import trio

from . import _settings as checks
from ._errors import InvalidParams, ServerBusy
from ._models import Priority
from ._settings import setting
from ._util import raise_unwrapped

__all__ = [
    "PoolLimits",
    "PoolStatistics",
    "Priority",
    "WorkerPools",
    "check_limits",
    "open_worker_pools",
    "serve_worker_pools",
]

logger = logging.getLogger("trioctl.pools")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@attrs.frozen
class PoolLimits:
    """The pools' size limits, libvirt's names and defaults: the ``[pools]``
    table of the daemon's config (each key's check and help on its field;
    :func:`check_limits` has the runtime rules, where ``max_workers`` 0 means
    no pool)."""

    min_workers: int = attrs.field(
        default=5,
        metadata=setting(
            checks.integer(0),
            "General workers kept alive (at most max_workers). libvirtd: min_workers.",
        ),
    )
    max_workers: int = attrs.field(
        default=20,
        metadata=setting(
            checks.integer(1),
            "General workers at most; they are added on demand. libvirtd: max_workers.",
        ),
    )
    prio_workers: int = attrs.field(
        default=5,
        metadata=setting(
            checks.integer(0),
            "Priority workers, which run only high-priority calls (destroy, queries); 0 "
            "disables them. libvirtd: prio_workers.",
        ),
    )
    max_pending: int = attrs.field(
        default=1000,
        metadata=setting(
            checks.integer(1),
            "Calls that may wait for a worker, per priority; beyond it SERVER_BUSY. "
            "libvirt's queue is unbounded; 1000 is its max_queued_clients.",
        ),
    )


def check_limits(limits: PoolLimits, current: PoolLimits | None = None) -> None:
    """Validate ``limits`` with libvirt's rules, as a change from ``current``.

    Raises:
        InvalidParams: not a non-negative integer, ``max_pending < 1``,
            ``min_workers > max_workers``, or ``max_workers`` switching between
            zero and non-zero; ``data`` names the ``field``.
    """
    for field in attrs.fields(PoolLimits):
        value = getattr(limits, field.name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(f"{field.name} must be an integer, not {value!r}", field=field.name)
        if value < 0:
            raise InvalidParams(f"{field.name} must not be negative ({value})", field=field.name)
    if limits.max_pending < 1:
        raise InvalidParams("max_pending must be at least 1", field="max_pending")
    if limits.min_workers > limits.max_workers:
        raise InvalidParams(
            f"min_workers ({limits.min_workers}) cannot be larger than "
            f"max_workers ({limits.max_workers})",
            field="min_workers",
        )
    if current is not None and (limits.max_workers == 0) != (current.max_workers == 0):
        raise InvalidParams(
            "max_workers must not be switched from zero to non-zero and vice versa",
            field="max_workers",
        )


@attrs.frozen
class PoolStatistics:
    """A snapshot of the pools, exact at the moment it was taken.

    Attributes:
        limits: the limits in force.
        workers: general workers (libvirt's threads: ``min_workers``, grown on
            demand, kept when idle; busy ones beyond a shrink until they end).
        free_workers: general workers without a job.
        prio_workers: priority workers; ``free_prio_workers`` without a job.
        running: jobs holding a token (no-pool mode: jobs running).
        pending_high: HIGH jobs waiting; ``pending_low`` LOW ones.
        completed: jobs that ran and ended, however; ``failed`` raised.
        cancelled: jobs that never ran (caller cancelled, or pools closed).
        rejected: submissions refused with :class:`~trioctl.ServerBusy`.
    """

    limits: PoolLimits
    workers: int
    free_workers: int
    prio_workers: int
    free_prio_workers: int
    running: int
    pending_high: int
    pending_low: int
    completed: int
    failed: int
    cancelled: int
    rejected: int


ON_PRIO_TOKEN: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "trioctl_on_prio_token", default=False
)
"""True while a ``run()`` job holding a priority token runs in its caller's
task (a job in a task of its own shows it by the task's name); for tests."""


class _Job:
    """One job; ``done`` is set when it has ended or left the queue for good."""

    __slots__ = ("args", "caller", "cancel", "done", "error", "fn", "ok", "priority", "scope")

    def __init__(self, priority: Priority, fn: Callable[..., Awaitable[Any]], args: Any) -> None:
        self.priority, self.fn, self.args = priority, fn, args
        self.caller = False  # a run() caller waits for the outcome
        self.done = trio.Event()
        self.scope = trio.CancelScope()
        self.cancel = False  # the caller was cancelled after the hand-off
        self.ok: tuple[Any] | None = None  # (value,) once the job returned
        self.error: BaseException | None = None


class WorkerPools:
    """Worker tokens and two bounded queues; see the module docs. Create it
    with :func:`open_worker_pools` (or :func:`serve_worker_pools`): jobs are
    tasks of the nursery that owns the pools."""

    def __init__(self, nursery: trio.Nursery, limits: PoolLimits) -> None:
        check_limits(limits)
        self._nursery, self._limits = nursery, limits
        self._closed = False
        self._inline = limits.max_workers == 0
        self._busy = self._busy_prio = self._inline_running = 0  # tokens held, jobs inline
        self._kept = 0 if self._inline else limits.min_workers  # workers counted, idle too
        self._pending = {p: collections.deque[_Job]() for p in Priority}
        self._here: set[trio.CancelScope] = set()  # run() jobs running in their caller's task
        self._here_ended: trio.Event | None = None  # set when the last of them ends, once closed
        self._completed = self._failed = self._cancelled = self._rejected = 0

    @property
    def limits(self) -> PoolLimits:
        """The limits in force."""
        return self._limits

    def submit_nowait(
        self, priority: Priority, fn: Callable[[*Ts], Awaitable[object]], *args: *Ts
    ) -> None:
        """Queue ``fn(*args)`` without waiting. Its result is dropped; an
        exception is logged (logger ``trioctl.pools``) and counted as failed.

        Raises:
            ServerBusy: ``max_pending`` jobs of this priority wait; nothing queued.
            trio.ClosedResourceError: the pools have closed.
        """
        job = _Job(priority, fn, args)
        if not self._inline:
            return self._submit(job)
        self._check_open()
        if self._inline_running >= self._limits.max_pending:
            self._refuse(priority, self._inline_running, "jobs already run without workers")
        self._inline_running += 1
        self._nursery.start_soon(self._run_detached, job, name="trioctl-inline-job")

    async def run(self, priority: Priority, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``fn(*args)`` on a worker and return its result or raise its error.

        A caller cancelled while the job waits removes it (it never runs);
        cancelled while it runs, the job is cancelled and ``run()`` returns
        once it has ended, so what the caller holds outlives the job.

        Raises:
            ServerBusy: ``max_pending`` jobs of this priority wait; nothing ran.
            trio.ClosedResourceError: the pools closed before or while it ran.
        """
        if self._inline:
            return await self._run_inline(fn, *args)
        if trio.current_effective_deadline() == -math.inf:
            await trio.sleep(0)  # noqa: ASYNC115 (public API): cancelled, raise here
        self._check_open()
        prio = self._take(priority)
        if prio is not None:
            return await self._run_here(prio, fn, *args)
        job = _Job(priority, fn, args)
        job.caller = True
        self._submit(job)
        try:
            await job.done.wait()
        except trio.Cancelled:
            if job in self._pending[priority]:
                self._pending[priority].remove(job)
                self._cancelled += 1
                raise
            job.cancel = True  # holds a token: cancel the job, wait for its end
            job.scope.cancel()
            with trio.CancelScope(shield=True):
                await job.done.wait()
            if job.error is None and job.ok is None:
                raise
        if job.error is not None:
            raise job.error
        assert job.ok is not None
        result: T = job.ok[0]
        return result

    def statistics(self) -> PoolStatistics:
        """Return a frozen snapshot of the limits, workers, queues and counters."""
        workers, live = max(self._kept, self._busy), not (self._closed or self._inline)
        prio = max(self._limits.prio_workers, self._busy_prio) if live else self._busy_prio
        return PoolStatistics(
            limits=self._limits,
            workers=workers,
            free_workers=workers - self._busy,
            prio_workers=prio,
            free_prio_workers=prio - self._busy_prio,
            running=self._busy + self._busy_prio + self._inline_running,
            pending_high=len(self._pending[Priority.HIGH]),
            pending_low=len(self._pending[Priority.LOW]),
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            rejected=self._rejected,
        )

    def set_limits(
        self,
        *,
        min_workers: int | None = None,
        max_workers: int | None = None,
        prio_workers: int | None = None,
        max_pending: int | None = None,
    ) -> PoolLimits:
        """Change some limits (``None`` keeps one); return the limits in force.

        New tokens go to waiting jobs at once; tokens taken away retire free
        workers at once and busy ones when their job ends (a running job is
        never cancelled). A queue above a lowered ``max_pending`` is kept.

        Raises:
            InvalidParams: see :func:`check_limits`; nothing changed.
            trio.ClosedResourceError: the pools have closed.
        """
        self._check_open()
        changes = dict(
            min_workers=min_workers,
            max_workers=max_workers,
            prio_workers=prio_workers,
            max_pending=max_pending,
        )
        new = attrs.evolve(self._limits, **{k: v for k, v in changes.items() if v is not None})
        check_limits(new, self._limits)
        self._limits = new
        if not self._inline:
            self._kept = max(new.min_workers, min(self._kept, new.max_workers))
            self._dispatch()
        return new

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the worker pools are closed")

    def _refuse(self, priority: Priority, pending: int, what: str) -> NoReturn:
        self._rejected += 1
        limit = self._limits.max_pending
        raise ServerBusy(
            f"worker pool busy: {pending} {what} (max_pending={limit})",
            priority=priority.value,
            pending=pending,
            max_pending=limit,
        )

    def _submit(self, job: _Job) -> None:
        self._check_open()
        queue = self._pending[job.priority]
        if self._start(job):
            return
        if len(queue) >= self._limits.max_pending:
            what = f"{job.priority.value}-priority jobs already wait for a worker"
            self._refuse(job.priority, len(queue), what)
        queue.append(job)

    def _take(self, priority: Priority) -> bool | None:
        """Take a free token for a job of ``priority``: True for a priority
        token, False for a general one, None if none is free."""
        if priority is Priority.HIGH and self._busy_prio < self._limits.prio_workers:
            self._busy_prio += 1
            return True
        if self._busy < self._limits.max_workers:
            self._busy += 1
            self._kept = max(self._kept, self._busy)
            return False
        return None

    def _release(self, prio: bool) -> None:
        if prio:
            self._busy_prio -= 1
        else:
            self._busy -= 1

    async def _run_here(self, prio: bool, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run a ``run()`` job holding token ``prio`` in the caller's task."""
        scope = trio.CancelScope()
        self._here.add(scope)
        token = ON_PRIO_TOKEN.set(prio)
        try:
            with scope:
                try:
                    result = await fn(*args)
                except Exception:
                    self._failed += 1
                    raise
            if scope.cancelled_caught:  # only _close() cancels this scope
                raise trio.ClosedResourceError("the worker pools closed while the job ran")
            return result
        finally:
            ON_PRIO_TOKEN.reset(token)
            self._here.discard(scope)
            self._completed += 1
            self._release(prio)
            self._dispatch()
            if not self._here and self._here_ended is not None:
                self._here_ended.set()

    def _start(self, job: _Job) -> bool:
        """Give ``job`` a free token and start its task; False if none is free."""
        prio = self._take(job.priority)
        if prio is None:
            return False
        name = "trioctl-prio-worker" if prio else "trioctl-worker"
        self._nursery.start_soon(self._work, job, prio, name=name)
        return True

    def _dispatch(self) -> None:
        """Hand free tokens to the oldest waiting jobs, HIGH first."""
        for queue in (self._pending[Priority.HIGH], self._pending[Priority.LOW]):
            while queue and not self._closed and self._start(queue[0]):
                queue.popleft()

    async def _work(self, job: _Job, prio: bool) -> None:
        ran = not job.cancel
        try:
            if not ran:  # the caller was cancelled between hand-off and start
                self._cancelled += 1
                return
            if not job.caller:
                await job.fn(*job.args)  # no scope to enter: nobody cancels it alone
            else:
                with job.scope:
                    job.ok = (await job.fn(*job.args),)
        except Exception as exc:
            self._failed += 1
            job.error = exc
            if not job.caller:
                logger.exception("job %r failed", job.fn)
        except BaseException:
            # Cancelled by the pools closing, KeyboardInterrupt: this task's own.
            # A caller that was cancelled itself re-raises its own Cancelled.
            if not job.cancel:
                job.error = trio.ClosedResourceError("the worker pools closed while the job ran")
            raise
        finally:
            self._completed += ran
            self._release(prio)
            job.done.set()
            self._dispatch()

    async def _run_inline(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        self._check_open()
        if trio.current_effective_deadline() == -math.inf:
            await trio.sleep(0)  # noqa: ASYNC115 (public API): cancelled, raise here
        self._inline_running += 1
        try:
            return await fn(*args)
        except Exception:
            self._failed += 1
            raise
        finally:
            self._inline_running -= 1
            self._completed += 1

    async def _run_detached(self, job: _Job) -> None:
        try:
            await job.fn(*job.args)
        except Exception:
            self._failed += 1
            logger.exception("job %r failed", job.fn)
        finally:
            self._inline_running -= 1
            self._completed += 1

    def _close(self) -> None:
        """Refuse new jobs, fail waiting ones; the caller then cancels the nursery."""
        self._closed, self._kept = True, 0
        for scope in self._here:
            scope.cancel()
        for queue in self._pending.values():
            while queue:
                job = queue.popleft()
                job.error = trio.ClosedResourceError("the worker pools closed")
                self._cancelled += 1
                job.done.set()


@asynccontextmanager
async def open_worker_pools(limits: PoolLimits | None = None) -> AsyncIterator[WorkerPools]:
    """Run worker pools for the duration of the ``async with`` block.

    Leaving the block closes the pools: waiting jobs are dropped (their
    ``run()`` callers get :class:`trio.ClosedResourceError`) and running jobs
    are cancelled. An exception from the block propagates unwrapped.

    Raises:
        InvalidParams: ``limits`` are invalid (see :func:`check_limits`).
    """
    limits = PoolLimits() if limits is None else limits
    check_limits(limits)
    try:
        async with trio.open_nursery() as nursery:
            pools = WorkerPools(nursery, limits)
            try:
                yield pools
            finally:
                pools._close()
                nursery.cancel_scope.cancel()
                # Jobs running in their callers' tasks were cancelled by
                # _close(): wait for them as the nursery waits for its tasks.
                if pools._here:
                    pools._here_ended = trio.Event()
                    with trio.CancelScope(shield=True):
                        await pools._here_ended.wait()
    except BaseExceptionGroup as group:
        # Job tasks never raise Exceptions (those go to callers or the log),
        # so the group holds only what the body raised: unwrap a lone one.
        raise_unwrapped(group)


async def serve_worker_pools(
    limits: PoolLimits | None = None,
    *,
    task_status: trio.TaskStatus[WorkerPools] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run worker pools until cancelled: ``pools = await nursery.start(serve_worker_pools)``.

    Raises:
        InvalidParams: ``limits`` are invalid (before ``started``).
    """
    async with open_worker_pools(limits) as pools:
        task_status.started(pools)
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover
