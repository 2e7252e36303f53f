"""The dispatch core: worker pools plus per-domain jobs, composed in an order.

:meth:`Dispatcher.call` is what the RPC layer calls for one request, from the
request's own task. What matters is the order of the two waits:

* :attr:`DispatchMode.DEFAULT`: first wait for the domain's job in its
  bounded queue, holding **no** worker; then, holding the job, run the
  handler on a pool worker. A hung domain occupies at most one worker (its
  holder's), however many callers pile up on it, so calls on healthy domains
  always find a worker.
* :attr:`DispatchMode.LEGACY`: take a worker first, then wait for the
  domain's job inside it, as libvirt does. With :func:`legacy_limits` (no
  priority workers) and ``DomainJobs(max_queued=0)`` this is pre-patch
  libvirt; with the default limits it is libvirt 9.0. Both let a storm of
  calls on hung domains park every general worker on a job lock, which is
  the starvation the benchmarks compare against.

Read-only callers cannot deny service to writers in either order as long as
the job registry has its query lane (``DomainJobs(query_lane=True)``, the
default): a :attr:`~trioctl.JobKind.QUERY` call waits in a queue of its own
that alternates with the other kinds (see ``trioctl._jobs``).
:func:`open_dispatcher` turns the lane off in legacy mode, as libvirt has none.

**Shared queries** (``Dispatcher.call(..., share=KEY)``; default mode, with
the query lane): a query that arrives while an identical one (same domain,
procedure and key) still *waits* for the domain's job does not queue a second
time: it joins the waiting call and gets its outcome, from the one monitor
round trip that call makes once it holds the job. A call joins only a call that has not started,
so the answer is always produced after the joiner asked (no stale reads, a
client still reads its own writes). Many readers of one domain then take one
place in its query lane, whatever their number.
"""

from __future__ import annotations

import copy
import enum
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, TypeVarTuple, cast

import attrs
import trio

from ._jobs import (
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_QUEUED_QUERIES,
    DEFAULT_WAIT_TIMEOUT,
    DomainJobs,
    JobHandle,
    JobKind,
    JobStatistics,
)
from ._pools import PoolLimits, PoolStatistics, Priority, WorkerPools, open_worker_pools

__all__ = [
    "DispatchMode",
    "DispatchStatistics",
    "Dispatcher",
    "legacy_limits",
    "open_dispatcher",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class DispatchMode(enum.Enum):
    """Where a call waits for a busy domain."""

    DEFAULT = "default"
    """In the domain's queue, holding no worker."""
    LEGACY = "legacy"
    """In a worker, as libvirt does (for comparisons)."""


def legacy_limits() -> PoolLimits:
    """Pool limits of pre-patch libvirt: one pool of 5..20 workers, no priority workers.

    Pair them with ``DomainJobs(max_queued=0)`` (unbounded, libvirt's default)
    and :attr:`DispatchMode.LEGACY`; :func:`open_dispatcher` does that for
    ``mode=DispatchMode.LEGACY``.
    """
    return PoolLimits(min_workers=5, max_workers=20, prio_workers=0, max_pending=1000)


@attrs.frozen
class DispatchStatistics:
    """The mode plus both parts' snapshots, and the shared queries.

    Attributes:
        flights: shared calls waiting for their domain's job now (each one
            place in a query lane), which later calls may join.
        joined: calls waiting now inside another call's flight.
        shared: calls answered so far by another call's round trip.
    """

    mode: DispatchMode
    pools: PoolStatistics
    jobs: JobStatistics
    flights: int = 0
    joined: int = 0
    shared: int = 0


@attrs.define(eq=False)
class _Flight:
    """A shared query waiting for its domain's job, and those who joined it."""

    done: trio.Event = attrs.Factory(trio.Event)
    joiners: int = 0
    value: Any = None
    error: Exception | None = None
    abandoned: bool = False
    """The leading call was cancelled: the joiners try again themselves."""


class Dispatcher:
    """Runs calls through worker pools and domain jobs, in the order of its mode.

    Args:
        pools: the worker pools handlers run on.
        jobs: the domains' job registry.
        mode: where a call waits for a busy domain (see the module docs).
    """

    def __init__(
        self,
        pools: WorkerPools,
        jobs: DomainJobs,
        *,
        mode: DispatchMode = DispatchMode.DEFAULT,
    ) -> None:
        self._pools = pools
        self._jobs = jobs
        self._mode = mode
        self._flights: dict[tuple[str, str, Hashable], _Flight] = {}
        self._joined = 0
        self._shared = 0

    @property
    def pools(self) -> WorkerPools:
        """The worker pools."""
        return self._pools

    @property
    def jobs(self) -> DomainJobs:
        """The domain job registry."""
        return self._jobs

    @property
    def mode(self) -> DispatchMode:
        """Where calls wait for a busy domain."""
        return self._mode

    def statistics(self) -> DispatchStatistics:
        """Snapshots of the pools and the job registry."""
        return DispatchStatistics(
            mode=self._mode,
            pools=self._pools.statistics(),
            jobs=self._jobs.statistics(),
            flights=len(self._flights),
            joined=self._joined,
            shared=self._shared,
        )

    async def call(
        self,
        priority: Priority,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        domain: str | None = None,
        kind: JobKind | None = None,
        procedure: str,
        client: str,
        share: Hashable | None = None,
        with_job: bool = False,
    ) -> T:
        """Run ``fn(*args)`` on a worker of ``priority``, holding ``domain``'s job if given.

        Call it from the request's own task (never from a session's reader):
        in the default mode that task is where the wait for a busy domain
        happens. Cancelling the call cancels the handler and releases the job
        after the handler has ended.

        Args:
            priority: the procedure's priority.
            fn, args: the handler and its arguments.
            domain: the domain whose job the handler needs, or None.
            kind: the job kind; required with ``domain``, refused without.
            procedure, client: who is calling, for job ownership and errors.
            share: for a QUERY call whose result depends only on ``domain``,
                ``procedure`` and this key (and is immutable): join an
                identical call that still waits for the job instead of
                queueing (see the module docs). Ignored in legacy mode and
                without the registry's query lane (libvirt's model). The
                joiners get the leading call's result or exception (a copy,
                raised from the original); the leader's own cancellation is
                not shared: its joiners then try again themselves.
            with_job: call ``fn(*args, job)`` with the held job's
                :class:`~trioctl._jobs.JobHandle` (a handler passes it on to
                the driver's ``*_locked`` operations).

        Raises:
            JobQueueFull, JobTimeout: from the domain's queue (see
                :meth:`~trioctl._jobs.DomainJobs.job`).
            DomainDestroyed: a destroy interrupted this call while it held the
                job.
            ServerBusy: the pool's queue for ``priority`` is full.
            TypeError: ``domain`` and ``kind`` not given together, or
                ``share`` with a kind other than QUERY.
            Exception: whatever ``fn`` raises, unchanged.
        """
        if domain is None:
            if kind is not None:
                raise TypeError("kind given without domain")
            return await self._pools.run(priority, fn, *args)
        if kind is None:
            raise TypeError("a call with a domain needs a job kind")
        if share is not None and kind is not JobKind.QUERY:
            raise TypeError("only a QUERY call can be shared")
        if self._mode is DispatchMode.DEFAULT:
            if share is not None and self._jobs.query_lane:
                key = (domain, procedure, share)
                return await self._shared_call(
                    key, priority, fn, *args, client=client, with_job=with_job
                )
            async with self._jobs.job(domain, kind, procedure=procedure, client=client) as job:
                return await self._pools.run(priority, _bound(fn, args, job, with_job))

        jobs = self._jobs

        async def with_job_in_worker() -> T:
            async with jobs.job(domain, kind, procedure=procedure, client=client) as job:
                return await _bound(fn, args, job, with_job)()

        return await self._pools.run(priority, with_job_in_worker)

    async def _shared_call(
        self,
        key: tuple[str, str, Hashable],
        priority: Priority,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        client: str,
        with_job: bool,
    ) -> T:
        while (flight := self._flights.get(key)) is not None:
            flight.joiners += 1
            self._joined += 1
            try:
                await flight.done.wait()
            finally:
                flight.joiners -= 1
                self._joined -= 1
            if flight.abandoned:
                continue  # its leader went away: lead or join anew
            self._shared += 1
            if flight.error is not None:
                raise _copy(flight.error) from flight.error
            return cast(T, flight.value)
        flight = _Flight()
        self._flights[key] = flight
        domain, procedure, _ = key
        try:
            async with self._jobs.job(
                domain, JobKind.QUERY, procedure=procedure, client=client
            ) as job:
                # Started: nobody may join any more (they would get a reply
                # to a question asked before theirs).
                del self._flights[key]
                result = await self._pools.run(priority, _bound(fn, args, job, with_job))
                flight.value = result
                return result
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.abandoned = True
            raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()


def _bound(
    fn: Callable[[*Ts], Awaitable[T]], args: tuple[*Ts], job: JobHandle, with_job: bool
) -> Callable[[], Awaitable[T]]:
    """``fn(*args)``, or ``fn(*args, job)`` for a handler that takes its job."""
    if with_job:
        return functools.partial(cast(Callable[..., Awaitable[T]], fn), *args, job)
    return functools.partial(fn, *args)


def _copy(exc: Exception) -> Exception:
    """A fresh copy of a leader's exception for one joiner (shared objects
    would collect every joiner's traceback)."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


@asynccontextmanager
async def open_dispatcher(
    mode: DispatchMode = DispatchMode.DEFAULT,
    *,
    limits: PoolLimits | None = None,
    max_queued: int | None = None,
    max_queued_queries: int = DEFAULT_MAX_QUEUED_QUERIES,
    query_lane: bool | None = None,
    wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
) -> AsyncIterator[Dispatcher]:
    """Open worker pools and a job registry and yield a :class:`Dispatcher` over them.

    Defaults follow ``mode``: :attr:`DispatchMode.DEFAULT` uses
    ``PoolLimits()``, ``max_queued=DEFAULT_MAX_QUEUED`` (32) and the query
    lane; :attr:`DispatchMode.LEGACY` uses :func:`legacy_limits`,
    ``max_queued=0`` and no query lane (pre-patch libvirt). Leaving the block
    closes the pools (see :func:`~trioctl._pools.open_worker_pools`).

    Raises:
        InvalidParams: a limit is invalid.
    """
    legacy = mode is DispatchMode.LEGACY
    if limits is None:
        limits = legacy_limits() if legacy else PoolLimits()
    if max_queued is None:
        max_queued = 0 if legacy else DEFAULT_MAX_QUEUED
    if query_lane is None:
        query_lane = not legacy
    jobs = DomainJobs(
        max_queued=max_queued,
        max_queued_queries=max_queued_queries,
        query_lane=query_lane,
        wait_timeout=wait_timeout,
    )
    async with open_worker_pools(limits) as pools:
        yield Dispatcher(pools, jobs, mode=mode)
