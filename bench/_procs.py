"""The processes a benchmark starts, and how it always stops them.

Everything a run starts lives under one temporary directory (``Registry.root``,
short, for UNIX socket paths): daemon configs and state, simulator sockets,
logs. Every process the bench starts, directly or through a daemon, has that
directory on its command line (``--config ROOT/...``, ``-qmp unix:ROOT/...``,
``many --dir ROOT/...``). :meth:`Registry.cleanup` therefore finds each of
them by id and by that mark, even those whose pid the bench never learned (a
VM the daemon launched just before a Ctrl-C): it resumes and kills them,
reaps the bench's own children and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import cattrs
import trio

import trioctl
from trioctl import procfs

__all__ = [
    "MODES",
    "READY_TIMEOUT",
    "Daemon",
    "ManySim",
    "Mode",
    "Registry",
    "daemon_ready",
    "daemon_settings",
    "free_port",
    "proc_cpu_seconds",
    "proc_cpu_seconds_exact",
    "proc_memory_kib",
    "start_daemon",
    "start_helper",
    "start_many_sim",
    "terminate",
    "wait_exit",
    "write_many_domains",
    "write_toml",
]

#: How long a daemon or a simulator may take to start.
READY_TIMEOUT: Final = 120.0


@attrs.frozen
class Mode:
    """A daemon configuration to compare: a name and its config keys."""

    name: str
    settings: Mapping[str, object]
    about: str


MODES: Final[dict[str, Mode]] = {
    "default": Mode("default", {}, "trioctl's defaults"),
    "legacy": Mode(
        "legacy",
        {"mode": "legacy"},
        'mode = "legacy": pre-patch libvirt (no priority workers, unbounded job queues, '
        "no monitor deadline, serial reconnect, worker taken before the job)",
    ),
    "libvirt9": Mode(
        "libvirt9",
        {
            "mode": "legacy",
            "pools.prio_workers": 5,
            "driver.reconnect": "parallel",
            "driver.reconnect_timeout": 1e6,
        },
        "libvirt 9.0 as in the reference figures: legacy plus 5 priority workers and "
        "per-domain reconnect that holds the job until the monitor answers",
    ),
}


def write_toml(path: Path, settings: Mapping[str, object]) -> None:
    """Write dotted keys (``"driver.max_queued": 0``) as a complete daemon
    configuration file (checked here: a bad key fails before any daemon starts).

    Raises:
        trioctl.ConfigError: a key or value is refused.
    """
    path.write_text(trioctl.load_config(None, overrides=settings).to_toml())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_ticks(pid: int) -> int | None:
    try:
        return procfs.read_stat(pid).start_ticks
    except OSError:
        return None


def proc_memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of ``pid`` in KiB; empty if it is gone."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return found


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` (0 if it is gone)."""
    try:
        return procfs.read_stat(pid).cpu_seconds
    except (OSError, ValueError):
        return 0.0


def proc_cpu_seconds_exact(pid: int) -> float | None:
    """CPU seconds of ``pid``'s live threads, to the nanosecond (the sum of
    ``/proc/PID/task/*/schedstat``; threads that exited are not counted);
    None if it is gone or the kernel does not keep schedstat."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited meanwhile
    return total / 1e9 if total else None


async def wait_exit(proc: subprocess.Popen[bytes]) -> None:
    """Return when the child ``proc`` has exited (and is reaped).

    Watches a pidfd, so the exit is seen the moment it happens. Bound it with
    a cancel scope.
    """
    if proc.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        proc.wait()
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    proc.wait()


async def terminate(proc: subprocess.Popen[bytes], grace: float) -> float:
    """SIGTERM, ``grace`` seconds to exit, then SIGKILL; seconds until it exited."""
    start = time.perf_counter()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with trio.move_on_after(grace):
            await wait_exit(proc)
        if proc.poll() is None:
            proc.kill()
            await wait_exit(proc)
    return time.perf_counter() - start


class Registry:
    """Owns the temporary directory and every process of one bench run.

    :meth:`cleanup` is synchronous so that it runs in a plain ``finally``,
    after ``trio.run`` has ended for whatever reason (Ctrl-C included).
    """

    def __init__(self, keep: bool = False) -> None:
        # Short, under the system temp dir: socket paths stay below 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="tb-"))
        self.keep = keep
        self._children: list[subprocess.Popen[bytes]] = []
        self._pids: dict[int, int | None] = {}
        self._counter = 0

    def new_dir(self, name: str) -> Path:
        """A fresh directory under the root (``name``, ``name-2``, ...)."""
        self._counter += 1
        path = self.root / f"{name}{self._counter}"
        path.mkdir(mode=0o700)
        return path

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill and reap ``proc`` at cleanup if it still runs."""
        self._children.append(proc)

    def track(self, pid: int) -> None:
        """Remember a VM process (with its start time, so a reused pid is spared)."""
        if pid not in self._pids:
            self._pids[pid] = _start_ticks(pid)

    def _ours(self, pid: int) -> bool:
        """Does ``pid`` carry our root directory on its command line?"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.root).encode() in cmdline

    def _marked_pids(self) -> set[int]:
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and self._ours(int(entry)):
                found.add(int(entry))
        return found

    def kill_vms(self, pids: set[int] | None = None) -> None:
        """SIGCONT then SIGKILL VM processes: ``pids``, or every one we know of
        and every process marked with our root, except our own children
        (daemons and helpers, stopped with :meth:`stop_children`)."""
        children = {p.pid for p in self._children if p.poll() is None}
        if pids is None:
            pids = set()
            for pid, ticks in self._pids.items():
                if ticks is not None and _start_ticks(pid) == ticks:
                    pids.add(pid)
            pids |= self._marked_pids()
            pids -= children
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            self._pids.pop(pid, None)

    def stop_children(self, timeout: float = 3.0) -> None:
        """SIGTERM our children (daemons, helpers), then SIGKILL after ``timeout``."""
        running = [p for p in self._children if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._children = [p for p in self._children if p.poll() is None]

    def cleanup(self) -> None:
        """Stop everything this run started and remove its directory."""
        self.kill_vms()
        self.stop_children()
        # VMs started by a daemon during its own shutdown: one more pass.
        self.kill_vms()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


@attrs.define(eq=False)
class Daemon:
    """A ``trioctl daemon`` subprocess."""

    proc: subprocess.Popen[bytes]
    state_dir: Path
    config_path: Path
    log_path: Path
    port: int
    launched_at: float
    """``time.perf_counter()`` just before the process was spawned."""
    url: str = ""
    admin_url: str = ""
    token: str = ""
    ready_at: float | None = None
    """``time.perf_counter()`` when the ready file was seen."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_token(self) -> str:
        """The admin token from the daemon's tokens file (once it exists)."""
        body = json.loads((self.state_dir / "tokens.json").read_text())
        token: str = body["tokens"][0]["token"]
        return token

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace: float = 10.0) -> float:
        """SIGTERM, ``grace`` seconds to exit, then SIGKILL; seconds until exit."""
        return await terminate(self.proc, grace)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def daemon_settings(
    state_dir: Path, mode: Mode, port: int, backend: str, extra: Mapping[str, object]
) -> dict[str, object]:
    """The config keys of a bench daemon: fast start, quiet logs, ``mode``, ``extra``."""
    settings: dict[str, object] = {
        "server.listen": f"127.0.0.1:{port}",
        "driver.state_dir": str(state_dir),
        "driver.run_dir": str(state_dir / "r"),
        "driver.backend": backend,
        "log.level": "warning",
    }
    settings.update(mode.settings)
    settings.update(extra)
    return settings


async def start_daemon(
    registry: Registry,
    state_dir: Path,
    mode: Mode,
    *,
    backend: str = "sim",
    port: int = 0,
    extra: Mapping[str, object] | None = None,
    wait_ready: bool = True,
    command: Sequence[str] = ("-m", "trioctl", "daemon"),
    cwd: Path | None = None,
) -> Daemon:
    """Start ``python -m trioctl daemon`` on ``state_dir``.

    With ``wait_ready``, return once its ready file is written (URL, token).
    ``command`` replaces ``-m trioctl daemon`` (it gets ``--config`` and
    ``--ready-file`` too). ``cwd``: run it from there (another checkout's
    root, whose ``trioctl`` then comes first on ``sys.path``).

    Raises:
        RuntimeError: it exited, or was not ready within READY_TIMEOUT (with
            the end of its log).
    """
    config = state_dir / "daemon.toml"
    write_toml(config, daemon_settings(state_dir, mode, port, backend, extra or {}))
    ready = state_dir / "ready.json"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    log_path = state_dir / "daemon.log"
    argv = [
        sys.executable,
        *command,
        "--config",
        str(config),
        "--ready-file",
        str(ready),
    ]
    launched = time.perf_counter()
    proc = start_helper(registry, argv, log_path, cwd=cwd)
    daemon = Daemon(proc, state_dir, config, log_path, port, launched)
    if wait_ready:
        with trio.move_on_after(READY_TIMEOUT):
            await daemon_ready(daemon)
        if daemon.ready_at is None:
            raise RuntimeError(
                f"the daemon was not ready within {READY_TIMEOUT:g} s:\n" + daemon.log_tail()
            )
    return daemon


async def daemon_ready(daemon: Daemon) -> None:
    """Wait for the ready file and fill in the URL, token and port.

    Raises:
        RuntimeError: the daemon exited (with the end of its log).
    """
    ready = daemon.state_dir / "ready.json"
    while True:
        if daemon.proc.poll() is not None:
            raise RuntimeError(
                f"the daemon exited with status {daemon.proc.returncode}:\n" + daemon.log_tail()
            )
        try:
            info: dict[str, Any] = json.loads(ready.read_text())
        except (OSError, ValueError):
            await trio.sleep(0.005)
            continue
        daemon.ready_at = time.perf_counter()
        daemon.url = info["url"]
        daemon.admin_url = info["admin_url"]
        daemon.token = info["token"]
        daemon.port = int(daemon.url.rsplit(":", 1)[1].strip("/"))
        return


def start_helper(
    registry: Registry,
    argv: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start one of the bench's own helper processes (hammer, echo server)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=full_env, cwd=cwd
        )
    registry.adopt(proc)
    return proc


@attrs.frozen
class ManySim:
    """One ``python -m trioctl.sim many`` process and its VMs."""

    pid: int
    start_ticks: int
    dir: Path
    pidfile: Path
    names: tuple[str, ...]

    prefix: str = "vm"

    def qmp_path(self, name: str) -> Path:
        return self.dir / name / "qmp.sock"

    @property
    def control_path(self) -> Path:
        return self.dir / f".{self.prefix}-control.sock"


async def start_many_sim(registry: Registry, state_dir: Path, count: int, prefix: str) -> ManySim:
    """Start ``count`` simulated VMs in one daemonized simulator process, their
    sockets where a daemon on ``state_dir`` (:func:`daemon_settings`) puts
    them: ``RUN_DIR/NAME/qmp.sock`` (``--vm-dirs``).

    Raises:
        RuntimeError: it failed to start (with its message).
    """
    directory = state_dir / "r"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pidfile = directory / f".{prefix}.pid"
    argv = [
        sys.executable,
        "-m",
        "trioctl.sim",
        "many",
        "--dir",
        str(directory),
        "--count",
        str(count),
        "--prefix",
        prefix,
        "--pidfile",
        str(pidfile),
        "--daemonize",
        "--vm-dirs",
    ]
    with trio.move_on_after(READY_TIMEOUT) as scope:
        result = await trio.run_process(argv, check=False, capture_stderr=True)
    if scope.cancelled_caught:
        raise RuntimeError(f"the many-VMs simulator did not start within {READY_TIMEOUT:g} s")
    if result.returncode != 0:
        raise RuntimeError(f"the many-VMs simulator failed: {result.stderr.decode().strip()}")
    pid = int(pidfile.read_text().strip())
    registry.track(pid)
    ticks = _start_ticks(pid)
    if ticks is None:
        raise RuntimeError(f"the many-VMs simulator (pid {pid}) exited at once")
    names = tuple(f"{prefix}{i}" for i in range(count))
    return ManySim(pid, ticks, directory, pidfile, names, prefix)


def write_many_domains(state_dir: Path, sims: list[ManySim]) -> None:
    """Write a definition and a runtime record for every VM of ``sims``, as a
    daemon that had started them would have left (``STATE_DIR/domains`` and
    the run directory of :func:`daemon_settings`). Plain writes: this is set-up,
    not the daemon's own crash-safe store."""
    domains = state_dir / "domains"
    run_dir = state_dir / "r"
    domains.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = time.time()
    for sim in sims:
        for name in sim.names:
            # With a uuid, as the daemon writes every definition (one without
            # is a hand-written file, which the daemon gives a uuid at each load).
            definition = trioctl.DomainDefinition(name=name, emulator="sim", uuid=str(uuid.uuid4()))
            (domains / f"{name}.json").write_text(json.dumps(cattrs.unstructure(definition)))
            # The daemon's runtime record (trioctl/_store.py's RuntimeRecord,
            # not public): the fields without a default, and ``shared``.
            record = {
                "name": name,
                "pid": sim.pid,
                "start_ticks": sim.start_ticks,
                "emulator": "sim",
                "started_at": now,
                "shared": True,
            }
            (run_dir / f"{name}.json").write_text(json.dumps(record))
