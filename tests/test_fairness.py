"""Read-only callers cannot deny service to writers (issue 10), end to end.

The finding: 8 read connections calling ``domain.get_stats`` made 39 of 40
write calls fail with ``JOB_QUEUE_FULL``: the readers' queries filled the
domain's one job queue. With the query lane (``driver.query_lane``, the
default) queries wait in a queue of their own that alternates with the
writers' (see docs/dispatch.md). Real daemon, real sockets, the simulator
with a slowed monitor; every test under ``fail_after``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trioctl import JobQueueFull, JobTimeout, TrioctlError
from trioctl._client import connect
from trioctl._jobs import JobKind
from trioctl._launcher import CONTROL_SOCKET
from trioctl._procedures import PROCEDURES, ProcedureTable, Role
from trioctl._tokens import Tokens
from trioctl.sim._control import control_request

from .helpers import running_daemon

READERS = 8
PER_READER = 5  # server.max_client_requests: each reader keeps 5 calls in flight
WRITES = 40
READ_TOKEN, WRITE_TOKEN = "r" * 20, "w" * 20


def waiting_readers(daemon: Any) -> int:
    return int(daemon.driver.jobs.statistics().queued + daemon.dispatcher.statistics().joined)


async def hammer_and_write(
    sock_dir: Path, *, share: bool = True, **overrides: Any
) -> tuple[list[str], dict[str, int]]:
    """8 readers hammer get_stats on vm1 while one writer makes 40 calls
    (suspend, and resume once suspended). Returns each write's outcome ("ok" or the
    error's reason) and the readers' counts."""
    async with running_daemon(
        sock_dir, driver__job_wait_timeout=10, driver__monitor_timeout=5, **overrides
    ) as daemon:
        assert daemon.token is not None
        daemon.server.tokens = Tokens(
            {READ_TOKEN: Role.READ, WRITE_TOKEN: Role.WRITE, daemon.token: Role.ADMIN}
        )
        if not share:
            daemon.server.table = ProcedureTable(
                [attrs.evolve(p, shared=False) for p in daemon.server.table]
            )
        async with connect(daemon.url, WRITE_TOKEN) as writer:
            await writer.define({"name": "vm1"})
            await writer.start("vm1")
            # Every QMP reply waits 20 ms: a get_stats (two commands) holds
            # the job for about 40 ms, so the readers' calls pile up.
            control = sock_dir / "run" / "vm1" / CONTROL_SOCKET
            reply = await control_request(
                str(control), "x-trioctl-sim-fault", {"mode": "slow", "delay": 0.02}
            )
            assert reply == {}
            reads = {"ok": 0, "JOB_QUEUE_FULL": 0, "JOB_TIMEOUT": 0}
            outcomes: list[str] = []
            writes_done = trio.Event()

            async def read_loop(client: Any) -> None:
                while not writes_done.is_set():
                    try:
                        await client.get_stats("vm1")
                        reads["ok"] += 1
                    except (JobQueueFull, JobTimeout) as exc:
                        reads[exc.reason] += 1
                        await trio.sleep(0.01)  # a refused reader retries soon

            async def reader() -> None:
                async with connect(daemon.url, READ_TOKEN) as client, trio.open_nursery() as n:
                    for _ in range(PER_READER):
                        n.start_soon(read_loop, client)

            async with trio.open_nursery() as nursery:
                for _ in range(READERS):
                    nursery.start_soon(reader)
                # Let the readers pile up first (queued, or joined to a
                # shared call that is queued).
                while waiting_readers(daemon) < 20:
                    await trio.sleep(0.01)
                paused = False
                for _ in range(WRITES):
                    try:
                        if paused:
                            await writer.resume("vm1")
                        else:
                            await writer.suspend("vm1")
                        paused = not paused
                        outcomes.append("ok")
                    except TrioctlError as exc:
                        outcomes.append(exc.reason)
                writes_done.set()
            stats = daemon.driver.jobs.statistics()
            reads["rejected_queries"] = stats.rejected_queries
            reads["rejected"] = stats.rejected
            reads["shared"] = daemon.dispatcher.statistics().shared
            return outcomes, reads


@pytest.mark.slow
async def test_readers_cannot_stop_writers(sock_dir: Path) -> None:
    with trio.fail_after(90):
        outcomes, reads = await hammer_and_write(sock_dir)
    assert outcomes == ["ok"] * WRITES
    # The readers were served too, never refused: they share their round trips.
    assert reads["ok"] >= WRITES
    assert reads["rejected"] == reads["JOB_QUEUE_FULL"] == reads["JOB_TIMEOUT"] == 0
    assert reads["shared"] > 0


@pytest.mark.slow
async def test_the_query_lane_alone_keeps_writers_served(sock_dir: Path) -> None:
    """Without sharing (a reader's calls are never answered together), the
    readers crowd each other out of their lane, but never the writer."""
    with trio.fail_after(90):
        outcomes, reads = await hammer_and_write(sock_dir, share=False)
    assert outcomes == ["ok"] * WRITES
    assert reads["rejected"] == reads["rejected_queries"]
    assert reads["shared"] == 0


@pytest.mark.slow
async def test_without_the_query_lane_readers_stop_writers(sock_dir: Path) -> None:
    """The finding, reproduced with libvirt's one queue (``query_lane =
    false``): most writes are refused, so the test above can fail."""
    with trio.fail_after(90):
        outcomes, reads = await hammer_and_write(sock_dir, driver__query_lane=False)
    refused = outcomes.count("JOB_QUEUE_FULL")
    assert refused >= WRITES // 2, outcomes
    assert reads["rejected_queries"] == reads["shared"] == 0


def test_only_a_query_procedure_can_be_shared() -> None:
    [stats] = [p for p in PROCEDURES if p.name == "domain.get_stats"]
    assert stats.shared and stats.job is JobKind.QUERY
    assert [p.name for p in PROCEDURES if p.shared] == ["domain.get_stats"]
    with pytest.raises(ValueError, match="only a query job can be shared"):
        ProcedureTable([attrs.evolve(stats, job=JobKind.MODIFY)])


@pytest.mark.slow
@pytest.mark.parametrize("lane", [True, False])
async def test_list_jobs_shows_the_lanes(sock_dir: Path, lane: bool) -> None:
    with trio.fail_after(30):
        async with (
            running_daemon(
                sock_dir,
                driver__query_lane=lane,
                driver__max_queued_queries=3,
                driver__monitor_timeout=20,
            ) as d,
            connect(d.url, d.token) as client,
            connect(d.admin_url, d.token) as admin,
        ):
            await client.define({"name": "vm1"})
            await client.start("vm1")
            control = sock_dir / "run" / "vm1" / CONTROL_SOCKET
            await control_request(str(control), "x-trioctl-sim-fault", {"mode": "hang"})
            async with trio.open_nursery() as nursery:

                async def call(fn: Any, *args: Any) -> None:
                    try:
                        await fn(*args)
                    except TrioctlError:
                        pass

                nursery.start_soon(call, client.suspend, "vm1")  # holds, hung
                while d.driver.jobs.statistics().held < 1:
                    await trio.sleep(0.01)
                for _ in range(2):
                    nursery.start_soon(call, client.get_stats, "vm1")
                nursery.start_soon(call, client.reset, "vm1")
                # With the lane the two get_stats share one place in it.
                queued, queries = (2, 1) if lane else (3, 0)
                while waiting_readers(d) < 3:
                    await trio.sleep(0.01)
                [job] = await admin.list_jobs()
                assert (job.kind, job.procedure) == ("modify", "domain.suspend")
                assert (job.queued, job.queued_queries) == (queued, queries)
                s = d.driver.jobs.statistics()
                assert (s.query_lane, s.queued, s.queued_queries) == (lane, queued, queries)
                assert d.dispatcher.statistics().joined == (1 if lane else 0)
                [held] = d.driver.jobs.list_jobs()
                if lane:  # a query goes right after the modify holder
                    assert [w.kind.value for w in held.waiters] == ["query", "modify"]
                await client.destroy("vm1")
                nursery.cancel_scope.cancel()
