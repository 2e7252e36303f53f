"""What idle sessions cost the daemon: memory, CPU, and the handshake of a
newcomer.

Run from the repository root::

    python -m bench.bench_idle                    # 5,000 idle sessions, 10 s window
    python -m bench.bench_idle --sessions 200 --window 2   # smoke test
    python -m bench.bench_idle --tracemalloc      # where the daemon's memory goes

One ``trioctl daemon`` subprocess (the simulator backend, defaults, keepalive
every 5 s) with ``server.max_clients`` raised to the sessions plus room for
the newcomers (the default is 5,000). Its RSS (``VmRSS`` from ``/proc``) is
read once it has served one call, then the sessions are opened by a separate
process (``bench._idle_clients``: sessions that send nothing, at most 10
handshakes at a time, below ``max_anonymous_clients``), and read again a
second after the last one opened: the difference divided by the sessions is
the cost of one. Then the daemon's CPU (user + system, from ``/proc``) over
``--window`` seconds, and 10 handshakes-plus-call (``connect.get_version``)
of a new client one after the other. It prints one JSON object.

Each process may have 20,000 open files here: the sessions and the daemon
each hold one socket per session.

With ``--tracemalloc`` the daemon runs under tracemalloc
(``bench._traced_daemon``) and the JSON gets what grew between the two
readings (``tracemalloc``: the Python heap's growth per session, by package,
and the top allocation sites by line with their size and count per session); its RSS is
then the traced daemon's, larger than the plain one.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

from ._conn import connect
from ._procs import (
    MODES,
    Daemon,
    Registry,
    proc_cpu_seconds,
    proc_memory_kib,
    start_daemon,
    start_helper,
    terminate,
)
from ._stats import summarize_values

NEWCOMERS = 10
TOP = 15


async def _open_sessions(
    registry: Registry, daemon: Daemon, sessions: int, work: Path, limit: float
) -> tuple[subprocess.Popen[bytes], float]:
    """Start the sessions' process; return it and the seconds it took to open
    all (at most ``limit``)."""
    ready = work / "sessions.json"
    argv = [sys.executable, "-m", "bench._idle_clients", "--url", daemon.url]
    argv += ["--sessions", str(sessions), "--ready-file", str(ready)]
    env = {"TRIOCTL_TOKEN": daemon.token}
    proc = start_helper(registry, argv, work / "sessions.log", env=env)
    with trio.fail_after(limit):
        while True:
            try:
                body = json.loads(ready.read_text())
                break
            except (OSError, ValueError):
                if proc.poll() is not None:
                    raise RuntimeError(
                        "the sessions' process exited: "
                        + (work / "sessions.log").read_text()[-2000:]
                    ) from None
                await trio.sleep(0.05)
    if "error" in body:
        raise RuntimeError(f"opening the sessions failed: {body['error']}")
    return proc, float(body["seconds"])


async def _snapshot(daemon: Daemon, snapshots: Path, n: int) -> tracemalloc.Snapshot:
    """Ask the traced daemon for its ``n``-th snapshot and load it."""
    daemon.proc.send_signal(signal.SIGUSR1)
    with trio.fail_after(120):
        while not (snapshots / f"{n}.done").exists():
            await trio.sleep(0.05)
    return tracemalloc.Snapshot.load(str(snapshots / f"{n}.snapshot"))


def _top(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, sessions: int
) -> dict[str, Any]:
    """What the Python heap grew by, per session, and the allocation sites
    (file:line) that grew most."""
    stats = after.compare_to(before, "lineno")
    stats.sort(key=lambda s: s.size_diff, reverse=True)
    total = sum(s.size_diff for s in stats)
    top = []
    for stat in stats[:TOP]:
        frame = stat.traceback[0]
        where = frame.filename
        for marker in ("site-packages/", "trioctl/", "lib/python3"):
            if marker in where:
                where = where[where.index(marker) :]
                break
        top.append(
            {
                "where": f"{where}:{frame.lineno}",
                "kib": round(stat.size_diff / 1024, 1),
                "bytes_per_session": round(stat.size_diff / sessions),
                "blocks_per_session": round(stat.count_diff / sessions, 2),
            }
        )
    packages: dict[str, int] = {}
    for stat in stats:
        name = _package(stat.traceback[0].filename)
        packages[name] = packages.get(name, 0) + stat.size_diff
    return {
        "heap_bytes_per_session": round(total / sessions),
        "bytes_per_session_by_package": {
            k: round(v / sessions) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])
        },
        "blocks_per_session": round(sum(s.count_diff for s in stats) / sessions, 1),
        "sites": top,
    }


PACKAGES = ("trio_websocket", "trioctl", "wsproto", "h11", "trio")


def _package(filename: str) -> str:
    """The package an allocating line is in (attrs-generated methods are
    named after their class: ``<attrs generated methods trio._sync.Event>``)."""
    for name in PACKAGES:
        if f"/{name}/" in filename or f" {name}." in filename:
            return name
    return "other"


async def run(sessions: int, window: float, traced: bool) -> dict[str, Any]:
    registry = Registry()
    try:
        work = registry.new_dir("idle")
        snapshots = work / "snapshots"
        snapshots.mkdir()
        extra = {"server.max_clients": sessions + NEWCOMERS + 10}
        command: tuple[str, ...] = ("-m", "trioctl", "daemon")
        if traced:
            command = ("-m", "bench._traced_daemon", "--snapshots", str(snapshots))
        daemon = await start_daemon(registry, work, MODES["default"], extra=extra, command=command)
        async with connect(daemon.url, daemon.token) as client:
            await client.get_version()
        await trio.sleep(0.5)
        before = proc_memory_kib(daemon.pid)
        snap_before = await _snapshot(daemon, snapshots, 1) if traced else None
        # A traced daemon answers handshakes many times slower.
        limit = (60 + sessions / 50) * (10 if traced else 1)
        sessions_proc, open_seconds = await _open_sessions(registry, daemon, sessions, work, limit)
        await trio.sleep(1)
        after = proc_memory_kib(daemon.pid)
        top = None
        if snap_before is not None:
            top = _top(snap_before, await _snapshot(daemon, snapshots, 2), sessions)
        cpu_before = proc_cpu_seconds(daemon.pid)
        start = time.perf_counter()
        await trio.sleep(window)
        elapsed = time.perf_counter() - start
        cpu = proc_cpu_seconds(daemon.pid) - cpu_before
        after_window = proc_memory_kib(daemon.pid)
        handshakes: list[float] = []
        for _ in range(NEWCOMERS):
            t0 = time.perf_counter()
            async with connect(daemon.url, daemon.token) as client:
                await client.get_version()
            handshakes.append(time.perf_counter() - t0)
        await terminate(sessions_proc, 10)
        await daemon.stop()
        grown_kib = after.get("VmRSS", 0) - before.get("VmRSS", 0)
        result: dict[str, Any] = {
            "sessions": sessions,
            "traced": traced,
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "max_clients": extra["server.max_clients"],
            "open_seconds": round(open_seconds, 2),
            "rss_before_mib": round(before.get("VmRSS", 0) / 1024, 1),
            "rss_after_mib": round(after.get("VmRSS", 0) / 1024, 1),
            "rss_after_window_mib": round(after_window.get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(after_window.get("VmHWM", 0) / 1024, 1),
            "kb_per_session": round(grown_kib * 1.024 / sessions, 1),
            "window_seconds": round(elapsed, 2),
            "daemon_cpu_percent": round(100 * cpu / elapsed, 1),
            "handshake": summarize_values(handshakes),
        }
        if top is not None:
            result["tracemalloc"] = top
        return result
    finally:
        registry.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_idle")
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace the daemon's allocations (slow)"
    )
    args = parser.parse_args(argv)
    result = trio.run(run, args.sessions, args.window, args.tracemalloc)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
