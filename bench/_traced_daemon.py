"""``trioctl daemon`` under tracemalloc, for finding what a daemon's memory
is made of (``python -m bench.bench_idle --tracemalloc``).

    python -m bench._traced_daemon --config FILE --ready-file READY --snapshots DIR

Runs :func:`trioctl.open_daemon` with the configuration file, writes the
ready file as ``trioctl daemon`` does (``url``, ``admin_url``, ``token``,
``pid``), and on each SIGUSR1 dumps a tracemalloc snapshot to
``DIR/N.snapshot`` (N = 1, 2, ...; then ``DIR/N.done``). SIGTERM or SIGINT
stops it. Tracing costs memory and time: figures of a traced daemon are for
comparing allocation sites, not for RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import trio

import trioctl

FRAMES = 1
"""The allocating line alone: cheaper, and what the bench groups by."""


async def serve(config_file: Path, ready: Path, snapshots: Path) -> None:
    config = trioctl.load_config(config_file)
    os.umask(0o077)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with trioctl.open_daemon(config) as daemon:
            body = {
                "url": daemon.url,
                "admin_url": daemon.admin_url,
                "token": daemon.token,
                "pid": os.getpid(),
            }
            ready.write_text(json.dumps(body))
            taken = 0
            async for signum in signals:
                if signum != signal.SIGUSR1:
                    break
                taken += 1
                tracemalloc.take_snapshot().dump(str(snapshots / f"{taken}.snapshot"))
                (snapshots / f"{taken}.done").touch()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._traced_daemon")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--snapshots", required=True, type=Path)
    args = parser.parse_args(argv)
    tracemalloc.start(FRAMES)
    trio.run(serve, args.config, args.ready_file, args.snapshots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
