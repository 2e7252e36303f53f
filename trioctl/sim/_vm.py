"""One simulated VM: its run state, its QMP server and its faults.

Cost while idle, which is what lets one process hold thousands of VMs: one
listening socket and one task parked in ``accept``. A connected client adds a
reader task and a memory channel; a pending guest power-off adds a timer task.

Like QEMU, a VM serves one QMP client at a time: the next connection stays in
the listen backlog (its ``connect`` succeeds) and gets its greeting when the
current client goes away. Every connection starts un-negotiated.

Replies are produced in order by the client's processing loop; the events a
command causes are written before its reply, as QEMU 7.2 does. Events reach
only a negotiated client; with no client they are lost, as with QEMU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal

import attrs
import trio

from ._json import InputTooLarge, JsonStreamParser, ParsedValue, ParseFailure
from ._options import VMConfig
from ._qmp import (
    QMP_VERSION,
    ArgSpec,
    QmpError,
    check_arguments,
    encode,
    error_message,
    event_message,
    greeting,
    parse_request,
    request_id,
    return_message,
)
from ._unix import listen_unix, unlink_if_ours

__all__ = [
    "FAULT_MODES",
    "GARBAGE",
    "MAX_INPUT",
    "Fault",
    "FaultMode",
    "SimulatedVM",
    "VMState",
]

FaultMode = Literal["none", "hang", "slow", "drop", "garbage", "crash"]
FAULT_MODES: Final[tuple[FaultMode, ...]] = ("none", "hang", "slow", "drop", "garbage", "crash")

#: Unfinished plus queued input a client may have pending before it is dropped.
MAX_INPUT: Final = 10 * 1024 * 1024
#: What the ``garbage`` fault writes: not JSON, ends with a line break, and
#: starts with bytes a JSON lexer rejects at once, so that both line-based and
#: streaming readers can resynchronise after it.
GARBAGE: Final = b"\xff\xfe\x00 trioctl-sim: injected garbage, not JSON }{\r\n"
#: How long after ``system_powerdown`` the simulated guest powers off.
GUEST_SHUTDOWN_DELAY: Final = 0.1
_BACKLOG: Final = 16
_RECEIVE_SIZE: Final = 65536
_GREETING: Final = encode(greeting())
_DEFAULT_SLOW_DELAY: Final = 1.0
_SHUTDOWN_EVENT_TIMEOUT: Final = 1.0

_After = Callable[[], Awaitable[None]] | None


@attrs.frozen
class Fault:
    """The lasting fault of a VM's QMP side: ``none``, ``hang`` or ``slow``
    (``drop``, ``garbage`` and ``crash`` act once and leave it unchanged)."""

    mode: Literal["none", "hang", "slow"] = "none"
    delay: float = 0.0
    """For ``slow``: seconds every reply waits."""

    def to_json(self) -> dict[str, Any]:
        return (
            {"mode": self.mode, "delay": self.delay} if self.mode == "slow" else {"mode": self.mode}
        )


_NO_FAULT: Final = Fault()


@attrs.frozen
class VMState:
    """A snapshot of one VM, as ``x-trioctl-sim-state`` reports it."""

    name: str | None
    status: str
    """QMP run state: ``running``, ``paused``, ``prelaunch``; ``shutdown`` once
    it ended normally, ``crashed`` once a ``crash`` fault ended it."""
    alive: bool
    fault: Fault
    connected: bool
    """A QMP client is being served (negotiated or not)."""
    negotiated: bool
    pid: int = attrs.field(factory=os.getpid)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "alive": self.alive,
            "fault": self.fault.to_json(),
            "connected": self.connected,
            "negotiated": self.negotiated,
            "pid": self.pid,
        }


class _Client:
    """One QMP connection."""

    __slots__ = ("broken", "lock", "negotiated", "queued_bytes", "scope", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.lock = trio.Lock()
        self.negotiated = False
        self.broken = False
        self.queued_bytes = 0

    async def send(self, data: bytes) -> None:
        """Write ``data``; a peer that went away is not an error (QEMU does not
        mind either), later writes are skipped."""
        if self.broken:
            return
        if not self.lock.locked():
            # The usual case: nothing queued, and the socket takes it all at
            # once (no checkpoint; the processing loop's next receive is one).
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.broken = True
                return
            if sent == len(data):
                return
            data = data[sent:]
        async with self.lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True


@attrs.frozen
class _Command:
    method: str
    args: Mapping[str, ArgSpec] = {}


_FAULT_ARGS: Final = {
    "mode": ArgSpec("string", required=True, choices=FAULT_MODES),
    "delay": ArgSpec("number"),
    "exit-code": ArgSpec("integer"),
}

# Name -> handler, in the order query-commands lists them.
_COMMANDS: Final[dict[str, _Command]] = {
    "qmp_capabilities": _Command("_cmd_qmp_capabilities", {"enable": ArgSpec("array")}),
    "query-status": _Command("_cmd_query_status"),
    "stop": _Command("_cmd_stop"),
    "cont": _Command("_cmd_cont"),
    "system_reset": _Command("_cmd_system_reset"),
    "system_powerdown": _Command("_cmd_system_powerdown"),
    "quit": _Command("_cmd_quit"),
    "query-version": _Command("_cmd_query_version"),
    "query-name": _Command("_cmd_query_name"),
    "query-cpus-fast": _Command("_cmd_query_cpus_fast"),
    "query-commands": _Command("_cmd_query_commands"),
    "x-trioctl-sim-fault": _Command("_cmd_fault", _FAULT_ARGS),
}


def check_fault_arguments(arguments: Mapping[str, Any]) -> tuple[FaultMode, float, int]:
    """Validate ``x-trioctl-sim-fault``'s arguments (without ``vm``).

    Returns:
        ``(mode, delay, exit_code)`` with defaults filled in.

    Raises:
        QmpError: ``GenericError`` with QEMU-style wording.
    """
    check_arguments(arguments, _FAULT_ARGS)
    mode: FaultMode = arguments["mode"]
    delay = float(arguments.get("delay", _DEFAULT_SLOW_DELAY))
    if not 0 <= delay < math.inf:
        raise QmpError("GenericError", "Parameter 'delay' expects a non-negative number")
    exit_code = arguments.get("exit-code", 1)
    if not 0 <= exit_code <= 255:
        raise QmpError("GenericError", "Parameter 'exit-code' expects a value from 0 to 255")
    return mode, delay, exit_code


class SimulatedVM:
    """A simulated QEMU VM serving QMP on a UNIX socket.

    Call :meth:`bind`, then run :meth:`run` in a nursery (or use
    :func:`open_simulated_vm`). The VM ends on ``quit``, on a guest power-off,
    on :meth:`terminate`, or on a ``crash`` fault.

    Args:
        config: what the VM shows.
        on_crash: called with the exit code for a ``crash`` fault. The
            one-VM-per-process simulator passes a function that ends the
            process at once (``os._exit``), so the crash is real: no SHUTDOWN,
            the socket and pidfile stay behind. Without it only this VM dies:
            its connection and listening socket close and the socket file is
            removed.
    """

    __slots__ = (
        "_changed",
        "_client",
        "_config",
        "_crashed",
        "_exit_code",
        "_fault",
        "_inode",
        "_listener",
        "_nursery",
        "_on_crash",
        "_path",
        "_powerdown_pending",
        "_status",
    )

    def __init__(
        self, config: VMConfig, *, on_crash: Callable[[int], object] | None = None
    ) -> None:
        self._config = config
        self._on_crash = on_crash
        self._status = "prelaunch" if config.paused else "running"
        self._fault = _NO_FAULT
        self._client: _Client | None = None
        self._listener: trio.socket.SocketType | None = None
        self._path = os.path.abspath(config.qmp_path)
        self._inode: int | None = None
        self._nursery: trio.Nursery | None = None
        self._changed: trio.Event | None = None
        self._exit_code: int | None = None
        self._crashed = False
        self._powerdown_pending = False

    def __repr__(self) -> str:
        return f"<SimulatedVM {self._config.name!r} {self._status} at {self._config.qmp_path!r}>"

    @property
    def config(self) -> VMConfig:
        return self._config

    @property
    def name(self) -> str | None:
        return self._config.name

    @property
    def alive(self) -> bool:
        """Bound and not ended yet."""
        return self._listener is not None and self._exit_code is None

    @property
    def crash_ends_process(self) -> bool:
        """Whether a ``crash`` fault ends the whole process (``on_crash``)."""
        return self._on_crash is not None

    @property
    def connected(self) -> bool:
        """A QMP client is being served (as in :meth:`state`)."""
        return self._client is not None

    @property
    def exit_code(self) -> int | None:
        """How the VM ended (``None`` while it runs)."""
        return self._exit_code

    def state(self) -> VMState:
        """A snapshot of the VM (never blocks, whatever the fault)."""
        client = self._client
        if self._crashed:
            status = "crashed"
        elif self._exit_code is not None:
            status = "shutdown"
        else:
            status = self._status
        return VMState(
            name=self._config.name,
            status=status,
            alive=self.alive,
            fault=self._fault,
            connected=client is not None,
            negotiated=client is not None and client.negotiated,
        )

    # -- life cycle -----------------------------------------------------------------

    def bind(self) -> None:
        """Listen on the QMP socket. A stale socket file there is replaced
        (QEMU does the same); any other file is left alone.

        Synchronous on purpose: binding a UNIX socket is a quick local
        operation, and trio's ``bind`` would hop to a thread for each of
        thousands of VMs.

        Raises:
            OSError: the socket cannot be bound (``strerror`` says why).
            RuntimeError: already bound, or the VM has ended.
        """
        if self._listener is not None or self._exit_code is not None:
            raise RuntimeError("the VM is already bound or has ended")
        self._listener, self._inode = listen_unix(self._config.qmp_path, _BACKLOG)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Serve QMP until the VM ends; then close and remove the socket.

        Returns:
            The exit code QEMU would have: 0 after ``quit``, a guest power-off
            or :meth:`terminate`, the fault's code after a ``crash``.

        Raises:
            RuntimeError: :meth:`bind` was not called, or the VM already ran.
        """
        if self._listener is None:
            raise RuntimeError("bind() the VM before running it")
        if self._nursery is not None or self._exit_code is not None:
            raise RuntimeError("the VM already ran")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._accept_loop(self._listener)
        finally:
            self._nursery = None
            self._notify()
            self.close()
        assert self._exit_code is not None
        return self._exit_code

    def close(self) -> None:
        """Close the listening socket and remove its file (if it is still
        ours). Idempotent; :meth:`run` does it on its way out."""
        if self._exit_code is None:
            self._exit_code = 0
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.close()
        self._unlink()

    def _unlink(self) -> None:
        inode, self._inode = self._inode, None
        unlink_if_ours(self._path, inode)

    async def terminate(self) -> None:
        """End the VM as QEMU does on SIGTERM: a negotiated client gets
        SHUTDOWN (``host-signal``) unless the QMP side hangs; exit code 0."""
        try:
            self.terminate_nowait()
        except trio.WouldBlock:
            pass
        else:
            return
        if self._fault.mode != "hang":
            with trio.move_on_after(_SHUTDOWN_EVENT_TIMEOUT):
                await self._emit("SHUTDOWN", {"guest": False, "reason": "host-signal"})
        self._finish(0)

    def terminate_nowait(self) -> None:
        """:meth:`terminate` when no SHUTDOWN event has to be written.

        Raises:
            trio.WouldBlock: a negotiated client is waiting for SHUTDOWN; use
                :meth:`terminate`.
        """
        if not self.alive:
            return
        client = self._client
        if client is not None and client.negotiated and self._fault.mode != "hang":
            raise trio.WouldBlock
        self._finish(0)

    def inject_fault(self, mode: FaultMode, *, delay: float = 1.0, exit_code: int = 1) -> None:
        """Apply a fault now (the control socket's way; the QMP command
        applies it after its reply).

        ``hang``/``slow``/``none`` set the lasting fault; ``drop`` closes the
        current connection, ``garbage`` writes :data:`GARBAGE` to it (both do
        nothing without a client); ``crash`` ends the VM (see ``on_crash``).
        """
        if mode == "drop":
            if self._client is not None:
                self._client.scope.cancel()
        elif mode == "garbage":
            if self._client is not None and self._nursery is not None:
                self._nursery.start_soon(self._client.send, GARBAGE)
        elif mode == "crash":
            self._crash(exit_code)
        elif mode == "slow":
            self._set_fault(Fault("slow", delay))
        elif mode == "hang":
            self._set_fault(Fault("hang"))
        else:
            self._set_fault(_NO_FAULT)

    # -- internals --------------------------------------------------------------------

    def _set_fault(self, fault: Fault) -> None:
        self._fault = fault
        self._notify()

    def _notify(self) -> None:
        """Wake whoever waits for a change of fault or run state."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _finish(self, code: int) -> None:
        if self._exit_code is None:
            self._exit_code = code
        # The socket file goes first, so a client that sees EOF finds it gone;
        # the listening descriptor stays open until run() leaves.
        self._unlink()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _crash(self, code: int) -> None:
        if self._on_crash is not None:
            self._on_crash(code)
        self._crashed = True
        self._finish(code)

    async def _gate(self) -> None:
        """Where a hung or slow QMP side waits before each reply."""
        while self._fault.mode == "hang":
            await self._wait_change()
        if self._fault.mode == "slow":
            await trio.sleep(self._fault.delay)

    async def _emit(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        client = self._client
        if client is not None and client.negotiated:
            await client.send(encode(event_message(name, data)))

    async def _accept_loop(self, listener: trio.socket.SocketType) -> None:
        while True:
            sock, _ = await listener.accept()
            await self._serve_client(trio.SocketStream(sock))

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        client = _Client(stream)
        self._client = client
        try:
            with client.scope:
                async with trio.open_nursery() as nursery:
                    send, receive = trio.open_memory_channel[ParsedValue | ParseFailure](math.inf)
                    nursery.start_soon(self._read_loop, client, send)
                    await self._process_loop(client, receive)
                    nursery.cancel_scope.cancel()
        finally:
            self._client = None
            await trio.aclose_forcefully(stream)

    async def _read_loop(
        self, client: _Client, send: trio.MemorySendChannel[ParsedValue | ParseFailure]
    ) -> None:
        """Read and parse input, whatever the processing loop is doing (so a
        hung VM keeps reading, like a process whose socket buffer is drained)."""
        parser = JsonStreamParser(MAX_INPUT)
        fd = client.stream.socket.fileno()
        async with send:
            while True:
                # The descriptor itself: the stream's receive_some costs two
                # checkpoints more per read, with 5,000 VMs in one process.
                try:
                    await trio.lowlevel.wait_readable(fd)
                    data = os.read(fd, _RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                try:
                    items = parser.feed(data)
                except InputTooLarge:
                    client.scope.cancel()
                    return
                for item in items:
                    client.queued_bytes += item.size
                    send.send_nowait(item)
                if client.queued_bytes + parser.pending_bytes > MAX_INPUT:
                    client.scope.cancel()
                    return

    async def _process_loop(
        self, client: _Client, receive: trio.MemoryReceiveChannel[ParsedValue | ParseFailure]
    ) -> None:
        await self._gate()
        await client.send(_GREETING)
        async with receive:
            async for item in receive:
                client.queued_bytes -= item.size
                await self._gate()
                await self._handle(client, item)

    async def _handle(self, client: _Client, item: ParsedValue | ParseFailure) -> None:
        if isinstance(item, ParseFailure):
            await client.send(encode(error_message("GenericError", item.desc)))
            return
        rid = request_id(item.value)
        try:
            request = parse_request(item.value)
            if not client.negotiated and request.name != "qmp_capabilities":
                raise QmpError(
                    "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"
                )
            command = _COMMANDS.get(request.name)
            if command is None:
                raise QmpError("CommandNotFound", f"The command {request.name} has not been found")
            check_arguments(request.arguments, command.args)
            handler: Callable[[_Client, dict[str, Any]], Awaitable[tuple[Any, _After]]]
            handler = getattr(self, command.method)
            result, after = await handler(client, request.arguments)
        except QmpError as exc:
            await client.send(encode(error_message(exc.error_class, exc.desc, rid)))
            return
        await client.send(encode(return_message(result, rid)))
        if after is not None:
            await after()

    async def _guest_powerdown(self) -> None:
        """The simulated guest reacts to the ACPI power button once it runs."""
        try:
            while True:
                while not self._guest_runs():
                    await self._wait_change()
                await trio.sleep(GUEST_SHUTDOWN_DELAY)
                if self._guest_runs():
                    break
            await self._emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            self._finish(0)
        finally:
            self._powerdown_pending = False

    def _guest_runs(self) -> bool:
        return self._status == "running" and self._fault.mode != "hang"

    def _set_status(self, status: str) -> None:
        self._status = status
        self._notify()

    # -- commands: each returns (result, action to run after the reply) ---------------

    async def _cmd_qmp_capabilities(
        self, client: _Client, args: dict[str, Any]
    ) -> tuple[Any, _After]:
        for capability in args.get("enable", []):
            if capability != "oob":
                raise QmpError(
                    "GenericError", f"Parameter 'enable' does not accept value '{capability}'"
                )
        if client.negotiated:
            raise QmpError(
                "CommandNotFound", "Capabilities negotiation is already complete, command ignored"
            )
        client.negotiated = True
        return {}, None

    async def _cmd_query_status(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        status = self._status
        return {"status": status, "singlestep": False, "running": status == "running"}, None

    async def _cmd_stop(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        if self._status == "running":
            self._set_status("paused")
            await self._emit("STOP")
        return {}, None

    async def _cmd_cont(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        if self._status != "running":
            self._set_status("running")
            await self._emit("RESUME")
        return {}, None

    async def _cmd_system_reset(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        await self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        if self._status != "running":
            # QEMU 7.2: a reset of a VM that is not running leaves it in prelaunch.
            self._set_status("prelaunch")
        return {}, None

    async def _cmd_system_powerdown(
        self, client: _Client, args: dict[str, Any]
    ) -> tuple[Any, _After]:
        await self._emit("POWERDOWN")
        if (
            self._config.powerdown == "shutdown"
            and not self._powerdown_pending
            and self._nursery is not None
        ):
            self._powerdown_pending = True
            self._nursery.start_soon(self._guest_powerdown)
        return {}, None

    async def _cmd_quit(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        await self._emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})

        async def after() -> None:
            self._finish(0)

        return {}, after

    async def _cmd_query_version(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        return {"qemu": dict(QMP_VERSION["qemu"]), "package": QMP_VERSION["package"]}, None

    async def _cmd_query_name(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        name = self._config.name
        return ({} if name is None else {"name": name}), None

    async def _cmd_query_cpus_fast(
        self, client: _Client, args: dict[str, Any]
    ) -> tuple[Any, _After]:
        # QEMU 7.2's -machine none has no CPUs (and refuses -smp above 1).
        if self._config.machine == "none":
            return [], None
        smp = self._config.smp
        pid = os.getpid()
        cpus = [
            {
                "thread-id": pid + 1 + index,
                "props": smp.props(index),
                "qom-path": f"/machine/unattached/device[{2 * index}]",
                "cpu-index": index,
                "target": "x86_64",
            }
            for index in range(smp.cpus)
        ]
        return cpus, None

    async def _cmd_query_commands(
        self, client: _Client, args: dict[str, Any]
    ) -> tuple[Any, _After]:
        return [{"name": name} for name in _COMMANDS], None

    async def _cmd_fault(self, client: _Client, args: dict[str, Any]) -> tuple[Any, _After]:
        mode, delay, exit_code = check_fault_arguments(args)

        async def after() -> None:
            if mode == "drop":
                client.scope.cancel()
            elif mode == "garbage":
                await client.send(GARBAGE)
            else:
                self.inject_fault(mode, delay=delay, exit_code=exit_code)

        return {}, after
