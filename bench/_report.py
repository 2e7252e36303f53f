"""What a scenario hands the renderer: plain data, no markdown, no matplotlib.

A scenario's ``report(results)`` turns its JSON results into a
:class:`Report`: an introduction, tables (rows of cells), the issue's goals
as judged, and panels of series for the figure. :mod:`bench._render` is the
one place that writes them as markdown and PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ._stats import Sample

__all__ = [
    "MODE_COLORS",
    "Goal",
    "Panel",
    "Report",
    "Series",
    "Table",
    "at_most",
    "fmt_ms",
    "fmt_ratio",
    "fmt_s",
    "mode_color",
    "sample_series",
]

Cell = object
"""A table cell: anything ``str()`` shows; ``None`` shows as a dash."""


@attrs.frozen
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    caption: str = ""
    """A line before the table."""


@attrs.frozen
class Goal:
    """One of the issue's goals, measured."""

    goal: str
    target: str
    measured: str
    met: bool | None
    """None when the run could not measure it."""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def at_most(
    goal: str, target: str, measured: str, value: float | None, limit: float, unit: str = ""
) -> Goal:
    """A goal met when ``value <= limit``; the note says by how much it missed."""
    if value is None:
        return Goal(goal, target, measured, None, "not measured")
    met = value <= limit
    return Goal(goal, target, measured, met, "" if met else f"missed by {value - limit:.3g}{unit}")


SeriesKind = Literal["samples", "line", "dotted", "step", "bars", "hbars"]


@attrs.frozen
class Series:
    """Points of one kind in one panel.

    ``samples``: latency (ms, log axis) over time; ``outcomes`` gives each
    point's outcome (ok dots, failures as red crosses, ``UNFINISHED`` as
    hollow red triangles). ``line``, ``dotted``, ``step``: x against y.
    ``bars`` (vertical) and ``hbars`` (horizontal): ``x`` are category
    names; series that share a category stand side by side.
    """

    kind: SeriesKind
    x: Sequence[Any]
    y: Sequence[float]
    label: str | None = None
    color: str = "tab:blue"
    outcomes: Sequence[str] = ()
    values: str = ""
    """Bars: a format for a label on each bar (``"{:,.0f}"``); empty: none."""


@attrs.frozen
class Panel:
    title: str
    series: Sequence[Series]
    xlabel: str = ""
    ylabel: str = ""
    log: bool = False
    """Log value axis with plain tick labels."""
    xlim: tuple[float, float] | None = None
    ylim: tuple[float, float] | None = None
    vlines: Sequence[float] = ()
    """Dashed vertical markers at these x (the values of hbars)."""
    hlines: Sequence[float] = ()
    spans: Sequence[tuple[float, float]] = ()
    """Grey x ranges."""
    legend: bool = False


@attrs.frozen
class Report:
    intro: str
    tables: Sequence[Table]
    goals: Sequence[Goal] = ()
    panels: Sequence[Sequence[Panel]] = ()
    """Rows of panels (every row as long as the first)."""
    panel_size: tuple[float, float] = (5.0, 2.4)
    share_y: bool = False
    """Panels of a row share their value axis."""


MODE_COLORS = {"default": "tab:blue", "legacy": "tab:orange", "libvirt9": "tab:purple"}


def mode_color(mode: str) -> str:
    return MODE_COLORS.get(mode, "tab:green")


def sample_series(
    samples: Sequence[Sample], color: str, *, offset: float = 0.0, label: str | None = None
) -> Series:
    return Series(
        "samples",
        [s.t + offset for s in samples],
        [max(s.latency * 1000, 1e-3) for s in samples],
        label,
        color,
        [s.outcome for s in samples],
    )


def fmt_ms(value: float | None) -> str | None:
    """Milliseconds, readable: ``0.42 ms``, ``12.3 ms``, ``29.8 s``."""
    if value is None:
        return None
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def fmt_s(value: float | None) -> str | None:
    if value is None:
        return None
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def fmt_ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"
