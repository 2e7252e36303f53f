"""stop: how long the daemon takes to stop (SIGTERM until the process has
exited) with monitor calls in flight on hung domains.

Per round: a fresh daemon with N domains, K of them SIGSTOPped, C
``monitor_command query-status`` calls in flight on the hung ones (each on its
own connection, spread round-robin); then SIGTERM. The daemon's shutdown
grace is its default, ``server.shutdown_grace`` = 2 s: calls in flight get that
long to finish, then they are cancelled. The libvirt reference: 31.8 s with 8
monitor calls in flight on hung domains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio

from .._conn import connect
from .._context import Context, Goal, Scenario
from .._load import InFlight, hang, keep_in_flight, start_domains, wait_monitors
from .._output import fmt_s, md_table
from .._plot import MODE_COLORS, grid, save
from .._procs import Mode, start_daemon, wait_exit
from .._reference import LIBVIRT
from .._stats import summarize_values

__all__ = ["SCENARIO"]

GRACE = 2.0
"""``server.shutdown_grace``'s default, written explicitly into the config."""


async def _round(ctx: Context, mode: Mode, sizes: dict[str, Any], index: int) -> dict[str, Any]:
    reg, say = ctx.registry, ctx.progress.say
    n, k, calls = sizes["n"], sizes["k"], sizes["calls"]
    state = reg.new_dir("stop")
    # JSON logs at info level: "SIGTERM: stopping..." and "stopped" carry
    # timestamps that split the stop time into its parts.
    extra = {"server.shutdown_grace": GRACE, "log.level": "info", "log.format": "json"}
    daemon = await start_daemon(reg, state, mode, backend=ctx.options.backend, extra=extra)
    names = [f"vm{i}" for i in range(n)]
    in_flight = InFlight()
    try:
        async with connect(daemon.url, daemon.token) as client:
            pids = await start_domains(client, reg, names, ctx.emulator)
            with trio.fail_after(60):
                await wait_monitors(client, names)
        hung = names[:k]
        hang([pids[name] for name in hung])
        targets = [(hung[i % k], "query-status") for i in range(calls)]
        async with trio.open_nursery() as nursery:
            await nursery.start(keep_in_flight, daemon.url, daemon.token, targets, in_flight)
            await trio.sleep(0.3)
            t0 = time.perf_counter()
            wall0 = time.time()
            daemon.proc.terminate()
            with trio.move_on_after(120):
                await wait_exit(daemon.proc)
            stop_s = time.perf_counter() - t0
            exited = daemon.proc.poll() is not None
            # The calls end when their connections close; give them a moment.
            with trio.move_on_after(2):
                while len(in_flight.ended) < calls:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        reg.kill_vms()
        await daemon.stop(grace=5)
    outcomes: dict[str, int] = {}
    for _start, _end, how in in_flight.ended:
        outcomes[how] = outcomes.get(how, 0) + 1
    phases = _phases(daemon.log_path, wall0)
    say(f"round {index + 1}: stopped in {fmt_s(stop_s)} ({phases}); calls in flight got {outcomes}")
    return {
        "phases_s": phases,
        "stop_s": round(stop_s, 4),
        "exited": exited,
        "exit_status": daemon.proc.returncode,
        "calls_sent": len(in_flight.started),
        "call_outcomes": outcomes,
        "calls_ended_after_sigterm_s": sorted(
            round(end - t0, 4) for _s, end, _h in in_flight.ended
        ),
    }


def _phases(log: Path, sigterm_at: float) -> dict[str, float]:
    """Seconds after SIGTERM at which the daemon logged that it was stopping
    and that it had stopped (its JSON log lines carry wall-clock times)."""
    found: dict[str, float] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        if "stopping within" in message:
            found["signal_handled"] = round(entry["time"] - sigterm_at, 4)
        elif message == "stopped":
            found["daemon_stopped"] = round(entry["time"] - sigterm_at, 4)
    return found


async def run(ctx: Context) -> dict[str, Any]:
    sizes: dict[str, Any] = {
        "n": ctx.pick(ctx.options.n, 8, 4),
        "k": ctx.pick(ctx.options.k, 4, 2),
        "calls": ctx.pick(ctx.options.clients, 8, 4),
        "rounds": ctx.pick(ctx.options.rounds, 3, 1),
        "grace_s": GRACE,
    }
    if not 0 < sizes["k"] <= sizes["n"]:
        raise ValueError("stop needs 0 < k <= n")
    modes: dict[str, Any] = {}
    for mode in ctx.modes:
        ctx.progress.prefix = f"stop/{mode.name}"
        rounds = [await _round(ctx, mode, sizes, i) for i in range(sizes["rounds"])]
        modes[mode.name] = {
            "rounds": rounds,
            "stop": summarize_values(r["stop_s"] for r in rounds),
        }
    return {"sizes": sizes, "modes": modes}


def goals(results: dict[str, Any]) -> list[Goal]:
    sizes = results["sizes"]
    data = results["modes"].get("default")
    if data is None:
        return []
    worst_ms = data["stop"]["max_ms"]
    grace_ms = sizes["grace_s"] * 1000
    met = worst_ms is not None and worst_ms <= grace_ms
    note = ""
    if worst_ms is not None and worst_ms > grace_ms:
        worst = max(data["rounds"], key=lambda r: r["stop_s"])
        logged = worst.get("phases_s", {}).get("daemon_stopped")
        note = f"missed by {worst_ms - grace_ms:.0f} ms"
        if logged is not None:
            note += (
                f"; the daemon logged 'stopped' {logged:.2f} s after SIGTERM and the process "
                f"exited {worst['stop_s'] - logged:.2f} s later"
            )
    return [
        Goal(
            f"stop with {sizes['calls']} calls in flight on hung domains <= the grace period",
            f"<= {sizes['grace_s']:g} s (libvirt 31.8 s)",
            f"max {fmt_s(worst_ms / 1000 if worst_ms is not None else None)} over "
            f"{len(data['rounds'])} rounds",
            met,
            note,
        )
    ]


def markdown(results: dict[str, Any]) -> str:
    sizes, modes = results["sizes"], results["modes"]
    out = [
        f"{sizes['n']} domains, {sizes['k']} hung, {sizes['calls']} monitor calls in flight on "
        f"the hung ones, then SIGTERM; shutdown grace {sizes['grace_s']:g} s; "
        f"{sizes['rounds']} rounds per mode. Time from SIGTERM until the process has exited.",
        "",
    ]
    rows: list[list[object]] = []
    for mode, data in modes.items():
        times = ", ".join(fmt_s(r["stop_s"]) or "" for r in data["rounds"])
        outcomes: dict[str, int] = {}
        for r in data["rounds"]:
            for how, count in r["call_outcomes"].items():
                outcomes[how] = outcomes.get(how, 0) + count
        rows.append(
            [mode, times, ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "-"]
        )
    rows.append(["libvirt 9.0", LIBVIRT["stop"], None])
    out.append(md_table(["mode", "stop time per round", "calls in flight got"], rows))
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> None:
    modes = results["modes"]
    grace = results["sizes"]["grace_s"]
    fig, axes = grid(1, 1, width=6.0, height=2.8)
    ax = axes[0][0]
    labels, values, colors = [], [], []
    for mode, data in modes.items():
        for i, r in enumerate(data["rounds"]):
            labels.append(f"{mode} {i + 1}")
            values.append(r["stop_s"])
            colors.append(MODE_COLORS.get(mode, "tab:green"))
    labels.append("libvirt 9.0")
    values.append(31.8)
    colors.append("grey")
    ax.barh(labels, values, color=colors)
    ax.axvline(grace, color="black", linestyle="--", linewidth=0.8, label=f"grace {grace:g} s")
    ax.set_xlabel("s from SIGTERM until the daemon exited")
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f} s", va="center", fontsize=7)
    save(fig, path)


SCENARIO = Scenario(
    name="stop",
    summary="daemon stop time with calls in flight on hung domains",
    default_modes=("default", "legacy"),
    run=run,
    goals=goals,
    markdown=markdown,
    plot=plot,
)
