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
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

from .._conn import connect
from .._context import Context, Scenario
from .._load import InFlight, hang, keep_in_flight, start_domains, wait_monitors
from .._procs import Mode, start_daemon, wait_exit
from .._reference import LIBVIRT
from .._report import Goal, Panel, Report, Series, Table, at_most, fmt_s, mode_color
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


def report(results: dict[str, Any]) -> Report:
    sizes, modes = results["sizes"], results["modes"]
    rows: list[list[object]] = []
    for mode, data in modes.items():
        outcomes: Counter[str] = Counter()
        for r in data["rounds"]:
            outcomes.update(r["call_outcomes"])
        times = ", ".join(fmt_s(r["stop_s"]) or "" for r in data["rounds"])
        rows.append([mode, times, ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))])
    rows.append(["libvirt 9.0", LIBVIRT["stop"]])
    bars = [
        Series(
            "hbars",
            [f"{mode} {i + 1}" for i in range(len(data["rounds"]))],
            [r["stop_s"] for r in data["rounds"]],
            mode,
            mode_color(mode),
            values="{:.2f} s",
        )
        for mode, data in modes.items()
    ]
    bars.append(Series("hbars", ["libvirt 9.0"], [31.8], "libvirt 9.0", "grey", values="{:.2f} s"))
    panel = Panel(
        f"stop with {sizes['calls']} calls in flight (dashed: the {sizes['grace_s']:g} s grace)",
        bars,
        xlabel="s from SIGTERM until the daemon exited",
        vlines=[sizes["grace_s"]],
    )
    return Report(
        f"{sizes['n']} domains, {sizes['k']} hung, {sizes['calls']} monitor calls in flight on "
        f"the hung ones, then SIGTERM; shutdown grace {sizes['grace_s']:g} s; "
        f"{sizes['rounds']} rounds per mode. Time from SIGTERM until the process has exited.",
        [Table(["mode", "stop time per round", "calls in flight got"], rows)],
        _goals(sizes, modes.get("default")),
        [[panel]],
        panel_size=(6.0, 2.8),
    )


def _goals(sizes: dict[str, Any], data: dict[str, Any] | None) -> list[Goal]:
    """Stop within the grace (default mode)."""
    if data is None:
        return []
    worst = max(data["rounds"], key=lambda r: r["stop_s"])
    goal = at_most(
        f"stop with {sizes['calls']} calls in flight on hung domains <= the grace period",
        f"<= {sizes['grace_s']:g} s (libvirt 31.8 s)",
        f"max {fmt_s(worst['stop_s'])} over {len(data['rounds'])} rounds",
        worst["stop_s"],
        sizes["grace_s"],
        " s",
    )
    logged = worst.get("phases_s", {}).get("daemon_stopped")
    if goal.met is False and logged is not None:
        goal = attrs.evolve(
            goal,
            note=f"{goal.note}; the daemon logged 'stopped' {logged:.2f} s after SIGTERM and "
            f"the process exited {worst['stop_s'] - logged:.2f} s later",
        )
    return [goal]


SCENARIO = Scenario(
    name="stop",
    summary="daemon stop time with calls in flight on hung domains",
    default_modes=("default", "legacy"),
    run=run,
    report=report,
)
