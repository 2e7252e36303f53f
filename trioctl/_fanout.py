"""Bounded, drop-and-count delivery of events to subscribers.

The one overflow policy of the monitor's event subscribers, the driver's
event subscriptions and the client's event stream: the publisher never waits
for a subscriber; an item that does not fit in a subscriber's buffer is
dropped *for that subscriber only* and counted, in the subscriber
(:attr:`Feed.dropped`) and in the fan-out (:attr:`FanOut.dropped`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import trio

__all__ = ["FanOut", "Feed"]

T = TypeVar("T")


class Feed(Generic[T]):
    """One subscriber's bounded buffer: iterate it, or read
    :attr:`receive_channel`; the iteration ends when the feed is closed."""

    def __init__(self, max_buffer: float, keys: frozenset[Hashable] | None = None) -> None:
        self._send, self.receive_channel = trio.open_memory_channel[T](max_buffer)
        self.keys = keys
        """Only items published under one of these keys reach it (None: all)."""
        self.dropped = 0
        """Items that did not fit in the buffer."""

    def offer(self, item: T) -> bool:
        """Buffer ``item`` without waiting; False if it was dropped (full,
        counted in :attr:`dropped`) or the feed is closed (not counted)."""
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def close(self) -> None:
        """End the feed: its reader sees the end once the buffer is drained."""
        self._send.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self.receive_channel.__aiter__()


class FanOut(Generic[T]):
    """Subscribers' feeds: :meth:`publish` offers an item to each (see the
    module's overflow policy)."""

    def __init__(self) -> None:
        self._feeds: list[Feed[T]] = []
        self.dropped = 0
        """Items dropped, summed over every feed there was."""

    def __len__(self) -> int:
        return len(self._feeds)

    @contextmanager
    def subscribe(
        self,
        max_buffer: float,
        keys: frozenset[Hashable] | None = None,
        *,
        closed: bool = False,
    ) -> Iterator[Feed[T]]:
        """A new feed for the block's duration; closed when the block ends
        (``closed``: already at the start, for a source that has ended)."""
        feed = Feed[T](max_buffer, keys)
        if closed:
            feed.close()
        self._feeds.append(feed)
        try:
            yield feed
        finally:
            self._feeds.remove(feed)
            feed.close()

    def publish(self, item: T, key: Hashable = None) -> None:
        """Offer ``item`` to every feed whose keys include ``key`` (or that
        has none); never waits."""
        for feed in self._feeds:
            if feed.keys is not None and key not in feed.keys:
                continue
            before = feed.dropped
            if not feed.offer(item):
                self.dropped += feed.dropped - before

    def close(self) -> None:
        """End every feed (their iterations stop once drained)."""
        for feed in self._feeds:
            feed.close()
