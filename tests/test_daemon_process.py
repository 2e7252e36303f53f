"""``trioctl daemon`` as a real process: configuration errors, stop, restart."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trioctl._client import connect

from .helpers import wait_until

pytestmark = pytest.mark.slow

CONFIG = """
[server]
listen = "127.0.0.1:0"
keepalive_interval = 0
[driver]
monitor_timeout = 30
job_wait_timeout = 30
reconnect_timeout = 30
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nlisten_on = 1\n", "server.listen_on: unknown key"),
        ("[driver]\nmonitor_timeout = 'fast'\n", "driver.monitor_timeout"),
        ("[pools]\nmin_workers = 30\nmax_workers = 20\n", "min_workers"),
        ("[server\n", "line 1"),
    ],
)
def test_bad_configuration_is_refused_with_file_key_and_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli("daemon", "--config", str(config), "--state-dir", str(tmp_path))
    assert result.returncode == 2
    assert str(config) in result.stderr or "bad.toml" in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_configuration(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run_cli("daemon", "--config", str(missing))
    assert result.returncode == 2
    assert "missing.toml" in result.stderr
    directory = run_cli("daemon", "--config", str(tmp_path))
    assert directory.returncode == 2
    assert "Traceback" not in directory.stderr


def test_print_config_round_trips(tmp_path: Path) -> None:
    result = run_cli("daemon", "--print-config", "--state-dir", str(tmp_path))
    assert result.returncode == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    again = run_cli("daemon", "--print-config", "--config", str(printed))
    assert again.stdout == result.stdout


@asynccontextmanager
async def daemon_process(
    state: Path,
) -> AsyncIterator[tuple[trio.Process, dict[str, Any]]]:
    config = state / "trioctl.toml"
    config.write_text(CONFIG)
    ready = state / "ready.json"
    ready.unlink(missing_ok=True)
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "trioctl",
            "daemon",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(20):
            while not ready.exists():
                assert proc.poll() is None, "the daemon exited before it was ready"
                await trio.sleep(0.02)
        yield proc, json.loads(ready.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await proc.wait()


async def test_sigterm_with_calls_on_hung_domains_stops_within_grace(sock_dir: Path) -> None:
    pids: list[int] = []
    try:
        async with daemon_process(sock_dir) as (proc, ready):
            async with connect(ready["url"], ready["token"]) as client:
                for name in ("h1", "h2", "ok"):
                    await client.define({"name": name})
                    info = await client.start(name)
                    assert info.pid is not None
                    pids.append(info.pid)
                os.kill(pids[0], signal.SIGSTOP)
                os.kill(pids[1], signal.SIGSTOP)
                async with (
                    connect(ready["admin_url"], ready["token"]) as admin,
                    trio.open_nursery() as nursery,
                ):
                    for name in ("h1", "h2", "h1", "h2"):
                        nursery.start_soon(_swallow, client.get_stats(name))
                    with trio.fail_after(10):  # the calls hold the hung domains' jobs
                        while {j.domain for j in await admin.list_jobs()} != {"h1", "h2"}:
                            await trio.sleep(0.01)
                    start = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    with trio.fail_after(15):
                        while proc.poll() is None:
                            await trio.sleep(0.02)
                    took = time.monotonic() - start
                    nursery.cancel_scope.cancel()
            assert proc.returncode == 0
            # shutdown_grace is 2 s; without it the calls would wait their 30 s
            # monitor timeout. The bound leaves room for a loaded machine.
            assert took < 10
            # QEMU processes outlive the daemon.
            for pid in pids:
                os.kill(pid, 0)

        # A new daemon reconnects to them and serves its first call at once.
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        os.kill(pids[0], signal.SIGSTOP)  # h1 stays hung across the restart
        async with daemon_process(sock_dir) as (proc, ready):
            start = time.monotonic()
            async with connect(ready["url"], ready["token"]) as client:
                domains = {d.name: d for d in await client.list_domains()}
                first = time.monotonic() - start
                # Not held up by h1's reconnect, which would hold for 30 s.
                assert first < 10
                assert {n: d.pid for n, d in domains.items()} == dict(
                    zip(("h1", "h2", "ok"), pids, strict=True)
                )
                with trio.fail_after(10):
                    assert (await client.get_stats("ok")).status == "running"
                    assert (await client.get_stats("h2")).status == "running"
                    info = await client.destroy("h1")
                assert info.state.value == "shutoff"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def connection_waits_under(directory: Path) -> bool:
    """A UNIX connection waits, not yet accepted, on a listener under
    ``directory``: /proc/net/unix lists it with the listener's path and no
    inode (an accepted one has its own)."""
    prefix = str(directory) + "/"
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[6] == "0" and fields[7].startswith(prefix):
            return True
    return False


async def _swallow(coro: Any) -> None:
    try:
        await coro
    except Exception:
        pass


async def test_sigterm_during_a_blocked_start_up(sock_dir: Path) -> None:
    """Legacy mode reconnects serially with no deadline: a hung QEMU blocks the
    start-up for good, and SIGTERM must still stop the daemon at once."""
    pid = None
    try:
        async with daemon_process(sock_dir) as (_proc, ready):
            async with connect(ready["url"], ready["token"]) as client:
                await client.define({"name": "h"})
                pid = (await client.start("h")).pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        # A long shutdown grace: stopping at once is not stopping within it.
        config = CONFIG.replace("[server]\n", "[server]\nshutdown_grace = 30\n")
        (sock_dir / "trioctl.toml").write_text('mode = "legacy"\n' + config)
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                *("-m", "trioctl", "daemon", "--config", str(sock_dir / "trioctl.toml")),
                *("--state-dir", str(sock_dir)),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            # Blocked in the serial reconnect: its connection waits in the
            # stopped emulator's accept queue.
            await wait_until(lambda: connection_waits_under(sock_dir), 20)
            assert proc.poll() is None
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                await proc.wait()
            assert time.monotonic() - start < 10  # far below the 30 s grace
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
