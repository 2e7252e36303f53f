"""Writers beside hammering readers: issue 10's finding, before and after.

Run from the repository root::

    python -m bench.bench_readers                 # both modes, 3 rounds, about 30 s
    python -m bench.bench_readers --quick         # one short round (smoke test)

One ``trioctl daemon`` subprocess per mode and round (the simulator backend),
with a tokens file holding an admin, a read and a write token. One domain,
``vm1``, runs. 8 read connections each keep 5 ``domain.get_stats`` calls in
flight on it (``max_client_requests``), retrying at once after an error, while
one write connection makes 40 calls one after the other (``domain.suspend``,
and ``domain.resume`` once suspended). Measured in the client: how many
writes succeed, the writes' latency (p50 / p99 / max, failures included), and
the readers' calls.

Modes:

* ``one-queue``: ``driver.query_lane = false``; a query is a job like any
  other and waits in the domain's one queue (``max_queued`` 32). This is the
  code before the query lane, and libvirt's model.
* ``lane``: the defaults: queries wait in their own queue
  (``max_queued_queries`` 32), alternating with the writers'.

``--delay S`` slows every QMP reply of the simulator by S seconds (its
``slow`` fault), for a monitor that answers like a busy QEMU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from trioctl import TrioctlError
from trioctl.sim import control_request

from ._conn import connect
from ._procs import Mode, Registry, start_daemon
from ._stats import summarize_values

MODES = {
    "one-queue": Mode(
        "one-queue", {"driver.query_lane": False}, "queries in the domain's one queue"
    ),
    "lane": Mode("lane", {}, "queries in their own lane (the default)"),
}
READ_TOKEN = "bench-read-" + "r" * 20
WRITE_TOKEN = "bench-write-" + "w" * 20


def write_tokens(state_dir: Path) -> None:
    """The tokens file, admin first (the bench reads the first one)."""
    body = {
        "tokens": [
            {"token": "bench-admin-" + os.urandom(12).hex(), "role": "admin"},
            {"token": READ_TOKEN, "role": "read"},
            {"token": WRITE_TOKEN, "role": "write"},
        ]
    }
    path = state_dir / "tokens.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)


async def one_round(
    registry: Registry, mode: Mode, *, readers: int, per_reader: int, writes: int, delay: float
) -> dict[str, Any]:
    state_dir = registry.new_dir(mode.name)
    write_tokens(state_dir)
    daemon = await start_daemon(registry, state_dir, mode)
    try:
        async with connect(daemon.url, WRITE_TOKEN) as writer:
            await writer.define({"name": "vm1"})
            await writer.start("vm1")
            if delay:
                control = str(state_dir / "r" / "vm1.ctl")
                await control_request(
                    control, "x-trioctl-sim-fault", {"mode": "slow", "delay": delay}
                )
            reads: Counter[str] = Counter()
            read_latency: list[float] = []
            write_latency: list[float] = []
            write_outcomes: Counter[str] = Counter()
            done = trio.Event()

            async def read_loop(client: Any) -> None:
                while not done.is_set():
                    began = time.perf_counter()
                    try:
                        await client.get_stats("vm1")
                        reads["ok"] += 1
                        read_latency.append(time.perf_counter() - began)
                    except TrioctlError as exc:
                        reads[exc.reason] += 1

            async def reader(ready: trio.Event) -> None:
                async with connect(daemon.url, READ_TOKEN) as client:
                    ready.set()
                    async with trio.open_nursery() as nursery:
                        for _ in range(per_reader):
                            nursery.start_soon(read_loop, client)

            async with trio.open_nursery() as nursery:
                reading = time.perf_counter()
                for _ in range(readers):
                    ready = trio.Event()
                    nursery.start_soon(reader, ready)
                    await ready.wait()
                await trio.sleep(0.5)  # the readers fill the domain's queue
                started = time.perf_counter()
                paused = False
                for _ in range(writes):
                    began = time.perf_counter()
                    try:
                        if paused:
                            await writer.resume("vm1")
                        else:
                            await writer.suspend("vm1")
                        paused = not paused
                        write_outcomes["ok"] += 1
                    except TrioctlError as exc:
                        write_outcomes[exc.reason] += 1
                    write_latency.append(time.perf_counter() - began)
                elapsed = time.perf_counter() - started
                read_seconds = time.perf_counter() - reading
                done.set()
    finally:
        await daemon.stop()
    return {
        "mode": mode.name,
        "writes": dict(write_outcomes),
        "write_latency": summarize_values(write_latency),
        "reads": dict(reads),
        "read_latency": summarize_values(read_latency),
        "reads_per_second": round(reads["ok"] / read_seconds),
        "seconds": round(elapsed, 3),
    }


def table(results: list[dict[str, Any]], writes: int) -> str:
    lines = [
        "| mode | round | writes ok | write errors | write p50 / p99 / max (ms) "
        "| reads ok | reads/s | read errors | read p50 / p99 (ms) | writes took (s) |",
        "|---|---:|---:|---|---|---:|---:|---|---|---:|",
    ]
    rounds: Counter[str] = Counter()
    for r in results:
        rounds[r["mode"]] += 1
        w, rl = r["write_latency"], r["read_latency"]
        werr = ", ".join(f"{k} {v}" for k, v in sorted(r["writes"].items()) if k != "ok")
        rerr = ", ".join(f"{k} {v}" for k, v in sorted(r["reads"].items()) if k != "ok")
        lines.append(
            f"| {r['mode']} | {rounds[r['mode']]} | {r['writes'].get('ok', 0)}/{writes} "
            f"| {werr or '-'} | {w['p50_ms']} / {w['p99_ms']} / {w['max_ms']} "
            f"| {r['reads'].get('ok', 0)} | {r['reads_per_second']} | {rerr or '-'} "
            f"| {rl['p50_ms']} / {rl['p99_ms']} "
            f"| {r['seconds']} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    registry = Registry()
    results = []
    try:
        for round_ in range(args.rounds):
            for name in args.modes:
                print(f"round {round_ + 1}: {name}", file=sys.stderr)
                results.append(
                    await one_round(
                        registry,
                        MODES[name],
                        readers=args.readers,
                        per_reader=args.per_reader,
                        writes=args.writes,
                        delay=args.delay,
                    )
                )
    finally:
        registry.cleanup()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_readers")
    parser.add_argument("--quick", action="store_true", help="one round of 10 writes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--per-reader", type=int, default=5)
    parser.add_argument("--writes", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.0, help="slow QMP replies (s)")
    parser.add_argument(
        "--mode", dest="modes", action="append", choices=sorted(MODES), help="default: both"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.writes = 1, 10
    if not args.modes:
        args.modes = ["one-queue", "lane"]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    figures = trio.run(main, arguments)
    print(table(figures, arguments.writes))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
