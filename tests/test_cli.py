"""The ``trioctl`` command line end to end: subprocesses against a real daemon.

One daemon process per module (``python -m trioctl daemon``, simulator
backend, fast monitor timeouts), started with ``--ready-file`` and stopped
with SIGTERM at the end, which must make it exit 0 within 3 s. Every CLI call
is a real ``python -m trioctl`` subprocess with a ``timeout``; each test uses
its own domain names and the teardown kills every VM the daemon started.
Python's start-up costs ~0.3 s per call, so the calls are counted: each
command runs once or twice, with and without ``--json`` where the output
differs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio

from trioctl import ConnectionRejected, procfs
from trioctl._client import Client, connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

T = TypeVar("T")

MONITOR_TIMEOUT = 0.5
CONFIG = f"""\
[driver]
monitor_timeout = {MONITOR_TIMEOUT}
probe_interval = 0.1
job_wait_timeout = 2.0
shutdown_timeout = 2.0
reconnect_timeout = 0.5

[server]
keepalive_interval = 0
"""

#: Bound of one CLI call (Python start-up plus the call), generous for a busy CI.
CALL_TIMEOUT = 30.0


@attrs.frozen
class Daemon:
    url: str
    admin_url: str
    token: str
    pid: int
    state_dir: Path
    work_dir: Path


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout)


def _clean_env() -> dict[str, str]:
    # The CLI must not pick up a developer's TRIOCTL_URL/TOKEN/TOKENS_FILE.
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIOCTL_")}


def _kill_vms(run_dir: Path) -> None:
    """SIGKILL every emulator that has a runtime record (they outlive the daemon)."""
    for record in run_dir.glob("*.json"):
        try:
            pid = json.loads(record.read_text())["pid"]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, KeyError):
            continue
        if b"trioctl.sim" in cmdline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # A short directory: UNIX socket paths (RUN_DIR/NAME.qmp) must stay under 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="tcli-"))
    state_dir = work / "state"
    config = work / "daemon.toml"
    config.write_text(CONFIG)
    ready = work / "ready.json"
    log = (work / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trioctl",
            "daemon",
            "--config",
            str(config),
            "--state-dir",
            str(state_dir),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_clean_env(),
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the daemon did not start: {(work / 'daemon.log').read_text()}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        yield Daemon(info["url"], info["admin_url"], info["token"], info["pid"], state_dir, work)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pytest.fail("the daemon did not exit within 3 s of SIGTERM")
        assert code == 0, (work / "daemon.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        _kill_vms(state_dir / "run")
        subprocess.run(["rm", "-rf", str(work)], check=False, timeout=30)


def run(
    daemon: Daemon | None,
    *args: str,
    code: int = 0,
    stdin: str | None = None,
    token: str | None = None,
    url: str | None = None,
    timeout: float = CALL_TIMEOUT,
) -> Result:
    """``python -m trioctl -c URL --token TOKEN ARGS``; checks the exit code."""
    argv = [sys.executable, "-m", "trioctl"]
    if daemon is not None or url is not None:
        argv += ["-c", url or (daemon.url if daemon else "")]
    if daemon is not None or token is not None:
        argv += ["--token", token or (daemon.token if daemon else "")]
    argv += args
    start = time.monotonic()
    proc = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
        cwd=daemon.work_dir if daemon else None,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    assert result.code == code, f"{args}: exit {result.code}\n{result.stdout}\n{result.stderr}"
    # Expected failures are reported, never a traceback.
    assert "Traceback" not in result.stderr, result.stderr
    return result


def failed(result: Result, reason: str) -> dict[str, Any]:
    """Check the error report (stderr; stdout with --json); return the JSON error."""
    assert result.stderr.startswith(f"error: {reason}: "), result.stderr
    if result.stdout:
        error: dict[str, Any] = result.json()["error"]
        assert error["reason"] == reason
        assert error["message"] in result.stderr
        return error
    return {}


def _base_argv(daemon: Daemon) -> list[str]:
    return [sys.executable, "-m", "trioctl", "-c", daemon.url, "--token", daemon.token]


def api(daemon: Daemon, fn: Callable[[Client], Awaitable[T]]) -> T:
    """Set-up and clean-up through the client library, in-process (no start-up cost)."""

    async def main() -> T:
        with trio.fail_after(CALL_TIMEOUT):
            async with connect(daemon.url, daemon.token) as client:
                return await fn(client)

    return trio.run(main)


def define(daemon: Daemon, *names: str) -> None:
    async def go(client: Client) -> None:
        for name in names:
            await client.define({"name": name})

    api(daemon, go)


def cleanup(daemon: Daemon, *names: str) -> None:
    """Destroy and undefine, whatever state the domains are in."""

    async def go(client: Client) -> None:
        for info in await client.list_domains():
            if info.name in names:
                if info.pid is not None:
                    await client.destroy(info.name)
                await client.undefine(info.name)

    api(daemon, go)


def names(domains: Sequence[dict[str, Any]]) -> set[str]:
    return {d["name"] for d in domains}


# -- commands ---------------------------------------------------------------------------


def test_lifecycle_commands(daemon: Daemon) -> None:
    # -machine none has no vCPUs (QEMU refuses -smp 2 there): a pc has two.
    a_toml = 'name = "cli-a"\nmemory_mib = 256\nvcpus = 2\nmachine = "pc"\n'
    (daemon.work_dir / "a.toml").write_text(a_toml)
    out = run(daemon, "define", "a.toml").stdout
    assert out.startswith("Domain cli-a defined.\n")
    assert "Memory:     256 MiB" in out and "State:      shutoff (defined)" in out
    (daemon.work_dir / "b.json").write_text(json.dumps({"name": "cli-b"}))
    info = run(daemon, "--json", "define", "b.json").json()
    assert (info["name"], info["state"], info["vcpus"]) == ("cli-b", "shutoff", 1)
    try:
        listing = run(daemon, "list").stdout.splitlines()
        assert listing[0].split() == ["NAME", "STATE", "REASON", "MONITOR", "PID", "JOB"]
        assert {"cli-a", "cli-b"} <= {line.split()[0] for line in listing[1:]}

        info = run(daemon, "start", "cli-a", "--json").json()
        assert (info["state"], info["monitor"]) == ("running", "ok")
        assert isinstance(info["pid"], int)
        out = run(daemon, "start", "--paused", "cli-b").stdout
        assert out.startswith("Domain cli-b started: paused")

        running = run(daemon, "--json", "list", "--state", "running").json()
        assert "cli-a" in names(running) and "cli-b" not in names(running)

        out = run(daemon, "dominfo", "cli-a").stdout
        assert "State:      running (booted)" in out and f"PID:        {info['pid']}" in out
        assert run(daemon, "--json", "dominfo", "cli-b").json()["state"] == "paused"

        stats = run(daemon, "domstats", "cli-a", "--json").json()
        assert (stats["status"], stats["running"], stats["vcpus"]) == ("running", True, 2)
        assert "Status:    prelaunch" in run(daemon, "domstats", "cli-b").stdout

        assert run(daemon, "qmp", "cli-a", "query-status").json()["status"] == "running"
        assert run(daemon, "--json", "qmp", "cli-a", "query-name").stdout == ('{"name": "cli-a"}\n')
        # Arguments travel as given: the simulator's own fault command, a no-op here.
        assert run(daemon, "qmp", "cli-a", "x-trioctl-sim-fault", '{"mode": "none"}').json() == {}

        assert run(daemon, "suspend", "cli-a").stdout.startswith("Domain cli-a suspended: paused")
        assert run(daemon, "resume", "cli-a", "--json").json()["state"] == "running"
        assert run(daemon, "reset", "cli-a").stdout.startswith("Domain cli-a reset: running")
        out = run(daemon, "shutdown", "cli-a").stdout
        assert out.startswith("Domain cli-a shut down: shutoff")
        assert run(daemon, "--json", "destroy", "cli-b").json()["state"] == "shutoff"
        assert run(daemon, "undefine", "cli-a").stdout.startswith("Domain cli-a undefined")
        assert run(daemon, "undefine", "cli-b", "--json").json()["name"] == "cli-b"
        assert not {"cli-a", "cli-b"} & names(run(daemon, "list", "--json").json())
    finally:
        cleanup(daemon, "cli-a", "cli-b")


def test_version(daemon: Daemon) -> None:
    out = run(daemon, "version").stdout
    assert "Backend:   sim" in out and f"URL:       {daemon.url}" in out
    assert run(daemon, "version", "--json").json()["protocol"] == 1


def test_console_prints_the_url_with_the_token(daemon: Daemon) -> None:
    out = run(daemon, "console").stdout.strip()
    http_url = daemon.url.replace("ws://", "http://", 1).rstrip("/")
    assert out.startswith(http_url + "/#token=") and len(out) > len(http_url) + 8


def test_domain_errors(daemon: Daemon) -> None:
    failed(run(daemon, "dominfo", "no-such", code=1), "NO_DOMAIN")
    error = failed(run(daemon, "--json", "start", "no-such", code=1), "NO_DOMAIN")
    assert error["data"] == {"domain": "no-such"}

    (daemon.work_dir / "bad.toml").write_text('name = "cli-bad"\nmemory_mib = "lots"\n')
    error = failed(run(daemon, "--json", "define", "bad.toml", code=1), "INVALID_PARAMS")
    assert "memory_mib" in error["message"]
    (daemon.work_dir / "broken.toml").write_text("name = \n")
    result = run(daemon, "define", "broken.toml", code=1)
    failed(result, "INVALID_PARAMS")
    assert "broken.toml: not valid TOML" in result.stderr

    # QMP errors keep QEMU's class; bad usage is click's exit 2 with no call made.
    define(daemon, "cli-e")
    try:
        run(daemon, "start", "cli-e")
        error = failed(
            run(daemon, "--json", "qmp", "cli-e", "no-such-cmd", code=1), "MONITOR_ERROR"
        )
        assert error["data"]["error_class"] == "CommandNotFound"
        result = run(daemon, "qmp", "cli-e", "query-status", "[1]", code=2)
        assert "must be a JSON object" in result.stderr
        failed(run(daemon, "undefine", "cli-e", code=1), "OPERATION_INVALID")
    finally:
        cleanup(daemon, "cli-e")


def test_connection_errors(daemon: Daemon) -> None:
    result = run(daemon, "--json", "list", token="not-the-token-at-all", code=2)
    error = failed(result, "CONNECTION_REJECTED")
    assert error["data"]["status_code"] == 401
    assert "--token" in result.stderr

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(None, "-c", f"ws://127.0.0.1:{port}/", "list", code=2)
    failed(result, "CONNECTION_FAILED")
    assert f"ws://127.0.0.1:{port}/" in result.stderr

    result = run(None, "-c", "http://127.0.0.1/", "list", code=2)
    assert "not a ws:// or wss:// URL" in result.stderr


def test_a_refused_token_names_where_it_came_from(daemon: Daemon) -> None:
    wrong = daemon.work_dir / "other-tokens.json"
    wrong.write_text(json.dumps({"tokens": [{"token": "x" * 32, "role": "admin"}]}))
    result = run(None, "-c", daemon.url, "--tokens-file", str(wrong), "--json", "list", code=2)
    error = failed(result, "CONNECTION_REJECTED")
    assert error["data"]["token_from"] == str(wrong)
    assert f"the token from {wrong} was refused (HTTP 401)" in result.stderr
    assert len(result.stderr.splitlines()) == 1

    result = run(daemon, "list", token="not-the-token-at-all", code=2)
    assert "the token from --token was refused (HTTP 401)" in result.stderr

    missing = daemon.work_dir / "no-such-tokens.json"
    result = run(None, "-c", daemon.url, "--tokens-file", str(missing), "list", code=2)
    assert f"no token: none given, and tokens file {missing}: cannot open" in result.stderr

    # The daemon itself never names a file to an unauthenticated peer.
    async def body() -> ConnectionRejected:
        with trio.fail_after(CALL_TIMEOUT), pytest.raises(ConnectionRejected) as caught:
            async with connect(daemon.url, "y" * 32):
                pass
        return caught.value

    refused = trio.run(body)
    assert refused.status == 401 and refused.body
    assert str(daemon.state_dir) not in refused.body


def test_a_web_server_page_is_one_line() -> None:
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = b"<!DOCTYPE html>\n<html><body>" + b"<p>hello</p>\n" * 200 + b"</body></html>\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{server.server_address[1]}/"
        result = run(None, "-c", url, "list", token="z" * 32, code=2)
    finally:
        server.shutdown()
        server.server_close()
    failed(result, "CONNECTION_REJECTED")
    assert result.stderr.count("\n") == 1
    assert "<" not in result.stderr
    assert f"{url} is not a trioctl daemon: it answered HTTP 200 (text/html" in result.stderr


def test_wss_against_a_plain_daemon_fails_at_once(daemon: Daemon) -> None:
    url = daemon.url.replace("ws://", "wss://")
    result = run(daemon, "--connect-timeout", "60", "-c", url, "list", code=2)
    failed(result, "CONNECTION_FAILED")
    assert "speaks plain HTTP, not TLS" in result.stderr
    assert f"use {daemon.url}" in result.stderr
    # Not the 60 s of --connect-timeout: the probe answered (bound generous).
    assert result.seconds < 30


#: Modules of the daemon's side: a client command must load none of them.
DAEMON_SIDE = (
    "trioctl._daemon",
    "trioctl._server",
    "trioctl._driver",
    "trioctl._dispatch",
    "trioctl._launcher",
    "trioctl._monitor",
    "trioctl._store",
    "trioctl._config",
    "trioctl._startup",
    "trioctl._sansio.qmp",
    "trioctl.sim",
    "trioctl._cli._daemon_cmd",
    "trioctl._cli._sim_cmds",
)


@pytest.mark.parametrize("command", [["list"], ["dominfo", "x"], ["admin", "jobs"]])
def test_client_commands_load_nothing_of_the_daemon_side(
    tmp_path: Path, command: list[str]
) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(_clean_env(), HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "trioctl",
            "-c",
            f"ws://127.0.0.1:{port}/",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: CONNECTION_FAILED" in proc.stderr
    loaded = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "trioctl._cli._client_cmds" in loaded
    assert "trioctl._paths" in loaded  # the default tokens file was looked for
    assert sorted(m for m in loaded if m.startswith(DAEMON_SIDE)) == []


def test_hung_domain(daemon: Daemon) -> None:
    """The walk-through: SIGSTOP one VM; the daemon keeps answering; destroy works."""
    define(daemon, "cli-hung", "cli-ok")
    try:
        pid = run(daemon, "start", "cli-hung", "--json").json()["pid"]
        run(daemon, "start", "cli-ok")

        # Through the daemon: it finds the process; the simulator gets SIGSTOP.
        result = run(daemon, "sim", "stop", "cli-hung", "--json")
        assert result.json() == {"domain": "cli-hung", "pid": pid, "signal": "SIGSTOP"}
        # The stop takes effect when the process next runs (late on a loaded machine).
        deadline = time.monotonic() + 10
        while not procfs.read_stat(pid).stopped:
            assert time.monotonic() < deadline, "the simulator never stopped"
            time.sleep(0.01)

        result = run(daemon, "domstats", "cli-hung", code=1)
        failed(result, "MONITOR_TIMEOUT")
        assert result.seconds >= MONITOR_TIMEOUT
        # Now refused at once, without waiting on the monitor again.
        failed(run(daemon, "--json", "domstats", "cli-hung", code=1), "MONITOR_UNRESPONSIVE")
        failed(run(daemon, "qmp", "cli-hung", "query-status", code=1), "MONITOR_UNRESPONSIVE")

        # Cached state and healthy domains are unaffected.
        domains = {d["name"]: d for d in run(daemon, "list", "--json").json()}
        assert domains["cli-hung"]["monitor"] == "unresponsive"
        assert domains["cli-ok"]["monitor"] == "ok"
        assert "Monitor:    unresponsive" in run(daemon, "dominfo", "cli-hung").stdout
        assert run(daemon, "domstats", "cli-ok", "--json").json()["status"] == "running"

        # A stopped simulator cannot answer its control socket either.
        result = run(daemon, "sim", "--timeout", "0.3", "state", "cli-hung", code=1)
        failed(result, "CONTROL_TIMEOUT")

        info = run(daemon, "destroy", "cli-hung", "--json").json()
        assert (info["state"], info["reason"], info["pid"]) == ("shutoff", "destroyed", None)
        failed(run(daemon, "sim", "cont", "cli-hung", code=1), "NOT_RUNNING")
    finally:
        cleanup(daemon, "cli-hung", "cli-ok")


def test_sim_faults_through_runtime_records(daemon: Daemon) -> None:
    """hang/clear/slow/crash via the control socket, found from STATE_DIR/run."""
    sim = ["sim", "--state-dir", str(daemon.state_dir)]
    define(daemon, "cli-sim")
    try:
        run(daemon, "start", "cli-sim")
        out = run(daemon, *sim, "hang", "cli-sim").stdout
        assert (
            out
            == "Domain cli-sim: its QMP monitor stops answering (the control socket still does).\n"
        )
        failed(run(daemon, "domstats", "cli-sim", code=1), "MONITOR_TIMEOUT")
        state = run(daemon, *sim, "state", "cli-sim", "--json").json()
        assert (state["name"], state["alive"], state["fault"]) == (
            "cli-sim",
            True,
            {"mode": "hang"},
        )

        assert run(daemon, *sim, "clear", "--json", "cli-sim").json() == {
            "domain": "cli-sim",
            "fault": "none",
        }
        # The daemon's probe sees the monitor answer again (probe_interval 0.1 s).
        deadline = time.monotonic() + 10
        while run(daemon, "dominfo", "--json", "cli-sim").json()["monitor"] != "ok":
            assert time.monotonic() < deadline, "the monitor never recovered"
            time.sleep(0.1)
        assert run(daemon, "domstats", "cli-sim", "--json").json()["status"] == "running"

        run(daemon, *sim, "slow", "cli-sim", "--delay", "0.2")
        out = run(daemon, *sim, "state", "cli-sim").stdout
        assert "Fault:           slow (0.2 s)" in out
        run(daemon, *sim, "clear", "cli-sim")

        out = run(daemon, *sim, "crash", "cli-sim", "--exit-code", "3").stdout
        assert out == "Domain cli-sim: the simulator exits with code 3.\n"
        deadline = time.monotonic() + 10
        while run(daemon, "dominfo", "--json", "cli-sim").json()["state"] != "crashed":
            assert time.monotonic() < deadline, "the crash was never noticed"
            time.sleep(0.1)
        failed(run(daemon, *sim, "hang", "cli-sim", code=1), "NOT_RUNNING")
    finally:
        cleanup(daemon, "cli-sim")


def test_events_and_admin(daemon: Daemon) -> None:
    """Two watchers (JSON for one domain, text for all), the admin commands,
    and a disconnected watcher that exits with a connection error."""
    base = _base_argv(daemon)
    watchers = [
        subprocess.Popen(
            [*base, "--json", "events", "--domain", "cli-ev", "--count", "2", "--timeout", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
        ),
        subprocess.Popen(
            [*base, "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_env(),
        ),
    ]
    try:
        # Wait until both have subscribed, as the daemon reports it.
        deadline = time.monotonic() + 30
        while True:
            found = run(daemon, "admin", "clients", "--json").json()
            subscribed = [c for c in found if c["subscribed"]]
            if len(subscribed) == 2:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.1)
        mine = [c for c in found if c["endpoint"] == "admin"]
        assert len(mine) == 1 and mine[0]["in_flight"] == 1

        define(daemon, "cli-ev")
        run(daemon, "start", "cli-ev")
        out, err = watchers[0].communicate(timeout=CALL_TIMEOUT)
        assert watchers[0].returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert (events[0]["domain"], events[0]["kind"], events[0]["detail"]) == (
            "cli-ev",
            "lifecycle",
            "defined",
        )
        assert len(events) == 2 and all(e["domain"] == "cli-ev" for e in events)

        # Admin commands: text and JSON.
        out = run(daemon, "admin", "clients").stdout
        assert out.splitlines()[0].split()[:4] == ["ID", "ROLE", "ENDPOINT", "PEER"]
        # The first watcher has gone; disconnect the one left.
        while len(subscribed := [c for c in found if c["subscribed"]]) != 1:
            assert time.monotonic() < deadline, found
            found = run(daemon, "admin", "clients", "--json").json()
        assert subscribed[0]["id"] in out
        run(daemon, "admin", "client-disconnect", subscribed[0]["id"])
        _, err = watchers[1].communicate(timeout=CALL_TIMEOUT)
        assert watchers[1].returncode == 2
        assert err.startswith("error: CONNECTION_LOST: "), err

        assert "Priority workers:" in run(daemon, "admin", "threadpool-info").stdout
        pool = run(daemon, "admin", "threadpool-set", "--max-workers", "24", "--json").json()
        assert pool["max_workers"] == 24
        run(daemon, "admin", "threadpool-set", code=2)
        limits = run(daemon, "--json", "admin", "client-limits", "--max-clients", "400").json()
        assert limits["max_clients"] == 400
        assert "Max clients:          400" in run(daemon, "admin", "client-limits").stdout
        assert run(daemon, "admin", "jobs", "--json").json() == []
        assert run(daemon, "admin", "jobs").stdout.split() == [
            "DOMAIN", "KIND", "PROCEDURE", "CLIENT", "HELD", "QUEUED"
        ]  # fmt: skip
        stats = run(daemon, "admin", "stats", "--json").json()
        assert stats["calls"]["events.subscribe"] >= 2
        assert "domain.start" in run(daemon, "admin", "stats").stdout

        # An unknown client id is the daemon's error; --count events not
        # seen in time is a TIMEOUT.
        failed(run(daemon, "admin", "client-disconnect", "c0", code=1), "INVALID_PARAMS")
        result = run(
            daemon, "events", "--domain", "cli-none", "--count", "1", "--timeout", "0.2", code=1
        )
        failed(result, "TIMEOUT")
    finally:
        for watcher in watchers:
            if watcher.poll() is None:
                watcher.kill()
                watcher.communicate(timeout=10)
        cleanup(daemon, "cli-ev")
