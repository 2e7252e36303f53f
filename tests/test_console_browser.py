"""The web console in a real browser: Debian's headless Chromium, driven over
the Chrome DevTools Protocol (its WebSocket, with trio-websocket).

Open the page with a token, see the domains, SIGSTOP one and see it turn
unresponsive, click destroy and see it shut off; a read token shows no
action buttons. Skipped without ``chromium`` outside CI (``.ci/run`` installs
it); set ``TRIOCTL_CONSOLE_SCREENSHOT=PATH`` to keep the screenshot taken
while a domain hangs (docs/img/console.png was made so).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from trioctl._client import connect
from trioctl._driver import Driver
from trioctl._jobs import JobKind
from trioctl._procedures import Role
from trioctl._tokens import Tokens

from .helpers import running_daemon

CHROMIUM = shutil.which("chromium")
READ = "r" * 24

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (CI installs it)",
)


class Page:
    """One browser tab, over a flattened CDP session."""

    def __init__(self, cdp: Cdp, session: str) -> None:
        self.cdp = cdp
        self.session = session

    async def evaluate(self, expression: str) -> Any:
        reply = await self.cdp.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=self.session,
        )
        result = reply["result"]
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return result.get("value")

    async def until(self, expression: str) -> Any:
        """Evaluate until truthy (the caller's deadline bounds it)."""
        while not (value := await self.evaluate(expression)):
            await trio.sleep(0.05)
        return value

    async def screenshot(self) -> bytes:
        reply = await self.cdp.send("Page.captureScreenshot", {}, session=self.session)
        return base64.b64decode(reply["data"])


class Cdp:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self._ids = 0
        self._waiters: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}

    async def reader(self) -> None:
        while True:
            message = json.loads(await self.ws.get_message())
            waiter = self._waiters.pop(message.get("id", -1), None)
            if waiter is not None:
                waiter.send_nowait(message)

    async def send(self, method: str, params: dict[str, Any], session: str | None = None) -> Any:
        self._ids += 1
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiters[self._ids] = send
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_message(json.dumps(message))
        reply = await receive.receive()
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    async def open(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 700, "deviceScaleFactor": 1, "mobile": False},
            session=page.session,
        )
        await self.send("Page.navigate", {"url": url}, session=page.session)
        return page


@asynccontextmanager
async def browser() -> AsyncIterator[Cdp]:
    if CHROMIUM is None:
        pytest.fail("chromium is required in CI (.ci/run installs it)")
    profile = tempfile.mkdtemp(prefix="tc-chromium-")
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    # Popen returns at once; the browser's start is awaited below.
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            assert proc.poll() is None, "chromium exited"
            await trio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
        ) as ws:
            cdp = Cdp(ws)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cdp.reader)
                yield cdp
                nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


ROWS = "document.querySelectorAll('#domains tbody tr').length"


def cell(domain: str, index: int) -> str:
    return (
        f"document.querySelector('tr[data-domain=\"{domain}\"] td:nth-child({index})')?.textContent"
    )


async def test_console_in_chromium(sock_dir: Path) -> None:
    with trio.fail_after(90):
        async with running_daemon(sock_dir, driver__monitor_timeout=0.5) as daemon:
            assert daemon.token is not None
            daemon.server.tokens = Tokens({READ: Role.READ, daemon.token: Role.ADMIN})
            base = f"http://127.0.0.1:{daemon.port}/"
            async with connect(daemon.url, daemon.token) as client:
                names = ["web-1", "db-1", "cache-1", "batch-1"]
                for name in names:
                    await client.define({"name": name})
                for name in names[:3]:
                    await client.start(name)
                pid = (await client.get_info("db-1")).pid
                assert pid is not None
                try:
                    async with browser() as cdp:
                        page = await cdp.open(base + "#token=" + daemon.token)
                        await page.until(f"{ROWS} === 4")
                        assert await page.evaluate(cell("web-1", 2)) == "running"
                        assert await page.evaluate(cell("batch-1", 2)) == "shutoff"
                        # The fragment is gone from the address bar.
                        assert await page.evaluate("location.hash") == ""
                        await page.until("document.querySelector('#whoami').textContent")
                        assert "role admin" in await page.evaluate(
                            "document.querySelector('#whoami').textContent"
                        )
                        await page.until(
                            "document.querySelector('#pools tbody').children.length > 0"
                        )

                        # A hang: the page shows it from the monitor event.
                        os.kill(pid, signal.SIGSTOP)
                        with pytest.raises(Exception, match="did not answer"):
                            await client.get_stats("db-1")
                        await page.until(f"{cell('db-1', 3)} === 'unresponsive'")
                        # A held job: the page names its holder.
                        release = trio.Event()
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_hold, daemon.driver, "cache-1", release)
                            await page.until(f"{cell('cache-1', 5)}?.includes('domain.shutdown')")
                            shot = await page.screenshot()
                            release.set()
                        assert shot.startswith(b"\x89PNG")
                        keep = os.environ.get("TRIOCTL_CONSOLE_SCREENSHOT")
                        if keep:
                            Path(keep).write_bytes(shot)

                        # Destroy from the page.
                        await page.evaluate(
                            'document.querySelector(\'tr[data-domain="db-1"] '
                            'button[data-action="destroy"]\').click()'
                        )
                        await page.until(f"{cell('db-1', 2)} === 'shutoff'")
                        assert (await client.get_info("db-1")).state.value == "shutoff"

                        # A read token: the same domains, no action buttons.
                        reader = await cdp.open(base + "#token=" + READ)
                        await reader.until(f"{ROWS} === 4")
                        await reader.until("document.querySelector('#whoami').textContent")
                        assert "role read" in await reader.evaluate(
                            "document.querySelector('#whoami').textContent"
                        )
                        assert (
                            await reader.evaluate(
                                "document.querySelectorAll('#domains button').length"
                            )
                            == 0
                        )
                        assert (
                            await page.evaluate(
                                "document.querySelectorAll('#domains button').length"
                            )
                            > 0
                        )
                finally:
                    os.kill(pid, signal.SIGCONT) if _alive(pid) else None


async def _hold(driver: Driver, name: str, release: trio.Event) -> None:
    async with driver.jobs.job(name, JobKind.MODIFY, procedure="domain.shutdown", client="c7"):
        await release.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
