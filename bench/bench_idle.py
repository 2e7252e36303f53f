"""What idle sessions cost the daemon: CPU, and the handshake of a newcomer.

Run from the repository root::

    python -m bench.bench_idle                  # 2,000 idle sessions, 10 s window
    python -m bench.bench_idle --sessions 200 --window 2   # smoke test

One ``trioctl daemon`` subprocess (the simulator backend, defaults:
keepalive every 5 s). The bench opens ``--sessions`` WebSocket sessions that
send nothing (at most 10 handshakes at a time, below
``max_anonymous_clients``), waits a second, then measures over ``--window``
seconds the daemon's CPU (user + system, from ``/proc``), then the time of 10
handshakes-plus-call (``connect.get_version``) of a new client, one after the
other. It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

from ._conn import connect, open_ws
from ._procs import MODES, Registry, proc_cpu_seconds, start_daemon
from ._stats import summarize_values


async def run(sessions: int, window: float) -> dict[str, Any]:
    registry = Registry()
    try:
        state_dir = registry.new_dir("idle")
        daemon = await start_daemon(registry, state_dir, MODES["default"])
        limiter = trio.Semaphore(10)
        opened = 0
        all_open = trio.Event()
        done = trio.Event()

        async def hold_one() -> None:
            nonlocal opened
            await limiter.acquire()
            held = True
            try:
                async with open_ws(daemon.url, daemon.token):
                    limiter.release()
                    held = False
                    opened += 1
                    if opened == sessions:
                        all_open.set()
                    await done.wait()
            finally:
                if held:
                    limiter.release()

        async with trio.open_nursery() as nursery:
            began = time.perf_counter()
            for _ in range(sessions):
                nursery.start_soon(hold_one)
            await all_open.wait()
            open_seconds = time.perf_counter() - began
            await trio.sleep(1)
            cpu_before = proc_cpu_seconds(daemon.pid)
            start = time.perf_counter()
            await trio.sleep(window)
            elapsed = time.perf_counter() - start
            cpu = proc_cpu_seconds(daemon.pid) - cpu_before
            handshakes: list[float] = []
            for _ in range(10):
                t0 = time.perf_counter()
                async with connect(daemon.url, daemon.token) as client:
                    await client.get_version()
                handshakes.append(time.perf_counter() - t0)
            done.set()
        return {
            "sessions": sessions,
            "open_seconds": round(open_seconds, 2),
            "window_seconds": round(elapsed, 2),
            "daemon_cpu_percent": round(100 * cpu / elapsed, 1),
            "handshake": summarize_values(handshakes),
        }
    finally:
        registry.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_idle")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = trio.run(run, args.sessions, args.window)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
