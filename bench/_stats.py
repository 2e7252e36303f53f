"""Latency samples and their summaries.

A sample is one call: when it started (seconds since the window opened), how
long it took and how it ended: ``"ok"``, the daemon's error reason
(``MONITOR_UNRESPONSIVE``, ``JOB_TIMEOUT``...), or the bench's own
(``PROBE_TIMEOUT``: the probe gave up; ``UNFINISHED``: still waiting when the
window closed; ``CONNECTION_LOST``). A call that did not finish counts with
the time it waited, so its latency is a lower bound.

Percentiles are nearest-rank over every sample, successes and failures alike
(a call that fails after 30 s kept its caller waiting 30 s).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = ["Sample", "percentile", "ratio", "summarize"]

OK = "ok"


@attrs.frozen
class Sample:
    t: float
    """Start, in seconds since the window opened."""
    latency: float
    """Seconds."""
    outcome: str

    def to_json(self) -> list[Any]:
        return [round(self.t, 4), round(self.latency * 1000, 3), self.outcome]

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> Sample:
        return cls(float(raw[0]), float(raw[1]) / 1000, str(raw[2]))


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in 0..1)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(samples: Iterable[Sample]) -> dict[str, Any]:
    """Count, successes, p50/p90/p99/max in ms and the outcomes that were not ok."""
    items = list(samples)
    ordered = sorted(s.latency for s in items)
    outcomes = Counter(s.outcome for s in items if s.outcome != OK)
    return {
        "count": len(items),
        "ok": sum(1 for s in items if s.outcome == OK),
        "p50_ms": _ms(percentile(ordered, 0.50)),
        "p90_ms": _ms(percentile(ordered, 0.90)),
        "p99_ms": _ms(percentile(ordered, 0.99)),
        "max_ms": _ms(ordered[-1]) if ordered else None,
        "errors": dict(sorted(outcomes.items())),
    }


def summarize_values(values: Iterable[float]) -> dict[str, Any]:
    """p50/p99/max (ms) of plain latencies in seconds."""
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": _ms(percentile(ordered, 0.50)),
        "p99_ms": _ms(percentile(ordered, 0.99)),
        "max_ms": _ms(ordered[-1]) if ordered else None,
    }


def _ms(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return round(seconds * 1000, 3)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 3)
