"""The dispatch core (trioctl._dispatch): pools + domain jobs, in virtual time.

The centrepiece is the starvation scenario of the issue, with in-process jobs
that block forever in place of hung QEMUs: K hung domains, C callers hammering
them far beyond every limit, then one call on a healthy domain and one
high-priority call. trioctl's order starts both at once; the legacy orders
(libvirt 9.0 and pre-patch libvirt) starve them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import pytest
import trio
import trio.testing

from trioctl._dispatch import (
    Dispatcher,
    DispatchMode,
    DispatchStatistics,
    legacy_limits,
    open_dispatcher,
)
from trioctl._errors import DomainDestroyed, JobQueueFull, JobTimeout, ServerBusy
from trioctl._jobs import DEFAULT_MAX_QUEUED, DomainJobs, JobKind
from trioctl._pools import PoolLimits, Priority, open_worker_pools

MOCK = trio.testing.MockClock


async def hung_monitor_call() -> None:
    """A monitor command to a QEMU that never answers."""
    await trio.sleep_forever()


async def answer() -> str:
    await trio.lowlevel.checkpoint()
    return "ok"


def monitor_call(
    dispatcher: Dispatcher,
    domain: str,
    client: str,
    fn: Callable[[], Awaitable[object]] = hung_monitor_call,
    kind: JobKind = JobKind.MODIFY,
) -> Callable[[], Awaitable[object]]:
    return partial(
        dispatcher.call,
        Priority.LOW,
        fn,
        domain=domain,
        kind=kind,
        procedure="domain.monitor_command",
        client=client,
    )


async def tolerating_timeout(call: Callable[[], Awaitable[object]]) -> None:
    with contextlib.suppress(JobTimeout):
        await call()


# -- the starvation scenario -----------------------------------------------------------


@attrs.frozen
class Setup:
    mode: DispatchMode
    limits: PoolLimits
    max_queued: int
    healthy_low_starves: bool
    high_starves: bool


SETUPS = {
    # trioctl: callers wait in the domain's bounded queue, holding no worker.
    "trioctl": Setup(
        DispatchMode.DEFAULT,
        PoolLimits(min_workers=2, max_workers=8, prio_workers=2, max_pending=16),
        max_queued=3,
        healthy_low_starves=False,
        high_starves=False,
    ),
    # libvirt 9.0: priority workers, but workers wait for the domain job and
    # domain queues are unbounded (qemu.conf max_queued = 0).
    "libvirt-9": Setup(
        DispatchMode.LEGACY,
        PoolLimits(min_workers=2, max_workers=8, prio_workers=2, max_pending=1000),
        max_queued=0,
        healthy_low_starves=True,
        high_starves=False,
    ),
    # Pre-patch libvirt: no priority workers either.
    "pre-patch": Setup(
        DispatchMode.LEGACY,
        PoolLimits(min_workers=2, max_workers=8, prio_workers=0, max_pending=1000),
        max_queued=0,
        healthy_low_starves=True,
        high_starves=True,
    ),
}

HUNG = [f"hung{i}" for i in range(4)]  # K = 4 < max_workers
CALLERS = 60  # C: beyond workers + prio workers, pending in trioctl, max_queued


@pytest.mark.parametrize("name", list(SETUPS))
async def test_hung_domains_cannot_starve_healthy_or_high_calls(
    name: str, autojump_clock: MOCK
) -> None:
    setup = SETUPS[name]
    refusals: dict[str, int] = {}

    async def hammer(dispatcher: Dispatcher, i: int) -> None:
        while True:
            try:
                await monitor_call(dispatcher, HUNG[i % len(HUNG)], f"h{i}")()
            except (JobQueueFull, JobTimeout, ServerBusy) as exc:
                refusals[exc.reason] = refusals.get(exc.reason, 0) + 1
            await trio.sleep(0.2)  # the client's turnaround before it retries

    started: dict[str, float] = {}

    async def probe(label: str) -> str:
        started[label] = trio.current_time()
        await trio.lowlevel.checkpoint()
        return label

    async with (
        open_dispatcher(setup.mode, limits=setup.limits, max_queued=setup.max_queued) as dispatcher,
        trio.open_nursery() as nursery,
    ):
        for i in range(CALLERS):
            nursery.start_soon(hammer, dispatcher, i)
        await trio.sleep(1)  # the storm is established
        t0 = trio.current_time()
        stats = dispatcher.statistics()

        # A LOW call on a healthy domain (through its job) and a HIGH call.
        async def healthy_low() -> None:
            await dispatcher.call(
                Priority.LOW,
                probe,
                "healthy",
                domain="vm-ok",
                kind=JobKind.QUERY,
                procedure="domain.get_stats",
                client="probe",
            )

        async def high() -> None:
            await dispatcher.call(
                Priority.HIGH, probe, "high", procedure="connect.list_domains", client="probe"
            )

        async with trio.open_nursery() as probes:
            probes.start_soon(healthy_low)
            probes.start_soon(high)
            probes.cancel_scope.deadline = t0 + 60

        if setup.healthy_low_starves:
            assert "healthy" not in started  # not even begun after 60 s
        else:
            assert started["healthy"] == t0  # at once, in virtual time
        if setup.high_starves:
            # It waits until a worker parked on a job lock gives up (JOB_TIMEOUT
            # after 30 s); general workers then take HIGH jobs first (libvirt's
            # pre-patch pool was FIFO, so there it would wait even longer).
            assert started.get("high", 1e9) - t0 >= 29.0
        else:
            assert started["high"] == t0

        if setup.mode is DispatchMode.DEFAULT:
            # Each hung domain holds exactly its own running job; the rest of
            # the storm waits (or is refused) without any worker.
            assert stats.pools.running == len(HUNG)
            assert stats.pools.workers - stats.pools.free_workers == len(HUNG)
            assert stats.pools.workers < setup.limits.max_workers  # room to grow
            assert stats.pools.pending_low == 0
            assert stats.jobs.queued == len(HUNG) * setup.max_queued
            assert refusals.get("JOB_QUEUE_FULL", 0) > 0
        else:
            # Every general worker is parked on a hung domain's job lock.
            assert stats.pools.running == setup.limits.max_workers
            assert stats.pools.free_workers == 0
            assert stats.pools.pending_low == CALLERS - setup.limits.max_workers
            assert stats.jobs.held + stats.jobs.queued == setup.limits.max_workers
        nursery.cancel_scope.cancel()


# -- what waits where ----------------------------------------------------------------------


async def test_default_mode_waiting_holds_no_worker(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=2, max_workers=3, prio_workers=1, max_pending=5)
    async with open_dispatcher(limits=limits) as dispatcher, trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(monitor_call(dispatcher, "hung", f"c{i}"))
        await trio.testing.wait_all_tasks_blocked()
        s = dispatcher.statistics()
        assert s.mode is DispatchMode.DEFAULT
        assert (s.pools.running, s.pools.free_workers, s.pools.pending_low) == (1, 1, 0)
        assert (s.jobs.held, s.jobs.queued) == (1, 9)
        [info] = dispatcher.jobs.list_jobs()
        assert info.owner.procedure == "domain.monitor_command"
        clients = {info.owner.client, *(w.client for w in info.waiters)}
        assert clients == {f"c{i}" for i in range(10)}
        nursery.cancel_scope.cancel()


async def test_legacy_mode_waiting_holds_workers(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=2, max_workers=3, prio_workers=1, max_pending=5)
    async with (
        open_dispatcher(DispatchMode.LEGACY, limits=limits) as dispatcher,
        trio.open_nursery() as nursery,
    ):
        assert dispatcher.jobs.max_queued == 0
        for i in range(6):
            nursery.start_soon(tolerating_timeout, monitor_call(dispatcher, "hung", f"c{i}"))
        await trio.testing.wait_all_tasks_blocked()
        s = dispatcher.statistics()
        assert (s.pools.running, s.pools.free_workers, s.pools.pending_low) == (3, 0, 3)
        assert (s.jobs.held, s.jobs.queued) == (1, 2)
        # At 30 s the two waiting workers time out and take the next two.
        await trio.sleep(31)
        assert dispatcher.statistics().jobs.timeouts == 2
        nursery.cancel_scope.cancel()


async def test_open_dispatcher_defaults_follow_the_mode() -> None:
    with trio.fail_after(5):
        async with open_dispatcher() as d:
            assert d.mode is DispatchMode.DEFAULT
            assert d.pools.limits == PoolLimits()
            assert (d.jobs.max_queued, d.jobs.wait_timeout) == (DEFAULT_MAX_QUEUED, 30.0)
            assert (d.jobs.query_lane, d.jobs.max_queued_queries) == (True, 32)
        async with open_dispatcher(DispatchMode.LEGACY) as d:
            assert d.pools.limits == legacy_limits()
            assert legacy_limits().prio_workers == 0
            assert (d.jobs.max_queued, d.jobs.wait_timeout) == (0, 30.0)
            assert d.jobs.query_lane is False
            assert isinstance(d.statistics(), DispatchStatistics)


async def test_call_without_domain_and_argument_checks(autojump_clock: MOCK) -> None:
    async with open_dispatcher() as dispatcher:
        assert await dispatcher.call(Priority.HIGH, answer, procedure="p", client="c") == "ok"
        with pytest.raises(TypeError, match="needs a job kind"):
            await dispatcher.call(Priority.LOW, answer, domain="vm1", procedure="p", client="c")
        with pytest.raises(TypeError, match="without domain"):
            await dispatcher.call(
                Priority.LOW, answer, kind=JobKind.QUERY, procedure="p", client="c"
            )
        assert dispatcher.jobs.list_jobs() == []


@pytest.mark.parametrize("mode", list(DispatchMode))
async def test_handler_errors_pass_through_and_release_the_job(
    mode: DispatchMode, autojump_clock: MOCK
) -> None:
    class Boom(Exception):
        pass

    async def explode() -> None:
        raise Boom

    async with open_dispatcher(mode) as dispatcher:
        with pytest.raises(Boom):
            await monitor_call(dispatcher, "vm1", "c1", explode)()
        assert dispatcher.jobs.list_jobs() == []
        assert await monitor_call(dispatcher, "vm1", "c1", answer)() == "ok"


async def test_server_busy_releases_the_job(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=0, max_pending=1)
    async with open_dispatcher(limits=limits) as dispatcher, trio.open_nursery() as nursery:
        nursery.start_soon(monitor_call(dispatcher, "a", "c1"))
        nursery.start_soon(monitor_call(dispatcher, "b", "c2"))
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.statistics().pools.pending_low == 1
        with pytest.raises(ServerBusy):
            await monitor_call(dispatcher, "c", "c3", answer)()
        assert [j.domain for j in dispatcher.jobs.list_jobs()] == ["a", "b"]
        nursery.cancel_scope.cancel()


async def test_cancelled_call_releases_the_job_after_the_handler_ended(
    autojump_clock: MOCK,
) -> None:
    log: list[str] = []

    async def slow_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(3)
            log.append(f"handler ended at {trio.current_time()}")

    async def next_caller() -> None:
        await monitor_call(dispatcher, "vm1", "c2", answer)()
        log.append(f"next caller got the job at {trio.current_time()}")

    async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:
        with trio.move_on_after(10):
            nursery.start_soon(next_caller)
            await monitor_call(dispatcher, "vm1", "c1", slow_cleanup)()
    assert log == ["handler ended at 13.0", "next caller got the job at 13.0"]


@pytest.mark.parametrize("mode", list(DispatchMode))
async def test_destroy_interrupts_a_hung_holder_and_frees_its_worker(
    mode: DispatchMode, autojump_clock: MOCK
) -> None:
    limits = PoolLimits(min_workers=1, max_workers=2, prio_workers=1, max_pending=10)
    outcome: list[str] = []

    async def victim() -> None:
        with pytest.raises(DomainDestroyed) as info:
            await monitor_call(dispatcher, "vm1", "c7")()
        outcome.append(f"victim: {info.value.reason} at {trio.current_time()}")

    async def destroy() -> str:
        outcome.append(f"destroy ran at {trio.current_time()}")
        await trio.lowlevel.checkpoint()
        return "destroyed"

    async with open_dispatcher(mode, limits=limits) as dispatcher, trio.open_nursery() as nursery:
        nursery.start_soon(victim)
        for i in range(3):  # queued behind the hung holder
            nursery.start_soon(monitor_call(dispatcher, "vm1", f"w{i}", answer, JobKind.QUERY))
        await trio.sleep(5)
        assert dispatcher.statistics().pools.running >= 1
        result = await dispatcher.call(
            Priority.HIGH,
            destroy,
            domain="vm1",
            kind=JobKind.DESTROY,
            procedure="domain.destroy",
            client="admin",
        )
        assert result == "destroyed"
        assert trio.current_time() == 5.0
        await trio.testing.wait_all_tasks_blocked()
        s = dispatcher.statistics()
        assert (s.pools.running, s.jobs.held, s.jobs.queued, s.jobs.interrupted) == (0, 0, 0, 1)
        assert s.jobs.acquired == 5
    assert sorted(outcome) == ["destroy ran at 5.0", "victim: DOMAIN_DESTROYED at 5.0"]


async def test_dispatcher_over_caller_built_parts(autojump_clock: MOCK) -> None:
    jobs = DomainJobs(max_queued=1, wait_timeout=5)
    async with open_worker_pools(PoolLimits(min_workers=1)) as pools:
        dispatcher = Dispatcher(pools, jobs)
        assert dispatcher.pools is pools and dispatcher.jobs is jobs
        timed_out: list[float] = []

        async def second() -> None:
            with pytest.raises(JobTimeout):
                await monitor_call(dispatcher, "vm1", "c2")()
            timed_out.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor_call(dispatcher, "vm1", "c1"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(
                JobQueueFull, match=r"held by domain\.monitor_command for client c1"
            ):
                await monitor_call(dispatcher, "vm1", "c3", answer)()
            await trio.sleep(10)
            assert timed_out == [5.0]
            assert jobs.statistics().timeouts == 1
            nursery.cancel_scope.cancel()
