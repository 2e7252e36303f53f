"""Priority worker pools: libvirt's ``virThreadPool`` rebuilt with Trio tasks.

Two kinds of worker run jobs:

* **general workers**, between ``min_workers`` and ``max_workers``: they run
  any job. The pools start ``min_workers`` of them and add one whenever a job
  arrives and no general worker is free, up to ``max_workers`` (libvirt's
  rule). Idle workers above ``min_workers`` are kept, as libvirt keeps its
  threads.
* **priority workers**, exactly ``prio_workers`` of them: they run only
  :attr:`Priority.HIGH` jobs, so high-priority work is served even when every
  general worker is stuck.

A HIGH job starts on a free priority worker if there is one, else on a free
general worker, else on a new general worker; only when none of these exist
does it wait. A LOW job starts on a free or new general worker, else waits. A
worker that finishes a job takes the oldest waiting HIGH job first (a general
worker then the oldest LOW job), so a HIGH job never waits while a worker that
may run it is free.

Waiting jobs sit in one bounded queue per priority (``max_pending`` each).
Submitting to a full queue raises :class:`~trioctl.ServerBusy` at once: the
submitter is typically a client session's reader and must never block.

Why not two ``trio.open_memory_channel``s? A general worker must take from
*either* queue, HIGH first, and Trio cannot wait on two channels at once; a
channel also hides which worker a job went to, so ``statistics()`` could not
be exact, and its capacity cannot change at run time. So each queue is a
``collections.deque`` with an explicit bound, and jobs are handed to an idle
worker directly (the worker task sleeps in
:func:`trio.lowlevel.wait_task_rescheduled` and is rescheduled with its job).
This is what a memory channel does internally, minus the parts that do not
fit. Every decision (hand-off, spawn, queue, retire) is made synchronously,
so ``statistics()`` is exact at every moment, not only after tasks run.

``max_workers == 0`` is libvirt's "no pool" mode: there are no workers;
:meth:`WorkerPools.run` runs the job in the caller's own task and
:meth:`WorkerPools.submit_nowait` starts it as a task of its own (at most
``max_pending`` at a time). As in libvirt, ``max_workers`` cannot later switch
between zero and non-zero.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn, TypeVar, TypeVarTuple

import attrs
import outcome
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


# Job states.
_PENDING: Final = 0  # in a pending queue
_ASSIGNED: Final = 1  # handed to a worker (or started inline), not finished
_DONE: Final = 2


class _Job:
    __slots__ = (
        "args",
        "caller",
        "cancel_requested",
        "fn",
        "priority",
        "raise_cancel",
        "scope",
        "state",
    )

    def __init__(
        self,
        priority: Priority,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        caller: trio.lowlevel.Task | None,
    ) -> None:
        self.priority = priority
        self.fn = fn
        self.args = args
        # The task waiting in run() for the outcome; None for submit_nowait.
        self.caller = caller
        self.state = _PENDING
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False
        self.raise_cancel: trio.lowlevel.RaiseCancelT | None = None


class _Worker:
    __slots__ = ("job", "parked", "prio", "retire", "task")

    def __init__(self, prio: bool) -> None:
        self.prio = prio
        self.job: _Job | None = None
        self.task: trio.lowlevel.Task | None = None
        self.parked = False
        self.retire = False


class WorkerPools:
    """General and priority workers running async jobs; see the module docs.

    Create it with :func:`open_worker_pools` (or :func:`serve_worker_pools`),
    never directly: the workers are tasks of the nursery that owns the pools.
    Every method must be called from inside the same ``trio.run``.
    """

    def __init__(self, nursery: trio.Nursery, limits: PoolLimits) -> None:
        check_limits(limits)
        self._nursery = nursery
        self._limits = limits
        self._closed = False
        self._n_general = 0
        self._n_prio = 0
        self._idle_general: collections.deque[_Worker] = collections.deque()
        self._idle_prio: collections.deque[_Worker] = collections.deque()
        self._pending_high: collections.deque[_Job] = collections.deque()
        self._pending_low: collections.deque[_Job] = collections.deque()
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._rejected = 0
        self._inline = limits.max_workers == 0
        self._adjust_workers()

    # -- public API ---------------------------------------------------------------

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
        job = _Job(priority, fn, args, None)
        if self._inline:
            self._start_inline_nowait(job)
        else:
            self._submit(job)

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
        await trio.lowlevel.checkpoint_if_cancelled()
        job = _Job(priority, fn, args, trio.lowlevel.current_task())
        self._submit(job)

        def abort(raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            if job.state == _PENDING:
                queue = self._pending_high if job.priority is Priority.HIGH else self._pending_low
                queue.remove(job)
                job.state = _DONE
                self._cancelled += 1
                return trio.lowlevel.Abort.SUCCEEDED
            # Handed to a worker: cancel the job and wait until it has ended;
            # the worker reschedules us with the outcome.
            job.cancel_requested = True
            job.raise_cancel = raise_cancel
            if job.scope is not None:
                job.scope.cancel()
            return trio.lowlevel.Abort.FAILED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def statistics(self) -> PoolStatistics:
        """Return a frozen snapshot of the limits, workers, queues and counters."""
        return PoolStatistics(
            limits=self._limits,
            workers=self._n_general,
            free_workers=len(self._idle_general),
            prio_workers=self._n_prio,
            free_prio_workers=len(self._idle_prio),
            running=self._running,
            pending_high=len(self._pending_high),
            pending_low=len(self._pending_low),
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

        Growing starts workers at once (and hands them waiting jobs).
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
        if self._closed:
            raise trio.ClosedResourceError("the worker pools are closed")
        new = PoolLimits(
            min_workers=self._limits.min_workers if min_workers is None else min_workers,
            max_workers=self._limits.max_workers if max_workers is None else max_workers,
            prio_workers=self._limits.prio_workers if prio_workers is None else prio_workers,
            max_pending=self._limits.max_pending if max_pending is None else max_pending,
        )
        check_limits(new, self._limits)
        self._limits = new
        self._adjust_workers()
        return new

    # -- submission ---------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the worker pools are closed")
        if job.priority is Priority.HIGH:
            if self._idle_prio:
                self._hand_off(self._idle_prio.popleft(), job)
                return
            if self._idle_general:
                self._hand_off(self._idle_general.popleft(), job)
                return
            queue = self._pending_high
        else:
            if self._idle_general:
                self._hand_off(self._idle_general.popleft(), job)
                return
            queue = self._pending_low
        if self._n_general < self._limits.max_workers:
            self._spawn(prio=False, job=job)
            return
        if len(queue) >= self._limits.max_pending:
            self._rejected += 1
            raise ServerBusy(
                f"worker pool busy: {len(queue)} {job.priority.value}-priority jobs "
                f"already wait for a worker (max_pending={self._limits.max_pending})",
                priority=job.priority.value,
                pending=len(queue),
                max_pending=self._limits.max_pending,
            )
        queue.append(job)

    def _hand_off(self, worker: _Worker, job: _Job) -> None:
        job.state = _ASSIGNED
        self._running += 1
        worker.job = job
        if worker.parked:
            worker.parked = False
            assert worker.task is not None
            trio.lowlevel.reschedule(worker.task)

    def _spawn(self, *, prio: bool, job: _Job | None) -> None:
        worker = _Worker(prio)
        if prio:
            self._n_prio += 1
        else:
            self._n_general += 1
        if job is not None:
            self._hand_off(worker, job)
        else:
            (self._idle_prio if prio else self._idle_general).append(worker)
        name = "trioctl-prio-worker" if prio else "trioctl-worker"
        self._nursery.start_soon(self._worker_main, worker, name=name)

    def _take_pending(self, prio: bool) -> _Job | None:
        if self._pending_high:
            return self._pending_high.popleft()
        if not prio and self._pending_low:
            return self._pending_low.popleft()
        return None

    def _adjust_workers(self) -> None:
        """Bring the worker counts to the limits (spawn or retire idle ones)."""
        if self._inline:
            return
        limits = self._limits
        # General workers: up to min at once, then one per waiting job up to max.
        while self._n_general < limits.min_workers:
            self._spawn(prio=False, job=self._take_pending(False))
        while self._n_general < limits.max_workers and (self._pending_high or self._pending_low):
            self._spawn(prio=False, job=self._take_pending(False))
        while self._n_general > limits.max_workers and self._idle_general:
            self._retire(self._idle_general.pop())
        # Priority workers.
        while self._n_prio < limits.prio_workers:
            self._spawn(prio=True, job=self._take_pending(True))
        while self._n_prio > limits.prio_workers and self._idle_prio:
            self._retire(self._idle_prio.pop())

    def _retire(self, worker: _Worker) -> None:
        if worker.prio:
            self._n_prio -= 1
        else:
            self._n_general -= 1
        worker.retire = True
        if worker.parked:
            worker.parked = False
            assert worker.task is not None
            trio.lowlevel.reschedule(worker.task)

    # -- workers ------------------------------------------------------------------

    async def _worker_main(self, worker: _Worker) -> None:
        worker.task = trio.lowlevel.current_task()
        idle = self._idle_prio if worker.prio else self._idle_general

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            # Only the pools' own nursery is ever cancelled under a parked worker.
            worker.parked = False
            idle.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            while True:
                job = worker.job
                if job is None:
                    if worker.retire:
                        return
                    worker.parked = True
                    await trio.lowlevel.wait_task_rescheduled(abort)
                    continue
                worker.job = None
                if job.caller is None:
                    await self._run_detached(job)
                else:
                    await self._run_for_caller(job)
                if self._after_job(worker, idle):
                    # Took a waiting job: yield once, as a memory channel's
                    # receive does, so a backlog of jobs that never
                    # checkpoint cannot monopolise the event loop. No cancel
                    # point: the job is already this worker's.
                    await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            if not worker.retire:
                # Leaving because the pools closed (or a job raised a
                # BaseException such as KeyboardInterrupt).
                worker.retire = True
                if worker.prio:
                    self._n_prio -= 1
                else:
                    self._n_general -= 1

    def _after_job(self, worker: _Worker, idle: collections.deque[_Worker]) -> bool:
        """Retire, take the next waiting job (True), or become free."""
        limit = self._limits.prio_workers if worker.prio else self._limits.max_workers
        count = self._n_prio if worker.prio else self._n_general
        if count > limit:
            self._retire(worker)
            return False
        job = self._take_pending(worker.prio)
        if job is None:
            idle.append(worker)
            return False
        job.state = _ASSIGNED
        self._running += 1
        worker.job = job
        return True

    async def _run_detached(self, job: _Job) -> None:
        try:
            await job.fn(*job.args)
        except Exception:
            self._failed += 1
            logger.exception("job %r failed", job.fn)
        finally:
            job.state = _DONE
            self._running -= 1
            self._completed += 1

    async def _run_for_caller(self, job: _Job) -> None:
        caller = job.caller
        assert caller is not None
        if job.cancel_requested:
            # The caller was cancelled between hand-off and start: never run.
            job.state = _DONE
            self._running -= 1
            self._cancelled += 1
            assert job.raise_cancel is not None
            trio.lowlevel.reschedule(caller, outcome.capture(job.raise_cancel))
            return
        result: outcome.Outcome[Any]
        scope = job.scope = trio.CancelScope()
        try:
            with scope:
                value = await job.fn(*job.args)
        except BaseException as exc:
            self._running -= 1
            self._completed += 1
            job.state = _DONE
            if isinstance(exc, Exception):
                self._failed += 1
                result = outcome.Error(exc)
            else:
                # trio.Cancelled from the pools closing, KeyboardInterrupt, or a
                # group of those: it belongs to this worker, not to the caller.
                if job.cancel_requested:
                    assert job.raise_cancel is not None
                    result = outcome.capture(job.raise_cancel)
                else:
                    result = outcome.Error(
                        trio.ClosedResourceError("the worker pools closed while the job ran")
                    )
                trio.lowlevel.reschedule(caller, result)
                raise
        else:
            self._running -= 1
            self._completed += 1
            job.state = _DONE
            if scope.cancelled_caught:
                assert job.raise_cancel is not None
                result = outcome.capture(job.raise_cancel)
            else:
                result = outcome.Value(value)
        trio.lowlevel.reschedule(caller, result)

    # -- the no-pool mode (max_workers == 0) ----------------------------------------

    async def _run_inline(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the worker pools are closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._running += 1
        try:
            return await fn(*args)
        except Exception:
            self._failed += 1
            raise
        finally:
            self._running -= 1
            self._completed += 1

    def _start_inline_nowait(self, job: _Job) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the worker pools are closed")
        if self._running >= self._limits.max_pending:
            self._rejected += 1
            raise ServerBusy(
                f"worker pool busy: {self._running} jobs already run without workers "
                f"(max_pending={self._limits.max_pending})",
                priority=job.priority.value,
                pending=self._running,
                max_pending=self._limits.max_pending,
            )
        job.state = _ASSIGNED
        self._running += 1
        self._nursery.start_soon(self._run_detached, job, name="trioctl-inline-job")

    # -- closing ------------------------------------------------------------------

    def _close(self) -> None:
        """Refuse new jobs, fail waiting ones; the caller then cancels the nursery."""
        self._closed = True
        for queue in (self._pending_high, self._pending_low):
            while queue:
                job = queue.popleft()
                job.state = _DONE
                self._cancelled += 1
                if job.caller is not None:
                    trio.lowlevel.reschedule(
                        job.caller,
                        outcome.Error(trio.ClosedResourceError("the worker pools closed")),
                    )


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
