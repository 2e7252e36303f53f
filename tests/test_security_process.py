"""Issue 10, the process and file side: QEMU confined, hostile state files,
the write helper, records checked before adoption, and a daemon killed with
SIGKILL at any instant of a start.

Real-QEMU tests run as root in CI; the assertions about the user switch skip
only when the tests are not root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trioctl import InvalidParams, LaunchError, OperationInvalid, procfs
from trioctl._cli._daemon_cmd import EXIT_CONFIG
from trioctl._client import connect
from trioctl._driver import DriverConfig, open_driver
from trioctl._launcher import LaunchSpec, QemuProcess, QemuUser, _spawn, launch, names_monitor
from trioctl._models import DomainDefinition, DomainState, MonitorState
from trioctl._store import RuntimeRecord, Store, UnsafeDirectory, read_regular, write_atomic

ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def alive(pid: int) -> bool:
    try:
        return not procfs.read_stat(pid).ended
    except procfs.ProcessGone:
        return False


def emulators_under(directory: Path) -> set[int]:
    """Live processes whose command line names a path under ``directory``."""
    found = set()
    needle = os.fsencode(str(directory))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == b"-qmp" for a in argv) and any(needle in a for a in argv) and alive(int(entry)):
            found.add(int(entry))
    return found


def kill_under(directory: Path) -> None:
    for pid in emulators_under(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def config(state: Path, **kw: Any) -> DriverConfig:
    return DriverConfig(state, monitor_timeout=5.0, reconnect_timeout=2.0, **kw)


# -- QEMU confined -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.qemu
async def test_real_qemu_runs_confined_and_outlives_a_restart(sock_dir: Path) -> None:
    try:
        with trio.fail_after(60):
            async with open_driver(config(sock_dir)) as driver:
                await driver.define(DomainDefinition(name="q", emulator="qemu"))
                info = await driver.start("q")
                pid = info.pid
                assert pid is not None
                status = proc_status(pid)
                assert status["Seccomp"] == "2"  # -sandbox on: a filter is installed
                if ROOT:
                    uids = {int(u) for u in status["Uid"].split()}
                    assert 0 not in uids
                    assert uids == {NOBODY.pw_uid} or uids == {pwd.getpwnam("trioctl-qemu").pw_uid}
                    assert status["Groups"].strip() == ""  # no supplementary groups
                    assert (sock_dir / "run" / "q").stat().st_uid in uids
                    assert stat.S_IMODE((sock_dir / "run").stat().st_mode) == 0o711
                # Still a working monitor under the filter.
                assert (await driver.get_stats("q")).status == "running"
                assert await driver.monitor_command("q", "query-name") == {"name": "q"}
                # A new session of its own: not in the daemon's process group.
                assert os.getsid(pid) == pid
            # The daemon is gone; QEMU runs on, and the next one adopts it.
            assert alive(pid)
            async with open_driver(config(sock_dir)) as driver:
                info = driver.get_info("q")
                assert (info.state, info.pid) == (DomainState.RUNNING, pid)
                with trio.fail_after(10):
                    while driver.get_info("q").monitor is not MonitorState.OK:
                        await trio.sleep(0.02)
                assert (await driver.get_stats("q")).status == "running"
                info = await driver.destroy("q")
                assert info.state is DomainState.SHUTOFF
            with trio.fail_after(5):
                while alive(pid):
                    await trio.sleep(0.02)
    finally:
        kill_under(sock_dir)


@pytest.mark.skipif(not ROOT, reason="switching users needs root")
def test_an_emulator_run_as_another_user_gets_none_of_the_daemons_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulator's user can read its /proc/PID/environ: the daemon's
    # environment (a TRIOCTL_TOKEN exported for the CLI, cloud credentials)
    # must not reach it.
    monkeypatch.setenv("TRIOCTL_TOKEN", "secret-admin-token-xyz")
    log = tmp_path / "stderr.log"
    user = QemuUser(NOBODY.pw_name, NOBODY.pw_uid, NOBODY.pw_gid)
    child = _spawn(["/bin/sh", "-c", "env >&2"], log, user, ())
    assert child.wait(timeout=10) == 0
    env = dict(line.split("=", 1) for line in log.read_text().splitlines() if "=" in line)
    assert "secret-admin-token-xyz" not in log.read_text()
    assert env["HOME"] == str(tmp_path)
    assert env["LC_ALL"] == "C"
    assert env["USER"] == env["LOGNAME"] == NOBODY.pw_name
    assert set(env) <= {"HOME", "LC_ALL", "PATH", "USER", "LOGNAME", "PWD", "SHLVL", "_"}


@pytest.mark.slow
async def test_simulator_accepts_the_sandbox_without_daemonize(sock_dir: Path) -> None:
    spec = LaunchSpec(name="s", qmp_path=str(sock_dir / "qmp.sock"))
    with trio.fail_after(20):
        proc = await launch(spec, run_dir=sock_dir)
        try:
            assert os.getsid(proc.pid) == proc.pid
            assert "-sandbox" in Path(f"/proc/{proc.pid}/cmdline").read_text()
        finally:
            await proc.kill(grace=0)
            proc.close()


# -- a failed start kills what it launched ---------------------------------------------------


@pytest.mark.slow
async def test_start_that_never_gets_a_monitor_kills_its_emulator(sock_dir: Path) -> None:
    # An "emulator" that runs but never opens its monitor socket.
    fake = sock_dir / "silent-emulator"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    spec = LaunchSpec(name="x", qmp_path=str(sock_dir / "qmp.sock"), emulator=str(fake))
    spawned: list[int] = []

    async def on_spawn(proc: QemuProcess) -> None:
        spawned.append(proc.pid)

    with trio.fail_after(20):
        with pytest.raises(LaunchError, match="no QMP socket"):
            await launch(spec, run_dir=sock_dir, on_spawn=on_spawn, startup_timeout=0.5)
    assert len(spawned) == 1 and not alive(spawned[0])


@pytest.mark.slow
async def test_failure_to_record_the_pid_kills_the_emulator(sock_dir: Path) -> None:
    spec = LaunchSpec(name="x", qmp_path=str(sock_dir / "qmp.sock"))
    spawned: list[int] = []

    async def on_spawn(proc: QemuProcess) -> None:
        spawned.append(proc.pid)
        raise OSError("disk full")

    with trio.fail_after(20), pytest.raises(OSError, match="disk full"):
        await launch(spec, run_dir=sock_dir, on_spawn=on_spawn)
    assert len(spawned) == 1 and not alive(spawned[0])


@pytest.mark.slow
async def test_emulator_exiting_at_once_reports_its_stderr(sock_dir: Path) -> None:
    spec = LaunchSpec(name="x", qmp_path=str(sock_dir / "qmp.sock"), extra_args=("-bogus",))
    with trio.fail_after(20), pytest.raises(LaunchError, match="bogus"):
        await launch(spec, run_dir=sock_dir)


# -- records are checked before adoption -----------------------------------------------------


@pytest.mark.slow
async def test_record_naming_a_stranger_is_discarded_and_the_stranger_untouched(
    sock_dir: Path,
) -> None:
    victim = sock_dir / "victim-file"
    victim.write_text("precious")
    stranger = await trio.lowlevel.open_process(["sleep", "60"])
    try:
        ticks = QemuProcess.attach(stranger.pid)
        start_ticks = ticks.start_ticks
        ticks.close()
        store = Store(sock_dir, sock_dir / "run")
        store.save_definition(DomainDefinition(name="s", emulator="sim"))
        raw = {
            **attrs.asdict(RuntimeRecord("s", stranger.pid, start_ticks, "sim", time.time())),
            # Old-format path keys are ignored, never unlinked.
            "qmp_path": str(victim),
            "pidfile": str(victim),
            "control_path": str(victim),
        }
        (sock_dir / "run" / "s.json").write_text(json.dumps(raw))
        with trio.fail_after(20):
            async with open_driver(config(sock_dir)) as driver:
                info = driver.get_info("s")
                assert info.pid is None and info.state is not DomainState.RUNNING
                with pytest.raises(OperationInvalid, match="not running"):
                    await driver.destroy("s")
        assert stranger.poll() is None  # never signalled
        assert victim.read_text() == "precious"  # never unlinked
        assert not (sock_dir / "run" / "s.json").exists()
    finally:
        stranger.kill()
        await stranger.wait()


# -- hostile state files: each leaves a serving daemon ----------------------------------------


def test_deeply_nested_definition_is_set_aside(tmp_path: Path) -> None:
    store = Store(tmp_path, tmp_path / "run")
    (tmp_path / "domains" / "deep.json").write_text("[" * 30000 + "]" * 30000)
    (tmp_path / "domains" / "big.json").write_text("[" * 100_000 + "]" * 100_000)  # 200 KB
    store.save_definition(DomainDefinition(name="ok"))
    found, problems = store.load_definitions()
    assert [d.name for d in found] == ["ok"]
    reasons = {Path(p.path).name: p.reason for p in problems}
    assert reasons["deep.json"] == "nested too deeply"
    assert "limit" in reasons["big.json"]
    assert (tmp_path / "domains" / "deep.json.corrupt").exists()


@pytest.mark.slow
async def test_hostile_state_files_never_stop_start_up(sock_dir: Path) -> None:
    store = Store(sock_dir, sock_dir / "run")
    domains, run = sock_dir / "domains", sock_dir / "run"
    store.save_definition(DomainDefinition(name="good", emulator="sim"))
    (domains / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(domains / "fifo.json")
    os.mkfifo(run / "fifo.json")
    (domains / "shadow.json").symlink_to("/etc/shadow")
    (domains / "noemu.json").write_text('{"name": "noemu"}')
    (domains / "utf.json").write_bytes(b'{"name": "utf\xff"}')
    foreign = domains / "foreign.json"
    foreign.write_text(json.dumps({"name": "foreign", "emulator": "sim"}))
    if ROOT:
        os.chown(foreign, NOBODY.pw_uid, NOBODY.pw_gid)
    store.save_definition(DomainDefinition(name="huge", emulator="sim"))
    (run / "huge.json").write_text(
        json.dumps(
            {"name": "huge", "pid": 2**70, "start_ticks": 1, "emulator": "sim", "started_at": 0.0}
        )
    )
    (run / "neg.json").write_text(
        json.dumps(
            {"name": "neg", "pid": -5, "start_ticks": 1, "emulator": "sim", "started_at": 0.0}
        )
    )
    with trio.fail_after(30):
        async with open_driver(config(sock_dir)) as driver:
            names = {i.name for i in driver.list_domains()}
            assert names == {"good", "noemu", "huge"} | (set() if ROOT else {"foreign"})
            problems = {Path(p.path).name: p.reason for p in driver.load_problems}
            assert "limit" in problems["deep.json"]
            assert problems["fifo.json"] == "not a regular file"
            assert problems["shadow.json"] == "is a symbolic link"
            assert "utf-8" in problems["utf.json"]
            if ROOT:
                assert "owned by uid" in problems["foreign.json"]
            assert "pid" in problems["huge.json"]
            assert "pid" in problems["neg.json"]
            # A definition without an emulator gets the default at load, and starts.
            assert driver.get_info("noemu").emulator == "sim"
            info = await driver.start("noemu")
            assert info.state is DomainState.RUNNING
            await driver.destroy("noemu")
    assert Path("/etc/shadow").exists()
    assert (domains / "shadow.json.corrupt").is_symlink()  # the link moved, not its target


@pytest.mark.parametrize("name", [".", "..", ".x", "-x", ".a.tmp-1", "_x", ""])
def test_names_start_with_a_letter_or_digit(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        DomainDefinition(name=name)


async def test_definition_size_and_count_limits(sock_dir: Path) -> None:
    with trio.fail_after(20):
        async with open_driver(config(sock_dir, max_domains=2)) as driver:
            big = DomainDefinition(name="big", emulator="sim", extra_args=("x" * 70_000,))
            with pytest.raises(InvalidParams, match="limit is 65536"):
                await driver.define(big)
            await driver.define(DomainDefinition(name="a"))
            await driver.define(DomainDefinition(name="b"))
            with pytest.raises(OperationInvalid, match="max_domains") as caught:
                await driver.define(DomainDefinition(name="c"))
            assert caught.value.data["limit"] == "driver.max_domains"
            await driver.define(DomainDefinition(name="b", memory_mib=256))  # redefine is fine
    assert not (sock_dir / "domains" / "big.json").exists()


# -- the write helper and the state directory -------------------------------------------------


def test_write_helper_replaces_symlinks_and_planted_files(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = tmp_path / "victim"
    target.write_text("precious")
    link = shared / "ready.json"
    link.symlink_to(target)
    write_atomic(link, b"secret")
    assert target.read_text() == "precious"
    assert not link.is_symlink() and link.read_bytes() == b"secret"
    planted = shared / "planted.json"
    planted.write_text("")
    if ROOT:
        os.chown(planted, NOBODY.pw_uid, NOBODY.pw_gid)
    with planted.open("rb") as attacker:
        write_atomic(planted, b"secret")
        assert attacker.read() == b""  # the planted inode never gets the token
    st = planted.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)
    assert not [p for p in shared.iterdir() if p.name.startswith(".")]


def test_reads_refuse_non_regular_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        read_regular(tmp_path / "fifo", 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(ValueError, match="limit"):
        read_regular(tmp_path / "big", 100)
    assert read_regular(tmp_path / "big", 101) == b"x" * 101


def test_unsafe_state_directories_are_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="writable by group or others"):
        Store(open_dir, open_dir / "run")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        Store(link, tmp_path / "run")
    if ROOT:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, NOBODY.pw_uid, NOBODY.pw_gid)
        with pytest.raises(UnsafeDirectory, match="owned by uid"):
            Store(foreign, foreign / "run")
        run = tmp_path / "ok" / "run"
        run.mkdir(parents=True, mode=0o700)
        os.chown(run, NOBODY.pw_uid, NOBODY.pw_gid)
        with pytest.raises(UnsafeDirectory, match="run directory"):
            Store(tmp_path / "ok", run)


def test_a_directory_under_one_another_user_can_rename_in_is_refused(tmp_path: Path) -> None:
    # The run directory passes its own checks, but the directory it lies in
    # lets another user rename it and put a symlink in its place (a root daemon
    # started with `su` inherits XDG_RUNTIME_DIR=/run/user/1000): the daemon,
    # as root, then chmods, creates and writes wherever the link leads.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match=f"lies in {shared}, writable by group or others"):
        Store(tmp_path / "state", shared / "run")
    shared.chmod(0o1777)  # sticky, as /tmp: only an entry's owner may rename it
    Store(tmp_path / "state", shared / "run")
    if ROOT:
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
        with pytest.raises(UnsafeDirectory, match=f"lies in {home}, owned by uid"):
            Store(tmp_path / "state2", home / "trioctl")


# -- the daemon as a process -------------------------------------------------------------------

CONFIG = """
[server]
listen = "127.0.0.1:0"
keepalive_interval = 0
[driver]
monitor_timeout = 10
reconnect_timeout = 2
"""


def daemon_argv(state: Path, ready: Path) -> list[str]:
    config = state / "trioctl.toml"
    if not config.exists():
        config.write_text(CONFIG)
    return [
        sys.executable,
        *("-m", "trioctl", "daemon", "--config", str(config), "--state-dir", str(state)),
        *("--ready-file", str(ready)),
    ]


async def start_daemon(state: Path, ready: Path) -> tuple[trio.Process, dict[str, Any]]:
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    proc = await trio.lowlevel.open_process(
        daemon_argv(state, ready), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    with trio.fail_after(20):
        while not ready.exists():
            assert proc.poll() is None, "the daemon exited before it was ready"
            await trio.sleep(0.01)
    return proc, json.loads(ready.read_text())


@asynccontextmanager
async def daemon(state: Path, ready: Path) -> AsyncIterator[tuple[trio.Process, dict[str, Any]]]:
    proc, info = await start_daemon(state, ready)
    try:
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await proc.wait()


@pytest.mark.slow
def test_daemon_refuses_an_unsafe_state_directory_with_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    result = subprocess.run(
        daemon_argv(state, tmp_path / "ready.json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "writable by group or others" in lines[0] and str(state) in lines[0]
    if ROOT:
        state.chmod(0o700)
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
        result = subprocess.run(
            daemon_argv(state, tmp_path / "ready.json"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert "owned by uid" in lines[0]


@pytest.mark.slow
async def test_ready_file_in_a_shared_directory(sock_dir: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="tc-shared-"))
    try:
        shared.chmod(0o1777)
        victim = sock_dir / "victim"
        victim.write_text("precious")
        # Another user's symlink at the ready file's path.
        ready = shared / "ready.json"
        ready.symlink_to(victim)
        async with daemon(sock_dir, ready) as (proc, info):
            assert victim.read_text() == "precious"
            assert not ready.is_symlink()
            st = ready.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)
            assert info["token"]
            assert proc_status(proc.pid)["Umask"] == "0077"
        # Another user's pre-created file, held open: it never gets the token.
        ready.unlink()
        ready.write_text("")
        if ROOT:
            os.chown(ready, NOBODY.pw_uid, NOBODY.pw_gid)
        with ready.open("rb") as attacker:
            proc = await trio.lowlevel.open_process(
                daemon_argv(sock_dir, ready), stdout=subprocess.DEVNULL
            )
            try:
                with trio.fail_after(20):
                    while ready.stat().st_size == 0:
                        await trio.sleep(0.01)
                assert attacker.read() == b""
                assert ready.stat().st_uid == os.geteuid()
            finally:
                proc.kill()
                await proc.wait()
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()


async def _swallow(coro: Any) -> None:
    with contextlib.suppress(Exception):
        await coro


@pytest.mark.slow
async def test_sigkill_at_any_instant_of_a_start_never_loses_a_process(sock_dir: Path) -> None:
    """20 instants spread over a start; after each SIGKILL and restart, every
    emulator under the state directory is the domain's tracked process, and
    start never makes a second one."""
    ready = sock_dir / "ready.json"
    began = time.monotonic()
    proc, info = await start_daemon(sock_dir, ready)
    try:
        async with connect(info["url"], info["token"]) as client:
            await client.define({"name": "k", "emulator": "sim"})
            with trio.fail_after(20):
                t0 = time.monotonic()
                await client.start("k")
                took = time.monotonic() - t0
                await client.destroy("k")
        outcomes: dict[str, int] = {"adopted": 0, "killed": 0, "never started": 0}
        for i in range(20):
            # From the request to a little past the measured duration (a start
            # under test load takes longer than the unloaded one measured).
            delay = took * 1.5 * i / 19
            async with connect(info["url"], info["token"]) as client:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_swallow, client.start("k"))
                    await trio.sleep(delay)
                    proc.kill()
                    with trio.fail_after(10):
                        await proc.wait()
                    nursery.cancel_scope.cancel()
            before = emulators_under(sock_dir)
            proc, info = await start_daemon(sock_dir, ready)
            async with connect(info["url"], info["token"]) as client:
                with trio.fail_after(20):
                    dom = await client.get_info("k")
                    now = emulators_under(sock_dir)
                    # Nothing untracked: the domain's process, or none.
                    assert now <= ({dom.pid} if dom.pid else set()), (i, before, now, dom)
                    assert now <= before
                    if dom.pid is not None:
                        outcomes["adopted"] += 1
                        with pytest.raises(OperationInvalid, match="already running"):
                            await client.start("k")
                    else:
                        outcomes["killed" if before else "never started"] += 1
                        await client.start("k")
                    dom = await client.get_info("k")
                    assert emulators_under(sock_dir) == {dom.pid}  # exactly one
                    await client.destroy("k")
                    while emulators_under(sock_dir):
                        await trio.sleep(0.01)
        print(f"start took {took:.3f} s; outcomes {outcomes}")
        # The case: an emulator launched, its start unfinished.
        assert outcomes["killed"] >= 1, outcomes
        assert time.monotonic() - began < 90
    finally:
        if proc.poll() is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        kill_under(sock_dir)


@pytest.mark.slow
async def test_daemon_serves_despite_hostile_state_files(sock_dir: Path) -> None:
    domains, run = sock_dir / "domains", sock_dir / "run"
    domains.mkdir(mode=0o700)
    run.mkdir(mode=0o700)
    (domains / "good.json").write_text(json.dumps({"name": "good", "emulator": "sim"}))
    (domains / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    os.mkfifo(domains / "fifo.json")
    (domains / "shadow.json").symlink_to("/etc/shadow")
    (run / "good.json").write_text(
        json.dumps(
            {"name": "good", "pid": 2**70, "start_ticks": 1, "emulator": "sim", "started_at": 0.0}
        )
    )
    foreign = domains / "foreign.json"
    foreign.write_text(json.dumps({"name": "foreign"}))
    if ROOT:
        os.chown(foreign, NOBODY.pw_uid, NOBODY.pw_gid)
    async with daemon(sock_dir, sock_dir / "ready.json") as (_proc, info):
        async with connect(info["url"], info["token"]) as client:
            with trio.fail_after(10):
                names = {d.name for d in await client.list_domains()}
                assert "good" in names and not names & {"deep", "fifo", "shadow"}
                assert (await client.get_info("good")).state.value == "shutoff"


@pytest.mark.slow
@pytest.mark.skipif(not ROOT, reason="the daemon only resolves driver.qemu_user as root")
def test_unknown_qemu_user_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "trioctl.toml").write_text(CONFIG + 'qemu_user = "no-such-account-x"\n')
    result = subprocess.run(
        daemon_argv(tmp_path, tmp_path / "ready.json"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    # A bad value in the configuration: the configuration's exit status.
    assert result.returncode == EXIT_CONFIG and len(lines) == 1, result.stderr
    assert "no account named 'no-such-account-x'" in lines[0]


def test_names_monitor_matches_only_this_domains_socket() -> None:
    qmp = "/run/t/vm1/qmp.sock"
    single = ["qemu", "-name", "guest=vm1", "-qmp", f"unix:{qmp},server=on,wait=off"]
    assert names_monitor(single, qmp)
    assert not names_monitor(single, "/run/t/vm2/qmp.sock")
    assert not names_monitor(["qemu", "-qmp", f"unix:{qmp}x,server=on"], qmp)
    assert not names_monitor(["sleep", "60"], qmp)
    many = ["python", "-m", "trioctl.sim", "many", "--dir", "/run/t", "--count", "5"]
    many += ["--prefix", "vm", "--vm-dirs"]
    assert names_monitor(many, qmp)
    assert not names_monitor(many, "/run/t/vm5/qmp.sock")  # beyond --count
    assert not names_monitor(many, "/run/other/vm1/qmp.sock")
    assert not names_monitor(many[:-1], qmp)  # the flat layout serves other paths


def test_a_domain_named_like_a_record_keeps_its_run_directory(tmp_path: Path) -> None:
    store = Store(tmp_path, tmp_path / "run")
    (tmp_path / "run" / "a.json").mkdir()  # the run directory of domain "a.json"
    store.save_record(RuntimeRecord("a.json", 10, 2, "sim", 0.0))
    records, problems = store.load_records()
    assert set(records) == {"a.json"} and not problems
    assert (tmp_path / "run" / "a.json").is_dir()


@pytest.mark.slow
async def test_emulator_of_an_older_daemon_is_adopted(sock_dir: Path) -> None:
    """Before per-domain run directories the socket was RUN_DIR/NAME.qmp and
    records held paths: such an emulator is adopted, not lost, at upgrade."""
    run = sock_dir / "run"
    store = Store(sock_dir, run)
    qmp = run / "old.qmp"
    stand_in = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(60)", f"unix:{qmp},server=on,wait=off"]
    )
    try:
        held = QemuProcess.attach(stand_in.pid)
        ticks = held.start_ticks
        held.close()
        store.save_definition(DomainDefinition(name="old", emulator="sim"))
        legacy = {
            "name": "old",
            "pid": stand_in.pid,
            "start_ticks": ticks,
            "qmp_path": str(qmp),
            "pidfile": str(run / "old.pid"),
            "emulator": "sim",
            "started_at": time.time(),
            "control_path": None,
        }
        (run / "old.json").write_text(json.dumps(legacy))
        with trio.fail_after(20):
            async with open_driver(config(sock_dir)) as driver:
                info = driver.get_info("old")
                assert (info.state, info.pid) == (DomainState.RUNNING, stand_in.pid)
                await driver.destroy("old")
        assert stand_in.poll() is not None
    finally:
        with contextlib.suppress(ProcessLookupError):
            stand_in.kill()
        await stand_in.wait()
