"""The control socket: fault injection and state, outside QMP.

Line-delimited JSON, one request per line and one reply line per request; no
greeting, no negotiation; any number of clients at once. It runs in its own
tasks, so it answers while the QMP side hangs (not while the whole process is
SIGSTOPped, of course).

Requests look like QMP's: ``{"execute": NAME, "arguments"?: {...}, "id"?: ...}``;
replies are ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``,
with the id echoed. Commands:

* ``x-trioctl-sim-fault`` ``{"mode", "delay"?, "exit-code"?, "vm"?}``: as the
  QMP command, but applied at once, *before* the reply is written (so it holds
  when the caller reads the reply); only a crash that ends the process
  replies first.
* ``x-trioctl-sim-state`` ``{"vm"?}``: one VM's state; in many-VM mode without
  ``vm``, a summary (count, alive, connected).

``vm`` names the VM; it is required for faults in many-VM mode and optional
with a single VM (where it must then match ``-name``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Final

import trio

from .._errors import ConnectionLost, QmpCommandError
from ._qmp import (
    ArgSpec,
    QmpError,
    check_arguments,
    error_message,
    parse_request,
    request_id,
    return_message as _return_message,
)
from ._unix import listen_unix, unlink_if_ours
from ._vm import SimulatedVM, check_fault_arguments

__all__ = ["ControlServer", "control_request"]

#: The longest request line accepted.
MAX_LINE: Final = 1024 * 1024
_BACKLOG: Final = 64


class ControlServer:
    """Serves the control socket for one VM (``single``) or many (``vms``).

    Args:
        path: where to listen.
        vms: the VMs by name (many-VM mode).
        single: the one VM of a single-VM process.
    """

    def __init__(
        self,
        path: str,
        vms: Mapping[str, SimulatedVM],
        *,
        single: SimulatedVM | None = None,
    ) -> None:
        self._path = path
        self._abs_path = os.path.abspath(path)
        self._vms = vms
        self._single = single
        self._listener: trio.socket.SocketType | None = None
        self._inode: int | None = None

    def bind(self) -> None:
        """Listen (replacing a stale socket file).

        Raises:
            OSError: cannot bind.
        """
        self._listener, self._inode = listen_unix(self._path, _BACKLOG)

    def close(self) -> None:
        """Stop listening and remove the socket file (if still ours)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.close()
        unlink_if_ours(self._abs_path, self._inode)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept clients until cancelled.

        Raises:
            RuntimeError: :meth:`bind` was not called.
        """
        if self._listener is None:
            raise RuntimeError("bind() the control server first")
        listener = self._listener
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                sock, _ = await listener.accept()
                nursery.start_soon(self._serve_client, trio.SocketStream(sock))

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                buffer += data
                while (newline := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    if line.strip() and not await self._answer(stream, line):
                        return
                if len(buffer) > MAX_LINE:
                    reply = error_message("GenericError", f"request line over {MAX_LINE} bytes")
                    await _send(stream, reply)
                    return

    async def _answer(self, stream: trio.SocketStream, line: bytes) -> bool:
        """Answer one request line, then apply its effect. False: stop."""
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return await _send(stream, error_message("GenericError", f"JSON parse error, {exc}"))
        rid = request_id(value)
        try:
            request = parse_request(value)
            if request.name == "x-trioctl-sim-fault":
                vm_name, arguments = self._split_vm(request.arguments)
                mode, delay, exit_code = check_fault_arguments(arguments)
                vm = self._find(vm_name)
                if not vm.alive:
                    raise QmpError("GenericError", f"VM '{vm.name}' is not running")
                reply = _return_message({}, rid)
                if mode == "crash" and vm.crash_ends_process:
                    await _send(stream, reply)  # the reply first: nothing runs after
                    vm.inject_fault(mode, exit_code=exit_code)
                    return False
                # Applied before the reply, so the fault holds once the caller knows.
                vm.inject_fault(mode, delay=delay, exit_code=exit_code)
                return await _send(stream, reply)
            if request.name == "x-trioctl-sim-state":
                check_arguments(request.arguments, {"vm": ArgSpec("string")})
                vm_name = request.arguments.get("vm")
                if vm_name is None and self._single is None:
                    result = self._summary()
                else:
                    result = self._find(vm_name).state().to_json()
                return await _send(stream, _return_message(result, rid))
            raise QmpError("CommandNotFound", f"The command {request.name} has not been found")
        except QmpError as exc:
            return await _send(stream, error_message(exc.error_class, exc.desc, rid))

    def _split_vm(self, arguments: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        rest = dict(arguments)
        vm_name = rest.pop("vm", None)
        if vm_name is not None and not isinstance(vm_name, str):
            raise QmpError("GenericError", "Invalid parameter type for 'vm', expected: string")
        return vm_name, rest

    def _find(self, name: str | None) -> SimulatedVM:
        if self._single is not None:
            if name is not None and name != self._single.name:
                raise QmpError("GenericError", f"No VM named '{name}'")
            return self._single
        if name is None:
            raise QmpError("GenericError", "Parameter 'vm' is missing")
        vm = self._vms.get(name)
        if vm is None:
            raise QmpError("GenericError", f"No VM named '{name}'")
        return vm

    def _summary(self) -> dict[str, Any]:
        # Counted without a VMState per VM: a bench polls this every 0.1 s
        # while 5,000 VMs negotiate, and the snapshots were 7 % of the
        # process's CPU then.
        vms = self._vms.values()
        return {
            "count": len(vms),
            "alive": sum(1 for vm in vms if vm.alive),
            "connected": sum(1 for vm in vms if vm.connected),
            "pid": os.getpid(),
        }


async def _send(stream: trio.SocketStream, reply: Mapping[str, Any]) -> bool:
    try:
        await stream.send_all(json.dumps(reply).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def control_request(
    path: str, execute: str, arguments: Mapping[str, Any] | None = None
) -> Any:
    """Send one request to a simulator's control socket and return its result.

    Use a cancel scope to bound it.

    Raises:
        QmpCommandError: the simulator answered with an error.
        ConnectionLost: the socket closed before the reply.
        OSError: cannot connect.
    """
    request: dict[str, Any] = {"execute": execute}
    if arguments is not None:
        request["arguments"] = dict(arguments)
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(json.dumps(request).encode() + b"\n")
        buffer = bytearray()
        while b"\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionLost(f"control socket {path} closed before replying")
            buffer += data
    reply = json.loads(buffer[: buffer.index(b"\n")])
    if "error" in reply:
        raise QmpCommandError(execute, reply["error"]["class"], reply["error"]["desc"])
    return reply["return"]
