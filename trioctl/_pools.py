r"""Priority worker pools: libvirt's ``virThreadPool`` limits on Trio tasks.

In Trio a waiting task costs nothing, so there are no long-lived workers: a
**worker** is a token, and a job runs in a task of its own (named
``trioctl-worker`` or ``trioctl-prio-worker``) for as long as it holds one.

* **general tokens**, ``max_workers`` of them, run any job;
* **priority tokens**, ``prio_workers`` of them, run only
  :attr:`Priority.HIGH` jobs, so high-priority work is served even when every
  general worker is stuck.

A HIGH job takes a free priority token, else a free general token; a LOW job
takes a free general token. Without one, the job waits in its priority's FIFO
queue, bounded by ``max_pending``: submitting to a full queue raises
:class:`~trioctl.ServerBusy` at once (the submitter is typically a client
session's reader and must never block). When a job ends, its token goes to
the oldest waiting HIGH job, else (a general token) to the oldest LOW job.

The tokens are counters and the queues are ``deque``\ s of jobs, each with
a :class:`trio.Event` its ``run()`` caller waits on. Neither a
:class:`trio.CapacityLimiter` nor a memory channel fits: a HIGH job must take
*either* kind of token, a general token must go to HIGH waiters before LOW
ones (a limiter serves its waiters in arrival order), a limiter cannot have
zero tokens (``prio_workers=0``), and a channel's capacity is fixed. Counting
tokens by hand keeps the limiter's resize rule all the same: growing hands
the new tokens out at once, shrinking takes effect as holders finish. Every
decision (start, queue, refuse) is made synchronously, so ``statistics()``
is exact at every moment.

``statistics().workers`` reports libvirt's thread count: ``min_workers``
kept from the start, grown on demand up to ``max_workers``, kept when idle,
and shrunk at once when ``max_workers`` is lowered (busy ones stay counted
until their job ends).

``max_workers == 0`` is libvirt's "no pool" mode: :meth:`WorkerPools.run`
runs the job in the caller's own task and :meth:`WorkerPools.submit_nowait`
starts it as a task of its own (at most ``max_pending`` at a time). As in
libvirt, ``max_workers`` cannot later switch between zero and non-zero.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn, TypeVar, TypeVarTuple

import attrs
import trio

from ._errors import InvalidParams, ServerBusy

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


class Priority(enum.Enum):
    """A procedure's priority (libvirt's ``@priority`` annotation).

    The rule from libvirt: anything that may touch a hypervisor monitor (and
    so may block) is LOW; HIGH is only for calls guaranteed to end quickly.
    """

    LOW = "low"
    HIGH = "high"


@attrs.frozen
class PoolLimits:
    """The pools' size limits; libvirt's names and defaults.

    Attributes:
        min_workers: general workers kept alive (libvirt: 5).
        max_workers: general workers at most (libvirt: 20); 0 means no
            workers at all, jobs run in the submitter's task.
        prio_workers: priority workers, which run only HIGH jobs (libvirt: 5).
        max_pending: jobs that may wait for a worker, per priority. libvirt's
            queue is unbounded (only ``max_clients * max_client_requests``
            bounds it); 1000 is what ``max_queued_clients`` allows in
            libvirt and keeps a burst from 1000 callers, while a backlog
            beyond it (20 workers busy with 1000 jobs queued) is better
            answered ``SERVER_BUSY`` at once than after seconds.
    """

    min_workers: int = 5
    max_workers: int = 20
    prio_workers: int = 5
    max_pending: int = 1000


def check_limits(limits: PoolLimits, current: PoolLimits | None = None) -> None:
    """Validate ``limits`` with libvirt's rules, as a change from ``current``.

    Raises:
        InvalidParams: a value is not an integer, is negative, ``max_pending``
            is below 1, ``min_workers > max_workers``, or (with ``current``)
            ``max_workers`` would switch between zero and non-zero. ``data``
            names the ``field``.
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
        workers: live general workers (busy or free). After a shrink, busy
            workers above ``limits.max_workers`` stay counted until their job
            ends.
        free_workers: general workers waiting for a job.
        prio_workers: live priority workers.
        free_prio_workers: priority workers waiting for a job.
        running: jobs handed to a worker and not finished (in the no-pool mode,
            jobs running in their own or their caller's task).
        pending_high: HIGH jobs waiting for a worker.
        pending_low: LOW jobs waiting for a worker.
        completed: jobs that ran and ended, however they ended.
        failed: of those, jobs that raised an exception.
        cancelled: jobs that never ran: their caller was cancelled while they
            waited, or the pools closed under them.
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


_PENDING: Final = 0  # in a pending queue
_RUNNING: Final = 1  # holds a worker token, its task started or about to
_DONE: Final = 2


class _Job:
    """One job. ``done`` is set once it has ended (or left the queue for good)."""

    __slots__ = (
        "args",
        "cancel",
        "detached",
        "done",
        "error",
        "fn",
        "ok",
        "priority",
        "scope",
        "state",
    )

    def __init__(
        self, priority: Priority, fn: Callable[..., Awaitable[Any]], args: Any, detached: bool
    ) -> None:
        self.priority = priority
        self.detached = detached
        self.fn = fn
        self.args = args
        self.state = _PENDING
        self.done = trio.Event()
        self.scope = trio.CancelScope()
        self.cancel = False  # the run() caller was cancelled after the hand-off
        self.ok: tuple[Any] | None = None  # (value,) once the job returned
        self.error: BaseException | None = None


class WorkerPools:
    """Worker tokens and two bounded queues; see the module docs.

    Create it with :func:`open_worker_pools` (or :func:`serve_worker_pools`),
    never directly: the jobs are tasks of the nursery that owns the pools.
    Every method must be called from inside the same ``trio.run``.
    """

    def __init__(self, nursery: trio.Nursery, limits: PoolLimits) -> None:
        check_limits(limits)
        self._nursery = nursery
        self._limits = limits
        self._closed = False
        self._inline = limits.max_workers == 0
        self._busy = 0  # general tokens held
        self._busy_prio = 0  # priority tokens held
        self._kept = 0 if self._inline else limits.min_workers  # idle workers counted
        self._pending = {p: collections.deque[_Job]() for p in Priority}
        self._inline_running = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._rejected = 0

    @property
    def limits(self) -> PoolLimits:
        """The limits in force."""
        return self._limits

    def submit_nowait(
        self,
        priority: Priority,
        fn: Callable[[*Ts], Awaitable[object]],
        *args: *Ts,
    ) -> None:
        """Queue ``fn(*args)`` to run on a worker, without waiting for it.

        The job's result is dropped; if it raises an exception, the exception
        is logged (logger ``trioctl.pools``) and counted in
        ``statistics().failed``, and the pools go on. Cancellation from the
        pools closing is not an error.

        Raises:
            ServerBusy: ``max_pending`` jobs of this priority already wait for
                a worker. Nothing was queued.
            trio.ClosedResourceError: the pools have closed.
        """
        job = _Job(priority, fn, args, True)
        if not self._inline:
            self._submit(job)
            return
        self._check_open()
        if self._inline_running >= self._limits.max_pending:
            self._refuse(priority, self._inline_running, "jobs already run without workers")
        self._inline_running += 1
        self._nursery.start_soon(self._run_detached, job, name="trioctl-inline-job")

    async def run(
        self,
        priority: Priority,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
    ) -> T:
        """Run ``fn(*args)`` on a worker and return its result.

        If the job raises, the same exception is raised here. If the caller
        is cancelled while the job waits for a worker, the job is removed and
        never runs; if it is cancelled while the job runs, the job is
        cancelled and ``run()`` returns only after the job has ended (so
        anything the caller holds, such as a domain job, outlives the job).

        Raises:
            ServerBusy: ``max_pending`` jobs of this priority already wait for
                a worker; refused at once, nothing ran.
            trio.ClosedResourceError: the pools closed before or while the job
                ran.
        """
        if self._inline:
            return await self._run_inline(fn, *args)
        if trio.current_effective_deadline() == -math.inf:
            await trio.sleep(0)  # noqa: ASYNC115 (no trio.lowlevel): cancelled, raise here
        job = _Job(priority, fn, args, False)
        self._submit(job)
        try:
            await job.done.wait()
        except trio.Cancelled:
            if job.state == _PENDING:
                self._pending[priority].remove(job)
                job.state = _DONE
                self._cancelled += 1
                raise
            # Holding a token: cancel the job, wait until it has ended.
            job.cancel = True
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
        live = not (self._closed or self._inline)
        workers = max(self._kept, self._busy)
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
        """Change some limits at run time; ``None`` keeps a value.

        Growing adds tokens at once (and hands them to waiting jobs).
        Shrinking retires free workers at once and busy ones as soon as their
        current job ends: a running job is never cancelled. Lowering
        ``max_pending`` below the current queue keeps the queued jobs and
        refuses new ones until the queue is short enough.

        Returns:
            The limits now in force.

        Raises:
            InvalidParams: see :func:`check_limits`; nothing changed.
            trio.ClosedResourceError: the pools have closed.
        """
        self._check_open()
        new = attrs.evolve(
            self._limits,
            **{
                key: value
                for key, value in (
                    ("min_workers", min_workers),
                    ("max_workers", max_workers),
                    ("prio_workers", prio_workers),
                    ("max_pending", max_pending),
                )
                if value is not None
            },
        )
        check_limits(new, self._limits)
        self._limits = new
        if not self._inline:
            self._kept = max(new.min_workers, min(self._kept, new.max_workers))
            self._dispatch()
        return new

    # -- tokens and queues --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the worker pools are closed")

    def _refuse(self, priority: Priority, pending: int, what: str) -> NoReturn:
        self._rejected += 1
        raise ServerBusy(
            f"worker pool busy: {pending} {what} (max_pending={self._limits.max_pending})",
            priority=priority.value,
            pending=pending,
            max_pending=self._limits.max_pending,
        )

    def _submit(self, job: _Job) -> None:
        self._check_open()
        if self._try_start(job):
            return
        queue = self._pending[job.priority]
        if len(queue) >= self._limits.max_pending:
            self._refuse(
                job.priority,
                len(queue),
                f"{job.priority.value}-priority jobs already wait for a worker",
            )
        queue.append(job)

    def _try_start(self, job: _Job) -> bool:
        """Give ``job`` a free token and start its task; False if none is free."""
        if job.priority is Priority.HIGH and self._busy_prio < self._limits.prio_workers:
            prio = True
            self._busy_prio += 1
        elif self._busy < self._limits.max_workers:
            prio = False
            self._busy += 1
            self._kept = max(self._kept, self._busy)
        else:
            return False
        job.state = _RUNNING
        name = "trioctl-prio-worker" if prio else "trioctl-worker"
        self._nursery.start_soon(self._work, job, prio, name=name)
        return True

    def _dispatch(self) -> None:
        """Hand free tokens to the oldest waiting jobs, HIGH first."""
        if self._closed:
            return
        for queue in self._pending[Priority.HIGH], self._pending[Priority.LOW]:
            while queue and self._try_start(queue[0]):
                queue.popleft()

    async def _work(self, job: _Job, prio: bool) -> None:
        try:
            if job.cancel:
                # The caller was cancelled between hand-off and start: never run.
                self._cancelled += 1
            else:
                await self._run_job(job)
        finally:
            job.state = _DONE
            if prio:
                self._busy_prio -= 1
            else:
                self._busy -= 1
            job.done.set()
            self._dispatch()

    async def _run_job(self, job: _Job) -> None:
        try:
            with job.scope:
                value = await job.fn(*job.args)
        except Exception as exc:
            self._failed += 1
            job.error = exc
            if job.detached:
                logger.exception("job %r failed", job.fn)
        except BaseException:
            # trio.Cancelled from the pools closing, KeyboardInterrupt, or a
            # group of those: it belongs to this task, not to the caller.
            job.error = trio.ClosedResourceError("the worker pools closed while the job ran")
            raise
        else:
            if not job.scope.cancelled_caught:
                job.ok = (value,)
        finally:
            self._completed += 1

    # -- the no-pool mode (max_workers == 0) ----------------------------------------

    async def _run_inline(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        self._check_open()
        if trio.current_effective_deadline() == -math.inf:
            await trio.sleep(0)  # noqa: ASYNC115 (no trio.lowlevel)
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

    # -- closing ------------------------------------------------------------------

    def _close(self) -> None:
        """Refuse new jobs, fail waiting ones; the caller then cancels the nursery."""
        self._closed = True
        self._kept = 0
        for queue in self._pending.values():
            while queue:
                job = queue.popleft()
                job.state = _DONE
                job.error = trio.ClosedResourceError("the worker pools closed")
                self._cancelled += 1
                job.done.set()


@asynccontextmanager
async def open_worker_pools(limits: PoolLimits | None = None) -> AsyncIterator[WorkerPools]:
    """Run worker pools for the duration of the ``async with`` block.

    The workers are tasks of a nursery owned by this context manager. Leaving
    the block closes the pools: waiting jobs are dropped (their ``run()``
    callers get :class:`trio.ClosedResourceError`) and running jobs are
    cancelled. To let work finish, finish it inside the block. An exception
    from the block propagates as itself, not wrapped in an ExceptionGroup.

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
    except BaseExceptionGroup as group:
        # Workers never raise (job errors go to callers or the log), so the
        # group holds only what the body raised: unwrap a lone exception.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


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
