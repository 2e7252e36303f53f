"""qmp: QMP round trips per second against a real QEMU, for three clients
measured in the same run.

One ``qemu-system-x86_64 -machine none -nodefaults -display none -qmp
unix:PATH,server=on,wait=off`` (no guest: QEMU's main loop does nothing but
the monitor). Three clients send ``query-status``, each on a connection of
its own, opened before and closed after its measurement (QEMU serves one
client per QMP socket):

* ``trioctl``: :func:`trioctl.open_monitor` (the public monitor API; the
  daemon's driver uses the same ``Monitor.execute``), in this process's Trio
  loop;
* ``qemu.qmp``: QEMU's own asyncio library (``QMPClient.execute``), in an
  asyncio loop of its own in a worker thread, the Trio loop waiting meanwhile;
* ``raw``: a blocking socket in a worker thread: JSON out, lines in until the
  reply, nothing parsed but ``"return"`` (the floor any client pays).

Each client is measured sequentially (one command in flight) and with
``INFLIGHT`` commands in flight (as many tasks, or the raw socket writing a
new command for every reply it reads). Rounds alternate the clients (their
order rotates each round) so that a noisy machine disturbs them alike; each
figure is the median of the rounds. QEMU's CPU use is read from ``/proc``:
at 100 % of a core, QEMU itself is the limit.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import trioctl

from .._context import Context, Scenario
from .._procs import proc_cpu_seconds, start_helper, terminate
from .._report import Goal, Panel, Report, Series, Table

__all__ = ["SCENARIO"]

COMMAND = "query-status"
INFLIGHT = 32
CLIENTS = ("trioctl", "qemu.qmp", "raw")
LABELS = {
    "trioctl": "trioctl.open_monitor",
    "qemu.qmp": "qemu.qmp (asyncio)",
    "raw": "raw blocking socket",
}
#: The anchors' figures on this kind of machine (commands/s), for the table.
ANCHORS = {
    "qemu.qmp": ("3,500", "6,200"),
    "raw": ("5,500", "5,700"),
}


# -- the three clients: each returns (commands done, seconds) -------------------------------


class _Count:
    """Round trips until a deadline; ``loop`` runs under Trio or asyncio alike."""

    def __init__(self, execute: Callable[[], Awaitable[object]], seconds: float) -> None:
        self.execute = execute
        self.done = 0
        self.start = time.perf_counter()
        self.stop_at = self.start + seconds

    async def loop(self) -> None:
        while time.perf_counter() < self.stop_at:
            await self.execute()
            self.done += 1

    def result(self) -> tuple[int, float]:
        return self.done, time.perf_counter() - self.start


async def _trioctl(path: str, inflight: int, seconds: float) -> tuple[int, float]:
    async with trioctl.open_monitor(path) as monitor:
        await monitor.execute(COMMAND)
        count = _Count(lambda: monitor.execute(COMMAND), seconds)
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(count.loop)
        return count.result()


def _qemu_qmp(path: str, inflight: int, seconds: float) -> tuple[int, float]:
    from qemu.qmp import QMPClient

    async def main() -> tuple[int, float]:
        qmp = QMPClient("bench")
        await qmp.connect(path)
        try:
            await qmp.execute(COMMAND)
            count = _Count(lambda: qmp.execute(COMMAND), seconds)
            await asyncio.gather(*(count.loop() for _ in range(inflight)))
            return count.result()
        finally:
            await qmp.disconnect()

    return asyncio.run(main())


def _raw(path: str, inflight: int, seconds: float) -> tuple[int, float]:
    request = json.dumps({"execute": COMMAND}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        reader.readline()  # the greeting
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')

        def reply() -> None:
            while True:
                line = reader.readline()
                if not line:
                    raise ConnectionError("QEMU closed the monitor")
                if b'"return"' in line:
                    return
                if b'"error"' in line:
                    raise RuntimeError(f"QMP error: {line!r}")

        reply()
        done = 0
        start = time.perf_counter()
        stop_at = start + seconds
        sock.sendall(request * inflight)
        sent = inflight
        while True:
            reply()
            done += 1
            if time.perf_counter() < stop_at:
                sock.sendall(request)
                sent += 1
            elif done == sent:
                break
        return done, time.perf_counter() - start


async def _measure(client: str, path: str, inflight: int, seconds: float) -> tuple[int, float]:
    if client == "trioctl":
        return await _trioctl(path, inflight, seconds)
    blocking: Callable[[str, int, float], tuple[int, float]] = (
        _qemu_qmp if client == "qemu.qmp" else _raw
    )
    return await trio.to_thread.run_sync(blocking, path, inflight, seconds)


async def _start_qemu(ctx: Context, work: Path) -> tuple[int, str, Callable[[], Awaitable[Any]]]:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        raise RuntimeError("the qmp scenario needs qemu-system-x86_64 on PATH")
    path = str(work / "qmp.sock")
    argv = [binary, "-machine", "none", "-nodefaults", "-display", "none"]
    argv += ["-qmp", f"unix:{path},server=on,wait=off"]
    proc = start_helper(ctx.registry, argv, work / "qemu.log")
    with trio.fail_after(30):
        while not Path(path).exists():
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {(work / 'qemu.log').read_text()[-2000:]}")
            await trio.sleep(0.01)
    return proc.pid, path, lambda: terminate(proc, 5)


async def run(ctx: Context) -> dict[str, Any]:
    rounds = ctx.pick(ctx.options.rounds, 5, 1)
    seconds = ctx.pick(ctx.options.duration, 2.0, 0.3)
    work = ctx.registry.new_dir("qmp")
    pid, path, stop = await _start_qemu(ctx, work)
    per: dict[str, dict[int, list[dict[str, float]]]] = {c: {1: [], INFLIGHT: []} for c in CLIENTS}
    try:
        for r in range(rounds):
            order = CLIENTS[r % len(CLIENTS) :] + CLIENTS[: r % len(CLIENTS)]
            for inflight in (1, INFLIGHT):
                for client in order:
                    cpu0, own0 = proc_cpu_seconds(pid), time.process_time()
                    done, wall = await _measure(client, path, inflight, seconds)
                    per[client][inflight].append(
                        {
                            "per_s": done / wall,
                            "qemu_cpu": (proc_cpu_seconds(pid) - cpu0) / wall,
                            "client_us": (time.process_time() - own0) / done * 1e6,
                        }
                    )
                ctx.progress.say(
                    f"round {r + 1}, {inflight} in flight: "
                    + ", ".join(f"{c} {per[c][inflight][-1]['per_s']:,.0f}/s" for c in CLIENTS)
                )
    finally:
        await stop()
    results: dict[str, Any] = {}
    for client in CLIENTS:
        results[client] = {
            str(n): {
                "per_s": round(statistics.median(i["per_s"] for i in items), 1),
                "rounds": [round(i["per_s"], 1) for i in items],
                "qemu_cpu": round(statistics.median(i["qemu_cpu"] for i in items), 3),
                "client_us": round(statistics.median(i["client_us"] for i in items), 1),
            }
            for n, items in per[client].items()
        }
    return {
        "sizes": {"rounds": rounds, "seconds": seconds, "inflight": INFLIGHT, "command": COMMAND},
        "clients": results,
    }


def report(results: dict[str, Any]) -> Report:
    sizes, clients = results["sizes"], results["clients"]
    columns = ["1", str(sizes["inflight"])]
    rows: list[list[object]] = []
    for client in CLIENTS:
        for n in columns:
            e = clients[client][n]
            raw = clients["raw"][n]["per_s"]
            anchor = ANCHORS.get(client, ("-", "-"))[columns.index(n)]
            rows.append(
                [
                    LABELS[client],
                    "sequential" if n == "1" else f"{n} in flight",
                    f"{e['per_s']:,.0f}",
                    f"{e['per_s'] / raw:.2f}x",
                    f"{e['qemu_cpu']:.0%}",
                    f"{e['client_us']:.0f} us",
                    ", ".join(f"{x:,.0f}" for x in e["rounds"]),
                    anchor,
                ]
            )
    panel = Panel(
        f"{sizes['command']} round trips against QEMU (-machine none)",
        [
            Series(
                "bars",
                ["sequential", f"{sizes['inflight']} in flight"],
                [clients[client][n]["per_s"] for n in columns],
                LABELS[client],
                color,
                values="{:,.0f}",
            )
            for client, color in zip(CLIENTS, ("tab:blue", "tab:orange", "grey"), strict=True)
        ],
        ylabel="commands/s",
        legend=True,
    )
    return Report(
        f"Median of {sizes['rounds']} rounds of {sizes['seconds']:g} s per client and "
        f"concurrency, clients alternating. QEMU CPU: share of one core QEMU used during "
        "the measurement (at 100 %, QEMU's main loop is the limit). Client CPU: this "
        "process's CPU time (every thread) per command.",
        [
            Table(
                [
                    "client",
                    "in flight",
                    "commands/s",
                    "vs raw socket",
                    "QEMU CPU",
                    "client CPU per command",
                    "rounds",
                    "anchors (commands/s)",
                ],
                rows,
            )
        ],
        _goals(sizes, clients),
        [[panel]],
        panel_size=(6.0, 3.0),
    )


def _goals(sizes: dict[str, Any], clients: dict[str, Any]) -> list[Goal]:
    """trioctl sequential >= 0.9x the raw socket; with 32 in flight, >= 0.9x of
    the best client in the same run (QEMU's own cap)."""
    n = str(sizes["inflight"])
    ours, raw = clients["trioctl"]["1"]["per_s"], clients["raw"]["1"]["per_s"]
    cap = max(clients[c][n]["per_s"] for c in ("qemu.qmp", "raw"))
    busy = clients["trioctl"][n]["per_s"]
    seq, par = ours / raw, busy / cap
    return [
        Goal(
            "trioctl monitor, sequential >= 0.9x the raw socket",
            ">= 0.9x",
            f"{ours:,.0f} vs {raw:,.0f}/s: {seq:.2f}x",
            seq >= 0.9,
            "" if seq >= 0.9 else f"{seq:.2f}x against 0.9x",
        ),
        Goal(
            f"trioctl monitor, {n} in flight: QEMU's cap (>= 0.9x the best client)",
            ">= 0.9x (QEMU caps one monitor near 5,500-6,200/s here)",
            f"{busy:,.0f} vs {cap:,.0f}/s: {par:.2f}x",
            par >= 0.9,
            "" if par >= 0.9 else f"{par:.2f}x against 0.9x",
        ),
    ]


SCENARIO = Scenario(
    name="qmp",
    summary="QMP round trips against real QEMU: trioctl's monitor, qemu.qmp, a raw socket",
    default_modes=(),
    run=run,
    report=report,
)
