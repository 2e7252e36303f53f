"""Call latency histograms, kept by the server and exported by
:mod:`trioctl._metrics`. Apart from it so that the daemon imports
``prometheus_client`` (11-18 ms of CPU and 2.3 MiB here) only at the first
scrape of ``/metrics``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BUCKETS", "Histogram"]

BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the call latency histograms."""


class Histogram:
    """Cumulative bucket counts and sum of one procedure's call durations."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        running = 0
        out = []
        for bound, count in zip((*(repr(b) for b in BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out
