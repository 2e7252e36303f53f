"""A bare trio-websocket echo server, the yardstick of the throughput bench.

    python -m bench._echo --ready-file READY

It does no work: each text message comes straight back. It runs as a process
of its own, like the daemon, so both are measured across the same process
boundary. The ready file gets ``{"url", "pid"}``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio
import trio_websocket


async def _echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        pass


async def serve(ready_file: Path) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, _echo, "127.0.0.1", 0, None
            )
            url = f"ws://127.0.0.1:{server.port}/"
            ready_file.write_text(json.dumps({"url": url, "pid": os.getpid()}))
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._echo")
    parser.add_argument("--ready-file", required=True, type=Path)
    args = parser.parse_args(argv)
    trio.run(serve, args.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
