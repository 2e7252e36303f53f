"""The bounded fan-out type, and the job handle the *_locked operations take."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
from hypothesis import given, strategies as st

from trioctl._driver import DriverConfig, open_driver
from trioctl._fanout import FanOut, Feed
from trioctl._jobs import JobKind
from trioctl._models import DomainDefinition


def drain(feed: Feed[int]) -> list[int]:
    out = []
    while True:
        try:
            out.append(feed.receive_channel.receive_nowait())
        except trio.WouldBlock:
            return out


@given(
    st.lists(st.integers(0, 50), max_size=5),
    st.lists(st.integers(0, 3), max_size=200),
)
def test_each_feed_keeps_the_first_items_that_fit_and_counts_the_rest(
    sizes: list[int], keys: list[int]
) -> None:
    fan = FanOut[int]()
    with contextlib.ExitStack() as stack:
        never_read = stack.enter_context(fan.subscribe(0))
        only_one = stack.enter_context(fan.subscribe(1000, frozenset({1})))
        feeds = [stack.enter_context(fan.subscribe(size)) for size in sizes]
        for i, key in enumerate(keys):
            fan.publish(i, key)
        for size, feed in zip(sizes, feeds, strict=True):
            assert drain(feed) == list(range(len(keys)))[:size]
            assert feed.dropped == max(0, len(keys) - size)
        assert drain(only_one) == [i for i, key in enumerate(keys) if key == 1]
        assert only_one.dropped == 0
        assert never_read.dropped == len(keys)
        assert fan.dropped == sum(f.dropped for f in [never_read, only_one, *feeds])
        assert len(fan) == 2 + len(sizes)


async def test_a_closed_feed_ends_its_reader_and_counts_nothing() -> None:
    fan = FanOut[str]()
    with fan.subscribe(4) as feed:
        fan.publish("a")
        fan.close()
        fan.publish("b")  # after the end: neither delivered nor counted
        assert [item async for item in feed] == ["a"]
        assert feed.dropped == 0 and fan.dropped == 0
    with fan.subscribe(4, closed=True) as ended:
        assert [item async for item in ended] == []
    assert len(fan) == 0
    lone = Feed[str](1)
    lone.receive_channel.close()
    assert not lone.offer("x") and lone.dropped == 0  # the reader went away


async def test_locked_operations_need_the_held_handle(sock_dir: Path) -> None:
    with trio.fail_after(30):
        async with open_driver(DriverConfig(state_dir=sock_dir)) as driver:
            await driver.define(DomainDefinition(name="vm"))
            handle = driver.jobs.job("vm", JobKind.MODIFY, procedure="test", client="t")
            with pytest.raises(RuntimeError, match="not held"):
                await driver.undefine_locked(handle)
            async with handle as job:
                await driver.undefine_locked(job)
            assert driver.list_domains() == []
