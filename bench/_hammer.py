"""The hammer: C clients calling a low-priority monitor procedure on the hung
domains, as fast as the daemon answers, in a process of its own (so that its
CPU use does not delay the probes' own event loop).

    python -m bench._hammer --url URL --domains vm0,vm1 --clients 30 \\
        --ready-file READY --out RESULT.json          (token in $TRIOCTL_TOKEN)

Each client has its own connection and one call in flight at a time, like a
libvirt client thread; client ``i`` calls domain ``i mod len(domains)``. The
ready file appears once every client is connected; SIGTERM or SIGINT ends the
run and the result (calls, outcomes with their latencies, calls per second)
is written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from trioctl import Client, TrioctlError

from ._conn import connect
from ._load import CONNECT_TIMEOUT, outcome_of
from ._stats import OK, summarize_values


class Hammer:
    def __init__(self, domains: Sequence[str], call: str, pause: float) -> None:
        self.domains = list(domains)
        self.call = call
        self.pause = pause
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.timeline: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.reconnects = 0
        self.in_flight = 0
        self.start = time.perf_counter()

    async def _one_call(self, client: Client, name: str) -> None:
        if self.call == "stats":
            await client.get_stats(name)
        else:
            await client.monitor_command(name, "query-status")

    async def client_loop(self, index: int, url: str, token: str, connected: trio.Event) -> None:
        name = self.domains[index % len(self.domains)]
        while True:
            try:
                async with connect(url, token, connect_timeout=CONNECT_TIMEOUT) as client:
                    connected.set()
                    while True:
                        t0 = time.perf_counter()
                        outcome = OK
                        self.in_flight += 1
                        try:
                            await self._one_call(client, name)
                        except TrioctlError as exc:
                            outcome = outcome_of(exc)
                        # Not in a finally: a call cancelled at the end stays counted.
                        self.in_flight -= 1
                        t1 = time.perf_counter()
                        self.latencies[outcome].append(t1 - t0)
                        self.timeline[int(t1 - self.start)][outcome != OK] += 1
                        if outcome == "CONNECTION_LOST":
                            break
                        if outcome != OK and self.pause > 0:
                            await trio.sleep(self.pause)
            except (OSError, trio_websocket.HandshakeError, TrioctlError):
                pass
            self.reconnects += 1
            await trio.sleep(0.1)

    def result(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        calls = sum(len(v) for v in self.latencies.values())
        return {
            "domains": self.domains,
            "call": self.call,
            "pause_s": self.pause,
            "elapsed_s": round(elapsed, 3),
            "calls": calls,
            "calls_per_s": round(calls / elapsed, 1) if elapsed > 0 else None,
            "outcomes": {k: summarize_values(v) for k, v in sorted(self.latencies.items())},
            "timeline": [[s, ok, err] for s, (ok, err) in sorted(self.timeline.items())],
            "reconnects": self.reconnects,
            "in_flight_at_end": self.in_flight,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    token = os.environ.get("TRIOCTL_TOKEN", "")
    hammer = Hammer(args.domains.split(","), args.call, args.pause)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            events = []
            for i in range(args.clients):
                connected = trio.Event()
                events.append(connected)
                nursery.start_soon(hammer.client_loop, i, args.url, token, connected)
            with trio.move_on_after(CONNECT_TIMEOUT):
                for connected in events:
                    await connected.wait()
            hammer.start = time.perf_counter()
            Path(args.ready_file).write_text(json.dumps({"pid": os.getpid()}))
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    return hammer.result()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._hammer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--domains", required=True, help="comma-separated names")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--call", choices=("monitor", "stats"), default="monitor")
    parser.add_argument("--pause", type=float, default=0.0, help="sleep after an error")
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = trio.run(run, args)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
