"""throughput: no-op calls per second (``connect.get_version``) over 1 and 16
connections, beside a bare trio-websocket echo server measured in the same run.

Three servers, each its own process, measured round by round in turn so that
a noisy machine disturbs them alike (each figure is the median of the
rounds):

* ``echo``: a trio-websocket server that sends each message straight back;
  the client sends the same JSON-RPC request text the daemon gets;
* ``daemon (raw)``: the daemon, driven by the same raw trio-websocket loop
  (request text out, reply text in): the server side alone differs from echo;
* ``daemon (client)``: the daemon through ``trioctl``'s client library
  (``Client.get_version()``: id routing, error mapping, cattrs).

Every connection has one call in flight at a time (sequential, like a
libvirt client thread). Each round also measures a batch path on one
connection: JSON-RPC batches of ``BATCH`` ``domain.get_info`` calls on one
running domain, one batch in flight at a time (``batch`` in the results,
calls per second counting every item). The client runs in this process; the CPU use of each
server process is reported too, since on 2 cores client and server compete.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import trio
import trio_websocket

from .._conn import connect, open_ws
from .._context import Context, Scenario
from .._load import start_domains, wait_monitors
from .._procs import proc_cpu_seconds, start_daemon, start_helper, terminate
from .._reference import LIBVIRT
from .._report import Goal, Panel, Report, Series, Table, fmt_ratio

__all__ = ["SCENARIO"]

REQUEST = '{"jsonrpc": "2.0", "method": "connect.get_version", "params": {}, "id": 1}'
SERVERS = ("echo", "daemon_raw", "daemon_client")
BATCH = 100
BATCH_DOMAIN = "vm0"
BATCH_REQUEST = json.dumps(
    [
        {"jsonrpc": "2.0", "method": "domain.get_info", "params": {"name": BATCH_DOMAIN}, "id": i}
        for i in range(BATCH)
    ]
)
LABELS = {
    "echo": "trio-websocket echo",
    "daemon_raw": "daemon (raw WebSocket client)",
    "daemon_client": "daemon (trioctl client library)",
}


async def _measure(
    server: str, url: str, token: str, connections: int, seconds: float
) -> tuple[int, float]:
    """Calls completed in ``seconds`` over ``connections`` connections."""
    counts = [0] * connections
    ready = trio.Event()
    joined = 0
    stop_at = [0.0]

    async def raw(i: int, ws: trio_websocket.WebSocketConnection) -> None:
        await ready.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            await ws.send_message(REQUEST)
            await ws.get_message()
            n += 1
        counts[i] = n

    async def one(i: int) -> None:
        nonlocal joined
        if server == "daemon_client":
            async with connect(url, token) as client:
                await client.get_version()
                joined += 1
                if joined == connections:
                    stop_at[0] = time.perf_counter() + seconds
                    ready.set()
                await ready.wait()
                n = 0
                while time.perf_counter() < stop_at[0]:
                    await client.get_version()
                    n += 1
                counts[i] = n
            return
        auth = None if server == "echo" else token
        async with open_ws(url, auth) as ws:
            await ws.send_message(REQUEST)
            await ws.get_message()
            joined += 1
            if joined == connections:
                stop_at[0] = time.perf_counter() + seconds
                ready.set()
            await raw(i, ws)

    async with trio.open_nursery() as nursery:
        for i in range(connections):
            nursery.start_soon(one, i)
        await ready.wait()
        start = time.perf_counter()
    return sum(counts), time.perf_counter() - start


async def _measure_batch(url: str, token: str, seconds: float) -> tuple[int, float]:
    """Calls (batch items) completed in ``seconds`` by one connection sending
    one batch of ``BATCH`` get_info at a time; every item must succeed."""
    async with open_ws(url, token) as ws:
        await ws.send_message(BATCH_REQUEST)
        await ws.get_message()
        n = 0
        start = time.perf_counter()
        stop_at = start + seconds
        while time.perf_counter() < stop_at:
            await ws.send_message(BATCH_REQUEST)
            replies = json.loads(await ws.get_message())
            if len(replies) != BATCH or any("result" not in r for r in replies):
                raise RuntimeError(f"a batch item failed: {replies[:2]}")
            n += BATCH
        return n, time.perf_counter() - start


async def run(ctx: Context) -> dict[str, Any]:
    reg, say = ctx.registry, ctx.progress.say
    rounds = ctx.pick(ctx.options.rounds, 3, 1)
    seconds = ctx.pick(ctx.options.duration, 3.0, 0.5)
    conns = [1, 16]
    sizes = {"rounds": rounds, "seconds": seconds, "connections": conns}
    modes: dict[str, Any] = {}
    for mode in ctx.modes:
        ctx.progress.prefix = f"throughput/{mode.name}"
        work = reg.new_dir("tp")
        echo_ready = work / "echo.json"
        echo = start_helper(
            reg,
            [sys.executable, "-m", "bench._echo", "--ready-file", str(echo_ready)],
            work / "echo.log",
        )
        daemon = await start_daemon(
            reg, work, mode, extra={"server.keepalive_interval": 0, "log.level": "error"}
        )
        async with connect(daemon.url, daemon.token) as client:
            await start_domains(client, reg, [BATCH_DOMAIN], ctx.emulator)
            with trio.fail_after(60):
                await wait_monitors(client, [BATCH_DOMAIN])
        with trio.fail_after(30):
            while not echo_ready.exists():
                await trio.sleep(0.01)
        echo_url = json.loads(echo_ready.read_text())["url"]
        pids = {"echo": echo.pid, "daemon_raw": daemon.pid, "daemon_client": daemon.pid}
        urls = {"echo": echo_url, "daemon_raw": daemon.url, "daemon_client": daemon.url}
        per: dict[str, dict[int, list[dict[str, float]]]] = {
            s: {c: [] for c in conns} for s in SERVERS
        }
        batch: list[dict[str, float]] = []
        for r in range(rounds):
            cpu0 = proc_cpu_seconds(daemon.pid)
            calls, wall = await _measure_batch(daemon.url, daemon.token, seconds)
            batch.append(
                {
                    "calls_per_s": calls / wall,
                    "server_cpu": (proc_cpu_seconds(daemon.pid) - cpu0) / wall,
                }
            )
            say(f"round {r + 1}, batches of {BATCH} get_info: {calls / wall:,.0f} calls/s")
            for c in conns:
                for server in SERVERS:
                    cpu0, bench0 = proc_cpu_seconds(pids[server]), time.process_time()
                    calls, wall = await _measure(server, urls[server], daemon.token, c, seconds)
                    per[server][c].append(
                        {
                            "calls_per_s": calls / wall,
                            "server_cpu": (proc_cpu_seconds(pids[server]) - cpu0) / wall,
                            "client_cpu": (time.process_time() - bench0) / wall,
                        }
                    )
                say(
                    f"round {r + 1}, {c} connection(s): "
                    + ", ".join(f"{s} {per[s][c][-1]['calls_per_s']:,.0f}/s" for s in SERVERS)
                )
        await daemon.stop(grace=5)
        await terminate(echo, 5)
        results: dict[str, Any] = {}
        for server in SERVERS:
            results[server] = {}
            for c in conns:
                items = per[server][c]
                results[server][str(c)] = {
                    "calls_per_s": round(statistics.median(i["calls_per_s"] for i in items), 1),
                    "rounds": [round(i["calls_per_s"], 1) for i in items],
                    "server_cpu": round(statistics.median(i["server_cpu"] for i in items), 3),
                    "client_cpu": round(statistics.median(i["client_cpu"] for i in items), 3),
                    # The figure the machine's load changes least.
                    "server_cpu_us_per_call": round(
                        statistics.median(
                            1e6 * i["server_cpu"] / max(i["calls_per_s"], 1e-9) for i in items
                        ),
                        1,
                    ),
                }
        results["batch"] = {
            "size": BATCH,
            "calls_per_s": round(statistics.median(i["calls_per_s"] for i in batch), 1),
            "rounds": [round(i["calls_per_s"], 1) for i in batch],
            "server_cpu": round(statistics.median(i["server_cpu"] for i in batch), 3),
        }
        for server in ("daemon_raw", "daemon_client"):
            for c in conns:
                entry = results[server][str(c)]
                echo_rate = results["echo"][str(c)]["calls_per_s"]
                entry["ratio_to_echo"] = round(entry["calls_per_s"] / echo_rate, 3)
                echo_cpu = results["echo"][str(c)]["server_cpu_us_per_call"]
                entry["cpu_ratio_to_echo"] = (
                    round(entry["server_cpu_us_per_call"] / echo_cpu, 3) if echo_cpu else None
                )
        modes[mode.name] = results
    return {"sizes": sizes, "modes": modes}


def report(results: dict[str, Any]) -> Report:
    sizes, modes = results["sizes"], results["modes"]
    conns = sizes["connections"]
    rows: list[list[object]] = []
    for mode, data in modes.items():
        for server in SERVERS:
            for c in conns:
                e = data[server][str(c)]
                ratio = fmt_ratio(e.get("ratio_to_echo", 1.0))
                cpu = [f"{e['server_cpu']:.0%}", f"{e['client_cpu']:.0%}"]
                per_call = e.get("server_cpu_us_per_call")
                cpu.append("" if per_call is None else f"{per_call:.0f} us")
                rows.append([mode, LABELS[server], c, f"{e['calls_per_s']:,.0f}", ratio, *cpu])
        if "batch" in data:
            b = data["batch"]
            what = f"daemon, batches of {b['size']} domain.get_info"
            rows.append([mode, what, 1, f"{b['calls_per_s']:,.0f}", None, f"{b['server_cpu']:.0%}"])
    for who, what, c, key in REFERENCES:
        rows.append([who, what, c, LIBVIRT[key]])
    colors = {"echo": "grey", "daemon_raw": "tab:blue", "daemon_client": "tab:cyan"}
    panels = [
        Panel(
            f"{mode}: connect.get_version vs echo",
            [
                Series(
                    "bars",
                    [f"{c} connection{'s' if c > 1 else ''}" for c in conns],
                    [data[server][str(c)]["calls_per_s"] for c in conns],
                    LABELS[server],
                    colors[server],
                    values="{:,.0f}",
                )
                for server in SERVERS
            ],
            ylabel="calls/s",
            legend=True,
        )
        for mode, data in modes.items()
    ]
    return Report(
        f"Median of {sizes['rounds']} rounds of {sizes['seconds']:g} s; every connection has "
        "one call in flight at a time. CPU: share of one core used by the server process and "
        "by the client (this process) during the round; server CPU per call, the figure the "
        "load changes least (median of the rounds).",
        [
            Table(
                [
                    "mode",
                    "server",
                    "connections",
                    "calls/s",
                    "vs echo",
                    "server CPU",
                    "client CPU",
                    "server CPU per call",
                ],
                rows,
            )
        ],
        _goals(modes.get("default")),
        [panels],
        panel_size=(5.5, 3.0),
    )


REFERENCES = [
    ("libvirt 9.0", "libvirtd, getLibVersion", 1, "noop_1"),
    ("libvirt 9.0", "libvirtd, getLibVersion", 8, "noop_8"),
    ("reference", "trio-websocket echo", 1, "echo_1"),
    ("reference", "trio-websocket echo", 16, "echo_16"),
]


def _goals(data: dict[str, Any] | None) -> list[Goal]:
    """No-op calls >= 0.8x the echo; batches >= 20,000 calls/s (default mode)."""
    if data is None:
        return []
    found = []
    for server in ("daemon_raw", "daemon_client"):
        for c, entry in data[server].items():
            r = entry["ratio_to_echo"]
            found.append(
                Goal(
                    f"no-op throughput >= 0.8x the echo, {c} connection(s), {LABELS[server]}",
                    ">= 0.8x",
                    f"{entry['calls_per_s']:,.0f} vs {data['echo'][c]['calls_per_s']:,.0f} "
                    f"calls/s: {r:.2f}x",
                    r >= 0.8,
                    "" if r >= 0.8 else f"{r:.2f}x against 0.8x: {(0.8 - r) / 0.8:.0%} short",
                )
            )
    if "batch" in data:
        rate = data["batch"]["calls_per_s"]
        found.append(
            Goal(
                f"batches of {data['batch']['size']} domain.get_info on one connection "
                ">= 20,000 calls/s",
                ">= 20,000 calls/s",
                f"{rate:,.0f} calls/s (libvirt 9.0 sequential getLibVersion: {LIBVIRT['noop_1']})",
                rate >= 20_000,
                "" if rate >= 20_000 else f"{rate / 20_000:.2f}x of the goal",
            )
        )
    return found


SCENARIO = Scenario(
    name="throughput",
    summary="no-op calls per second over 1 and 16 connections, beside a trio-websocket echo",
    default_modes=("default",),
    run=run,
    report=report,
)
