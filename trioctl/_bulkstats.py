"""``connect.get_all_domain_stats``: every domain's stats in one call, never
waiting on a hung one.

libvirt's ``virConnectGetAllDomainStats`` walks the domains and takes each
one's job in turn, so one hung QEMU stalls the whole collection; its later
``VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT`` flag skips domains whose job is
busy. Here NOWAIT is the default, and the walk is concurrent:

* every selected domain is gathered in its own task of one nursery, under its
  own deadline (:data:`NOWAIT_SECONDS`, or the caller's ``wait``, counted
  from the call's start); without ``wait``, at most
  :data:`NOWAIT_CONCURRENCY` are asked at once;
* without ``wait``, a domain whose job is held, whose monitor is
  unresponsive or reconnecting, is reported at once from its cached state
  (which names the job's holder), marked with why, never queued for;
* a domain whose monitor looks fine but does not answer within the deadline
  is reported the same way, ``skipped: "timeout"``; the monitor is not marked
  unresponsive for that (its own ``monitor_timeout`` decides that).

So one call costs at most one deadline whatever hangs. A domain that timed
out is remembered (until it answers one of these calls) and asked last, so
that freshly hung monitors do not take the slots of healthy ones call after
call.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import TYPE_CHECKING, Final

import trio

from ._errors import (
    InvalidParams,
    JobQueueFull,
    JobTimeout,
    MonitorUnresponsive,
    NoDomain,
    OperationInvalid,
    TrioctlError,
)
from ._jobs import JobKind
from ._models import (
    MAX_WAIT_SECONDS,
    NOWAIT_SECONDS,
    AllDomainStats,
    DomainInfo,
    DomainState,
    DomainStats,
    DomainStatsRecord,
    MonitorState,
)

if TYPE_CHECKING:
    from ._driver import Driver

__all__ = [
    "MAX_WAIT_SECONDS",
    "NOWAIT_SECONDS",
    "PROCEDURE",
    "AllDomainStats",
    "DomainStatsRecord",
    "get_all_domain_stats",
]

PROCEDURE: Final = "connect.get_all_domain_stats"

NOWAIT_CONCURRENCY: Final = 50
"""Without ``wait``: domains asked at once, at most. Beyond it they wait for
a slot (within the same deadline): a thousand round trips started together
flood the event loop, and the deadline's cancellation then takes as long
again to be served."""

_LIVE: Final = (DomainState.RUNNING, DomainState.PAUSED)

_suspects: weakref.WeakKeyDictionary[Driver, set[str]] = weakref.WeakKeyDictionary()
"""Per driver: domains whose last bulk query timed out."""


def _cached_reason(info: DomainInfo) -> str | None:
    """Why a domain is reported from cached state without asking, in NOWAIT."""
    if info.state not in _LIVE:
        return "not-running"
    if info.job is not None:
        return "job-held"
    if info.monitor is MonitorState.UNRESPONSIVE:
        return "unresponsive"
    if info.monitor is not MonitorState.OK:
        return "reconnecting"
    return None


async def get_all_domain_stats(
    driver: Driver,
    *,
    names: list[str] | None = None,
    states: list[DomainState] | None = None,
    wait: float | None = None,
    client: str = "local",
) -> AllDomainStats:
    """Stats of every domain (or those in ``names``, in ``states``).

    Args:
        wait: None (NOWAIT): busy, unresponsive and reconnecting domains are
            reported from cached state at once, the others get
            :data:`NOWAIT_SECONDS`. A number of seconds (up to
            :data:`MAX_WAIT_SECONDS`): every running domain is queried, and
            may wait up to that long for its job and its monitor.

    Raises:
        NoDomain: a name in ``names`` is not defined.
        InvalidParams: ``wait`` out of range.
    """
    if wait is not None and not (0 < wait <= MAX_WAIT_SECONDS):
        raise InvalidParams(
            f"wait must be more than 0 and at most {MAX_WAIT_SECONDS:g} seconds",
            field="wait",
        )
    started = time.perf_counter()
    if names is None:
        infos = driver.list_domains()
    else:
        infos = [driver.get_info(n) for n in sorted(set(names))]
    if states is not None:
        wanted = frozenset(states)
        infos = [i for i in infos if i.state in wanted]
    records: list[DomainStatsRecord | None] = [None] * len(infos)
    suspects = _suspects.setdefault(driver, set())
    # Suspects last: tasks take the slots in the order they start.
    order = sorted(range(len(infos)), key=lambda i: infos[i].name in suspects)
    deadline = trio.current_time() + (NOWAIT_SECONDS if wait is None else wait)
    slots = trio.CapacityLimiter(NOWAIT_CONCURRENCY) if wait is None else None
    async with trio.open_nursery() as nursery:
        for index in order:
            info = infos[index]
            reason = _cached_reason(info) if wait is None else None
            if reason is None and info.state not in _LIVE:
                reason = "not-running"
            if reason is not None:
                records[index] = DomainStatsRecord(info.name, info, None, reason)
            else:
                nursery.start_soon(
                    _gather, driver, info, deadline, slots, suspects, client, records, index
                )
    done = [r for r in records if r is not None]
    fresh = sum(1 for r in done if r.stats is not None)
    return AllDomainStats(
        domains=done,
        fresh=fresh,
        skipped=len(done) - fresh,
        elapsed_seconds=round(time.perf_counter() - started, 4),
    )


async def _gather(
    driver: Driver,
    info: DomainInfo,
    deadline: float,
    slots: trio.CapacityLimiter | None,
    suspects: set[str],
    client: str,
    records: list[DomainStatsRecord | None],
    index: int,
) -> None:
    name = info.name
    stats: DomainStats | None = None
    skipped: str | None = None
    error: str | None = None
    asked = False
    with trio.move_on_at(deadline):
        try:
            async with slots if slots is not None else contextlib.nullcontext():
                async with driver.jobs.job(
                    name, JobKind.QUERY, procedure=PROCEDURE, client=client
                ) as job:
                    asked = True
                    stats = await driver.get_stats_locked(job)
        except (JobQueueFull, JobTimeout) as exc:
            skipped, error = "job-held", exc.message
        except MonitorUnresponsive as exc:
            unresponsive = driver.get_info(name).monitor is MonitorState.UNRESPONSIVE
            skipped, error = ("unresponsive" if unresponsive else "reconnecting"), exc.message
        except OperationInvalid:
            skipped = "not-running"
        except NoDomain:
            skipped = "not-running"
        except TrioctlError as exc:
            skipped, error = "error", exc.message
    if stats is None and skipped is None:
        skipped = "timeout"
        if asked:
            suspects.add(name)
    elif stats is not None:
        suspects.discard(name)
    try:
        now = driver.get_info(name)
    except NoDomain:  # undefined meanwhile: its last known state
        now = info
    records[index] = DomainStatsRecord(name, now, stats, skipped, error)
