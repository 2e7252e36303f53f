"""Priority worker pools (trioctl._pools).

The stateful test drives real pools with Hypothesis' RuleBasedStateMachine.
Rules are synchronous, so the pools live in a ``trio.run`` on a helper thread
and each rule runs one step inside it through ``trio.from_thread.run``: do
the action, let every task run until all are blocked, take a snapshot. The
jobs are test functions that block until the machine releases them, so the
machine decides exactly when each job ends.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trioctl import _pools
from trioctl._errors import InvalidParams, ServerBusy
from trioctl._pools import (
    PoolLimits,
    PoolStatistics,
    Priority,
    WorkerPools,
    check_limits,
    open_worker_pools,
    serve_worker_pools,
)

MOCK = trio.testing.MockClock
T = TypeVar("T")
PRIO_WORKER = "trioctl-prio-worker"


def on_prio_worker() -> bool:
    """The job runs on a priority token: in a priority worker's task, or (a
    ``run()`` job given a token at once) in its caller's task."""
    return trio.lowlevel.current_task().name == PRIO_WORKER or _pools.ON_PRIO_TOKEN.get()


def busy(s: PoolStatistics) -> tuple[int, int]:
    """(busy general workers, busy priority workers)."""
    return s.workers - s.free_workers, s.prio_workers - s.free_prio_workers


# -- the stateful test -------------------------------------------------------------------


@attrs.define(eq=False)
class TJob:
    """A job whose end the state machine controls."""

    id: int
    priority: Priority
    via_run: bool
    release: trio.Event = attrs.field(factory=trio.Event)
    fail: bool = False
    started: bool = False
    on_prio: bool = False
    finished: bool = False
    cancelled: bool = False
    # For run() jobs: the caller's scope and what run() gave it.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    result: str | None = None
    # The machine's prediction at submit time: "start", "pending" or "busy".
    fate: str = ""


class TrioThread:
    """A ``trio.run`` on a helper thread that runs steps on request."""

    def __init__(self, limits: PoolLimits) -> None:
        self._limits = limits
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.pools: WorkerPools
        self.nursery: trio.Nursery
        self._stop: trio.Event
        self._token: trio.lowlevel.TrioToken
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("trio thread did not start")
        if self._error is not None:
            raise self._error

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_worker_pools(self._limits) as pools, trio.open_nursery() as nursery:
            self.pools = pools
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def step(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` in the Trio thread, then wait until every task is blocked."""

        async def stepped() -> T:
            result = await fn()
            await trio.testing.wait_all_tasks_blocked()
            return result

        return trio.from_thread.run(stepped, trio_token=self._token)

    def close(self) -> None:
        if self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(10)
            assert not self._thread.is_alive()
        if self._error is not None:
            raise self._error


def limits_valid(new: PoolLimits, cur: PoolLimits) -> bool:
    return (
        min(new.min_workers, new.max_workers, new.prio_workers) >= 0
        and new.max_pending >= 1
        and new.min_workers <= new.max_workers
        and (new.max_workers == 0) == (cur.max_workers == 0)
    )


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.trio: TrioThread | None = None
        self.jobs: list[TJob] = []
        self.ids = itertools.count()
        self.rejected = 0
        self.cancelled_before_start = 0
        self.failed = 0
        self.snapshot: PoolStatistics | None = None

    @initialize(
        min_workers=st.integers(0, 3),
        extra=st.integers(0, 2),
        prio=st.integers(0, 3),
        max_pending=st.integers(1, 3),
    )
    def open_pools(self, min_workers: int, extra: int, prio: int, max_pending: int) -> None:
        limits = PoolLimits(
            min_workers=min_workers,
            max_workers=max(1, min_workers + extra),
            prio_workers=prio,
            max_pending=max_pending,
        )
        self.trio = TrioThread(limits)
        self.snapshot = self.trio.step(self._snap)

    async def _snap(self) -> PoolStatistics:
        assert self.trio is not None
        return self.trio.pools.statistics()

    async def _job(self, job: TJob) -> str:
        assert self.trio is not None
        job.started = True
        job.on_prio = on_prio_worker()
        self._check_sync(self.trio.pools.statistics())
        try:
            await job.release.wait()
        except trio.Cancelled:
            job.cancelled = True
            raise
        finally:
            job.finished = True
        if job.fail:
            raise ValueError(f"job {job.id} failed")
        return f"done {job.id}"

    async def _caller(self, job: TJob) -> None:
        assert self.trio is not None
        with job.scope:
            try:
                job.result = await self.trio.pools.run(job.priority, self._job, job)
            except ServerBusy:
                job.result = "busy"
            except ValueError:
                job.result = "failed"
        if job.scope.cancelled_caught:
            job.result = "cancelled"

    def _predict(self, priority: Priority) -> str:
        s = self.snapshot
        assert s is not None
        can_grow = s.workers < s.limits.max_workers
        if priority is Priority.HIGH:
            if s.free_prio_workers or s.free_workers or can_grow:
                return "start"
            return "pending" if s.pending_high < s.limits.max_pending else "busy"
        if s.free_workers or can_grow:
            return "start"
        return "pending" if s.pending_low < s.limits.max_pending else "busy"

    @precondition(lambda self: self.trio is not None and len(self.jobs) < 40)
    @rule(priority=st.sampled_from(Priority), via_run=st.booleans())
    def submit(self, priority: Priority, via_run: bool) -> None:
        assert self.trio is not None
        job = TJob(next(self.ids), priority, via_run)
        job.fate = self._predict(priority)
        trio_thread = self.trio

        async def action() -> PoolStatistics:
            if via_run:
                trio_thread.nursery.start_soon(self._caller, job)
            else:
                try:
                    trio_thread.pools.submit_nowait(priority, self._job, job)
                except ServerBusy:
                    job.result = "busy"
                self._check_sync(trio_thread.pools.statistics())
            return trio_thread.pools.statistics()

        self.trio.step(action)
        self.jobs.append(job)
        if job.fate == "busy":
            self.rejected += 1
            assert job.result == "busy"
            assert not job.started
        else:
            assert job.result != "busy", f"refused while {job.fate} was due"
        if job.fate == "start":
            assert job.started, "a job did not start although a worker was free or could be added"
        self.snapshot = self.trio.step(self._snap)

    def _running(self) -> list[TJob]:
        return [j for j in self.jobs if j.started and not j.finished]

    @precondition(
        lambda self: self.trio is not None and any(j.started and not j.finished for j in self.jobs)
    )
    @rule(data=st.data(), fail=st.booleans())
    def finish(self, data: st.DataObject, fail: bool) -> None:
        assert self.trio is not None
        job = data.draw(st.sampled_from(self._running()))
        job.fail = fail
        if fail:
            self.failed += 1

        async def action() -> None:
            job.release.set()

        pre = self.trio.step(self._snap)
        self.trio.step(action)
        assert job.finished and not job.cancelled
        if job.via_run:
            assert job.result == ("failed" if fail else f"done {job.id}")
        self.snapshot = self.trio.step(self._snap)
        self._check_freed_worker(job, pre, self.snapshot)

    def _check_freed_worker(self, job: TJob, pre: PoolStatistics, post: PoolStatistics) -> None:
        """The worker that ran ``job`` retires, takes the oldest HIGH job,
        else (a general worker) the oldest LOW job, else waits."""
        if job.on_prio:
            retires = pre.prio_workers > pre.limits.prio_workers
        else:
            retires = pre.workers > pre.limits.max_workers
        if retires:
            expected = (pre.pending_high, pre.pending_low)
        elif pre.pending_high:
            expected = (pre.pending_high - 1, pre.pending_low)
        elif pre.pending_low and not job.on_prio:
            expected = (pre.pending_high, pre.pending_low - 1)
        else:
            expected = (pre.pending_high, pre.pending_low)
        assert (post.pending_high, post.pending_low) == expected
        assert post.running == pre.running - (expected == (pre.pending_high, pre.pending_low))

    @precondition(
        lambda self: (
            self.trio is not None and any(j.via_run and j.result is None for j in self.jobs)
        )
    )
    @rule(data=st.data())
    def cancel_caller(self, data: st.DataObject) -> None:
        assert self.trio is not None
        job = data.draw(st.sampled_from([j for j in self.jobs if j.via_run and j.result is None]))
        was_running = job.started

        async def action() -> None:
            job.scope.cancel()

        pre = self.trio.step(self._snap)
        self.trio.step(action)
        assert job.result == "cancelled"
        post = self.snapshot = self.trio.step(self._snap)
        if was_running:
            # The job itself was cancelled, and it had ended before run() returned.
            assert job.cancelled and job.finished
            self._check_freed_worker(job, pre, post)
        else:
            assert not job.started, "a job whose caller was cancelled while it waited ran"
            self.cancelled_before_start += 1
            pending = (post.pending_high, post.pending_low)
            if job.priority is Priority.HIGH:
                assert pending == (pre.pending_high - 1, pre.pending_low)
            else:
                assert pending == (pre.pending_high, pre.pending_low - 1)

    @precondition(lambda self: self.trio is not None)
    @rule(
        min_workers=st.none() | st.integers(-1, 4),
        max_workers=st.none() | st.integers(0, 4),
        prio_workers=st.none() | st.integers(0, 3),
        max_pending=st.none() | st.integers(0, 3),
    )
    def set_limits(
        self,
        min_workers: int | None,
        max_workers: int | None,
        prio_workers: int | None,
        max_pending: int | None,
    ) -> None:
        assert self.trio is not None
        cur = self.trio.step(self._snap).limits
        new = PoolLimits(
            min_workers=cur.min_workers if min_workers is None else min_workers,
            max_workers=cur.max_workers if max_workers is None else max_workers,
            prio_workers=cur.prio_workers if prio_workers is None else prio_workers,
            max_pending=cur.max_pending if max_pending is None else max_pending,
        )
        running_before = {j.id for j in self._running()}
        trio_thread = self.trio

        async def action() -> bool:
            try:
                trio_thread.pools.set_limits(
                    min_workers=min_workers,
                    max_workers=max_workers,
                    prio_workers=prio_workers,
                    max_pending=max_pending,
                )
            except InvalidParams:
                return False
            finally:
                self._check_sync(trio_thread.pools.statistics())
            return True

        accepted = self.trio.step(action)
        assert accepted == limits_valid(new, cur)
        self.snapshot = self.trio.step(self._snap)
        assert self.snapshot.limits == (new if accepted else cur)
        # Resizing never cancels (or ends) a running job.
        assert running_before <= {j.id for j in self._running()}

    # -- invariants -----------------------------------------------------------------

    def _check_sync(self, s: PoolStatistics) -> None:
        """What holds at every instant, not only once all tasks are blocked."""
        general, prio = busy(s)
        assert 0 <= s.free_workers <= s.workers
        assert 0 <= s.free_prio_workers <= s.prio_workers
        assert s.running == general + prio <= s.workers + s.prio_workers
        if s.pending_high:
            # A HIGH job waits only while no worker that may run it is free.
            assert s.free_workers == 0 and s.free_prio_workers == 0
            assert s.workers >= s.limits.max_workers
        if s.pending_low:
            assert s.free_workers == 0
            assert s.workers >= s.limits.max_workers

    @invariant()
    def statistics_match_the_jobs(self) -> None:
        s = self.snapshot
        if s is None:
            return
        self._check_sync(s)
        _, prio = busy(s)
        running = self._running()
        assert s.running == len(running)
        assert prio == sum(j.on_prio for j in running)
        # Priority workers run only HIGH jobs.
        assert all(j.priority is Priority.HIGH for j in self.jobs if j.on_prio)
        # Worker counts follow the limits.
        assert s.workers >= s.limits.min_workers
        assert s.workers <= s.limits.max_workers or s.free_workers == 0
        assert s.prio_workers == max(s.limits.prio_workers, prio)
        # Counters.
        assert s.rejected == self.rejected
        assert s.cancelled == self.cancelled_before_start
        assert s.failed == self.failed
        assert s.completed == sum(j.finished for j in self.jobs)
        assert not any(j.cancelled and not j.via_run for j in self.jobs)
        # Queues: FIFO per priority, so the started jobs of a priority are a
        # prefix of those accepted; the rest are exactly the pending ones.
        for priority, pending in ((Priority.HIGH, s.pending_high), (Priority.LOW, s.pending_low)):
            accepted = [
                j
                for j in self.jobs
                if j.priority is priority
                and j.fate != "busy"
                and not (j.result == "cancelled" and not j.started)
            ]
            flags = [j.started for j in accepted]
            assert flags == sorted(flags, reverse=True), "jobs started out of order"
            assert pending == flags.count(False)

    def teardown(self) -> None:
        if self.trio is not None:
            self.trio.close()


PoolMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolMachine = pytest.mark.slow(PoolMachine.TestCase)


# -- unit tests --------------------------------------------------------------------------


async def test_run_returns_the_result_and_counts() -> None:
    with trio.fail_after(5):
        async with open_worker_pools() as pools:

            async def double(x: int) -> int:
                await trio.lowlevel.checkpoint()
                return 2 * x

            assert await pools.run(Priority.LOW, double, 21) == 42
            assert await pools.run(Priority.HIGH, double, 2) == 4
            s = pools.statistics()
            assert (s.completed, s.failed, s.running, s.rejected) == (2, 0, 0, 0)
            assert s.limits == PoolLimits()
            assert (s.workers, s.free_workers, s.prio_workers, s.free_prio_workers) == (5, 5, 5, 5)


async def test_run_reraises_the_jobs_exception() -> None:
    class Boom(Exception):
        pass

    err = Boom("boom")

    async def explode() -> None:
        raise err

    with trio.fail_after(5):
        async with open_worker_pools() as pools:
            with pytest.raises(Boom) as info:
                await pools.run(Priority.LOW, explode)
            assert info.value is err
            s = pools.statistics()
            assert (s.completed, s.failed) == (1, 1)


async def test_detached_failures_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    done = trio.Event()

    async def explode() -> None:
        raise RuntimeError("kaboom")

    with trio.fail_after(5):
        async with open_worker_pools(PoolLimits(min_workers=1, max_workers=1)) as pools:
            with caplog.at_level(logging.ERROR, logger="trioctl.pools"):
                pools.submit_nowait(Priority.LOW, explode)
                pools.submit_nowait(Priority.LOW, explode)
                pools.submit_nowait(Priority.LOW, trio.lowlevel.checkpoint)
                pools.submit_nowait(Priority.LOW, _set, done)
                await done.wait()
            s = pools.statistics()
            assert (s.completed, s.failed, s.workers) == (4, 2, 1)
    messages = [r for r in caplog.records if r.name == "trioctl.pools"]
    assert len(messages) == 2
    assert all("kaboom" in (r.exc_text or "") for r in messages)


async def _set(event: trio.Event) -> None:
    event.set()


async def test_full_queue_is_busy_at_once_and_per_priority(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=1, max_workers=2, prio_workers=1, max_pending=3)
    async with open_worker_pools(limits) as pools:
        for _ in range(2 + 3):
            pools.submit_nowait(Priority.LOW, trio.sleep_forever)
        s = pools.statistics()
        assert (s.running, s.pending_low, s.free_prio_workers) == (2, 3, 1)
        with pytest.raises(ServerBusy) as info:
            pools.submit_nowait(Priority.LOW, trio.sleep_forever)
        assert info.value.data == {"priority": "low", "pending": 3, "max_pending": 3}
        with pytest.raises(ServerBusy):
            await pools.run(Priority.LOW, trio.sleep, 1)
        assert trio.current_time() == 0.0
        # A flood of LOW jobs never makes a HIGH job busy: it has its own
        # queue, and the priority worker is free.
        assert await pools.run(Priority.HIGH, _answer) == 42
        for _ in range(1 + 3):
            pools.submit_nowait(Priority.HIGH, trio.sleep_forever)
        with pytest.raises(ServerBusy, match="high-priority"):
            pools.submit_nowait(Priority.HIGH, trio.sleep_forever)
        assert pools.statistics().rejected == 3


async def _answer() -> int:
    await trio.lowlevel.checkpoint()
    return 42


async def test_high_jobs_prefer_priority_workers_and_low_never_use_them(
    autojump_clock: MOCK,
) -> None:
    where: list[tuple[str, bool]] = []

    async def record(name: str) -> None:
        where.append((name, on_prio_worker()))
        await trio.sleep_forever()

    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=1, max_pending=10)
    async with open_worker_pools(limits) as pools:
        pools.submit_nowait(Priority.HIGH, record, "h1")  # free prio worker
        pools.submit_nowait(Priority.HIGH, record, "h2")  # free general worker
        pools.submit_nowait(Priority.LOW, record, "l1")  # waits: prio worker busy anyway
        pools.submit_nowait(Priority.HIGH, record, "h3")  # waits
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(where) == [("h1", True), ("h2", False)]
        s = pools.statistics()
        assert (s.pending_high, s.pending_low) == (1, 1)


async def test_a_free_worker_takes_high_before_low(autojump_clock: MOCK) -> None:
    order: list[str] = []
    gate = trio.Event()

    async def first() -> None:
        await gate.wait()

    async def record(name: str) -> None:
        order.append(name)
        await trio.sleep(1)

    limits = PoolLimits(min_workers=0, max_workers=1, prio_workers=0, max_pending=10)
    async with open_worker_pools(limits) as pools:
        pools.submit_nowait(Priority.LOW, first)
        for name in ("l1", "l2"):
            pools.submit_nowait(Priority.LOW, record, name)
        pools.submit_nowait(Priority.HIGH, record, "h1")
        gate.set()
        await trio.sleep(10)
    assert order == ["h1", "l1", "l2"]


async def test_workers_grow_on_demand_up_to_max(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=2, max_workers=4, prio_workers=0, max_pending=10)
    async with open_worker_pools(limits) as pools:
        assert pools.statistics().workers == 2
        for n in range(1, 7):
            pools.submit_nowait(Priority.LOW, trio.sleep, 10)
            s = pools.statistics()
            assert s.workers == max(2, min(n, 4))
            assert s.pending_low == max(0, n - 4)
        await trio.sleep(100)
        s = pools.statistics()
        # Grown workers stay (as libvirt's threads do).
        assert (s.workers, s.free_workers, s.completed) == (4, 4, 6)


async def test_run_cancelled_while_pending_never_runs(autojump_clock: MOCK) -> None:
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")

    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=0, max_pending=5)
    async with open_worker_pools(limits) as pools:
        pools.submit_nowait(Priority.LOW, trio.sleep, 10)
        with trio.move_on_after(3) as scope:
            await pools.run(Priority.LOW, job)
        assert scope.cancelled_caught
        assert trio.current_time() == 3.0
        s = pools.statistics()
        assert (s.pending_low, s.cancelled, s.running) == (0, 1, 1)
        await trio.sleep(20)
    assert ran == []


async def test_run_cancelled_while_running_cancels_the_job_and_waits_for_it(
    autojump_clock: MOCK,
) -> None:
    log: list[str] = []

    async def job() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2)  # cleanup that takes time
            log.append(f"job ended at {trio.current_time()}")

    async with open_worker_pools() as pools:
        with trio.move_on_after(5) as scope:
            await pools.run(Priority.LOW, job)
        log.append(f"run returned at {trio.current_time()}")
        assert scope.cancelled_caught
        s = pools.statistics()
        assert (s.running, s.completed, s.failed, s.cancelled) == (0, 1, 0, 0)
    assert log == ["job ended at 7.0", "run returned at 7.0"]


async def test_a_job_that_ignores_the_cancel_returns_its_value(autojump_clock: MOCK) -> None:
    async def stubborn() -> str:
        with trio.CancelScope(shield=True):
            await trio.sleep(4)
        return "done anyway"

    async with open_worker_pools() as pools:
        with trio.move_on_after(1):
            assert await pools.run(Priority.HIGH, stubborn) == "done anyway"
            assert trio.current_time() == 4.0
            await trio.lowlevel.checkpoint()  # the caller's own scope cancels it here
            pytest.fail("not reached")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_workers": 21}, "min_workers"),
        ({"max_workers": 4}, "min_workers"),
        ({"max_workers": 0, "min_workers": 0}, "max_workers"),
        ({"prio_workers": -1}, "prio_workers"),
        ({"max_pending": 0}, "max_pending"),
        ({"min_workers": True}, "min_workers"),
        ({"max_workers": 2.5}, "max_workers"),
    ],
)
async def test_set_limits_validation(changes: dict[str, Any], field: str) -> None:
    with trio.fail_after(5):
        async with open_worker_pools() as pools:
            with pytest.raises(InvalidParams) as info:
                pools.set_limits(**changes)
            assert info.value.data == {"field": field}
            assert pools.limits == PoolLimits()


def test_check_limits_messages() -> None:
    with pytest.raises(
        InvalidParams, match=r"min_workers \(6\) cannot be larger than max_workers \(5\)"
    ):
        check_limits(PoolLimits(min_workers=6, max_workers=5))
    with pytest.raises(InvalidParams, match="from zero to non-zero"):
        check_limits(PoolLimits(min_workers=0, max_workers=0), PoolLimits())
    with pytest.raises(InvalidParams, match="from zero to non-zero"):
        check_limits(PoolLimits(), PoolLimits(min_workers=0, max_workers=0))
    with pytest.raises(InvalidParams, match="must not be negative"):
        check_limits(PoolLimits(max_pending=-3))
    check_limits(PoolLimits(min_workers=0, max_workers=0, prio_workers=0))


async def test_shrinking_retires_idle_workers_first_and_never_cancels(
    autojump_clock: MOCK,
) -> None:
    ended: list[float] = []

    async def job(seconds: float) -> None:
        await trio.sleep(seconds)
        ended.append(trio.current_time())

    limits = PoolLimits(min_workers=4, max_workers=6, prio_workers=3, max_pending=10)
    async with open_worker_pools(limits) as pools:
        for seconds in (10, 20):
            pools.submit_nowait(Priority.LOW, job, seconds)
        pools.submit_nowait(Priority.HIGH, job, 30)  # on a priority worker
        new = pools.set_limits(min_workers=1, max_workers=1, prio_workers=0)
        assert new == PoolLimits(min_workers=1, max_workers=1, prio_workers=0, max_pending=10)
        s = pools.statistics()
        # Idle ones went at once; busy ones stay until their job ends.
        assert (s.workers, s.free_workers, s.prio_workers, s.free_prio_workers) == (2, 0, 1, 0)
        assert s.running == 3
        await trio.sleep(15)
        s = pools.statistics()
        assert (s.workers, s.free_workers, s.prio_workers) == (1, 0, 1)
        await trio.sleep(100)
        s = pools.statistics()
        assert (s.workers, s.free_workers, s.prio_workers, s.free_prio_workers) == (1, 1, 0, 0)
    assert ended == [10.0, 20.0, 30.0]


async def test_growing_starts_workers_at_once_and_feeds_them(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=0, max_pending=10)
    async with open_worker_pools(limits) as pools:
        for _ in range(3):
            pools.submit_nowait(Priority.LOW, trio.sleep_forever)
        for _ in range(2):
            pools.submit_nowait(Priority.HIGH, trio.sleep_forever)
        s = pools.statistics()
        assert (s.running, s.pending_low, s.pending_high) == (1, 2, 2)
        pools.set_limits(prio_workers=1)
        s = pools.statistics()
        assert (s.prio_workers, s.running, s.pending_high) == (1, 2, 1)
        pools.set_limits(max_workers=3)
        s = pools.statistics()
        assert (s.workers, s.running, s.pending_high, s.pending_low) == (3, 4, 0, 1)
        pools.set_limits(min_workers=5, max_workers=5)
        s = pools.statistics()
        assert (s.workers, s.free_workers, s.running, s.pending_low) == (5, 1, 5, 0)


async def test_lowering_max_pending_keeps_queued_jobs(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=0, max_pending=4)
    async with open_worker_pools(limits) as pools:
        for _ in range(5):
            pools.submit_nowait(Priority.LOW, trio.sleep, 1)
        pools.set_limits(max_pending=1)
        assert pools.statistics().pending_low == 4
        with pytest.raises(ServerBusy):
            pools.submit_nowait(Priority.LOW, trio.sleep, 1)
        await trio.sleep(10)
        assert pools.statistics().completed == 5


async def test_closing_fails_waiting_callers_and_cancels_running_jobs(
    autojump_clock: MOCK,
) -> None:
    outcomes: dict[str, str] = {}
    cancelled: list[str] = []

    async def hung(name: str) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(name)
            raise

    async def caller(pools: WorkerPools, name: str) -> None:
        try:
            await pools.run(Priority.LOW, hung, name)
        except trio.ClosedResourceError as exc:
            outcomes[name] = str(exc)

    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=0, max_pending=5)
    async with trio.open_nursery() as outside:
        async with open_worker_pools(limits) as pools:
            outside.start_soon(caller, pools, "running")
            await trio.testing.wait_all_tasks_blocked()
            outside.start_soon(caller, pools, "waiting")
            pools.submit_nowait(Priority.LOW, hung, "detached")
            await trio.testing.wait_all_tasks_blocked()
        s = pools.statistics()
        assert (s.workers, s.running, s.pending_low, s.cancelled) == (0, 0, 0, 2)
        with pytest.raises(trio.ClosedResourceError):
            pools.submit_nowait(Priority.LOW, hung, "late")
        with pytest.raises(trio.ClosedResourceError):
            await pools.run(Priority.LOW, hung, "late")
        with pytest.raises(trio.ClosedResourceError):
            pools.set_limits(max_workers=3)
    assert outcomes == {
        "running": "the worker pools closed while the job ran",
        "waiting": "the worker pools closed",
    }
    assert cancelled == ["running"]
    assert trio.current_time() == 0.0


async def test_body_exception_is_not_wrapped() -> None:
    with trio.fail_after(5), pytest.raises(KeyError):
        async with open_worker_pools():
            raise KeyError("mine")


async def test_serve_worker_pools_with_nursery_start(autojump_clock: MOCK) -> None:
    async with trio.open_nursery() as nursery:
        pools = await nursery.start(serve_worker_pools, PoolLimits(min_workers=2))
        assert await pools.run(Priority.LOW, _answer) == 42
        assert pools.statistics().workers == 2
        nursery.cancel_scope.cancel()


async def test_invalid_limits_refused_at_open() -> None:
    with pytest.raises(InvalidParams, match="max_pending"):
        async with open_worker_pools(PoolLimits(max_pending=0)):
            pytest.fail("not reached")


async def test_no_pool_mode_runs_jobs_without_workers(autojump_clock: MOCK) -> None:
    limits = PoolLimits(min_workers=0, max_workers=0, prio_workers=3, max_pending=2)
    tasks: list[str] = []

    async def where() -> str:
        name = trio.lowlevel.current_task().name
        tasks.append(name)
        await trio.sleep(1)
        return name

    async with open_worker_pools(limits) as pools:
        s = pools.statistics()
        assert (s.workers, s.prio_workers) == (0, 0)
        me = trio.lowlevel.current_task().name
        assert await pools.run(Priority.LOW, where) == me
        assert await pools.run(Priority.HIGH, where) == me
        pools.submit_nowait(Priority.LOW, where)
        pools.submit_nowait(Priority.HIGH, where)
        assert pools.statistics().running == 2
        with pytest.raises(ServerBusy):
            pools.submit_nowait(Priority.LOW, where)
        with pytest.raises(InvalidParams, match="zero to non-zero"):
            pools.set_limits(max_workers=3)
        await trio.sleep(5)
        s = pools.statistics()
        assert (s.running, s.completed, s.rejected) == (0, 4, 1)
    assert tasks[2:] == ["trioctl-inline-job"] * 2


async def test_run_with_a_free_token_runs_in_the_callers_task_holding_it(
    autojump_clock: MOCK,
) -> None:
    """A run() job given a token at once runs in its caller's task, counted
    like one in a worker's task; a job that had to wait runs in a worker."""
    limits = PoolLimits(min_workers=1, max_workers=1, prio_workers=1, max_pending=5)
    release = trio.Event()
    seen: list[tuple[str, bool, int]] = []

    async def job(name: str) -> str:
        s = pools.statistics()
        seen.append((name, on_prio_worker(), s.running))
        await release.wait()
        return trio.lowlevel.current_task().name

    async def caller(name: str, priority: Priority, into: dict[str, str]) -> None:
        into[name] = await pools.run(priority, job, name)

    ran_in: dict[str, str] = {}
    async with open_worker_pools(limits) as pools, trio.open_nursery() as nursery:
        # One at a time: Trio does not promise the order of tasks started together.
        for name, priority in (
            ("high", Priority.HIGH),
            ("low", Priority.LOW),
            ("waits", Priority.LOW),
        ):
            nursery.start_soon(caller, name, priority, ran_in, name=f"caller-{name}")
            await trio.testing.wait_all_tasks_blocked()
        assert seen == [("high", True, 1), ("low", False, 2)]
        s = pools.statistics()
        assert (s.running, s.free_workers, s.free_prio_workers, s.pending_low) == (2, 0, 0, 1)
        release.set()
    assert ran_in == {"high": "caller-high", "low": "caller-low", "waits": "trioctl-worker"}
    assert seen[2] == ("waits", False, 1)
    s = pools.statistics()
    assert (s.completed, s.running) == (3, 0)
