"""The web console in a real browser: Debian's headless Chromium, driven by
Selenium 4 through Debian's ``chromedriver``.

Open the page with a token, see the domains, SIGSTOP one and see it turn
unresponsive, see a held job's holder, click destroy and see it shut off; a
read token shows no action buttons. Skipped without ``chromium`` or
``chromedriver`` outside CI (``.ci/run`` installs both), failed in CI. Set
``TRIOCTL_CONSOLE_SCREENSHOT=PATH`` to keep the screenshot taken while a
domain hangs and a job is held (docs/img/console.png was made so).

Selenium is synchronous: every browser call runs in a worker thread
(``trio.to_thread.run_sync``) and is short (bounded by Selenium's own
timeouts), so the daemon keeps running in the test's Trio loop and polling
happens in Trio, under the test's ``trio.fail_after``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.remote_connection import RemoteConnection

from trioctl._client import connect
from trioctl._driver import Driver
from trioctl._jobs import JobKind
from trioctl._procedures import Role
from trioctl._tokens import Tokens

from .helpers import running_daemon

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
READ = "r" * 24
# One browser call (a script, a click, a navigation) never takes longer.
CALL_TIMEOUT = 15.0
# The page's size, hence the screenshot's (docs/img/console.png).
VIEWPORT = (1400, 700)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        (CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
        reason="chromium or chromedriver is not installed (CI installs both)",
    ),
]

T = TypeVar("T")


class Browser:
    """One headless Chromium under chromedriver; its calls run in a thread."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.lock = trio.Lock()
        self.tabs = 0

    async def call(self, fn: Callable[[], T]) -> T:
        # One call at a time: the tabs share the driver's current window.
        async with self.lock:
            return await trio.to_thread.run_sync(fn)

    async def open(self, url: str) -> Page:
        def new_tab() -> str:
            # The first page uses the window the browser opened with.
            if self.tabs:
                self.driver.switch_to.new_window("tab")
            self.tabs += 1
            self.driver.get(url)
            handle: str = self.driver.current_window_handle
            return handle

        return Page(self, await self.call(new_tab))


class Page:
    """One browser tab."""

    def __init__(self, browser: Browser, handle: str) -> None:
        self.browser = browser
        self.handle = handle

    async def _in_tab(self, fn: Callable[[webdriver.Chrome], T]) -> T:
        driver = self.browser.driver

        def run() -> T:
            if driver.current_window_handle != self.handle:
                driver.switch_to.window(self.handle)
            return fn(driver)

        return await self.browser.call(run)

    async def evaluate(self, expression: str) -> Any:
        return await self._in_tab(lambda driver: driver.execute_script(f"return ({expression});"))

    async def until(self, expression: str) -> Any:
        """Evaluate until truthy (the caller's deadline bounds it)."""
        while not (value := await self.evaluate(expression)):
            await trio.sleep(0.05)
        return value

    async def click(self, selector: str) -> None:
        await self._in_tab(lambda driver: driver.find_element(By.CSS_SELECTOR, selector).click())

    async def screenshot(self, path: Path) -> None:
        saved = await self._in_tab(lambda driver: driver.save_screenshot(str(path)))
        assert saved, f"screenshot not saved to {path}"


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromedriver are required in CI (.ci/run installs both)")
    profile = tempfile.mkdtemp(prefix="tc-chromium-")
    options = webdriver.ChromeOptions()
    # Both paths given: Selenium Manager never looks for (or downloads) either.
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER)
    driver: webdriver.Chrome | None = None
    try:
        # Starting the session is bounded by Selenium's own HTTP timeout
        # (120 s) and pytest-timeout; a thread cannot be cancelled.
        driver = await trio.to_thread.run_sync(
            lambda: webdriver.Chrome(options=options, service=service)
        )
        await trio.to_thread.run_sync(_setup, driver)
        yield Browser(driver)
    finally:
        if driver is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(driver.quit)
        shutil.rmtree(profile, ignore_errors=True)


def _setup(driver: webdriver.Chrome) -> None:
    driver.set_page_load_timeout(CALL_TIMEOUT)
    driver.set_script_timeout(CALL_TIMEOUT)
    executor = driver.command_executor
    assert isinstance(executor, RemoteConnection)
    # Every later command's HTTP request to chromedriver.
    executor.client_config.timeout = CALL_TIMEOUT
    # Size the window so that the page itself (the screenshot) is VIEWPORT.
    width, height = VIEWPORT
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


ROWS = "document.querySelectorAll('#domains tbody tr').length"
WHOAMI = "document.querySelector('#whoami').textContent"
BUTTONS = "document.querySelectorAll('#domains button').length"


def cell(domain: str, index: int) -> str:
    return (
        f"document.querySelector('tr[data-domain=\"{domain}\"] td:nth-child({index})')?.textContent"
    )


async def test_console_in_chromium(sock_dir: Path, tmp_path: Path) -> None:
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
                    async with browser() as chromium:
                        page = await chromium.open(base + "#token=" + daemon.token)
                        await page.until(f"{ROWS} === 4")
                        assert await page.evaluate(cell("web-1", 2)) == "running"
                        assert await page.evaluate(cell("batch-1", 2)) == "shutoff"
                        # The fragment is gone from the address bar.
                        assert await page.evaluate("location.hash") == ""
                        assert "role admin" in await page.until(WHOAMI)
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
                        shot = tmp_path / "console.png"
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_hold, daemon.driver, "cache-1", release)
                            await page.until(f"{cell('cache-1', 5)}?.includes('domain.shutdown')")
                            assert await page.evaluate(cell("db-1", 3)) == "unresponsive"
                            await page.screenshot(shot)
                            release.set()
                        assert shot.read_bytes().startswith(b"\x89PNG")
                        keep = os.environ.get("TRIOCTL_CONSOLE_SCREENSHOT")
                        if keep:
                            shutil.copyfile(shot, keep)

                        # Destroy from the page, with a real click.
                        await page.click('tr[data-domain="db-1"] button[data-action="destroy"]')
                        await page.until(f"{cell('db-1', 2)} === 'shutoff'")
                        assert (await client.get_info("db-1")).state.value == "shutoff"

                        # A read token: the same domains, no action buttons.
                        reader = await chromium.open(base + "#token=" + READ)
                        await reader.until(f"{ROWS} === 4")
                        assert "role read" in await reader.until(WHOAMI)
                        assert await reader.evaluate(BUTTONS) == 0
                        assert await page.evaluate(BUTTONS) > 0
                finally:
                    if _alive(pid):
                        os.kill(pid, signal.SIGCONT)


async def _hold(driver: Driver, name: str, release: trio.Event) -> None:
    async with driver.jobs.job(name, JobKind.MODIFY, procedure="domain.shutdown", client="c7"):
        await release.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
