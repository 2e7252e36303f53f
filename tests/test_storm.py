"""The stuck-VM storm end to end: behaviour here, timings in bench/.

8 simulated domains, 4 of them SIGSTOPped, 30 clients hammering the hung ones
far beyond every limit (5 requests in flight each, 32 queued per domain).
High-priority calls and calls on healthy domains keep succeeding. With a long
monitor deadline each hung domain's job stays held, so every other caller of
it queues or is refused: exactly the load that starved libvirt's workers.

Each client alternates ``domain.monitor_command`` and ``domain.get_stats``:
concurrent get_stats calls on one domain share one place in its query lane
(docs/dispatch.md), so it is the monitor commands that fill the queues.
"""

from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

import pytest
import trio

import trioctl
from trioctl._client import Client, connect

from .helpers import running_daemon

N, K, CLIENTS = 8, 4, 30


async def hammer(
    url: str, token: str | None, hung: list[str], outcomes: collections.Counter[str]
) -> None:
    async with connect(url, token) as client:

        async def one(name: str, stats: bool) -> None:
            while True:
                try:
                    if stats:
                        await client.get_stats(name)
                    else:
                        await client.monitor_command(name, "query-status")
                    outcomes["ok"] += 1
                except trioctl.TrioctlError as exc:
                    outcomes[exc.reason] += 1
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            for i in range(5):  # max_client_requests in flight per client
                nursery.start_soon(one, hung[i % len(hung)], i % 2 == 1)


async def start_and_hang(client: Client) -> tuple[list[str], list[str]]:
    """Define and start N domains, SIGSTOP the first K: (hung, healthy)."""
    names = [f"vm{i}" for i in range(N)]
    async with trio.open_nursery() as nursery:
        for name in names:
            await client.define({"name": name})
            nursery.start_soon(client.start, name)
    for name in names[:K]:
        pid = (await client.get_info(name)).pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
    return names[:K], names[K:]


@pytest.mark.parametrize("monitor_timeout", [30.0, 0.5])
async def test_storm_does_not_starve_healthy_domains(
    sock_dir: Path, monitor_timeout: float
) -> None:
    with trio.fail_after(90):
        async with running_daemon(
            sock_dir, driver__monitor_timeout=monitor_timeout, driver__job_wait_timeout=30
        ) as daemon:
            async with connect(daemon.url, daemon.token) as client:
                hung, healthy = await start_and_hang(client)

                outcomes: collections.Counter[str] = collections.Counter()
                async with trio.open_nursery() as storm:
                    for _ in range(CLIENTS):
                        storm.start_soon(hammer, daemon.url, daemon.token, hung, outcomes)
                    await trio.sleep(1.0)  # let the storm fill every queue

                    async def probes(c: Client) -> None:
                        for _ in range(10):
                            with trio.fail_after(2):
                                assert len(await c.list_domains()) == N
                                assert (await c.get_info(hung[0])).name == hung[0]
                                assert (await c.get_info(healthy[0])).state.value == "running"
                                stats = await c.get_stats(healthy[1])
                                assert stats.status == "running"
                                await c.monitor_command(healthy[2], "query-status")
                            await trio.sleep(0.1)

                    async with connect(daemon.url, daemon.token) as prober:
                        await probes(prober)
                    pools = daemon.pools.statistics()
                    storm.cancel_scope.cancel()

                # The storm really hit the limits: refusals, not successes.
                refused = outcomes["JOB_QUEUE_FULL"] + outcomes["MONITOR_UNRESPONSIVE"]
                assert refused > 0, outcomes
                assert outcomes["ok"] == 0, outcomes
                assert set(outcomes) <= {
                    "JOB_QUEUE_FULL",
                    "JOB_TIMEOUT",
                    "MONITOR_TIMEOUT",
                    "MONITOR_UNRESPONSIVE",
                }, outcomes
                # Hung domains hold at most one worker each.
                assert pools.running <= K + 1
                # Destroy still works on every hung domain.
                for name in hung:
                    with trio.fail_after(2):
                        info = await client.destroy(name)
                    assert info.state.value == "shutoff"


async def test_legacy_mode_starves_healthy_domains(sock_dir: Path) -> None:
    """The same storm in legacy mode (pre-patch libvirt): workers park on hung
    domains' job locks and a call on a healthy domain cannot get a worker."""
    with trio.fail_after(60):
        async with running_daemon(
            sock_dir, mode="legacy", driver__monitor_timeout=None, driver__job_wait_timeout=30
        ) as daemon:
            async with connect(daemon.url, daemon.token) as client:
                hung, healthy = await start_and_hang(client)
                outcomes: collections.Counter[str] = collections.Counter()
                async with trio.open_nursery() as storm:
                    for _ in range(CLIENTS):
                        storm.start_soon(hammer, daemon.url, daemon.token, hung, outcomes)
                    await trio.sleep(1.0)
                    async with connect(daemon.url, daemon.token) as prober:
                        with trio.move_on_after(2) as starved:
                            await prober.get_stats(healthy[0])
                    assert starved.cancelled_caught
                    pools = daemon.pools.statistics()
                    assert pools.free_workers == 0
                    assert pools.pending_low > 0
                    storm.cancel_scope.cancel()
