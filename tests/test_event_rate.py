"""The per-domain bound on QMP events passed on to subscribers.

A QEMU flooding events is played by feeding the driver's event hook the way
the monitor's reader does, under ``autojump_clock``: the bucket's time is
Trio's clock, so the counts are exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import trio
import trio.testing
from hypothesis import given, strategies as st

from trioctl._driver import DriverConfig, _Domain, _Run, open_driver
from trioctl._models import DomainDefinition, DomainEvent, DomainState
from trioctl._monitor import EventRateLimit
from trioctl._sansio.qmp import Event


@given(
    st.floats(min_value=1, max_value=1000),
    st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
)
def test_bucket_never_admits_more_than_burst_plus_rate(rate: float, gaps: list[float]) -> None:
    bucket = EventRateLimit(rate)
    now = 0.0
    times = []
    for gap in gaps:
        now += gap
        if bucket.admit(now):
            times.append(now)
    # In any window, at most one burst plus what the rate refills.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= bucket.burst + rate * (times[j] - start) + 1e-6
    assert bucket.dropped == len(gaps) - len(times)


def test_zero_rate_admits_everything() -> None:
    bucket = EventRateLimit(0)
    assert all(bucket.admit(0.0) for _ in range(10_000))
    assert bucket.dropped == 0


def driver_lifecycle(events: list[DomainEvent]) -> list[DomainEvent]:
    return [e for e in events if e.kind == "lifecycle"]


def drain(receive: trio.MemoryReceiveChannel[DomainEvent]) -> list[DomainEvent]:
    out = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_a_flooding_domain_is_bounded_and_the_drop_reported(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    config = DriverConfig(state_dir=sock_dir, max_events_per_second=100)
    async with open_driver(config) as driver:
        dom = _Domain(DomainDefinition(name="flood"), DomainState.RUNNING, "booted")
        run = dom.run = _Run(driver, dom, cast(Any, None), cast(Any, None), "")
        with driver.subscribe(None, max_buffer=100_000) as sub:
            for i in range(10_000):
                run.on_qmp_event(Event("BLOCK_IO_ERROR", {"i": i}, 0.0))
            # State tracking still sees every event, dropped or not.
            run.on_qmp_event(Event("STOP", {}, 0.0))
            assert dom.state is DomainState.PAUSED
            first = drain(sub.receive_channel)
            qmp = [e for e in first if e.kind == "qmp"]
            assert len(qmp) == 100  # one second's burst
            assert driver.events_dropped == 9_901
            await trio.sleep(1)
            run.on_qmp_event(Event("RESUME", {}, 0.0))
            later = drain(sub.receive_channel)
            # The STOP dropped in the flood: its "suspended" comes with the
            # drop report, before the RESUME's own.
            assert [e.detail for e in driver_lifecycle(later)] == ["suspended", "resumed"]
            report = [e for e in later if e.detail == "events_dropped"]
            assert len(report) == 1
            assert report[0].kind == "monitor"
            assert report[0].data == {"count": 9_901, "max_events_per_second": 100}
            assert [e.detail for e in later if e.kind == "qmp"] == ["RESUME"]
            # A domain within its bound loses nothing.
            before = driver.events_dropped
            for _ in range(50):
                await trio.sleep(0.02)
                run.on_qmp_event(Event("RTC_CHANGE", {}, 0.0))
            assert driver.events_dropped == before
            assert len([e for e in drain(sub.receive_channel) if e.kind == "qmp"]) == 50
            # A flood that stops: the report comes alone, a second after.
            for _ in range(500):
                run.on_qmp_event(Event("RTC_CHANGE", {}, 0.0))
            await trio.sleep(1.5)
            reports = [e for e in drain(sub.receive_channel) if e.detail == "events_dropped"]
            assert len(reports) == 1
            assert 0 < reports[0].data["count"] < 500


async def test_a_stop_resume_flood_is_bounded_and_ends_in_the_true_state(
    autojump_clock: trio.testing.MockClock, sock_dir: Path
) -> None:
    """A QEMU flooding STOP and RESUME: each changed the state and sent a
    lifecycle event past the bound (an outside trial: about 700 a second to
    each subscriber against 100 QMP events). Now they share the bound, and the
    last state dropped comes with the drop report."""
    config = DriverConfig(state_dir=sock_dir, max_events_per_second=100)
    async with open_driver(config) as driver:
        dom = _Domain(DomainDefinition(name="flood"), DomainState.RUNNING, "booted")
        run = dom.run = _Run(driver, dom, cast(Any, None), cast(Any, None), "")
        with driver.subscribe(None, max_buffer=100_000) as sub:
            for i in range(5_001):  # ends on STOP
                run.on_qmp_event(Event("STOP" if i % 2 == 0 else "RESUME", {}, 0.0))
            assert dom.state is DomainState.PAUSED
            first = driver_lifecycle(drain(sub.receive_channel))
            assert len(first) == 100  # one second's burst, as QMP events
            await trio.sleep(1.5)
            later = drain(sub.receive_channel)
            assert [e.detail for e in later if e.kind == "monitor"] == ["events_dropped"]
            assert [(e.detail, e.data["state"]) for e in driver_lifecycle(later)] == [
                ("suspended", "paused")
            ]
            # A held event that is no longer true is not sent: dropped STOP,
            # then the state moves on by another way (a sync after reconnect).
            for _ in range(200):
                run.on_qmp_event(Event("RESUME", {}, 0.0))
                run.on_qmp_event(Event("STOP", {}, 0.0))
            drain(sub.receive_channel)
            dom.state = DomainState.RUNNING
            await trio.sleep(1.5)
            assert driver_lifecycle(drain(sub.receive_channel)) == []
