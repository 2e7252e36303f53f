"""The simulator as a process: start-up, ``-daemonize``, pidfile, signals.

``-daemonize`` works as QEMU's: the process forks *before* Trio starts; the
parent waits on a pipe and exits 0 only once the child has written its
pidfile and bound its sockets (or exits 1 with the child's error). The child
calls ``setsid``, points stdin/stdout/stderr at ``/dev/null`` and changes to
``/``, then serves.

SIGTERM, SIGINT and SIGHUP end the process as they end QEMU: a line
``terminating on signal N`` on stderr, SHUTDOWN (``host-signal``) to a
negotiated client, the socket and pidfile removed, exit status 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final, NoReturn

import trio

from .._util import raise_unwrapped, tune_gc
from ._control import ControlServer
from ._options import (
    PROG,
    USAGE,
    ManyOptions,
    SimOptions,
    UsageError,
    VMConfig,
    parse_many_args,
    parse_qemu_args,
)
from ._unix import unlink_if_ours
from ._vm import SimulatedVM

__all__ = ["VERSION_TEXT", "main", "open_simulated_vm"]

VERSION_TEXT: Final = (
    "QEMU emulator version 7.2.0 (trioctl-sim)\n"
    "A simulator: no guest code runs. See docs/simulator.md."
)
_READY: Final = b"ok"
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StartupError(Exception):
    """The simulator cannot start (pidfile, socket); ``str(exc)`` is the
    QEMU-style message without the program name."""


class _Ready:
    """Tells whoever waits that the simulator serves: nothing in the
    foreground; in a daemon, detach stdio and release the waiting parent."""

    def __init__(self, pipe_fd: int | None) -> None:
        self._fd = pipe_fd

    def __call__(self) -> None:
        if self._fd is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.chdir("/")
        self._report(_READY)

    def fail(self, message: str) -> None:
        if self._fd is not None:
            self._report(message.encode("utf-8", errors="replace"))
        else:
            print(message, file=sys.stderr)

    def _report(self, data: bytes) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, data)
            os.close(fd)


class _Pidfile:
    """QEMU's pidfile: created mode 0600, locked while we run, holds
    ``"PID\\n"``, removed at a clean exit."""

    def __init__(self, path: str) -> None:
        self._path = os.path.abspath(path)
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        except OSError as exc:
            raise StartupError(
                f"cannot create PID file: Could not create '{path}': {exc.strerror}"
            ) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._inode = os.fstat(fd).st_ino
        except OSError as exc:
            os.close(fd)
            raise StartupError(
                f"cannot create PID file: Cannot lock pid file: {exc.strerror}"
            ) from None
        self._fd = fd

    def remove(self) -> None:
        unlink_if_ours(self._path, self._inode)
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _crash_process(code: int) -> NoReturn:
    """A ``crash`` fault: die at once, no SHUTDOWN, nothing cleaned up."""
    os._exit(code)


async def _watch_signals(
    vms: Sequence[SimulatedVM],
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            print(f"{PROG}: terminating on signal {signum}", file=sys.stderr, flush=True)
            async with trio.open_nursery() as nursery:
                for vm in vms:
                    try:
                        vm.terminate_nowait()
                    except trio.WouldBlock:
                        nursery.start_soon(vm.terminate)
            done.set()
            return


def _bind(server: SimulatedVM | ControlServer, path: str, option: str | None) -> None:
    """``server.bind()``; with an ``option``, an error is a StartupError naming it."""
    if option is None:
        server.bind()
        return
    try:
        server.bind()
    except OSError as exc:
        raise StartupError(
            f"{option}: Failed to bind socket to {path}: {exc.strerror or exc}"
        ) from None


@asynccontextmanager
async def _serving_one(
    vm: SimulatedVM, control_path: str | None, *, startup: bool
) -> AsyncIterator[trio.Nursery]:
    """Bind ``vm`` (not run it) and a control socket for it at ``control_path``
    (if given), serve the control socket while the block lasts, in the nursery
    yielded; then cancel the nursery and close both. An exception of the body
    comes out bare.

    Raises:
        StartupError: (``startup``) a socket could not be bound.
        OSError: (not ``startup``) the same.
    """
    qmp_path = vm.config.qmp_path
    control: ControlServer | None = None
    try:
        _bind(vm, qmp_path, f"-qmp unix:{qmp_path},server=on,wait=off" if startup else None)
        if control_path is not None:
            control = ControlServer(control_path, {}, single=vm)
            _bind(control, control_path, "-sim-control" if startup else None)
        async with trio.open_nursery() as nursery:
            if control is not None:
                await nursery.start(control.serve)
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_unwrapped(group)
    finally:
        vm.close()
        if control is not None:
            control.close()


@asynccontextmanager
async def open_simulated_vm(
    config: VMConfig, *, control_path: str | None = None
) -> AsyncIterator[SimulatedVM]:
    """Run one simulated VM inside this Trio run (no process of its own).

    A ``crash`` fault ends only the VM. Signals are not handled (that is the
    process's job). On exit the VM is stopped and its socket file removed.

    Args:
        config: the VM.
        control_path: if given, also serve a control socket there.

    Raises:
        OSError: a socket could not be bound.
    """
    vm = SimulatedVM(config)
    async with _serving_one(vm, control_path, startup=False) as nursery:
        await nursery.start(vm.run)
        yield vm


async def serve_single(options: SimOptions, ready: Callable[[], None]) -> int:
    """Run one VM in this process until it ends; return the exit status.

    Raises:
        StartupError: the pidfile or a socket could not be set up.
    """
    vm = SimulatedVM(options.vm, on_crash=_crash_process)
    pidfile = None if options.pidfile is None else _Pidfile(options.pidfile)
    try:
        async with _serving_one(vm, options.control_path, startup=True) as nursery:
            await nursery.start(_watch_signals, [vm], trio.Event())
            ready()
            return await vm.run()
    finally:
        if pidfile is not None:
            pidfile.remove()


async def serve_many(options: ManyOptions, ready: Callable[[], None]) -> int:
    """Run ``options.count`` VMs in this process until a signal ends it.

    Raises:
        StartupError: the pidfile or a socket could not be set up.
    """
    try:
        os.makedirs(options.dir, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"--dir {options.dir}: {exc.strerror or exc}") from None
    vms = {name: SimulatedVM(options.vm_config(name)) for name in options.vm_names()}
    if options.vm_dirs:
        for name in vms:
            try:
                os.makedirs(os.path.join(options.dir, name), mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"--dir {options.dir}/{name}: {exc.strerror or exc}") from None
    control = ControlServer(options.control_path, vms)
    pidfile = None if options.pidfile is None else _Pidfile(options.pidfile)
    try:
        for vm in vms.values():
            _bind(vm, vm.config.qmp_path, f"many: {vm.name}")
        _bind(control, options.control_path, "many: control")
        async with trio.open_nursery() as nursery:
            done = trio.Event()
            await nursery.start(_watch_signals, list(vms.values()), done)
            for vm in vms.values():
                nursery.start_soon(vm.run)
            await nursery.start(control.serve)
            ready()
            await done.wait()
            nursery.cancel_scope.cancel()
        return 0
    finally:
        for vm in vms.values():
            vm.close()
        control.close()
        if pidfile is not None:
            pidfile.remove()


def _run(serve: Callable[[Callable[[], None]], Awaitable[int]], daemonize: bool) -> int:
    if not daemonize:
        try:
            return trio.run(serve, _Ready(None))
        except StartupError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        chunks: list[bytes] = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        os.close(read_fd)
        report = b"".join(chunks)
        if report == _READY:
            return 0
        message = report.decode("utf-8", errors="replace")
        print(message or f"{PROG}: the simulator exited during start-up", file=sys.stderr)
        return 1
    # The child never returns into the caller's stack.
    code = 1
    ready = _Ready(write_fd)
    try:
        os.close(read_fd)
        os.setsid()
        code = trio.run(serve, ready)
    except StartupError as exc:
        ready.fail(f"{PROG}: {exc}")
    except BaseException:
        ready.fail(f"{PROG}: internal error:\n{traceback.format_exc()}")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``trioctl-sim`` command (``python -m trioctl.sim``); returns the
    exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["many"]:
            many = parse_many_args(args[1:])
            tune_gc()  # thousands of VMs in one process: see GC_THRESHOLDS
            return _run(lambda ready: serve_many(many, ready), many.daemonize)
        options = parse_qemu_args(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if options.show == "help":
        print(USAGE, end="")
        return 0
    if options.show == "version":
        print(VERSION_TEXT)
        return 0
    return _run(lambda ready: serve_single(options, ready), options.daemonize)
