"""Per-domain job queues: libvirt's domain job (``virDomainObjBeginJob``) on Trio.

* A domain has at most one **holder**; everybody else waits in the domain's
  FIFO queue for at most ``wait_timeout`` seconds (then
  :class:`~trioctl.JobTimeout`). At most ``max_queued`` callers wait per domain
  (0: unbounded, libvirt's default); the next is refused at once with
  :class:`~trioctl.JobQueueFull`. The holder does not count against the bound.
  Both errors name the holder, its client and for how long it has held the job.
* **Query lane.** :attr:`JobKind.QUERY` callers wait in a queue of their own,
  bounded by ``max_queued_queries``. While both queues have waiters the job
  alternates between them (after a query the next modify, after anything else
  the next query), so readers cannot fill the writers' queue and a writer
  waits for at most one query per writer ahead of it. ``query_lane=False`` is
  libvirt's one queue.
* A :attr:`JobKind.DESTROY` caller is exempt from the bounds, waits ahead of
  every other kind (destroys among themselves FIFO) and **interrupts** the
  holder: only the holder's ``async with`` body is cancelled, and the block
  raises :class:`~trioctl.DomainDestroyed` instead of :class:`trio.Cancelled`.
  A destroy never interrupts another destroy.

The releasing holder hands the job to the next waiter directly (it sets the
waiter's :class:`trio.Event`), so nobody barges in; a domain's entry exists only
while its job is held, so an idle domain costs nothing. A waiter holds no pool
worker, only its own task (``trioctl._dispatch`` orders the two waits).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, TypeVar

import attrs
import trio

from ._errors import DomainDestroyed, InvalidParams, JobQueueFull, JobTimeout, TrioctlError
from ._models import JobKind

__all__ = [
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_QUEUED_QUERIES",
    "DEFAULT_WAIT_TIMEOUT",
    "DomainJobs",
    "HeldJobInfo",
    "JobHandle",
    "JobKind",
    "JobOwner",
    "JobStatistics",
    "QueuedJob",
]

E = TypeVar("E", bound=TrioctlError)

#: Waiters allowed per domain by default: a waiter holds no worker, so the
#: bound is feedback: 32 covers six clients with ``max_client_requests`` (5)
#: calls each, and a caller behind more jobs of a domain that is probably
#: hung learns it at once instead of after 30 s.
DEFAULT_MAX_QUEUED: Final = 32
#: Queries allowed to wait per domain by default, in their own queue.
DEFAULT_MAX_QUEUED_QUERIES: Final = 32
#: libvirt's wait for a domain's job (``VIR_JOB_WAIT_TIME``).
DEFAULT_WAIT_TIMEOUT: Final = 30.0


@attrs.frozen
class JobOwner:
    """Who holds a domain's job: ``procedure`` (e.g. ``domain.reset``),
    ``client`` id, and ``started`` (``trio.current_time()`` when granted)."""

    procedure: str
    client: str
    started: float


@attrs.frozen
class QueuedJob:
    """A waiting caller: the ``kind`` it asked for, its ``procedure`` and
    ``client``, ``since`` when (``trio.current_time()``) and ``waited_seconds``."""

    kind: JobKind
    procedure: str
    client: str
    since: float
    waited_seconds: float


@attrs.frozen
class HeldJobInfo:
    """One domain's held job and its queue (``admin.list_jobs``).

    Attributes:
        domain, kind, owner, held_seconds: the held job.
        queued: callers waiting, both queues; ``queued_queries`` in the lane.
        waiters: the waiters in the order they will get the job, next first.
        interrupted: the holder was interrupted and has not released yet.
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
    """Settings and counters of a :class:`DomainJobs` registry.

    Attributes:
        max_queued, max_queued_queries, query_lane, wait_timeout: the settings.
        held: domains whose job is held; ``queued`` callers waiting (all
            domains, queries included); ``queued_queries`` in query lanes.
        acquired: jobs granted; ``rejected`` refused ``JOB_QUEUE_FULL``
            (``rejected_queries`` of them queries); ``timeouts``; ``abandoned``
            waits ended by the caller's cancellation; ``interrupted`` holders.
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

    def __init__(self, domain: str, kind: JobKind, procedure: str, client: str, query: bool):
        self.domain, self.kind, self.procedure, self.client = domain, kind, procedure, client
        self.query = query  # waits in the query lane (as holder, lets a modify go next)
        self.since = 0.0
        self.owner: JobOwner | None = None  # once granted
        self.granted = trio.Event()
        self.interrupted = False
        self.by: _Claim | None = None  # the destroy that interrupted it
        self.scope = trio.CancelScope()  # the holder's body; an interruption cancels it
        self.seen: tuple[JobOwner | None, float, int] = (None, 0.0, 0)  # holder, for errors


class _Entry:
    """A domain whose job is held; its waiters in insertion-ordered dicts."""

    __slots__ = ("destroyers", "holder", "queries", "waiters")

    def __init__(self, holder: _Claim) -> None:
        self.holder = holder
        self.destroyers: dict[_Claim, None] = {}
        self.waiters: dict[_Claim, None] = {}
        self.queries: dict[_Claim, None] = {}

    def pick(self, after_query: bool) -> dict[_Claim, None] | None:
        """The queue whose head is next after a holder (a query if
        ``after_query``): destroys, then the other lane if it has waiters."""
        if self.destroyers:
            return self.destroyers
        if self.queries and (not after_query or not self.waiters):
            return self.queries
        return self.waiters or None

    def queued(self) -> int:
        return len(self.destroyers) + len(self.waiters) + len(self.queries)


class JobHandle:
    """One caller's claim on a domain's job: an async context manager, from
    :meth:`DomainJobs.job` (or already held, from :meth:`DomainJobs.claim`),
    that can be entered once; inside, the caller holds the job."""

    __slots__ = ("_claim", "_entered", "_hold", "_release")

    def __init__(
        self,
        claim: _Claim,
        hold: AbstractAsyncContextManager[None],
        release: Callable[[_Claim], None] | None = None,
    ) -> None:
        self._claim, self._hold, self._entered = claim, hold, False
        self._release = release  # a job claimed at once: gives it back unentered

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

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._hold.__aexit__(*exc_info)

    def discard(self) -> None:
        """Give back a job taken by :meth:`DomainJobs.claim` that was never
        entered (the next waiter gets it); does nothing once entered, or for
        a handle of :meth:`DomainJobs.job`."""
        if not self._entered and self._release is not None:
            self._entered = True
            self._release(self._claim)


class DomainJobs:
    """The job registry of every domain; see the module docs.

    Args:
        max_queued: non-query, non-destroy waiters per domain; 0: unbounded.
        max_queued_queries: waiters in the query lane per domain; 0: unbounded.
        query_lane: False: libvirt's one queue, a query is a job like any other.
        wait_timeout: seconds before ``JOB_TIMEOUT``; None: forever; 0: refuse
            at once whenever the job is held.

    Raises:
        InvalidParams: a bound is not a non-negative integer, ``query_lane``
            not a bool, or ``wait_timeout`` negative or NaN.
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
                why = f"{field} must be a non-negative integer, not {value!r}"
                raise InvalidParams(why, field=field)
        if not isinstance(query_lane, bool):
            why = f"query_lane must be true or false, not {query_lane!r}"
            raise InvalidParams(why, field="query_lane")
        if wait_timeout is not None and (math.isnan(wait_timeout) or wait_timeout < 0):
            why = f"wait_timeout must be a non-negative number of seconds or None, not {wait_timeout!r}"  # noqa: E501
            raise InvalidParams(why, field="wait_timeout")
        self._max_queued, self._max_queued_queries = max_queued, max_queued_queries
        self._query_lane, self._wait_timeout = query_lane, wait_timeout
        self._entries: dict[str, _Entry] = {}
        self._acquired = self._rejected = self._rejected_queries = 0
        self._timeouts = self._abandoned = self._interrupted = 0

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
        """Claim ``domain``'s job for an ``async with`` block (see the module docs).

        Raises (on entering):
            JobQueueFull: the claim's queue is at its bound; at once.
            JobTimeout: waited ``wait_timeout`` seconds without the job.
            DomainDestroyed: granted, but interrupted before the block started.

        Raises (on leaving):
            DomainDestroyed: the holder was interrupted and its body cancelled
                or failed (``__cause__``: the body's exception). A body that
                finished anyway returns normally; a cancellation from outside
                the block propagates unchanged.
        """
        query = kind is JobKind.QUERY and self._query_lane
        claim = _Claim(domain, kind, procedure, client, query)
        return JobHandle(claim, self._hold(claim))

    def claim(self, domain: str, kind: JobKind, *, procedure: str, client: str) -> JobHandle:
        """Take ``domain``'s job now, synchronously (no checkpoint): from this
        call on, every other caller waits behind it as behind any holder.

        The handle holds the job already; its ``async with`` block (entered
        later, in whichever task) runs as the holder's block of :meth:`job`
        does, and leaving it releases the job. A handle that is not going to
        be entered must be given back with :meth:`JobHandle.discard`.

        Raises:
            RuntimeError: the job of ``domain`` is held already.
        """
        if domain in self._entries:
            raise RuntimeError(f"the job of domain {domain!r} is held already")
        query = kind is JobKind.QUERY and self._query_lane
        claim = _Claim(domain, kind, procedure, client, query)
        self._entries[domain] = _Entry(claim)
        self._grant(claim, trio.current_time())
        return JobHandle(claim, self._hold(claim, claimed=True), self._release)

    def interrupt(self, domain: str) -> bool:
        """Interrupt ``domain``'s holder as a destroy would; False if there was
        no holder or it was interrupted already."""
        entry = self._entries.get(domain)
        return entry is not None and self._interrupt_holder(entry, by=None)

    def job_info(self, domain: str) -> HeldJobInfo | None:
        """The held job of ``domain`` and its queue, or None if nobody holds it."""
        entry = self._entries.get(domain)
        return None if entry is None else self._info(domain, entry, trio.current_time())

    def list_jobs(self) -> list[HeldJobInfo]:
        """Every held job with its queue, ordered by domain name."""
        now = trio.current_time()
        return [self._info(domain, entry, now) for domain, entry in sorted(self._entries.items())]

    def statistics(self) -> JobStatistics:
        """Return a frozen snapshot of the settings and counters."""
        entries = self._entries.values()
        return JobStatistics(
            max_queued=self._max_queued,
            max_queued_queries=self._max_queued_queries,
            query_lane=self._query_lane,
            wait_timeout=self._wait_timeout,
            held=len(self._entries),
            queued=sum(entry.queued() for entry in entries),
            queued_queries=sum(len(entry.queries) for entry in entries),
            acquired=self._acquired,
            rejected=self._rejected,
            rejected_queries=self._rejected_queries,
            timeouts=self._timeouts,
            abandoned=self._abandoned,
            interrupted=self._interrupted,
        )

    @staticmethod
    def _info(domain: str, entry: _Entry, now: float) -> HeldJobInfo:
        # The waiters in the order _release will grant the job, were nobody
        # else to come or go.
        ahead = _Entry(entry.holder)
        ahead.destroyers, ahead.waiters = dict(entry.destroyers), dict(entry.waiters)
        ahead.queries = dict(entry.queries)
        after_query, order = entry.holder.query, list[_Claim]()
        while (queue := ahead.pick(after_query)) is not None:
            order.append(nxt := next(iter(queue)))
            del queue[nxt]
            after_query = nxt.query
        holder = entry.holder
        assert holder.owner is not None
        return HeldJobInfo(
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
    async def _hold(self, claim: _Claim, claimed: bool = False) -> AsyncIterator[None]:
        if not claimed:
            await self._acquire(claim)
        elif claim.interrupted:  # claimed, then interrupted before the block started
            self._release(claim)
            raise self._destroyed(claim)
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
        await trio.sleep(0)  # noqa: ASYNC115 (a checkpoint, public API)
        domain, now = claim.domain, trio.current_time()
        entry = self._entries.get(domain)
        if entry is None:
            self._entries[domain] = _Entry(claim)
            return self._grant(claim, now)
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
                why = f"{len(queue)} {'queries' if claim.query else 'callers'} already wait"
                seen = (entry.holder.owner, now, entry.queued())
                raise self._refusal(JobQueueFull, domain, seen, f"{why} ({name}={bound})")
        claim.since = now
        queue[claim] = None
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
        if claim.interrupted:  # granted, then interrupted before this task resumed
            self._release(claim)
            raise self._destroyed(claim)

    def _leave(self, entry: _Entry, queue: dict[_Claim, None], claim: _Claim) -> None:
        """A waiter stops waiting (cancelled or timed out)."""
        if claim.owner is None:
            del queue[claim]
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

    @staticmethod
    def _refusal(
        error: type[E], domain: str, seen: tuple[JobOwner | None, float, int], why: str
    ) -> E:
        holder, now, queued = seen
        assert holder is not None
        held = now - holder.started
        who = {"procedure": holder.procedure, "client": holder.client}
        return error(
            f"cannot acquire job for domain {domain!r}: held by {holder.procedure} "
            f"for client {holder.client} for {held:.1f} s; {why}",
            domain=domain,
            holder=who | {"held_seconds": round(held, 3)},
            queued=queued,
        )

    def _interrupt_holder(self, entry: _Entry, by: _Claim | None) -> bool:
        holder = entry.holder
        if holder.interrupted:
            return False
        holder.interrupted, holder.by = True, by
        holder.scope.cancel()
        self._interrupted += 1
        return True

    def _release(self, claim: _Claim) -> None:
        entry = self._entries[claim.domain]
        assert entry.holder is claim
        queue = entry.pick(claim.query)
        if queue is None:
            del self._entries[claim.domain]
            return
        nxt = next(iter(queue))
        del queue[nxt]
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
