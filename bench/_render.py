"""The one renderer: a result file's :class:`~bench._report.Report` as
``NAME.md`` and ``NAME.png``.

Plots are matplotlib, headless, with the bench's few conventions: small
PNGs, latencies in ms on a log axis, failures as red crosses, calls still
waiting when the window closed as hollow red triangles (their latency is a
lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib import ticker
from matplotlib.axes import Axes

from ._report import Panel, Report, Series, Table

__all__ = ["markdown", "md_table", "plot"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; ``None`` cells, and cells missing at the end, show as a dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        padded = [*row, *[None] * (len(header) - len(row))]
        cells = ["-" if c is None else str(c) for c in padded]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table(table: Table) -> list[str]:
    return ([table.caption, ""] if table.caption else []) + [
        md_table(table.header, table.rows),
        "",
    ]


def markdown(name: str, summary: str, data: dict[str, Any], report: Report, png: str) -> str:
    """The whole ``NAME.md``: where and how it ran, then the report."""
    machine = data["machine"]
    lines = [
        f"## {name}: {summary}",
        "",
        f"Command: `{data['command']}`" + (" (smoke-sized)" if data.get("short") else ""),
        f"Run {data['started_at']}, {data['elapsed_s']} s, backend {data['backend']}, "
        f"machine: {machine_line(machine)}.{_source(machine)}",
        "",
    ]
    if data.get("modes"):
        about = "; ".join(f"**{k}**: {v['about']}" for k, v in data["modes"].items())
        lines += [f"Modes: {about}.", ""]
    if report.intro:
        lines += [report.intro, ""]
    for table in report.tables:
        lines += _table(table)
    if report.goals:
        rows = [
            [g.goal, g.target, g.measured, {True: "met", False: "missed", None: "-"}[g.met], g.note]
            for g in report.goals
        ]
        lines += _table(Table(["goal", "target", "measured", "", "note"], rows, "Goals:"))
    if report.panels:
        lines += [f"![{name}]({png})", ""]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('cpus')} vCPU ({machine.get('cpu_model', '?')}), "
        f"{machine.get('memory_gib', '?')} GiB, Linux {machine.get('kernel', '?')}, "
        f"Python {machine.get('python')}, trio {machine.get('trio', '?')}, "
        f"trio-websocket {machine.get('trio-websocket', '?')}"
    )


def _source(machine: dict[str, Any]) -> str:
    if "commit" not in machine:
        return ""
    changed = machine.get("modified_files", 0)
    return f" Source: commit {machine['commit']}" + (
        f" with {changed} modified files." if changed else "."
    )


# -- the figure -------------------------------------------------------------------------


def plot(report: Report, path: Path) -> None:
    """Write the report's panels as one PNG (nothing if it has none)."""
    if not report.panels:
        return
    rows, cols = len(report.panels), len(report.panels[0])
    width, height = report.panel_size
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        squeeze=False,
        layout="constrained",
        sharey="row" if report.share_y else False,
    )
    for r, row in enumerate(report.panels):
        for c, panel in enumerate(row):
            _panel(axes[r][c], panel)
    fig.savefig(path, dpi=72, pil_kwargs={"optimize": True})
    plt.close(fig)


def _panel(ax: Axes, panel: Panel) -> None:
    horizontal = any(s.kind == "hbars" for s in panel.series)
    bars = [s for s in panel.series if s.kind in ("bars", "hbars")]
    _bars(ax, bars, horizontal)
    for s in panel.series:
        if s.kind == "samples":
            _samples(ax, s)
        elif s.kind == "step":
            ax.step(s.x, s.y, where="post", color=s.color, label=s.label)
        elif s.kind in ("line", "dotted"):
            style = ":" if s.kind == "dotted" else "-"
            ax.plot(s.x, s.y, linestyle=style, color=s.color, label=s.label, linewidth=1)
    for x in panel.vlines:
        ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
    for y in panel.hlines:
        ax.axhline(y, color="grey", linestyle="--", linewidth=0.6)
    for start, end in panel.spans:
        ax.axvspan(start, end, color="grey", alpha=0.15)
    if panel.log:
        _plain_log_axis(ax, "x" if horizontal else "y")
    if panel.xlim is not None:
        ax.set_xlim(*panel.xlim)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_title(panel.title, fontsize=8)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(
        True,
        which="major",
        alpha=0.3,
        axis=("x" if horizontal else "y") if bars else "both",
    )
    if panel.legend:
        ax.legend(fontsize=7)


def _bars(ax: Axes, series: list[Series], horizontal: bool) -> None:
    """Bars by category, side by side where series share one."""
    if not series:
        return
    categories: list[Any] = []
    for s in series:
        categories += [x for x in s.x if x not in categories]
    sharing = {c: [s for s in series if c in s.x] for c in categories}
    width = 0.8 / max(len(v) for v in sharing.values())
    for s in series:
        places = []
        for x in s.x:
            group = sharing[x]
            places.append(categories.index(x) + (group.index(s) - (len(group) - 1) / 2) * width)
        draw = ax.barh if horizontal else ax.bar
        bars = draw(places, s.y, width, color=s.color, label=s.label)
        if s.values:
            ax.bar_label(bars, labels=[s.values.format(v) for v in s.y], fontsize=7)
    ticks = (
        (ax.set_yticks, ax.set_yticklabels) if horizontal else (ax.set_xticks, ax.set_xticklabels)
    )
    ticks[0](range(len(categories)))
    ticks[1]([str(c) for c in categories], fontsize=7)


def _samples(ax: Axes, s: Series) -> None:
    groups: dict[str, tuple[list[Any], list[float]]] = {
        "ok": ([], []),
        "bad": ([], []),
        "wait": ([], []),
    }
    for x, y, outcome in zip(s.x, s.y, s.outcomes, strict=True):
        key = "ok" if outcome == "ok" else "wait" if outcome == "UNFINISHED" else "bad"
        groups[key][0].append(x)
        groups[key][1].append(y)
    xs, ys = groups["ok"]
    if xs:
        ax.scatter(xs, ys, s=6, color=s.color, label=s.label, linewidths=0)
    xs, ys = groups["bad"]
    if xs:
        label = "failed" if s.label else None
        ax.scatter(xs, ys, s=14, marker="x", color="red", linewidths=0.8, label=label)
    xs, ys = groups["wait"]
    if xs:
        # Still waiting when the window closed: the latency is a lower bound.
        label = "unfinished" if s.label else None
        ax.scatter(
            xs,
            ys,
            s=18,
            marker="^",
            facecolors="none",
            edgecolors="red",
            linewidths=0.8,
            label=label,
        )
    _plain_log_axis(ax, "y")


def _plain_log_axis(ax: Axes, which: str) -> None:
    """Log scale with tick labels like ``0.5``, ``10``, ``3000``: powers of
    ten, plus 2 and 5 times them when the axis spans few decades."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    limits = ax.get_ylim if which == "y" else ax.get_xlim

    def minor(value: float, _pos: int | None) -> str:
        low, high = limits()
        if low <= 0 or high / low > 300:
            return ""
        return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""

    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(ticker.LogLocator(base=10))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
    axis.set_minor_formatter(ticker.FuncFormatter(minor))
