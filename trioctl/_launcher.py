"""Start, watch and stop QEMU (real or simulated) processes.

QEMU is started daemonized (``-daemonize``): the command returns once QEMU has
bound its QMP socket and written its pidfile, and the VM is then *not our
child*. It outlives the daemon, as under libvirt, and is reconnected after a
restart. Since we cannot ``waitpid`` a process that is not our child, and this
machine's init reaps orphans slowly (1.5-2 s), exit is watched through a pidfd
(``os.pidfd_open``), which becomes readable the moment the process exits.
Signals go through the pidfd too, so a recycled pid is never signalled.

The argument list is built here and passed to ``exec`` directly, never
through a shell. The same argument list starts real QEMU and the simulator
(``python -m trioctl.sim``), which accepts the subset of QEMU's command line
used here.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

import attrs
import trio

from ._errors import LaunchError
from ._models import Disk, Nic

__all__ = [
    "DEFAULT_QEMU",
    "LaunchSpec",
    "QemuProcess",
    "build_argv",
    "emulator_argv",
    "launch",
    "qemu_opt",
]

#: The real QEMU binary (Debian package qemu-system-x86).
DEFAULT_QEMU: Final = "qemu-system-x86_64"

_SOCKET_POLL = 0.005
_STOPPED_POLL = 0.02


def emulator_argv(emulator: str) -> list[str]:
    """The argv prefix for an emulator name: ``sim``, ``qemu`` or a path.

    The simulator runs in Python's isolated mode (``-I``): ``-m`` alone would
    put the current directory first on ``sys.path``, so a ``trioctl``
    package there would run as the daemon's user (root), and ``PYTHON*``
    variables would be obeyed too. It must be importable from the
    interpreter's own ``sys.path`` (an installed package, as usual).
    """
    if emulator == "sim":
        return [sys.executable, "-I", "-m", "trioctl.sim"]
    if emulator == "qemu":
        return [shutil.which(DEFAULT_QEMU) or DEFAULT_QEMU]
    return [emulator]


@attrs.frozen
class LaunchSpec:
    """Everything needed to start one VM process."""

    name: str
    qmp_path: str
    pidfile: str
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
        # JSON syntax: no escaping to get wrong, and ``backing: null`` (the
        # dotted syntax can only name a node): a qcow2 image's backing file,
        # a path in the image's header, is never opened. The format is
        # always given, never probed.
        file: dict[str, object] = {
            "driver": "file",
            "node-name": f"{node}-file",
            "filename": disk.path,
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
        "-pidfile",
        spec.pidfile,
        "-daemonize",
    ]
    if spec.paused:
        argv.append("-S")
    if spec.sim_control_path is not None and spec.emulator == "sim":
        argv += ["-sim-control", f"unix:{qemu_opt(spec.sim_control_path)}"]
    argv += _device_argv(spec)
    argv += spec.extra_args
    return argv


class QemuProcess:
    """A running VM process watched through a pidfd (it is not our child).

    Use :meth:`attach` to watch an existing pid and :meth:`close` when done.
    """

    def __init__(self, pid: int, pidfd: int, start_ticks: int) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        """The process's start time in clock ticks since boot (``/proc``):
        with the pid, it identifies the process across a daemon restart."""
        self._pidfd = pidfd
        self._watch_done: trio.Event | None = None

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
            ticks = _start_ticks(pid)
            if start_ticks is not None and ticks != start_ticks:
                raise ProcessLookupError(f"pid {pid} now belongs to another process")
        except BaseException:
            os.close(pidfd)
            raise
        return cls(pid, pidfd, ticks)

    def __repr__(self) -> str:
        return f"<QemuProcess pid={self.pid}>"

    def exited(self) -> bool:
        """True once the process has exited (a zombie counts as exited)."""
        if self._pidfd < 0:
            return True
        # poll(), not select(): a daemon with thousands of domains has pidfds
        # numbered past select()'s limit of 1024.
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def stopped(self) -> bool:
        """True if the process is stopped (SIGSTOP: state ``T`` in /proc)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rindex(")") + 2] in "Tt" and not self.exited()

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


def _start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 22 (starttime); fields after the ")" that closes the command name.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


async def launch(spec: LaunchSpec, *, startup_timeout: float = 10.0) -> QemuProcess:
    """Start a daemonized VM and return when its QMP socket is ready.

    Raises:
        LaunchError: the emulator failed (its stderr is in the message), or the
            pidfile or socket did not appear within ``startup_timeout``.
    """
    argv = build_argv(spec)
    for stale in (spec.qmp_path, spec.pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    name = Path(argv[0]).name
    # Until we hold a pidfd for the daemonized emulator, a cancellation would
    # orphan it: this part is shielded, and bounded by startup_timeout.
    with trio.CancelScope(shield=True):
        with trio.move_on_after(startup_timeout) as scope:
            try:
                result = await trio.run_process(
                    argv,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                )
            except OSError as exc:
                raise LaunchError(f"cannot run {argv[0]}: {exc}", argv=argv) from None
        if scope.cancelled_caught:
            raise LaunchError(f"{name} did not daemonize within {startup_timeout:g} s", argv=argv)
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise LaunchError(
                f"{name} exited with status {result.returncode}: {err}", argv=argv, stderr=err
            )
        try:
            pid = int((await trio.Path(spec.pidfile).read_text()).strip())
            proc = QemuProcess.attach(pid)
        except (OSError, ValueError) as exc:
            raise LaunchError(f"no usable pidfile at {spec.pidfile}: {exc}") from None
    try:
        with trio.move_on_after(startup_timeout) as scope:
            while not await trio.Path(spec.qmp_path).exists():
                if proc.exited():
                    raise LaunchError(f"{name} exited before its monitor was ready")
                await trio.sleep(_SOCKET_POLL)
        if scope.cancelled_caught:
            raise LaunchError(f"no QMP socket at {spec.qmp_path} within {startup_timeout:g} s")
    except BaseException:
        with trio.CancelScope(shield=True):
            await proc.kill(grace=0)
        proc.close()
        raise
    return proc
