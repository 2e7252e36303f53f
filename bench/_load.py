"""Load the bench puts on a daemon through the public client API: domains to
set up, probes that measure, and a few calls to keep in flight.

Every probe has a connection of its own, calls once per ``interval`` (the
next call starts ``interval`` after the previous one started, or at once if
that one took longer; the probes are staggered over the interval so that they
do not queue behind one another), and gives up after its own ``give_up``
(``PROBE_TIMEOUT``). A call still running :data:`FINISH_GRACE` after the window
closed is recorded as ``UNFINISHED`` with the time it had waited. A probe that gave up or lost its
connection reconnects, so a call the daemon is still working on never holds
one of the connection's ``max_client_requests`` slots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from trioctl import (
    Client,
    ConnectError,
    ConnectionRejected,
    DaemonConnectionLost,
    DomainInfo,
    MonitorState,
    TrioctlError,
)

from ._conn import connect
from ._procs import Registry, start_helper, terminate
from ._stats import OK, Sample

__all__ = [
    "HammerProcess",
    "InFlight",
    "Probe",
    "Window",
    "hang",
    "keep_in_flight",
    "outcome_of",
    "probe_status",
    "run_probes",
    "start_domains",
    "start_hammer",
    "stop_hammer",
    "wait_monitors",
]

CONNECT_TIMEOUT = 10.0
FINISH_GRACE = 1.0
"""Seconds a probe call started in the window may run past its end."""


def outcome_of(exc: BaseException) -> str:
    """The stable name of how a call failed."""
    if isinstance(exc, DaemonConnectionLost):
        return "CONNECTION_LOST"
    if isinstance(exc, ConnectionRejected):
        return f"REJECTED_{exc.status}"
    if isinstance(exc, ConnectError):
        return "CONNECT_FAILED"
    if isinstance(exc, TrioctlError):
        return exc.reason
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"REJECTED_{exc.status_code}"
    if isinstance(exc, trio_websocket.HandshakeError | OSError):
        return "CONNECT_FAILED"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return "CONNECTION_LOST"
    return type(exc).__name__


@attrs.frozen
class Window:
    """A measurement window in ``time.perf_counter()`` seconds."""

    start: float
    end: float

    @classmethod
    def starting_now(cls, duration: float) -> Window:
        now = time.perf_counter()
        return cls(now, now + duration)


@attrs.frozen
class Probe:
    name: str
    """Key in the results (``list``, ``info_hung``...)."""
    label: str
    """What it calls, for tables and plots."""
    priority: str
    """``high`` or ``low``: how the daemon schedules it."""
    call: Callable[[Client], Awaitable[object]]


async def _probe_task(
    url: str,
    token: str,
    probe: Probe,
    window: Window,
    interval: float,
    give_up: float,
    out: list[Sample],
    first_at: float,
) -> None:
    next_at = first_at
    while time.perf_counter() < window.end:
        t_connect = time.perf_counter()
        try:
            # Later than the window's end, so that a call cut by the end of
            # the window is recorded (as UNFINISHED) by the inner scope.
            with trio.move_on_after(max(0.0, window.end - t_connect) + 5.0):
                async with connect(url, token, connect_timeout=CONNECT_TIMEOUT) as client:
                    next_at = await _probe_calls(
                        client, probe, window, interval, give_up, out, next_at
                    )
        except (OSError, trio_websocket.HandshakeError, TrioctlError) as exc:
            out.append(
                Sample(t_connect - window.start, time.perf_counter() - t_connect, outcome_of(exc))
            )
            await trio.sleep(min(interval, max(0.0, window.end - time.perf_counter())))


async def _probe_calls(
    client: Client,
    probe: Probe,
    window: Window,
    interval: float,
    give_up: float,
    out: list[Sample],
    next_at: float,
) -> float:
    """Probe on one connection until the window ends or the call gave up
    (then return, to reconnect); returns when the next call is due."""
    while True:
        wake = min(next_at, window.end)
        now = time.perf_counter()
        if wake > now:
            await trio.sleep(wake - now)
        t0 = time.perf_counter()
        if t0 >= window.end:
            return next_at
        next_at = t0 + interval
        # A call started in the window may finish up to FINISH_GRACE after its
        # end: with probes every 0.05 s, a call cut by the end after a
        # millisecond would otherwise count as UNFINISHED.
        budget = min(give_up, window.end + FINISH_GRACE - t0)
        outcome = OK
        with trio.move_on_after(budget) as scope:
            try:
                await probe.call(client)
            except TrioctlError as exc:
                outcome = outcome_of(exc)
        latency = time.perf_counter() - t0
        if scope.cancelled_caught:
            outcome = "PROBE_TIMEOUT" if budget >= give_up else "UNFINISHED"
        out.append(Sample(t0 - window.start, latency, outcome))
        if outcome in ("PROBE_TIMEOUT", "CONNECTION_LOST"):
            return next_at


async def run_probes(
    url: str,
    token: str,
    probes: Sequence[Probe],
    window: Window,
    *,
    interval: float,
    give_up: float,
    report: Callable[[dict[str, list[Sample]]], None] | None = None,
    report_every: float = 5.0,
) -> dict[str, list[Sample]]:
    """Run every probe, each on its own connection, until the window closes.

    A call taking longer than ``give_up`` seconds is abandoned (``PROBE_TIMEOUT``).
    """
    samples: dict[str, list[Sample]] = {p.name: [] for p in probes}
    async with trio.open_nursery() as nursery:
        for i, probe in enumerate(probes):
            # Staggered, so that the probes never queue behind one another.
            first_at = window.start + i * interval / len(probes)
            nursery.start_soon(
                _probe_task,
                url,
                token,
                probe,
                window,
                interval,
                give_up,
                samples[probe.name],
                first_at,
            )
        if report is not None:
            while time.perf_counter() + report_every < window.end:
                await trio.sleep(report_every)
                report(samples)
    return samples


def probe_status(samples: dict[str, list[Sample]]) -> str:
    """``list 120 ok/120, info_hung ...`` with the last latency of each."""
    parts = []
    for name, items in samples.items():
        ok = sum(1 for s in items if s.outcome == OK)
        last = f" last {items[-1].latency * 1000:.1f} ms" if items else ""
        parts.append(f"{name} {ok}/{len(items)} ok{last}")
    return ", ".join(parts)


async def start_domains(
    client: Client,
    registry: Registry,
    names: Sequence[str],
    emulator: str,
    *,
    concurrency: int = 4,
) -> dict[str, int]:
    """Define and start ``names``; return their pids (tracked for cleanup).

    Raises:
        TrioctlError: a define or start failed.
    """
    pids: dict[str, int] = {}
    limiter = trio.CapacityLimiter(concurrency)

    async def one(name: str) -> None:
        async with limiter:
            await client.define({"name": name, "emulator": emulator})
            info = await client.start(name)
        assert info.pid is not None
        registry.track(info.pid)
        pids[name] = info.pid

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return pids


async def wait_monitors(
    client: Client,
    names: Sequence[str] | None,
    *,
    poll: float = 0.05,
    on_poll: Callable[[float, int, int], None] | None = None,
) -> float:
    """Poll ``list_domains`` until every domain in ``names`` (or every domain)
    has its monitor ``ok``; return the seconds it took. Bound it with a
    cancel scope.

    ``on_poll(elapsed, ok, total)`` is called after every listing.
    """
    start = time.perf_counter()
    wanted = set(names) if names is not None else None
    while True:
        domains: list[DomainInfo] = await client.list_domains()
        chosen = [d for d in domains if wanted is None or d.name in wanted]
        ok = sum(1 for d in chosen if d.monitor is MonitorState.OK)
        elapsed = time.perf_counter() - start
        if on_poll is not None:
            on_poll(elapsed, ok, len(chosen))
        total = len(wanted) if wanted is not None else len(chosen)
        if ok == total and len(chosen) == total:
            return elapsed
        await trio.sleep(poll)


def hang(pids: Sequence[int]) -> None:
    """SIGSTOP each process: its QMP socket accepts and never answers."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


@attrs.define
class InFlight:
    """Calls started with :func:`keep_in_flight`, and how each ended."""

    started: list[float] = attrs.Factory(list)
    ended: list[tuple[float, float, str]] = attrs.Factory(list)
    """``(start, end, outcome)`` in perf_counter seconds."""


async def keep_in_flight(
    url: str,
    token: str,
    calls: Sequence[tuple[str, str]],
    record: InFlight,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One connection per ``(domain, command)``, each sending that monitor
    command once; reports started once every call has been sent. Ends when
    all have ended (or when cancelled)."""

    async def one(name: str, command: str, connected: trio.Event) -> None:
        t0 = time.perf_counter()
        outcome = OK
        try:
            async with connect(url, token, connect_timeout=CONNECT_TIMEOUT) as client:
                t0 = time.perf_counter()
                record.started.append(t0)
                connected.set()
                await _call_monitor(client, name, command)
        except (TrioctlError, OSError, trio_websocket.HandshakeError) as exc:
            outcome = outcome_of(exc)
        finally:
            connected.set()
            record.ended.append((t0, time.perf_counter(), outcome))

    async with trio.open_nursery() as nursery:
        events = []
        for name, command in calls:
            connected = trio.Event()
            events.append(connected)
            nursery.start_soon(one, name, command, connected)
        for connected in events:
            await connected.wait()
        # Each request frame is written at the call's first checkpoint.
        await trio.sleep(0.05)
        task_status.started()


async def _call_monitor(client: Client, name: str, command: str) -> Any:
    return await client.monitor_command(name, command)


@attrs.define(eq=False)
class HammerProcess:
    proc: subprocess.Popen[bytes]
    out: Path
    pid: int


async def start_hammer(
    registry: Registry,
    url: str,
    token: str,
    domains: Sequence[str],
    clients: int,
    workdir: Path,
    *,
    call: str = "monitor",
    pause: float = 0.0,
) -> HammerProcess:
    """Start ``python -m bench._hammer`` and wait until its clients are connected.

    Raises:
        RuntimeError: it exited, or was not ready within 60 s.
    """
    directory = workdir
    ready = directory / "hammer-ready.json"
    out = directory / "hammer.json"
    for stale in (ready, out):
        stale.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "bench._hammer",
        "--url",
        url,
        "--domains",
        ",".join(domains),
        "--clients",
        str(clients),
        "--call",
        call,
        "--pause",
        str(pause),
        "--ready-file",
        str(ready),
        "--out",
        str(out),
    ]
    log = directory / "hammer.log"
    proc = start_helper(registry, argv, log, env={"TRIOCTL_TOKEN": token})
    with trio.move_on_after(60):
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the hammer exited: {log.read_text()[-2000:]}")
            await trio.sleep(0.01)
        return HammerProcess(proc, out, proc.pid)
    raise RuntimeError("the hammer was not ready within 60 s")


async def stop_hammer(hammer: HammerProcess, grace: float = 10.0) -> dict[str, Any]:
    """SIGTERM the hammer and return its result (``{}`` if it wrote none)."""
    await terminate(hammer.proc, grace)
    try:
        result: dict[str, Any] = json.loads(hammer.out.read_text())
    except (OSError, ValueError):
        return {}
    return result
