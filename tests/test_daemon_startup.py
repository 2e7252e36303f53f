"""``trioctl daemon`` start-up failures and the tokens file, as a real process.

Each failure must be exactly one line on stderr naming the thing (address,
state directory, file) and why, with the exit status documented in
docs/cli.md, and no traceback. The tokens file is re-read on SIGHUP; a bad
file then keeps the tokens in use.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trioctl import ConnectionRejected
from trioctl._cli._daemon_cmd import EXIT_STATUSES, _report_failure
from trioctl._client import connect
from trioctl._startup import (
    ListenAddressInUse,
    ListenAddressUnusable,
    StateDirInUse,
    StateDirUnusable,
    TokensFileUnusable,
)

pytestmark = pytest.mark.timeout(90)

CONFIG = """
[server]
keepalive_interval = 0
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIOCTL_")}


def start_fails(tmp: Path, *args: str, config: str = CONFIG) -> tuple[int, str]:
    """Run ``trioctl daemon ARGS`` expecting it to fail at start-up."""
    path = tmp / "daemon.toml"
    path.write_text(config)
    argv = [sys.executable, "-m", "trioctl", "daemon", "--config", str(path), *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env=_env(), check=False
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trioctl daemon: "), lines
    return result.returncode, lines[0]


@contextmanager
def running_daemon(
    tmp: Path, state_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    config = tmp / "running.toml"
    config.write_text(CONFIG)
    ready = tmp / "ready.json"
    log = tmp / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "trioctl", "daemon", "--config", str(config)),
                *("--state-dir", str(state_dir), "--listen", "127.0.0.1:0"),
                *("--ready-file", str(ready)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the daemon did not start: {log.read_text()}")
            time.sleep(0.05)
        yield proc, json.loads(ready.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_exit_statuses_are_distinct_and_documented() -> None:
    statuses = list(EXIT_STATUSES.values())
    assert len(set(statuses)) == len(statuses)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for cause, status in EXIT_STATUSES.items():
        assert f"| {status} | {cause} |" in doc, cause


def test_failures_inside_nurseries_are_unwrapped(capsys: pytest.CaptureFixture[str]) -> None:
    """What the checks before start-up cannot see still ends in one line:
    the leaves of the exception groups nurseries wrap them in."""
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert _report_failure(ExceptionGroup("a", [ExceptionGroup("b", [in_use])])) == 3
    assert (
        capsys.readouterr().err == "trioctl daemon: listen address in use: Address already in use\n"
    )

    startup = StateDirUnusable("state directory /x: Permission denied")
    assert _report_failure(ExceptionGroup("a", [startup])) == 6
    assert capsys.readouterr().err == "trioctl daemon: state directory /x: Permission denied\n"

    two = ExceptionGroup(
        "a", [FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"), ValueError("v")]
    )
    assert _report_failure(two) == 1
    assert capsys.readouterr().err == (
        "trioctl daemon: /x/y: No such file or directory (and 1 more errors)\n"
    )
    # Anything else is a bug: its traceback shows (the caller re-raises).
    assert _report_failure(ExceptionGroup("a", [ZeroDivisionError()])) is None


@pytest.mark.slow
def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status, line = start_fails(
            tmp_path, "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "s")
        )
    assert status == ListenAddressInUse.exit_status == 3
    assert f"listen address 127.0.0.1:{port}: already in use" in line
    # Nothing was created for a daemon that could not listen.
    assert not (tmp_path / "s" / "tokens.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("nosuch.invalid:16509", "listen address nosuch.invalid:16509: cannot resolve"),
        # TEST-NET-1 (RFC 5737): never an address of this machine; nothing is sent.
        ("192.0.2.1:16509", "listen address 192.0.2.1:16509: not an address of this machine"),
    ],
)
def test_listen_address_unusable(tmp_path: Path, listen: str, expected: str) -> None:
    status, line = start_fails(tmp_path, "--listen", listen, "--state-dir", str(tmp_path / "s"))
    assert status == ListenAddressUnusable.exit_status == 4
    assert expected in line


@pytest.mark.slow
def test_second_daemon_on_the_same_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_daemon(tmp_path, state):
        status, line = start_fails(tmp_path, "--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert status == StateDirInUse.exit_status == 5
    assert f"state directory {state}: another trioctl daemon uses it" in line


@pytest.mark.slow
def test_state_directory_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    state = blocker / "state"
    status, line = start_fails(tmp_path, "--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert status == StateDirUnusable.exit_status == 6
    assert f"state directory {state}: Not a directory" in line


@pytest.mark.slow
def test_bad_configuration(tmp_path: Path) -> None:
    status, line = start_fails(
        tmp_path, "--state-dir", str(tmp_path), config="[server]\nlisten = 5\n"
    )
    assert status == 2
    assert "server.listen" in line


def _tokens(path: Path, *tokens: tuple[str, str], mode: int = 0o600) -> None:
    body = {"tokens": [{"token": t, "role": r} for t, r in tokens]}
    path.write_text(json.dumps(body))
    os.chmod(path, mode)


GOOD = ("g" * 32, "admin")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unparseable", "not valid JSON"),
        ("no-list", 'expected an object with a "tokens" list'),
        ("bad-role", "tokens[0]: role 'root' is not one of read, write, admin"),
        ("short-token", "tokens[0]: a token must be 16 characters or more"),
        ("group-writable", "is writable by group or others (mode 0620); chmod 600 it"),
        ("world-writable", "is writable by group or others (mode 0606)"),
        ("fifo", "is not a regular file"),
        ("symlink", "is a symbolic link"),
        ("not-creatable", "absent and cannot be created"),
    ],
)
def test_unusable_tokens_file(tmp_path: Path, case: str, expected: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    tokens = state / "tokens.json"
    if case == "unparseable":
        tokens.write_text("{not json")
        os.chmod(tokens, 0o600)
    elif case == "no-list":
        tokens.write_text('{"token": "x"}')
        os.chmod(tokens, 0o600)
    elif case == "bad-role":
        _tokens(tokens, ("r" * 32, "root"))
    elif case == "short-token":
        _tokens(tokens, ("short", "admin"))
    elif case == "group-writable":
        _tokens(tokens, GOOD, mode=0o620)
    elif case == "world-writable":
        _tokens(tokens, GOOD, mode=0o606)
    elif case == "fifo":
        os.mkfifo(tokens, 0o600)
    elif case == "symlink":
        real = tmp_path / "real.json"
        _tokens(real, GOOD)
        tokens.symlink_to(real)
    elif case == "not-creatable":
        (tmp_path / "a-file").write_text("")
        tokens = tmp_path / "a-file" / "tokens.json"
    config = CONFIG + f'[auth]\ntokens_file = "{tokens}"\n'
    status, line = start_fails(
        tmp_path, "--listen", "127.0.0.1:0", "--state-dir", str(state), config=config
    )
    assert status == TokensFileUnusable.exit_status == 7
    assert f"tokens file {tokens}: {expected}" in line


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_tokens_file_of_another_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    tokens = state / "tokens.json"
    _tokens(tokens, GOOD)
    os.chown(tokens, 65534, 65534)  # nobody
    status, line = start_fails(tmp_path, "--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert status == TokensFileUnusable.exit_status
    assert f"tokens file {tokens}: is owned by uid 65534, not by the daemon's user" in line


async def _role_of(url: str, token: str) -> int | None:
    """None if the daemon accepts ``token``, else the HTTP status it refused with."""
    try:
        async with connect(url, token, connect_timeout=10):
            return None
    except ConnectionRejected as exc:
        return exc.status


async def _wait_for_status(url: str, token: str, wanted: int | None) -> None:
    while await _role_of(url, token) != wanted:
        await trio.sleep(0.05)


def _wait_for_line(log: Path, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def test_a_tokens_file_nested_too_deeply_is_unusable(tmp_path: Path) -> None:
    """Not a RecursionError: SIGHUP keeps the old tokens only on a
    TokensFileError (a RecursionError there ended the running daemon)."""
    from trioctl._tokens import Tokens, TokensFileError

    tokens = tmp_path / "tokens.json"
    tokens.write_text("[" * 3000)
    os.chmod(tokens, 0o600)
    with pytest.raises(TokensFileError, match="not valid JSON"):
        Tokens.load(tokens, owner=os.geteuid())


@pytest.mark.slow
def test_sighup_reloads_the_tokens_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tokens = state / "tokens.json"
    new = ("n" * 32, "read")
    with running_daemon(tmp_path, state) as (proc, ready):
        url, first = ready["url"], ready["token"]

        async def check() -> None:
            with trio.fail_after(30):
                assert await _role_of(url, first) is None
                assert await _role_of(url, new[0]) == 401
                # A new token, and the first one removed: SIGHUP makes it so.
                replacement = tokens.with_name("tokens.new")
                _tokens(replacement, new)
                os.replace(replacement, tokens)
                proc.send_signal(signal.SIGHUP)
                await _wait_for_status(url, new[0], None)
                assert await _role_of(url, first) == 401

        trio.run(check)
        _wait_for_line(tmp_path / "daemon.log", f"SIGHUP: 1 tokens read from {tokens}")

        # A file that cannot be used: the tokens in use stay, one line says why.
        os.chmod(tokens, 0o666)
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(tmp_path / "daemon.log", "SIGHUP: kept the tokens in use: tokens file")

        async def still() -> None:
            with trio.fail_after(30):
                assert await _role_of(url, new[0]) is None

        trio.run(still)
        assert proc.poll() is None
    log = (tmp_path / "daemon.log").read_text()
    assert "is writable by group or others (mode 0666)" in log
    assert "Traceback" not in log
