"""Helpers shared by the end-to-end tests: a daemon in-process, raw frames."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from trioctl._client import open_websocket
from trioctl._config import load_config
from trioctl._daemon import DaemonHandle, open_daemon
from trioctl._launcher import LaunchSpec, QemuProcess, launch

FAST = {
    "driver.monitor_timeout": 0.5,
    "driver.probe_interval": 0.1,
    "driver.job_wait_timeout": 2.0,
    "driver.shutdown_timeout": 2.0,
    "driver.reconnect_timeout": 0.5,
    "server.keepalive_interval": 0,
}


@asynccontextmanager
async def running_daemon(state_dir: Path, **overrides: Any) -> AsyncIterator[DaemonHandle]:
    """A daemon on 127.0.0.1 with an ephemeral port and fast driver timeouts."""
    settings: dict[str, Any] = {
        "server.listen": "127.0.0.1:0",
        "driver.state_dir": str(state_dir),
        "driver.run_dir": str(state_dir / "run"),
        **FAST,
    }
    settings.update({k.replace("__", "."): v for k, v in overrides.items()})
    config = load_config(None, overrides=settings)
    async with open_daemon(config) as daemon:
        try:
            yield daemon
        finally:
            kill_domains(daemon)


def kill_domains(daemon: DaemonHandle) -> None:
    import os
    import signal

    for info in daemon.driver.list_domains():
        if info.pid is not None:
            with suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)


@asynccontextmanager
async def raw_ws(url: str, token: str | None) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with open_websocket(url, token) as ws:
        yield ws


async def exchange(ws: trio_websocket.WebSocketConnection, text: str) -> Any:
    """Send one frame and return the parsed reply frame."""
    await ws.send_message(text)
    return json.loads(await ws.get_message())


async def wait_until(condition: Callable[[], object], seconds: float = 10) -> None:
    """Poll ``condition`` until it is true; fail after ``seconds``.

    For state with no event to wait on (another process, a statistics
    counter): waits on what the test needs instead of sleeping a guessed time.
    """
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def no_reply_within(ws: trio_websocket.WebSocketConnection, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await ws.get_message()
        return False
    return True


def make_image(directory: Path, name: str = "disk.img", size: int = 1 << 20) -> Path:
    """A sparse raw disk image of ``size`` bytes."""
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@asynccontextmanager
async def launched(spec: LaunchSpec, run_dir: Path) -> AsyncIterator[QemuProcess]:
    """An emulator launched for a test (within 20 s), killed and reaped after."""
    with trio.fail_after(20):
        proc = await launch(spec, run_dir=run_dir)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        with trio.move_on_after(5):
            await proc.wait()
        proc.close()
