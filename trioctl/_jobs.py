"""Per-domain job queues: one job at a time per domain, bounded FIFOs of waiters.

This is libvirt's domain job (``virDomainObjBeginJob``) with its
``max_queued`` bound, on Trio:

* A domain has at most one **holder**. Everybody else waits in the domain's
  queue, first come first served, for at most ``wait_timeout`` seconds
  (:class:`~trioctl.JobTimeout` after that).
* At most ``max_queued`` callers (queries and destroys aside) wait per
  domain; the next one is refused at once with :class:`~trioctl.JobQueueFull`.
  ``0`` means unbounded (libvirt's default); trioctl's default is
  :data:`DEFAULT_MAX_QUEUED`. Unlike libvirt, the holder does not count
  against the bound: ``max_queued=1`` allows one holder and one waiter.
* Both errors name the holder: its procedure, its client and for how long it
  has held the job (libvirt names only the procedure).
* **Query lane.** :attr:`JobKind.QUERY` callers (read-only monitor calls such
  as ``domain.get_stats``) wait in a queue of their own, bounded separately by
  ``max_queued_queries``, and never take a place among the ``max_queued``
  waiters of the other kinds. Whenever both queues have waiters, the job
  alternates between them: after a query holder the next modify waiter, after
  any other holder the next query. So queries cannot fill the queue of
  writers, and a writer waits for at most one query per writer ahead of it,
  however many readers hammer the domain. Still one holder at a time: a
  query never runs beside another job. ``query_lane=False`` is libvirt's
  behaviour (a query is a job like any other, in the one queue).
* A :attr:`JobKind.DESTROY` caller is exempt from the bound, waits ahead of
  every other kind (destroys among themselves in FIFO order) and interrupts
  the holder: the holder's ``async with`` body is cancelled and the block
  raises :class:`~trioctl.DomainDestroyed` instead of :class:`trio.Cancelled`.
  Only that body is cancelled, nothing else of the holder's task. A destroy
  never interrupts another destroy.

The job is handed from the releasing holder to the next waiter directly, so
nobody can barge in between, and a domain's entry exists only while someone
holds its job: an idle domain costs nothing (no leak with many domains).

Waiting costs the waiting task only; it holds no pool worker. Where the
waiting happens relative to the worker pools is the dispatcher's business
(see ``trioctl._dispatch``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Final, TypeVar

import attrs
import trio

from ._errors import DomainDestroyed, InvalidParams, JobQueueFull, JobTimeout, TrioctlError

E = TypeVar("E", bound=TrioctlError)

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_QUEUED_QUERIES",
    "DEFAULT_WAIT_TIMEOUT",
    "DomainJobs",
    "JobHandle",
    "JobInfo",
    "JobKind",
    "JobOwner",
    "JobStatistics",
    "QueuedJob",
]

#: Waiters allowed per domain by default. A caller waiting here holds no
#: worker, only its own task, so the bound is about feedback, not about
#: resources: 32 covers six clients each with ``max_client_requests`` (5)
#: calls on one domain, and a caller that would wait behind more than 32 jobs
#: of a domain that is probably hung learns it at once instead of after 30 s.
DEFAULT_MAX_QUEUED: Final = 32

#: Queries allowed to wait per domain by default, in their own queue.
DEFAULT_MAX_QUEUED_QUERIES: Final = 32

#: libvirt's wait for a domain's job (``VIR_JOB_WAIT_TIME``).
DEFAULT_WAIT_TIMEOUT: Final = 30.0


class JobKind(enum.Enum):
    """What a domain job is for."""

    QUERY = "query"
    """Reads live state through the monitor (stats, status); waits in the
    domain's query lane (see the module docs)."""
    MODIFY = "modify"
    """Changes the domain (start, shutdown, suspend, monitor commands)."""
    DESTROY = "destroy"
    """Kills the domain: exempt from ``max_queued``, first in line, and
    interrupts the holder."""
    RECONNECT = "reconnect"
    """Held while the daemon reopens the monitor after a restart."""


@attrs.frozen
class JobOwner:
    """Who holds a domain's job.

    Attributes:
        procedure: the procedure that took it, e.g. ``domain.monitor_command``.
        client: the client's id.
        started: ``trio.current_time()`` when it got the job.
    """

    procedure: str
    client: str
    started: float


@attrs.frozen
class QueuedJob:
    """A caller waiting for a domain's job.

    Attributes:
        kind: the job kind it asked for.
        procedure: its procedure.
        client: its client's id.
        since: ``trio.current_time()`` when it began to wait.
        waited_seconds: how long it has waited so far.
    """

    kind: JobKind
    procedure: str
    client: str
    since: float
    waited_seconds: float


@attrs.frozen
class JobInfo:
    """One domain's held job and its queue (``admin.list_jobs``).

    Attributes:
        domain: the domain's name.
        kind: the held job's kind.
        owner: who holds it.
        held_seconds: for how long.
        queued: how many callers wait for it, both queues together.
        queued_queries: how many of them are queries (the query lane).
        waiters: the waiting callers in the order they will get the job
            (destroys, then the two queues interleaved), next first.
        interrupted: a destroy (or :meth:`DomainJobs.interrupt`) has
            interrupted the holder, which has not released the job yet.
    """

    domain: str
    kind: JobKind
    owner: JobOwner
    held_seconds: float
    queued: int
    queued_queries: int
    waiters: tuple[QueuedJob, ...]
    interrupted: bool


@attrs.frozen
class JobStatistics:
    """Counters of a :class:`DomainJobs` registry.

    Attributes:
        max_queued: the bound on waiters per domain (0: unbounded).
        max_queued_queries: the bound on waiting queries per domain (0:
            unbounded).
        query_lane: queries wait in their own queue (False: libvirt's one
            queue).
        wait_timeout: the longest wait for a job, seconds (None: forever).
        held: domains whose job is held now.
        queued: callers waiting now, all domains together, queries included.
        queued_queries: queries waiting now in query lanes, all domains.
        acquired: jobs granted so far.
        rejected: callers refused with ``JOB_QUEUE_FULL``, queries included.
        rejected_queries: queries refused because a query lane was full.
        timeouts: callers that gave up with ``JOB_TIMEOUT``.
        abandoned: waits ended by the caller's own cancellation.
        interrupted: holders interrupted by a destroy or ``interrupt()``.
    """

    max_queued: int
    max_queued_queries: int
    query_lane: bool
    wait_timeout: float | None
    held: int
    queued: int
    queued_queries: int
    acquired: int
    rejected: int
    rejected_queries: int
    timeouts: int
    abandoned: int
    interrupted: int


class _Claim:
    """One caller's claim on a domain's job, as the registry sees it."""

    __slots__ = (
        "by", "client", "domain", "granted", "interrupted", "kind", "owner", "procedure",
        "query", "scope", "seen", "since",
    )  # fmt: skip

    def __init__(
        self, domain: str, kind: JobKind, procedure: str, client: str, query: bool
    ) -> None:
        self.domain = domain
        self.kind = kind
        self.procedure = procedure
        self.client = client
        self.query = query  # waits in the query lane (as holder, lets a modify go next)
        self.since = 0.0
        self.owner: JobOwner | None = None  # set when granted
        self.granted = trio.Event()
        self.interrupted = False
        self.by: _Claim | None = None  # the destroy that interrupted it
        self.scope = trio.CancelScope()  # the holder's body; a destroy cancels it
        # The holder as seen when this caller stopped waiting (for messages).
        self.seen: tuple[JobOwner | None, float, int] = (None, 0.0, 0)


class _Entry:
    """One domain with a holder. Waiter dicts are insertion-ordered sets:
    destroys, the other non-query kinds, and queries (the query lane)."""

    __slots__ = ("destroyers", "holder", "queries", "waiters")

    def __init__(self, holder: _Claim) -> None:
        self.holder = holder
        self.destroyers: dict[_Claim, None] = {}
        self.waiters: dict[_Claim, None] = {}
        self.queries: dict[_Claim, None] = {}

    def queued(self) -> int:
        return len(self.destroyers) + len(self.waiters) + len(self.queries)


class JobHandle:
    """One caller's claim on a domain's job; an async context manager.

    Get it from :meth:`DomainJobs.job`; it can be entered once. Inside the
    block the caller holds the job.
    """

    __slots__ = ("_claim", "_entered", "_hold")

    def __init__(self, claim: _Claim, hold: AbstractAsyncContextManager[None]) -> None:
        self._claim = claim
        self._hold = hold
        self._entered = False

    @property
    def domain(self) -> str:
        """The domain's name."""
        return self._claim.domain

    @property
    def kind(self) -> JobKind:
        """The job kind asked for."""
        return self._claim.kind

    @property
    def owner(self) -> JobOwner | None:
        """This caller as the job's owner, once it holds the job."""
        return self._claim.owner

    @property
    def interrupted(self) -> bool:
        """A destroy or :meth:`DomainJobs.interrupt` interrupted this holder."""
        return self._claim.interrupted

    async def __aenter__(self) -> JobHandle:
        if self._entered:
            raise RuntimeError("a JobHandle can be entered only once")
        self._entered = True
        await self._hold.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._hold.__aexit__(exc_type, exc, tb)


class DomainJobs:
    """The job registry of every domain; see the module docs.

    Args:
        max_queued: callers other than queries and destroys that may wait per
            domain; 0 means unbounded (libvirt's default, and trioctl's legacy
            mode).
        max_queued_queries: queries that may wait per domain, in their own
            queue; 0 means unbounded. Ignored without the query lane.
        query_lane: queries wait in their own queue and alternate with the
            other kinds (see the module docs); False: libvirt's one queue,
            where a query counts against ``max_queued`` like any other job.
        wait_timeout: seconds a caller waits before ``JOB_TIMEOUT``; ``None``
            waits forever; 0 refuses at once whenever the job is held.

    Raises:
        InvalidParams: ``max_queued`` or ``max_queued_queries`` is not a
            non-negative integer or ``wait_timeout`` is negative or NaN.
    """

    def __init__(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_queued_queries: int = DEFAULT_MAX_QUEUED_QUERIES,
        query_lane: bool = True,
        wait_timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    ) -> None:
        for field, value in (
            ("max_queued", max_queued),
            ("max_queued_queries", max_queued_queries),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidParams(
                    f"{field} must be a non-negative integer, not {value!r}", field=field
                )
        if not isinstance(query_lane, bool):
            raise InvalidParams(
                f"query_lane must be true or false, not {query_lane!r}", field="query_lane"
            )
        if wait_timeout is not None and (math.isnan(wait_timeout) or wait_timeout < 0):
            raise InvalidParams(
                f"wait_timeout must be a non-negative number of seconds or None, "
                f"not {wait_timeout!r}",
                field="wait_timeout",
            )
        self._max_queued = max_queued
        self._max_queued_queries = max_queued_queries
        self._query_lane = query_lane
        self._wait_timeout = wait_timeout
        self._entries: dict[str, _Entry] = {}
        self._queued = 0
        self._queued_queries = 0
        self._acquired = 0
        self._rejected = 0
        self._rejected_queries = 0
        self._timeouts = 0
        self._abandoned = 0
        self._interrupted = 0

    @property
    def max_queued(self) -> int:
        """Callers that may wait per domain (0: unbounded)."""
        return self._max_queued

    @property
    def max_queued_queries(self) -> int:
        """Queries that may wait per domain in the query lane (0: unbounded)."""
        return self._max_queued_queries

    @property
    def query_lane(self) -> bool:
        """Queries wait in their own queue (False: libvirt's one queue)."""
        return self._query_lane

    @property
    def wait_timeout(self) -> float | None:
        """Seconds a caller waits for a job (None: forever)."""
        return self._wait_timeout

    def job(self, domain: str, kind: JobKind, *, procedure: str, client: str) -> JobHandle:
        """Claim ``domain``'s job for the ``async with`` block::

            async with jobs.job("vm1", JobKind.MODIFY, procedure="domain.reset",
                                client="c7") as handle:
                ...  # the only job running on vm1

        Waits (FIFO) while another caller holds it. A QUERY claim waits in
        the query lane, which alternates with the other queue. A DESTROY
        claim skips the bounds, waits ahead of other kinds and interrupts the
        holder.

        Raises (on entering the block):
            JobQueueFull: ``max_queued`` callers (``max_queued_queries``
                queries, for a query) already wait; at once.
            JobTimeout: waited ``wait_timeout`` seconds without getting it.
            DomainDestroyed: the job was granted but interrupted before the
                block started.

        Raises (on leaving the block):
            DomainDestroyed: the holder was interrupted and its body was
                cancelled or failed (``__cause__`` is the body's exception). A
                body that finished despite the interruption returns normally;
                a cancellation from outside the block propagates unchanged.
        """
        claim = _Claim(domain, kind, procedure, client, kind is JobKind.QUERY and self._query_lane)
        return JobHandle(claim, self._hold(claim))

    def interrupt(self, domain: str) -> bool:
        """Interrupt ``domain``'s holder as a destroy would.

        Returns:
            Whether there was a holder not yet interrupted.
        """
        entry = self._entries.get(domain)
        if entry is None:
            return False
        return self._interrupt_holder(entry, by=None)

    def job_info(self, domain: str) -> JobInfo | None:
        """The held job of ``domain`` and its queue, or None if nobody holds it."""
        entry = self._entries.get(domain)
        if entry is None:
            return None
        return self._info(domain, entry, trio.current_time())

    def list_jobs(self) -> list[JobInfo]:
        """Every held job with its queue, ordered by domain name."""
        now = trio.current_time()
        return [self._info(domain, entry, now) for domain, entry in sorted(self._entries.items())]

    def statistics(self) -> JobStatistics:
        """Return a frozen snapshot of the counters."""
        return JobStatistics(
            max_queued=self._max_queued,
            max_queued_queries=self._max_queued_queries,
            query_lane=self._query_lane,
            wait_timeout=self._wait_timeout,
            held=len(self._entries),
            queued=self._queued,
            queued_queries=self._queued_queries,
            acquired=self._acquired,
            rejected=self._rejected,
            rejected_queries=self._rejected_queries,
            timeouts=self._timeouts,
            abandoned=self._abandoned,
            interrupted=self._interrupted,
        )

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _pick(entry: _Entry, after_query: bool) -> dict[_Claim, None] | None:
        """The queue whose head gets the job after a holder (a query holder if
        ``after_query``): destroys first, then the lane opposite the holder's
        if it has waiters, else the other one; None when nobody waits."""
        if entry.destroyers:
            return entry.destroyers
        if entry.queries and (not after_query or not entry.waiters):
            return entry.queries
        return entry.waiters or None

    @classmethod
    def _info(cls, domain: str, entry: _Entry, now: float) -> JobInfo:
        # Every waiter in the order _release will grant the job, were nobody
        # else to come or go.
        ahead = _Entry(entry.holder)
        ahead.destroyers = dict(entry.destroyers)
        ahead.waiters = dict(entry.waiters)
        ahead.queries = dict(entry.queries)
        after_query = entry.holder.query
        order: list[_Claim] = []
        while (queue := cls._pick(ahead, after_query)) is not None:
            nxt = next(iter(queue))
            del queue[nxt]
            order.append(nxt)
            after_query = nxt.query
        holder = entry.holder
        assert holder.owner is not None
        return JobInfo(
            domain=domain,
            kind=holder.kind,
            owner=holder.owner,
            held_seconds=now - holder.owner.started,
            queued=len(order),
            queued_queries=len(entry.queries),
            waiters=tuple(
                QueuedJob(w.kind, w.procedure, w.client, w.since, now - w.since) for w in order
            ),
            interrupted=holder.interrupted,
        )

    @asynccontextmanager
    async def _hold(self, claim: _Claim) -> AsyncIterator[None]:
        await self._acquire(claim)
        try:
            with claim.scope:
                try:
                    yield
                except Exception as exc:
                    if claim.interrupted:
                        raise self._destroyed(claim) from exc
                    raise
            # Only an interruption cancels the holder's scope, so a swallowed
            # Cancelled always means "destroyed": the block never swallows.
            if claim.scope.cancelled_caught:
                raise self._destroyed(claim) from None
        finally:
            self._release(claim)

    async def _acquire(self, claim: _Claim) -> None:
        await trio.sleep(0)  # noqa: ASYNC115 (a checkpoint without trio.lowlevel)
        domain = claim.domain
        now = trio.current_time()
        entry = self._entries.get(domain)
        if entry is None:
            self._entries[domain] = _Entry(claim)
            self._grant(claim, now)
            return
        if claim.kind is JobKind.DESTROY:
            queue = entry.destroyers
            if entry.holder.kind is not JobKind.DESTROY:
                self._interrupt_holder(entry, by=claim)
        else:
            queue, bound, name = (
                (entry.queries, self._max_queued_queries, "max_queued_queries")
                if claim.query
                else (entry.waiters, self._max_queued, "max_queued")
            )
            if bound and len(queue) >= bound:
                self._rejected += 1
                self._rejected_queries += claim.query
                who = "queries" if claim.query else "callers"
                why = f"{len(queue)} {who} already wait ({name}={bound})"
                seen = (entry.holder.owner, now, entry.queued())
                raise self._refusal(JobQueueFull, domain, seen, why)
        claim.since = now
        queue[claim] = None
        self._count_queued(claim, 1)
        timeout = self._wait_timeout
        try:
            with trio.CancelScope(deadline=math.inf if timeout is None else now + timeout) as scope:
                try:
                    await claim.granted.wait()
                except BaseException:
                    self._leave(entry, queue, claim)
                    raise
        except BaseException:
            self._abandoned += 1
            raise
        if scope.cancelled_caught:
            self._timeouts += 1
            raise self._refusal(JobTimeout, domain, claim.seen, f"waited {timeout:g} s")
        if claim.interrupted:
            # Granted, then interrupted before this task even resumed.
            self._release(claim)
            raise self._destroyed(claim)

    def _leave(self, entry: _Entry, queue: dict[_Claim, None], claim: _Claim) -> None:
        """A waiter stops waiting (cancelled or timed out)."""
        if claim.owner is None:
            del queue[claim]
            self._count_queued(claim, -1)
            claim.seen = (entry.holder.owner, trio.current_time(), entry.queued())
        else:
            # Granted after its cancellation was delivered but before it ran:
            # it never held the job, so pass the job on.
            self._acquired -= 1
            self._release(claim)

    def _grant(self, claim: _Claim, now: float) -> None:
        claim.owner = JobOwner(procedure=claim.procedure, client=claim.client, started=now)
        self._acquired += 1
        claim.granted.set()

    def _count_queued(self, claim: _Claim, delta: int) -> None:
        self._queued += delta
        if claim.query:
            self._queued_queries += delta

    @staticmethod
    def _refusal(
        error: type[E], domain: str, seen: tuple[JobOwner | None, float, int], why: str
    ) -> E:
        holder, now, queued = seen
        assert holder is not None
        held = now - holder.started
        message = (
            f"cannot acquire job for domain {domain!r}: held by {holder.procedure} "
            f"for client {holder.client} for {held:.1f} s; {why}"
        )
        return error(
            message,
            domain=domain,
            holder={
                "procedure": holder.procedure,
                "client": holder.client,
                "held_seconds": round(held, 3),
            },
            queued=queued,
        )

    def _interrupt_holder(self, entry: _Entry, by: _Claim | None) -> bool:
        holder = entry.holder
        if holder.interrupted:
            return False
        holder.interrupted = True
        holder.by = by
        holder.scope.cancel()
        self._interrupted += 1
        return True

    def _release(self, claim: _Claim) -> None:
        entry = self._entries[claim.domain]
        assert entry.holder is claim
        queue = self._pick(entry, claim.query)
        if queue is None:
            del self._entries[claim.domain]
            return
        nxt = next(iter(queue))
        del queue[nxt]
        self._count_queued(nxt, -1)
        now = trio.current_time()
        nxt.seen = (claim.owner, now, entry.queued())
        entry.holder = nxt
        self._grant(nxt, now)

    @staticmethod
    def _destroyed(claim: _Claim) -> DomainDestroyed:
        by = claim.by
        who = f" by {by.procedure} for client {by.client}" if by else " (job interrupted)"
        return DomainDestroyed(
            f"domain {claim.domain!r} was destroyed{who} while "
            f"{claim.procedure} for client {claim.client} held its job",
            domain=claim.domain,
            procedure=claim.procedure,
            client=claim.client,
            by=None if by is None else {"procedure": by.procedure, "client": by.client},
        )
