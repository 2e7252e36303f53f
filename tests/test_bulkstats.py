"""connect.get_all_domain_stats: one call, every domain, never waiting on a hung one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

import trioctl
from trioctl._bulkstats import get_all_domain_stats
from trioctl._client import connect
from trioctl._driver import Driver
from trioctl._jobs import JobKind
from trioctl._models import DomainDefinition, DomainState, MonitorState

from .helpers import running_daemon
from .test_driver import BACKENDS, driver_at, kill_all


@pytest.fixture(params=BACKENDS)
def emulator(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _hold(driver: Driver, name: str, release: trio.Event, held: trio.Event) -> None:
    async with driver.jobs.job(name, JobKind.MODIFY, procedure="domain.reset", client="c9"):
        held.set()
        await release.wait()


@pytest.mark.slow
async def test_hung_and_busy_domains_reported_at_once(sock_dir: Path, emulator: str) -> None:
    with trio.fail_after(60):
        # A monitor deadline far beyond this test: asking a hung monitor would
        # show as "timeout", never as "unresponsive" or "job-held".
        async with driver_at(sock_dir, monitor_timeout=0.5) as driver:
            try:
                for name in ("busy", "hung", "off", "ok"):
                    await driver.define(DomainDefinition(name=name, emulator=emulator))
                for name in ("busy", "hung", "ok"):
                    await driver.start(name)
                pid = driver.get_info("hung").pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)

                release, held = trio.Event(), trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_hold, driver, "busy", release, held)
                    await held.wait()

                    # The monitor looks fine but hangs: asked, and given up
                    # after the NOWAIT deadline.
                    first = await get_all_domain_stats(driver)
                    by = {r.name: r for r in first.domains}
                    assert [r.name for r in first.domains] == ["busy", "hung", "off", "ok"]
                    assert by["hung"].skipped == "timeout" and by["hung"].stats is None
                    assert by["busy"].skipped == "job-held"
                    assert by["busy"].info.job is not None
                    assert by["busy"].info.job.procedure == "domain.reset"
                    assert by["busy"].info.job.client == "c9"
                    assert by["off"].skipped == "not-running"
                    # A healthy domain answers (on a loaded machine it may
                    # miss the 0.2 s once: that is a "timeout", never a wait).
                    while (ok := by["ok"]).stats is None:
                        assert ok.skipped == "timeout"
                        again = await get_all_domain_stats(driver, names=["ok"])
                        by["ok"] = again.domains[0]
                    assert ok.stats is not None and ok.stats.running and ok.skipped is None
                    assert first.fresh + first.skipped == 4

                    # Once the monitor is known unresponsive, it is not asked.
                    with pytest.raises(trioctl.TrioctlError):
                        await driver.get_stats("hung")
                    assert driver.get_info("hung").monitor is MonitorState.UNRESPONSIVE
                    second = await get_all_domain_stats(driver, names=["hung", "busy"])
                    by = {r.name: r for r in second.domains}
                    assert by["hung"].skipped == "unresponsive"
                    assert by["hung"].info.monitor is MonitorState.UNRESPONSIVE
                    # The holder still holds: the call did not wait for it.
                    assert not release.is_set()
                    assert by["busy"].skipped == "job-held"

                    # With `wait`, a busy domain is waited for.
                    results: list[trioctl.DomainStats | None] = []

                    async def waiting() -> None:
                        got = await get_all_domain_stats(driver, names=["busy"], wait=20)
                        results.append(got.domains[0].stats)

                    nursery.start_soon(waiting)
                    while (job := driver.jobs.job_info("busy")) is None or job.queued < 1:
                        await trio.sleep(0.01)
                    release.set()
                while not results:
                    await trio.sleep(0.01)
                assert results[0] is not None and results[0].name == "busy"

                running = await get_all_domain_stats(driver, states=[DomainState.SHUTOFF])
                assert [r.name for r in running.domains] == ["off"]
                os.kill(pid, signal.SIGCONT)
            finally:
                kill_all(driver)


async def test_bad_params(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with driver_at(sock_dir) as driver:
            for wait in (0, -1, 31):
                with pytest.raises(trioctl.InvalidParams, match="wait"):
                    await get_all_domain_stats(driver, wait=wait)
            with pytest.raises(trioctl.NoDomain):
                await get_all_domain_stats(driver, names=["nope"])


@pytest.mark.slow
async def test_over_rpc_with_a_stopped_domain(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with running_daemon(sock_dir, driver__monitor_timeout=30) as daemon:
            async with connect(daemon.url, daemon.token) as client:
                for name in ("a", "b"):
                    await client.define({"name": name})
                    await client.start(name)
                pid = (await client.get_info("a")).pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                try:
                    got = await client.get_all_domain_stats(states=["running"])
                    by = {r.name: r for r in got.domains}
                    assert by["a"].skipped == "timeout" and by["a"].stats is None
                    assert by["b"].stats is not None or by["b"].skipped == "timeout"
                    raw = await client.call(
                        "connect.get_all_domain_stats", {"names": ["b"], "wait": 20}
                    )
                    assert raw["domains"][0]["stats"]["name"] == "b"
                    with pytest.raises(trioctl.InvalidParams):
                        await client.call("connect.get_all_domain_stats", {"wait": 99})
                finally:
                    os.kill(pid, signal.SIGCONT)
