"""Idle WebSocket sessions, in a process of their own (so that the bench's own
memory and CPU never mix with the daemon's, nor the daemon's with theirs).

    python -m bench._idle_clients --url URL --sessions 5000 --ready-file READY
                                                  (token in $TRIOCTL_TOKEN)

Opens ``--sessions`` sessions that send nothing (``--concurrency`` handshakes
at a time, below the daemon's ``server.max_anonymous_clients``), answering
the daemon's keepalive pings. The ready file gets ``{"opened", "seconds",
"pid"}`` once all are open (or ``{"error"}``); SIGTERM or SIGINT ends the
process at once (the kernel closes the sockets).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from ._conn import open_ws

#: Generous: a daemon under tracemalloc answers handshakes slowly.
CONNECT_TIMEOUT = 120.0


async def hold(url: str, token: str, sessions: int, concurrency: int, ready: Path) -> None:
    limiter = trio.Semaphore(concurrency)
    opened = 0
    all_open = trio.Event()

    async def one() -> None:
        nonlocal opened
        await limiter.acquire()
        held = True
        try:
            async with open_ws(url, token, connect_timeout=CONNECT_TIMEOUT):
                limiter.release()
                held = False
                opened += 1
                if opened == sessions:
                    all_open.set()
                await trio.sleep_forever()
        finally:
            if held:
                limiter.release()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            began = time.perf_counter()
            for _ in range(sessions):
                nursery.start_soon(one)
            await all_open.wait()
            seconds = time.perf_counter() - began
            body = {"opened": opened, "seconds": round(seconds, 2), "pid": os.getpid()}
            ready.write_text(json.dumps(body))
            async for _ in signals:
                # Closing thousands of sessions politely takes a while and
                # measures nothing: the kernel closes them.
                os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._idle_clients")
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--ready-file", required=True, type=Path)
    args = parser.parse_args(argv)
    token = os.environ.get("TRIOCTL_TOKEN", "")
    try:
        trio.run(hold, args.url, token, args.sessions, args.concurrency, args.ready_file)
    except Exception as exc:
        args.ready_file.write_text(json.dumps({"error": repr(exc)}))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
