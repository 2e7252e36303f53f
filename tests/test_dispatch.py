"""The dispatch core (trioctl._dispatch): pools + domain jobs, in virtual time.

The centrepiece is the starvation scenario of the issue, with in-process jobs
that block forever in place of hung QEMUs: K hung domains, C callers hammering
them far beyond every limit, then one call on a healthy domain and one
high-priority call. trioctl's order starts both at once; the legacy orders
(libvirt 9.0 and pre-patch libvirt) starve them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, strategies as st

from trioctl._dispatch import (
    Dispatcher,
    DispatchMode,
    DispatchStatistics,
    legacy_limits,
    open_dispatcher,
)
from trioctl._errors import (
    DomainDestroyed,
    JobQueueFull,
    JobTimeout,
    OperationInvalid,
    ServerBusy,
)
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


# -- shared queries ----------------------------------------------------------------------


@attrs.define
class StatsCalls:
    """A get_stats stand-in: takes 1 s, counts its runs, answers with the run's number."""

    runs: list[float] = attrs.Factory(list)
    fail: bool = False

    async def __call__(self) -> tuple[int, float]:
        self.runs.append(trio.current_time())
        await trio.sleep(1)
        if self.fail:
            raise OperationInvalid("domain 'vm1' is not running", domain="vm1")
        return len(self.runs), trio.current_time()


def stats_call(
    dispatcher: Dispatcher, stats: StatsCalls, client: str, share: object = "vm1"
) -> Callable[[], Awaitable[tuple[int, float]]]:
    return partial(
        dispatcher.call,
        Priority.LOW,
        stats,
        domain="vm1",
        kind=JobKind.QUERY,
        procedure="domain.get_stats",
        client=client,
        share=share,
    )


async def test_shared_queries_join_a_waiting_call(autojump_clock: MOCK) -> None:
    stats = StatsCalls()
    answers: dict[str, tuple[int, float]] = {}

    async def reader(client: str) -> None:
        answers[client] = await stats_call(dispatcher, stats, client)()

    async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:
        release = trio.Event()

        async def writer() -> None:
            async with dispatcher.jobs.job(
                "vm1", JobKind.MODIFY, procedure="domain.suspend", client="w"
            ):
                await release.wait()

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(40):
            nursery.start_soon(reader, f"r{i}")
        await trio.testing.wait_all_tasks_blocked()
        s = dispatcher.statistics()
        # 40 readers, one place in the query lane.
        assert (s.jobs.queued, s.jobs.queued_queries, s.flights, s.joined) == (1, 1, 1, 39)
        await trio.sleep(5)
        release.set()
    assert stats.runs == [5.0]
    assert set(answers.values()) == {(1, 6.0)}
    s = dispatcher.statistics()
    assert (s.flights, s.joined, s.shared, s.jobs.acquired) == (0, 0, 39, 2)


async def test_a_call_never_joins_one_that_has_started(autojump_clock: MOCK) -> None:
    stats = StatsCalls()
    async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:
        first: list[tuple[int, float]] = []

        async def lead() -> None:
            first.append(await stats_call(dispatcher, stats, "r1")())

        nursery.start_soon(lead)
        await trio.sleep(0.5)  # r1 runs (0 .. 1)
        assert dispatcher.statistics().flights == 0
        # r2 asked after r1's round trip began: it gets a round trip of its own.
        assert await stats_call(dispatcher, stats, "r2")() == (2, 2.0)
    assert first == [(1, 1.0)]
    assert stats.runs == [0.0, 1.0]
    assert dispatcher.statistics().shared == 0


async def test_different_keys_are_not_shared(autojump_clock: MOCK) -> None:
    stats = StatsCalls()
    async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:
        for client, key in (("a", "k1"), ("b", "k2"), ("c", "k1")):
            nursery.start_soon(stats_call(dispatcher, stats, client, key))
            await trio.testing.wait_all_tasks_blocked()
    # a holds at once; b (k2) and c (k1, while a runs) each queue for a run.
    assert stats.runs == [0.0, 1.0, 2.0]


async def test_joiners_get_a_copy_of_the_leaders_error(autojump_clock: MOCK) -> None:
    stats = StatsCalls(fail=True)
    errors: list[BaseException] = []

    async def reader(client: str) -> None:
        try:
            await stats_call(dispatcher, stats, client)()
        except OperationInvalid as exc:
            errors.append(exc)

    async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:
        await nursery.start(hold_job, dispatcher.jobs)
        for i in range(3):
            nursery.start_soon(reader, f"r{i}")
        await trio.testing.wait_all_tasks_blocked()
        dispatcher.jobs.interrupt("vm1")  # the holder leaves; r0 runs and fails
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert len(stats.runs) == 1
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3
    assert {str(e) for e in errors} == {"domain 'vm1' is not running"}
    leader = [e for e in errors if e.__cause__ is None]
    assert len(leader) == 1
    assert all(e.__cause__ is leader[0] for e in errors if e is not leader[0])


async def test_leader_cancelled_its_joiners_carry_on(autojump_clock: MOCK) -> None:
    stats = StatsCalls()
    got: dict[str, tuple[int, float]] = {}
    async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:
        await nursery.start(hold_job, dispatcher.jobs)
        leader_scope = trio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                got["r0"] = await stats_call(dispatcher, stats, "r0")()

        async def joiner(client: str) -> None:
            got[client] = await stats_call(dispatcher, stats, client)()

        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()
        for client in ("r1", "r2"):
            nursery.start_soon(joiner, client)
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.statistics().joined == 2
        leader_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        # One of the joiners leads a new flight, the other joined it.
        s = dispatcher.statistics()
        assert (s.flights, s.joined, s.jobs.queued, s.jobs.abandoned) == (1, 1, 1, 1)
        await trio.sleep(3)
        dispatcher.jobs.interrupt("vm1")
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert "r0" not in got
    assert got["r1"] == got["r2"] == (1, 4.0)
    assert stats.runs == [3.0]


@pytest.mark.parametrize("setting", ["legacy", "no lane"])
async def test_sharing_is_off_in_libvirts_model(autojump_clock: MOCK, setting: str) -> None:
    stats = StatsCalls()
    mode = DispatchMode.LEGACY if setting == "legacy" else DispatchMode.DEFAULT
    async with open_dispatcher(mode, query_lane=False) as dispatcher, trio.open_nursery() as n:
        await n.start(hold_job, dispatcher.jobs)
        for i in range(3):
            n.start_soon(stats_call(dispatcher, stats, f"r{i}"))
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.statistics().flights == 0
        dispatcher.jobs.interrupt("vm1")
    assert len(stats.runs) == 3


async def test_only_a_query_can_be_shared(autojump_clock: MOCK) -> None:
    async with open_dispatcher() as dispatcher:
        with pytest.raises(TypeError, match="only a QUERY"):
            await dispatcher.call(
                Priority.LOW,
                answer,
                domain="vm1",
                kind=JobKind.MODIFY,
                procedure="p",
                client="c",
                share="vm1",
            )


async def hold_job(
    jobs: DomainJobs, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Hold vm1's job (a writer) until interrupted."""
    with contextlib.suppress(DomainDestroyed):
        async with jobs.job("vm1", JobKind.MODIFY, procedure="domain.reset", client="w"):
            task_status.started()
            await trio.sleep_forever()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["read", "write"]),
            st.integers(0, 30),  # asks at this many tenths of a second
            st.none() | st.integers(1, 30),  # gives up after this many tenths
        ),
        min_size=1,
        max_size=25,
    )
)
def test_shared_reads_are_fresh_and_jobs_exclusive(
    calls: list[tuple[str, int, int | None]],
) -> None:
    """Random readers and writers on one domain, some giving up: a reader's
    answer always comes from a round trip that began after it asked; handlers
    never overlap (one job at a time); every reader that does not give up is
    answered; nothing is left behind."""
    running: list[str] = []
    spans: list[tuple[float, float]] = []
    answered: list[int] = []

    async def body(what: str, seconds: float) -> float:
        assert not running, running  # exclusive: nobody else runs
        running.append(what)
        began = trio.current_time()
        try:
            await trio.sleep(seconds)
        finally:
            running.remove(what)
        spans.append((began, trio.current_time()))
        return began

    async def main() -> None:
        async with open_dispatcher() as dispatcher, trio.open_nursery() as nursery:

            async def caller(i: int, kind: str, at: int, give_up: int | None) -> None:
                await trio.sleep(at / 10)
                asked = trio.current_time()
                with trio.move_on_after(math.inf if give_up is None else give_up / 10):
                    if kind == "read":
                        began = await dispatcher.call(
                            Priority.LOW,
                            body,
                            "read",
                            1.0,
                            domain="vm1",
                            kind=JobKind.QUERY,
                            procedure="domain.get_stats",
                            client=f"c{i}",
                            share="vm1",
                        )
                        assert began >= asked  # never an answer to an older question
                        answered.append(i)
                    else:
                        await dispatcher.call(
                            Priority.LOW,
                            body,
                            "write",
                            0.5,
                            domain="vm1",
                            kind=JobKind.MODIFY,
                            procedure="domain.suspend",
                            client=f"c{i}",
                        )

            for i, (kind, at, give_up) in enumerate(calls):
                nursery.start_soon(caller, i, kind, at, give_up)
        s = dispatcher.statistics()
        assert (s.flights, s.joined, s.jobs.held, s.jobs.queued) == (0, 0, 0, 0)
        assert s.shared <= len(answered)

    trio.run(main, clock=MOCK(autojump_threshold=0))
    patient = [i for i, (kind, _, wait) in enumerate(calls) if kind == "read" and wait is None]
    assert set(patient) <= set(answered)
    ordered = sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered))
