"""scale: 10,000 simulated domains on one daemon: its memory, how fast it
reconnects to all of them after a restart, and how long listing them takes.

The VMs run in the simulator's many-VMs mode, at most ``PER_PROCESS`` per
process: each VM holds a listening socket and, once the daemon is connected,
an accepted one, and the open-file limit here is 20,000 per process. Their
definitions and runtime records are written as a daemon that had started them
would have left them. Then, per mode:

1. a first daemon starts and reconnects to every VM; then
2. it is stopped (SIGTERM) and a second one started: the restart.

For each daemon: seconds from spawn to its first served call, until every VM
has a client connected (asked of the simulators' control sockets, which
costs the daemon nothing), and until every domain lists with its monitor
``ok``, with the CPU time the daemon used until then, and the simulator
processes' (they stand in for 10,000 QEMUs, which would have cores of their
own). Then its RSS (VmRSS;
VmHWM is the peak), open files, and the latency of ``connect.list_domains``
(every domain in one reply) and of ``domain.get_info``. A daemon with no
domain gives the baseline RSS.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from trioctl import TrioctlError
from trioctl.sim import control_request

from .._conn import connect
from .._context import Context, Scenario
from .._procs import (
    MODES,
    Daemon,
    ManySim,
    Mode,
    free_port,
    proc_cpu_seconds,
    proc_memory_kib,
    start_daemon,
    start_many_sim,
    write_many_domains,
)
from .._report import Goal, Panel, Report, Series, Table, at_most, fmt_ms, fmt_s, mode_color
from .._stats import summarize_values

__all__ = ["SCENARIO"]

PER_PROCESS = 5000
RSS_GOAL_MIB = 150
RECONNECT_GOAL_S = 5.0


async def _sims_connected(sims: list[ManySim]) -> int:
    total = 0
    for sim in sims:
        with trio.move_on_after(2):
            state = await control_request(str(sim.control_path), "x-trioctl-sim-state")
            total += int(state["connected"])
    return total


async def _sims_settled(sims: list[ManySim], limit: float = 30.0) -> float | None:
    """Seconds until no simulated VM counts a connection (None: not within ``limit``)."""
    t0 = time.perf_counter()
    with trio.move_on_after(limit):
        while await _sims_connected(sims):
            await trio.sleep(0.1)
        return round(time.perf_counter() - t0, 2)
    return None


async def _first_call(url: str, token: str, launched: float) -> float:
    while True:
        try:
            async with connect(url, token, connect_timeout=2) as client:
                await client.get_version()
                return time.perf_counter() - launched
        except (OSError, TrioctlError, trio_websocket.HandshakeError):
            await trio.sleep(0.005)


async def _measure_daemon(
    ctx: Context,
    state: Path,
    mode: Mode,
    port: int,
    token: str | None,
    sims: list[ManySim],
    n: int,
    limit: float,
) -> tuple[Daemon, dict[str, Any]]:
    """Start a daemon on ``state`` and measure until every domain is ok."""
    say = ctx.progress.say
    sim_cpu_before = sum(proc_cpu_seconds(s.pid) for s in sims)
    daemon = await start_daemon(ctx.registry, state, mode, port=port, wait_ready=False)
    launched = daemon.launched_at
    url = f"ws://127.0.0.1:{port}/"
    result: dict[str, Any] = {"limit_s": limit}
    curve: list[list[float]] = []
    with trio.move_on_after(limit):
        # The first daemon creates the token; wait for its tokens file.
        while token is None:
            try:
                token = daemon.read_token()
            except (OSError, ValueError, KeyError):
                await trio.sleep(0.005)
        async with trio.open_nursery() as nursery:
            first_box: list[float] = []

            async def first() -> None:
                first_box.append(await _first_call(url, token, launched))

            nursery.start_soon(first)
            while True:
                if daemon.proc.poll() is not None:
                    raise RuntimeError(
                        f"the daemon exited with status {daemon.proc.returncode}:\n"
                        + daemon.log_tail()
                    )
                connected = await _sims_connected(sims)
                curve.append([round(time.perf_counter() - launched, 3), connected])
                if connected >= n:
                    break
                await trio.sleep(0.1)
        result["first_call_s"] = round(first_box[0], 4)
        result["all_connected_s"] = curve[-1][0]
        say(
            f"first call {fmt_s(result['first_call_s'])}, all {n} connected "
            f"{fmt_s(result['all_connected_s'])} after launch"
        )
        async with connect(url, token) as client:
            while True:
                domains = await client.list_domains()
                ok = sum(1 for d in domains if d.monitor.value == "ok")
                if ok >= n:
                    result["all_ok_s"] = round(time.perf_counter() - launched, 3)
                    # CPU the daemon used from spawn until then: is it the limit?
                    result["cpu_s_until_ok"] = round(proc_cpu_seconds(daemon.pid), 2)
                    # ... and the simulators, which stand in for 10,000 QEMUs.
                    result["sim_cpu_s_until_ok"] = round(
                        sum(proc_cpu_seconds(s.pid) for s in sims) - sim_cpu_before, 2
                    )
                    break
                await trio.sleep(0.1)
    result["connected_curve"] = curve
    if "all_ok_s" not in result:
        say(f"not every domain was ok within {limit:g} s")
        return daemon, result
    say(f"all {n} monitors ok {fmt_s(result['all_ok_s'])} after launch")
    await trio.sleep(1.0)  # let the reconnect's garbage settle before reading RSS
    memory = proc_memory_kib(daemon.pid)
    result["rss_mib"] = round(memory.get("VmRSS", 0) / 1024, 1)
    result["peak_rss_mib"] = round(memory.get("VmHWM", 0) / 1024, 1)
    try:
        result["open_files"] = len(os.listdir(f"/proc/{daemon.pid}/fd"))
    except OSError:
        pass
    assert token is not None
    result["list"], result["get_info"] = await _latencies(url, token, n)
    say(
        f"RSS {result['rss_mib']} MiB (peak {result['peak_rss_mib']}); list p50 "
        f"{fmt_ms(result['list']['p50_ms'])}, get_info p50 {fmt_ms(result['get_info']['p50_ms'])}"
    )
    return daemon, result


async def _latencies(url: str, token: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    lists, infos = [], []
    async with connect(url, token) as client:
        domains = await client.list_domains()
        assert len(domains) == n
        for _ in range(20):
            t0 = time.perf_counter()
            await client.list_domains()
            lists.append(time.perf_counter() - t0)
        names = [d.name for d in domains]
        for i in range(100):
            t0 = time.perf_counter()
            await client.get_info(names[(i * 97) % len(names)])
            infos.append(time.perf_counter() - t0)
    return summarize_values(lists), summarize_values(infos)


async def _run_mode(ctx: Context, mode: Mode, n: int, limit: float) -> dict[str, Any]:
    reg, say = ctx.registry, ctx.progress.say
    processes = math.ceil(n / PER_PROCESS)
    say(f"starting {n} simulated VMs in {processes} process(es)")
    sims = []
    state = reg.new_dir("scale")
    t0 = time.perf_counter()
    for j in range(processes):
        count = n // processes + (1 if j < n % processes else 0)
        # Named v0x0.., v1x0..: the daemon meets the second process only after
        # thousands of sockets are open (its pidfd is numbered past 1024).
        sims.append(await start_many_sim(reg, state, count, f"v{j}x"))
    sim_start = time.perf_counter() - t0
    write_many_domains(state, sims)
    port = free_port()
    out: dict[str, Any] = {"n": n, "sim_processes": processes, "sim_start_s": round(sim_start, 2)}
    out["sim_rss_mib"] = [round(proc_memory_kib(s.pid).get("VmRSS", 0) / 1024, 1) for s in sims]
    try:
        say("first daemon")
        first, out["first"] = await _measure_daemon(ctx, state, mode, port, None, sims, n, limit)
        t_stop = time.perf_counter()
        await first.stop(grace=30)
        out["first_stop_s"] = round(time.perf_counter() - t_stop, 3)
        # The simulators see 10,000 connections close at once (real QEMUs,
        # one process each, would not queue them): the restart is measured
        # from their settled state, not from their backlog.
        out["sims_settled_s"] = await _sims_settled(sims)
        token = first.read_token()
        say("restart")
        second, out["restart"] = await _measure_daemon(
            ctx, state, mode, port, token, sims, n, limit
        )
        await second.stop(grace=30)
    finally:
        reg.kill_vms({s.pid for s in sims})
    return out


async def _baseline(ctx: Context) -> dict[str, Any]:
    """RSS of a daemon with no domain (default mode)."""
    state = ctx.registry.new_dir("scale")
    daemon = await start_daemon(ctx.registry, state, MODES["default"])
    async with connect(daemon.url, daemon.token) as client:
        await client.list_domains()
    await trio.sleep(0.5)
    memory = proc_memory_kib(daemon.pid)
    await daemon.stop()
    return {"rss_mib": round(memory.get("VmRSS", 0) / 1024, 1)}


async def run(ctx: Context) -> dict[str, Any]:
    n = ctx.pick(ctx.options.n, 10_000, 200)
    limit = ctx.pick(ctx.options.duration, 120.0, 20.0)
    ctx.progress.prefix = "scale/baseline"
    baseline = await _baseline(ctx)
    modes: dict[str, Any] = {}
    for mode in ctx.modes:
        ctx.progress.prefix = f"scale/{mode.name}"
        modes[mode.name] = await _run_mode(ctx, mode, n, limit)
    return {
        "sizes": {"n": n, "per_process": PER_PROCESS, "limit_s": limit},
        "baseline": baseline,
        "modes": modes,
    }


def report(results: dict[str, Any]) -> Report:
    sizes, modes, base = results["sizes"], results["modes"], results["baseline"]["rss_mib"]
    n = sizes["n"]
    rows: list[list[object]] = []
    for mode, data in modes.items():
        for phase in ("first", "restart"):
            r = data[phase]
            rss = r.get("rss_mib")
            rows.append(
                [
                    mode,
                    "first start" if phase == "first" else "restart",
                    fmt_s(r.get("first_call_s")),
                    fmt_s(r.get("all_connected_s")),
                    fmt_s(r.get("all_ok_s")) or f"> {r['limit_s']:g} s",
                    fmt_s(r.get("cpu_s_until_ok")),
                    fmt_s(r.get("sim_cpu_s_until_ok")),
                    f"{rss} / {r.get('peak_rss_mib')} MiB" if rss is not None else None,
                    f"{(rss - base) * 1024 / data['n']:.1f} KiB" if rss is not None else None,
                    r.get("open_files"),
                    _lat(r.get("list")),
                    _lat(r.get("get_info")),
                ]
            )
    header = [
        "mode",
        "daemon",
        "first call",
        "all VMs connected",
        "all monitors ok",
        "daemon CPU until then",
        "simulators' CPU until then",
        "RSS / peak",
        "RSS per domain",
        "open files",
        "list all p50 / p99 / max",
        "get_info p50 / p99",
    ]
    sims = " ".join(
        f"{mode}: {d['sim_processes']} simulator process(es) started in {d['sim_start_s']} s, "
        f"RSS {', '.join(str(r) for r in d['sim_rss_mib'])} MiB; first daemon stopped in "
        f"{fmt_s(d.get('first_stop_s'))}; the simulators had seen every connection close "
        f"{fmt_s(d.get('sims_settled_s'))} later, and the restart began then."
        for mode, d in modes.items()
    )
    curves = [
        Series(
            "dotted" if phase == "first" else "line",
            [c[0] for c in data[phase]["connected_curve"]],
            [c[1] for c in data[phase]["connected_curve"]],
            f"{mode}, {'first start' if phase == 'first' else 'restart'}",
            mode_color(mode),
        )
        for mode, data in modes.items()
        for phase in ("first", "restart")
    ]
    latencies = [
        Series(
            "bars",
            [f"{mode}\n{key}" for key in ("list", "get_info") if data["restart"].get(key)],
            [data["restart"][k]["p50_ms"] for k in ("list", "get_info") if data["restart"].get(k)],
            None,
            mode_color(mode),
            values="{:.3g} ms",
        )
        for mode, data in modes.items()
    ]
    panels = [
        Panel(
            f"reconnecting {n:,} simulated domains",
            curves,
            xlabel="s since the daemon was spawned",
            ylabel="VMs with the daemon connected",
            ylim=(0, n * 1.05),
            legend=True,
        ),
        Panel(
            f"after the restart: list of {n:,} vs one get_info",
            latencies,
            ylabel="p50 latency, ms (log)",
            log=True,
        ),
    ]
    return Report(
        f"{n:,} simulated domains, at most {sizes['per_process']:,} per simulator "
        f"process. Baseline: a daemon with no domain has {base} MiB RSS. Times are from "
        f"spawning the daemon. {sims}",
        [Table(header, rows)],
        _goals(n, modes.get("default")),
        [panels],
        panel_size=(5.0, 3.0),
    )


def _goals(n: int, data: dict[str, Any] | None) -> list[Goal]:
    """RSS and reconnect time after the restart (default mode; 10,000 domains)."""
    if data is None:
        return []
    restart = data["restart"]
    rss = restart.get("rss_mib")
    found = [
        at_most(
            f"{n:,} domains in <= {RSS_GOAL_MIB} MB daemon RSS",
            f"<= {RSS_GOAL_MIB} MB",
            f"{rss} MiB after the restart (peak {restart.get('peak_rss_mib')} MiB)",
            None if rss is None else rss * 1.048576,
            RSS_GOAL_MIB,
            " MB",
        ),
        at_most(
            f"reconnect all {n:,} after a restart <= {RECONNECT_GOAL_S:g} s",
            f"<= {RECONNECT_GOAL_S:g} s",
            f"{fmt_s(restart.get('all_ok_s'))} from spawn until every monitor is ok "
            f"(all connected at {fmt_s(restart.get('all_connected_s'))})",
            restart.get("all_ok_s"),
            RECONNECT_GOAL_S,
            " s",
        ),
    ]
    if n < 10_000:
        note = f"only {n:,} domains (goal: 10,000)"
        found = [attrs.evolve(g, met=None, note=note) for g in found]
    return found


def _lat(summary: dict[str, Any] | None) -> str | None:
    if summary is None:
        return None
    return " / ".join(
        fmt_ms(summary[k]) or "-" for k in ("p50_ms", "p99_ms", "max_ms") if k in summary
    )


SCENARIO = Scenario(
    name="scale",
    summary="10,000 simulated domains: daemon RSS, reconnect after a restart, list latency",
    default_modes=("default", "legacy"),
    run=run,
    report=report,
)
