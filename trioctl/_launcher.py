"""Start, watch and stop QEMU (real or simulated) processes.

The daemon starts the emulator itself, as a child in a new session (stdin and
stdout on /dev/null, stderr in a log file of the domain's run directory), not
with QEMU's ``-daemonize``: when the daemon runs as root, it drops to an
unprivileged user *before* ``exec`` (``driver.qemu_user``) and QEMU installs
its seccomp filter (``-sandbox ...,elevateprivileges=deny``), which kills a
QEMU that daemonizes or switches user itself. The emulator outlives the
daemon, as under libvirt, and is reconnected after a restart. Readiness is its
QMP socket accepting a connection.

Exit is watched through a pidfd (``os.pidfd_open``), which becomes readable the
moment the process exits, whether or not it is our child (after a daemon
restart it is not). Signals go through the pidfd too, so a recycled pid is
never signalled. A child of ours that exits is reaped without blocking.

The argument list is built here and passed to ``exec`` directly, never
through a shell. The same argument list starts real QEMU and the simulator
(``python -m trioctl.sim``), which accepts the subset of QEMU's command line
used here.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import attrs
import trio

from . import procfs
from ._errors import LaunchError
from ._models import Disk, Nic

__all__ = [
    "DEFAULT_QEMU",
    "SANDBOX",
    "LaunchSpec",
    "QemuProcess",
    "QemuUser",
    "build_argv",
    "cmdline",
    "emulator_argv",
    "find_processes",
    "launch",
    "monitor_matcher",
    "names_monitor",
    "prepare_domain_dir",
    "qemu_opt",
    "resolve_qemu_user",
    "verify_process",
]

#: The real QEMU binary (Debian package qemu-system-x86).
DEFAULT_QEMU: Final = "qemu-system-x86_64"

#: QEMU's seccomp filter: no obsolete system calls, no set*uid/set*gid, no
#: fork/exec, no scheduler or CPU-affinity changes.
SANDBOX: Final = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

#: The default ``driver.qemu_user`` when it exists, else ``nobody``.
DEDICATED_USER: Final = "trioctl-qemu"

#: Names of a domain's files in its run directory.
MONITOR_SOCKET: Final = "qmp.sock"
CONTROL_SOCKET: Final = "ctl.sock"
STDERR_LOG: Final = "stderr.log"
SERIAL_LOG: Final = "serial.log"
"""The first serial port's output, when a definition asks for ``serial_log``."""

_SOCKET_POLL = 0.005
_STOPPED_POLL = 0.02
_LOG_TAIL = 2000

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Emulators this process spawned and has not reaped, by pid. A pid cannot be
reused before its zombie is reaped, so the pid names the child."""


@attrs.frozen
class QemuUser:
    """The unprivileged account emulators run as when the daemon is root."""

    name: str
    uid: int
    gid: int


def resolve_qemu_user(configured: str) -> QemuUser | None:
    """The account for ``driver.qemu_user``; None when the daemon is not root
    (it cannot switch users, and runs emulators as itself).

    ``""`` (the default) means ``trioctl-qemu`` if that account exists, else
    ``nobody``; the group is the account's primary group.

    Raises:
        ValueError: no such account.
    """
    if os.geteuid() != 0:
        return None
    name = configured
    if not name:
        try:
            pwd.getpwnam(DEDICATED_USER)
            name = DEDICATED_USER
        except KeyError:
            name = "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"driver.qemu_user: no account named {name!r}") from None
    if entry.pw_uid == 0:
        return None  # "root": confinement by user turned off
    return QemuUser(name, entry.pw_uid, entry.pw_gid)


def emulator_argv(emulator: str) -> list[str]:
    """The argv prefix for an emulator name: ``sim`` (the simulator in
    isolated mode: :func:`trioctl.sim.sim_command`), ``qemu`` or a path."""
    if emulator == "sim":
        # Imported here: a daemon that runs only QEMU never loads the simulator.
        from .sim import sim_command

        return sim_command()
    if emulator == "qemu":
        return [shutil.which(DEFAULT_QEMU) or DEFAULT_QEMU]
    return [emulator]


@attrs.frozen
class LaunchSpec:
    """Everything needed to start one VM process."""

    name: str
    qmp_path: str
    emulator: str = "sim"
    memory_mib: int = 128
    vcpus: int = 1
    machine: str = "none"
    paused: bool = False
    extra_args: tuple[str, ...] = ()
    sim_control_path: str | None = None
    """Simulator only: where its fault-injection control socket listens."""
    disks: tuple[Disk, ...] = ()
    """Disk images, their paths already resolved and checked (see _policy)."""
    disk_fds: tuple[int, ...] = ()
    """If given, one open descriptor per disk, passed to the emulator: QEMU
    then opens ``/dev/fdset/N``, never the path."""
    nics: tuple[Nic, ...] = ()
    serial_log: str | None = None
    """Log the first serial port to this file."""
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""


def qemu_opt(value: str) -> str:
    """``value`` escaped for QEMU's ``key=value,...`` syntax (``,`` is ``,,``)."""
    return value.replace(",", ",,")


def _device_argv(spec: LaunchSpec) -> list[str]:
    """The typed devices: ``-blockdev``, ``-netdev``, ``-device``, serial, kernel.

    ``-machine none`` has no bus: disks and NICs are back-ends only there
    (visible to ``query-named-block-nodes``); ``microvm`` gets virtio-mmio
    devices; other machine types get PCI devices.
    """
    argv: list[str] = []
    bus = "none" if spec.machine == "none" else "mmio" if spec.machine == "microvm" else "pci"
    for index, disk in enumerate(spec.disks):
        node = f"disk{index}"
        filename = disk.path
        if spec.disk_fds:
            # A descriptor set per disk: QEMU dup()s the descriptor whose
            # access mode matches instead of opening anything by name.
            argv += ["-add-fd", f"fd={spec.disk_fds[index]},set={index + 1}"]
            filename = f"/dev/fdset/{index + 1}"
        # JSON syntax: no escaping to get wrong, and ``backing: null`` (the
        # dotted syntax can only name a node): a qcow2 image's backing file,
        # a path in the image's header, is never opened. The format is
        # always given, never probed.
        file: dict[str, object] = {
            "driver": "file",
            "node-name": f"{node}-file",
            "filename": filename,
            "read-only": disk.readonly,
        }
        fmt: dict[str, object] = {
            "driver": disk.format,
            "node-name": node,
            "file": f"{node}-file",
            "read-only": disk.readonly,
        }
        if disk.format == "qcow2":
            fmt["backing"] = None
        argv += ["-blockdev", json.dumps(file), "-blockdev", json.dumps(fmt)]
        if bus != "none":
            device = "virtio-blk-device" if bus == "mmio" else "virtio-blk-pci"
            argv += ["-device", f"{device},drive={node},id={node}-dev"]
    for index, nic in enumerate(spec.nics):
        argv += ["-netdev", f"user,id=net{index}"]
        if bus != "none":
            model = "virtio-net-device" if bus == "mmio" else nic.model
            mac = f",mac={nic.mac}" if nic.mac else ""
            argv += ["-device", f"{model},netdev=net{index},id=net{index}-dev{mac}"]
    if spec.serial_log is not None:
        argv += [
            "-chardev",
            f"file,id=serial0,path={qemu_opt(spec.serial_log)}",
            "-serial",
            "chardev:serial0",
        ]
    if spec.kernel:
        argv += ["-kernel", spec.kernel]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    return argv


def build_argv(spec: LaunchSpec) -> list[str]:
    """The full argument list for ``spec`` (never passed through a shell)."""
    argv = [
        *emulator_argv(spec.emulator),
        "-name",
        f"guest={spec.name}",
        "-machine",
        spec.machine,
        "-m",
        f"{spec.memory_mib}M",
        "-smp",
        str(spec.vcpus),
        "-nodefaults",
        "-display",
        "none",
        "-qmp",
        f"unix:{qemu_opt(spec.qmp_path)},server=on,wait=off",
        "-sandbox",
        SANDBOX,
    ]
    if spec.paused:
        argv.append("-S")
    if spec.sim_control_path is not None and spec.emulator == "sim":
        argv += ["-sim-control", f"unix:{qemu_opt(spec.sim_control_path)}"]
    argv += _device_argv(spec)
    argv += spec.extra_args
    return argv


class QemuProcess:
    """A running VM process watched through a pidfd (our child or not).

    Use :meth:`attach` to watch an existing pid and :meth:`close` when done.
    """

    def __init__(self, pid: int, pidfd: int, start_ticks: int) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        """The process's start time in clock ticks since boot (``/proc``):
        with the pid, it identifies the process across a daemon restart."""
        self._pidfd = pidfd
        self._watch_done: trio.Event | None = None
        self._returncode: int | None = None

    @classmethod
    def attach(cls, pid: int, start_ticks: int | None = None) -> QemuProcess:
        """Watch process ``pid``.

        Args:
            start_ticks: if given, refuse a process with another start time
                (the pid was recycled).

        Raises:
            ProcessLookupError: no such process (or a recycled pid).
        """
        pidfd = os.pidfd_open(pid)
        try:
            ticks = procfs.read_stat(pid).start_ticks
            if start_ticks is not None and ticks != start_ticks:
                raise ProcessLookupError(f"pid {pid} now belongs to another process")
        except BaseException:
            os.close(pidfd)
            raise
        return cls(pid, pidfd, ticks)

    def __repr__(self) -> str:
        return f"<QemuProcess pid={self.pid}>"

    def fileno(self) -> int:
        """The pidfd (readable once the process has exited)."""
        return self._pidfd

    def exited(self) -> bool:
        """True once the process has exited (a zombie counts as exited)."""
        if self._pidfd < 0:
            return True
        # poll(), not select(): a daemon with thousands of domains has pidfds
        # numbered past select()'s limit of 1024.
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        if poller.poll(0):
            self._reap()
            return True
        return False

    def _reap(self) -> None:
        """If the process is our exited child, collect its status (never blocks)."""
        child = _children.get(self.pid)
        if child is not None and child.poll() is not None:
            self._returncode = child.returncode
            del _children[self.pid]

    @property
    def returncode(self) -> int | None:
        """The exit status, if the process was our child and has been reaped."""
        child = _children.get(self.pid)
        if child is not None:
            return child.poll()
        return self._returncode

    def stopped(self) -> bool:
        """True if the process is stopped (SIGSTOP: state ``T`` in /proc)."""
        try:
            stopped = procfs.read_stat(self.pid).stopped
        except OSError:
            return False
        return stopped and not self.exited()

    def send_signal(self, sig: int) -> bool:
        """Send ``sig``; False if the process has already exited."""
        if self.exited():
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    async def wait(self) -> None:
        """Return when the process exits. Any number of tasks may wait.

        Trio lets one task at a time wait on a file descriptor: the first
        waiter watches the pidfd and the others wait for it to finish (if it
        is cancelled, one of them takes over).
        """
        while not self.exited():
            if self._watch_done is None:
                done = self._watch_done = trio.Event()
                try:
                    await trio.lowlevel.wait_readable(self._pidfd)
                    self._reap()
                except trio.ClosedResourceError:
                    return
                finally:
                    self._watch_done = None
                    done.set()
            else:
                await self._watch_done.wait()

    async def kill(self, grace: float = 1.0) -> None:
        """Make the process exit, fast, even if it is hung.

        A stopped process cannot act on SIGTERM, so it gets SIGKILL at once;
        otherwise SIGTERM, ``grace`` seconds to exit, then SIGKILL. Returns
        when the process has exited.
        """
        if self.exited():
            return
        if self.stopped() or grace <= 0:
            self.send_signal(signal.SIGKILL)
        else:
            self.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                # A SIGSTOP may land just now: look again every few ms rather
                # than give a stopped process the whole grace.
                while not self.exited() and not self.stopped():
                    with trio.move_on_after(_STOPPED_POLL):
                        await self.wait()
            if self.exited():
                return
            self.send_signal(signal.SIGKILL)
        await self.wait()

    def close(self) -> None:
        """Stop watching (the process keeps running)."""
        if self._pidfd >= 0:
            fd, self._pidfd = self._pidfd, -1
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(fd)
            os.close(fd)


def names_monitor(argv: list[str], qmp_path: str) -> bool:
    """True if the command line ``argv`` serves its QMP monitor at ``qmp_path``
    (QEMU and the simulator), or is the simulator's ``many`` mode serving
    ``qmp_path`` in its ``--vm-dirs`` layout."""
    return monitor_matcher(argv)(qmp_path)


def monitor_matcher(argv: list[str]) -> Callable[[str], bool]:
    """:func:`names_monitor` for one command line and many paths: the line
    is read once (at start-up, a thousand records of one simulator process
    were about 9 us each, reading it again every time). The paths asked
    about are normalized, as ``str()`` of a :class:`~pathlib.Path` is."""
    sockets = [arg for arg in argv if arg.startswith("unix:")]
    directory = count = prefix = None
    if "many" in argv and "--vm-dirs" in argv:
        options = dict(itertools.pairwise(argv))
        directory, count = options.get("--dir"), options.get("--count")
        prefix = options.get("--prefix", "vm")
    limit = int(count) if count is not None and count.isdecimal() else None

    def matches(qmp_path: str) -> bool:
        if sockets:
            wanted = f"unix:{qmp_path},"
            if any(arg.startswith(wanted) for arg in sockets):
                return True
        if limit is None or prefix is None:
            return False
        parent, socket_name = os.path.split(qmp_path)
        top, name = os.path.split(parent)
        if socket_name != MONITOR_SOCKET or directory != top:
            return False
        index = name[len(prefix) :] if name.startswith(prefix) else ""
        return index.isdecimal() and int(index) < limit

    return matches


def cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid``; None if it cannot be read (gone)."""
    try:
        return procfs.read_cmdline(pid)
    except OSError:
        return None


def find_processes(qmp_path: str) -> list[int]:
    """Every process whose command line serves a monitor at ``qmp_path``."""
    found = []
    for pid in procfs.pids():
        if pid != os.getpid():
            argv = cmdline(pid)
            if argv and names_monitor(argv, qmp_path):
                found.append(pid)
    return found


def verify_process(pid: int, start_ticks: int, qmp_path: str) -> QemuProcess:
    """Watch ``pid`` if it is the emulator a record names: same start time,
    and its command line serves this domain's monitor socket.

    Raises:
        ProcessLookupError: it has exited (or the pid was recycled and the
            start time differs).
        PermissionError: a process that is not this domain's emulator (a
            stranger: never signal it).
    """
    proc = QemuProcess.attach(pid, start_ticks)
    argv = cmdline(pid)
    if proc.exited():
        proc.close()
        raise ProcessLookupError(f"pid {pid} has exited")
    if argv is None or not names_monitor(argv, qmp_path):
        proc.close()
        raise PermissionError(f"pid {pid} is not the emulator of {qmp_path}")
    return proc


def _reachable(path: Path, user: QemuUser) -> Path | None:
    """The first directory from / down to ``path`` that ``user`` cannot search."""
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def prepare_domain_dir(
    run_dir: Path, name: str, user: QemuUser | None, state_dir: Path | None = None
) -> Path:
    """Create (or clean) ``run_dir/name``, the domain's runtime directory,
    owned by ``user`` (mode 0700) so that the emulator can create its sockets
    there and nowhere else; ``run_dir`` itself becomes searchable (0711), not
    readable or writable, and so does ``state_dir`` when ``run_dir`` is in it
    (the default layout). Blocking.

    Raises:
        LaunchError: ``user`` cannot reach ``run_dir``, or the directory is
            not one the daemon made.
    """
    path = run_dir / name
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise LaunchError(f"{path} is not a directory; remove it")
    if user is not None:
        os.chmod(run_dir, 0o711)
        if state_dir is not None and run_dir.parent == state_dir:
            os.chmod(state_dir, 0o711)
        blocked = _reachable(run_dir, user)
        if blocked is not None:
            raise LaunchError(
                f"the emulator's user {user.name!r} cannot reach {run_dir}: {blocked} is not "
                "searchable by it (chmod o+x it, or set driver.run_dir elsewhere)"
            )
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
    os.chmod(path, 0o700)
    for stale in (MONITOR_SOCKET, CONTROL_SOCKET, STDERR_LOG):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / stale)
    return path


#: ``PATH`` of an emulator run as another user (libvirt's choice too).
_EMULATOR_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def emulator_env(user: QemuUser, home: Path) -> dict[str, str]:
    """The whole environment of an emulator run as ``user``: none of the
    daemon's, which that user could read in ``/proc/PID/environ`` (a token
    exported for the CLI, credentials), as libvirt clears QEMU's."""
    return {
        "PATH": _EMULATOR_PATH,
        "LC_ALL": "C",
        "HOME": str(home),
        "USER": user.name,
        "LOGNAME": user.name,
    }


def _spawn(
    argv: list[str], log_path: Path, user: QemuUser | None, pass_fds: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    log_fd = os.open(
        log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            cwd=log_path.parent,
            env=None if user is None else emulator_env(user, log_path.parent),
            start_new_session=True,
            pass_fds=pass_fds,
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else [],
        )
    finally:
        os.close(log_fd)


def _log_tail(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - _LOG_TAIL), os.SEEK_SET)
        return os.read(fd, _LOG_TAIL).decode(errors="replace").strip()
    finally:
        os.close(fd)


async def launch(
    spec: LaunchSpec,
    *,
    run_dir: Path,
    user: QemuUser | None = None,
    on_spawn: Callable[[QemuProcess], Awaitable[None]] | None = None,
    startup_timeout: float = 10.0,
) -> QemuProcess:
    """Start the emulator and return when its QMP socket accepts connections.

    ``run_dir`` is the domain's own directory (:func:`prepare_domain_dir`); its
    stderr goes to ``run_dir/stderr.log``. With ``user``, the emulator runs as
    that account (dropped before ``exec``; no supplementary groups).

    ``on_spawn(proc)`` runs as soon as the process exists (to record its pid):
    until it returns, nothing cancels the launch, so a cancelled start never
    leaves an emulator no record names. Whatever fails after the spawn kills
    the emulator.

    Raises:
        LaunchError: the emulator could not run or exited (its stderr is in
            the message), or its socket did not accept within ``startup_timeout``.
    """
    argv = build_argv(spec)
    name = Path(argv[0]).name
    log_path = run_dir / STDERR_LOG
    with trio.CancelScope(shield=True):
        try:
            child = await trio.to_thread.run_sync(_spawn, argv, log_path, user, spec.disk_fds)
        except OSError as exc:
            raise LaunchError(f"cannot run {argv[0]}: {exc}", argv=argv) from None
        _children[child.pid] = child
        try:
            proc = QemuProcess(
                child.pid, os.pidfd_open(child.pid), procfs.read_stat(child.pid).start_ticks
            )
        except BaseException:
            child.kill()
            child.wait()
            del _children[child.pid]
            raise
        try:
            if on_spawn is not None:
                await on_spawn(proc)
        except BaseException:
            await proc.kill(grace=0)
            proc.close()
            raise
    try:
        with trio.move_on_after(startup_timeout) as scope:
            while True:
                if proc.exited():
                    err = _log_tail(log_path)
                    status = proc.returncode
                    raise LaunchError(
                        f"{name} exited with status {status} before its monitor was ready: {err}",
                        argv=argv,
                        stderr=err,
                    )
                try:
                    sock = await trio.open_unix_socket(spec.qmp_path)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                        raise LaunchError(f"cannot connect to {spec.qmp_path}: {exc}") from None
                    await trio.sleep(_SOCKET_POLL)
                    continue
                await sock.aclose()
                break
        if scope.cancelled_caught:
            raise LaunchError(f"no QMP socket at {spec.qmp_path} within {startup_timeout:g} s")
    except BaseException:
        with trio.CancelScope(shield=True):
            await proc.kill(grace=0)
        proc.close()
        raise
    return proc
