"""QMP (the QEMU Machine Protocol) without I/O: bytes in, events out.

This module follows h11's "bring your own I/O" interface::

    conn = QmpConnection()
    conn.receive_data(chunk)          # b"" means EOF
    while (event := conn.next_event()) is not NEED_DATA:
        ...                           # Greeting, Return, ErrorReply, Event, Closed
    cmd_id, wire = conn.send_command("query-status")

It never imports trio or socket. References are to QEMU's
``docs/interop/qmp-spec.rst`` (the "QMP spec"): the server greets first
(section 2.2), the client must negotiate capabilities with ``qmp_capabilities``
before any other command (section 4), replies carry back the client's ``id``
verbatim, whatever JSON value it was (section 2.4), and asynchronous events
carry a timestamp (section 2.5).

Connection states, in the only order they can occur::

    GREETING --greeting--> CAPABILITIES --negotiate()--> NEGOTIATING
        --{"return": {}} for the negotiation--> RUNNING
    (any state) --EOF or protocol error--> CLOSED

Commands may be sent from NEGOTIATING on, right behind ``qmp_capabilities``
without waiting for its reply (pipelined): QEMU reads a monitor's commands in
order and answers each before it reads the next, so the negotiation's reply
comes first and the command runs negotiated (checked against QEMU 7.2). If
the negotiation is refused, QEMU answers the pipelined command with
``CommandNotFound``; here the refusal closes the connection, so the command's
reply never comes and it fails with the refusal's RemoteProtocolError.

Anything the peer gets wrong (invalid JSON, a message of the wrong shape, a
line longer than ``max_line``, EOF inside a message, a refused negotiation)
raises :class:`~trioctl.RemoteProtocolError` and closes the connection. If
:meth:`QmpConnection.next_event` raises anything else, that is a bug.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any, Final, Literal, NoReturn

import attrs

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_LINE",
    "NEED_DATA",
    "Closed",
    "ErrorReply",
    "Event",
    "Greeting",
    "QmpConnection",
    "QmpMessage",
    "QmpState",
    "Return",
]

#: Longest line accepted from the peer: 10 MiB, as QEMU's own Python library.
MAX_LINE: Final = 10 * 1024 * 1024


class _NeedData(enum.Enum):
    """Sentinel: :meth:`QmpConnection.next_event` needs more bytes."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA


class QmpState(enum.Enum):
    GREETING = "greeting"  #: waiting for the server's greeting
    CAPABILITIES = "capabilities"  #: greeted; negotiate() not yet called
    NEGOTIATING = "negotiating"  #: qmp_capabilities sent, reply pending; commands may be sent
    RUNNING = "running"  #: negotiated; commands may be sent
    CLOSED = "closed"  #: EOF seen or the peer broke the protocol


@attrs.frozen
class Greeting:
    """The server's first message (QMP spec 2.2)."""

    version: tuple[int, int, int]
    """QEMU's (major, minor, micro)."""
    package: str
    capabilities: tuple[str, ...]


@attrs.frozen
class Return:
    """A successful reply (QMP spec 2.4.1). ``id`` is None if none was echoed."""

    id: Any
    value: Any


@attrs.frozen
class ErrorReply:
    """An error reply (QMP spec 2.4.2)."""

    id: Any
    error_class: str
    desc: str


@attrs.frozen
class Event:
    """An asynchronous event (QMP spec 2.5)."""

    name: str
    data: Mapping[str, Any]
    timestamp: float
    """Seconds since the epoch, from the event's seconds and microseconds."""


@attrs.frozen
class Closed:
    """The peer closed the connection cleanly (EOF between messages)."""


QmpMessage = Greeting | Return | ErrorReply | Event | Closed

_NEGOTIATION_ID: Final = "trioctl-negotiate"


class QmpConnection:
    """The client side of one QMP connection, without any I/O.

    Args:
        max_line: the longest line accepted from the peer, in bytes.
    """

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._scan_from = 0  # bytes of _buffer already known to hold no newline
        self._eof = False
        self._state = QmpState.GREETING
        self._error: str | None = None
        self._next_id = 0
        self.greeting: Greeting | None = None

    @property
    def state(self) -> QmpState:
        return self._state

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the peer; ``b""`` means EOF.

        Raises:
            LocalProtocolError: data after EOF was fed.
        """
        if self._eof:
            if data:
                raise LocalProtocolError("received data after EOF")
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> QmpMessage | Literal[_NeedData.NEED_DATA]:
        """Parse the next complete message, or return :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer broke QMP; the state is now CLOSED and
                every later call raises it again.
        """
        if self._state is QmpState.CLOSED:
            if self._error is None:
                return Closed()
            raise RemoteProtocolError(
                f"QMP connection closed after a protocol violation: {self._error}"
            )
        while True:
            newline = self._buffer.find(b"\n", self._scan_from)
            if newline < 0:
                if len(self._buffer) > self._max_line:
                    self._fail(f"line longer than {self._max_line} bytes")
                if self._eof:
                    if self._buffer.strip():
                        self._fail("EOF inside a message")
                    self._buffer.clear()
                    self._state = QmpState.CLOSED
                    return Closed()
                self._scan_from = len(self._buffer)
                return NEED_DATA
            if newline > self._max_line:
                self._fail(f"line longer than {self._max_line} bytes")
            if newline == len(self._buffer) - 1:  # the usual case: one whole line
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
            self._scan_from = 0
            if line.strip():
                return self._interpret(line)

    def _fail(self, why: str) -> NoReturn:
        self._state = QmpState.CLOSED
        self._buffer.clear()
        self._eof = True
        self._error = why
        raise RemoteProtocolError(f"QMP protocol violation: {why}")

    def _interpret(self, line: bytes) -> QmpMessage:
        try:
            # json.loads(line, parse_constant=..., parse_float=...) exactly,
            # without building a new decoder for every message.
            # QEMU's lines start with '{"': UTF-8 for detect_encoding, at once.
            encoding = "utf-8" if line.startswith(b'{"') else json.detect_encoding(line)
            msg = _DECODER.decode(line.decode(encoding, "surrogatepass"))
        except (ValueError, RecursionError, OverflowError):
            # UnicodeDecodeError is a ValueError; RecursionError from deep
            # nesting; Infinity, NaN and 1e400 are refused (ValueError).
            self._fail(f"invalid JSON: {line[:80]!r}")
        if not isinstance(msg, dict):
            self._fail(f"message is not a JSON object: {line[:80]!r}")
        if self._state is QmpState.GREETING:
            self.greeting = self._parse_greeting(msg)
            self._state = QmpState.CAPABILITIES
            return self.greeting
        if "event" in msg:
            return self._parse_event(msg)
        if "return" in msg:
            reply: Return | ErrorReply = Return(msg.get("id"), msg["return"])
        elif "error" in msg:
            err = msg["error"]
            if (
                not isinstance(err, dict)
                or not isinstance(err.get("class"), str)
                or not isinstance(err.get("desc"), str)
            ):
                self._fail(f"malformed error reply: {line[:80]!r}")
            reply = ErrorReply(msg.get("id"), err["class"], err["desc"])
        else:
            self._fail(f"unknown message: {line[:80]!r}")
        if self._state is QmpState.NEGOTIATING and reply.id == _NEGOTIATION_ID:
            if isinstance(reply, ErrorReply):
                self._fail(f"capabilities negotiation refused: {reply.desc}")
            self._state = QmpState.RUNNING
        return reply

    def _parse_greeting(self, msg: dict[str, Any]) -> Greeting:
        try:
            qmp = msg["QMP"]
            qemu = qmp["version"]["qemu"]
            version = (
                _small_int(qemu["major"]),
                _small_int(qemu["minor"]),
                _small_int(qemu["micro"]),
            )
            package = qmp["version"].get("package", "")
            caps = qmp["capabilities"]
            if not isinstance(package, str) or not isinstance(caps, list):
                raise TypeError
            if not all(isinstance(c, str) for c in caps):
                raise TypeError
        except (KeyError, TypeError, ValueError, AttributeError):
            self._fail(f"malformed greeting: {str(msg)[:120]}")
        return Greeting(version, package, tuple(caps))

    def _parse_event(self, msg: dict[str, Any]) -> Event:
        name = msg["event"]
        data = msg.get("data", {})
        stamp: Any = msg.get("timestamp")
        try:
            if not isinstance(name, str) or not isinstance(data, dict):
                raise TypeError
            seconds = stamp["seconds"]
            micros = stamp["microseconds"]
            if not isinstance(seconds, int) or not isinstance(micros, int):
                raise TypeError
            if not (_TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX and -1 <= micros < 1_000_000):
                raise TypeError  # beyond what a float timestamp can hold
        except (KeyError, TypeError):
            self._fail(f"malformed event: {str(msg)[:120]}")
        return Event(name, data, seconds + micros / 1_000_000)

    # -- output ----------------------------------------------------------------

    def negotiate(self, capabilities: tuple[str, ...] = ()) -> bytes:
        """Bytes of the ``qmp_capabilities`` command (QMP spec 4).

        Raises:
            LocalProtocolError: not right after the greeting.
        """
        if self._state is not QmpState.CAPABILITIES:
            raise LocalProtocolError(f"cannot negotiate in state {self._state.value}")
        self._state = QmpState.NEGOTIATING
        cmd: dict[str, Any] = {"execute": "qmp_capabilities", "id": _NEGOTIATION_ID}
        if capabilities:
            cmd["arguments"] = {"enable": list(capabilities)}
        return _encode(cmd)

    def send_command(
        self, name: str, arguments: Mapping[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """Allocate an id and return it with the command's wire bytes.

        From NEGOTIATING on (after :meth:`negotiate`): a command sent before
        the negotiation's reply is pipelined behind it (see the module).

        Raises:
            LocalProtocolError: the connection is neither NEGOTIATING nor
                RUNNING, ``name`` is not a non-empty string, or ``arguments``
                is not a JSON object.
        """
        if self._state is not QmpState.RUNNING and self._state is not QmpState.NEGOTIATING:
            raise LocalProtocolError(f"cannot send a command in state {self._state.value}")
        if not isinstance(name, str) or not name:
            raise LocalProtocolError("a command name must be a non-empty string")
        self._next_id += 1
        if arguments is None:
            # What _encode({"execute": name, "id": ...}) returns, without
            # encoding the dict.
            return self._next_id, b'{"execute":%s,"id":%d}\n' % (
                _ENCODER.encode(name).encode(),
                self._next_id,
            )
        if not isinstance(arguments, Mapping):
            raise LocalProtocolError("command arguments must be a JSON object")
        cmd = {"execute": name, "id": self._next_id, "arguments": dict(arguments)}
        try:
            return self._next_id, _encode(cmd)
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"arguments are not JSON: {exc}") from None


_TIMESTAMP_MIN: Final = -1
"""QEMU sends ``{"seconds": -1, "microseconds": -1}`` when it has no clock."""
_TIMESTAMP_MAX: Final = 2**53
"""Beyond it ``seconds + micros / 1e6`` loses the microseconds (and 10**400
would overflow a float)."""
_VERSION_MAX: Final = 2**31


def _no_constant(name: str) -> NoReturn:
    """``json.loads`` hook for ``Infinity``, ``-Infinity`` and ``NaN``."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """``json.loads`` hook for numbers with a fraction or exponent: ``1e400``
    would become ``inf``, which no QMP value means."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} does not fit in a float")
    return value


def _small_int(value: object) -> int:
    """A version number: a non-negative JSON integer below 2**31."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _VERSION_MAX:
        raise TypeError
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)
#: json.dumps(obj, separators=..., allow_nan=False) builds one per call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _encode(obj: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(obj).encode() + b"\n"
