"""matplotlib, headless, with the bench's few conventions: small PNGs,
latencies in ms on a log axis, failures as red crosses, calls still waiting
when the window closed as hollow red triangles (their latency is a lower
bound)."""

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
from matplotlib.figure import Figure

from ._stats import OK, Sample

__all__ = ["MODE_COLORS", "Axes", "Figure", "grid", "plain_log_axis", "save", "scatter_samples"]

MODE_COLORS = {"default": "tab:blue", "legacy": "tab:orange", "libvirt9": "tab:purple"}


def grid(
    rows: int,
    cols: int,
    *,
    width: float = 5.0,
    height: float = 2.4,
    sharey: bool | str = False,
) -> tuple[Figure, Any]:
    """A figure with ``rows`` x ``cols`` axes (always a 2-D array)."""
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        squeeze=False,
        layout="constrained",
        sharey=sharey,  # type: ignore[arg-type]
    )
    return fig, axes


def plain_log_axis(ax: Axes) -> None:
    """Log scale with tick labels like ``0.5``, ``10``, ``3000``: powers of
    ten, plus 2 and 5 times them when the axis spans few decades."""

    def minor(value: float, _pos: int | None) -> str:
        low, high = ax.get_ylim()
        if low <= 0 or high / low > 300:
            return ""
        return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(minor))


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=72, pil_kwargs={"optimize": True})
    plt.close(fig)


def scatter_samples(
    ax: Axes,
    samples: Sequence[Sample],
    *,
    color: str,
    offset: float = 0.0,
    label: str | None = None,
) -> None:
    """Latency (ms, log) over time: successes as dots, failures as red crosses."""
    ok = [s for s in samples if s.outcome == OK]
    bad = [s for s in samples if s.outcome not in (OK, "UNFINISHED")]
    waiting = [s for s in samples if s.outcome == "UNFINISHED"]
    if ok:
        ax.scatter(
            [s.t + offset for s in ok],
            [max(s.latency * 1000, 1e-3) for s in ok],
            s=6,
            color=color,
            label=label,
            linewidths=0,
        )
    if bad:
        ax.scatter(
            [s.t + offset for s in bad],
            [max(s.latency * 1000, 1e-3) for s in bad],
            s=14,
            marker="x",
            color="red",
            linewidths=0.8,
            label="failed" if label else None,
        )
    if waiting:
        # Still waiting when the window closed: the latency is a lower bound.
        ax.scatter(
            [s.t + offset for s in waiting],
            [max(s.latency * 1000, 1e-3) for s in waiting],
            s=18,
            marker="^",
            facecolors="none",
            edgecolors="red",
            linewidths=0.8,
            label="unfinished" if label else None,
        )
    plain_log_axis(ax)
    ax.grid(True, which="major", alpha=0.3)
