"""The one exception hierarchy of trioctl.

Every error trioctl raises on purpose derives from :class:`TrioctlError`.
Each class carries the stable ``reason`` name and the JSON-RPC ``rpc_code``
that the RPC boundary puts on the wire; the client library maps them back to
the same classes, so callers catch the same exceptions locally and remotely.

trioctl never wraps :class:`trio.Cancelled` or a caller's own
:class:`trio.TooSlowError`: deadlines the caller sets stay the caller's.

::

    Exception
     +-- TrioctlError                      INTERNAL_ERROR   -32603
          +-- ProtocolError                (abstract)
          |    +-- LocalProtocolError      we misused a protocol
          |    +-- RemoteProtocolError     the peer (QEMU) broke QMP
          +-- ParseError                   PARSE_ERROR      -32700
          +-- InvalidRequest               INVALID_REQUEST  -32600
          |    +-- LimitExceeded           LIMIT_EXCEEDED   -32600 (a batch or message too big)
          +-- MethodNotFound               METHOD_NOT_FOUND -32601
          +-- InvalidParams                INVALID_PARAMS   -32602
          +-- InternalError                INTERNAL_ERROR   -32603
          +-- NoDomain                     NO_DOMAIN        -32001
          +-- DomainExists                 DOMAIN_EXISTS    -32002
          +-- OperationInvalid             OPERATION_INVALID -32003
          +-- JobTimeout                   JOB_TIMEOUT      -32004
          +-- JobQueueFull                 JOB_QUEUE_FULL   -32005
          +-- MonitorTimeout               MONITOR_TIMEOUT  -32006
          +-- MonitorUnresponsive          MONITOR_UNRESPONSIVE -32007
          +-- MonitorError                 MONITOR_ERROR    -32008
          |    +-- QmpCommandError         QEMU answered {"error": ...}
          |    +-- ConnectionLost          the monitor closed under a waiter
          +-- DomainDestroyed              DOMAIN_DESTROYED -32009
          +-- ServerBusy                   SERVER_BUSY      -32010
          +-- AccessDenied                 ACCESS_DENIED    -32011
          +-- LaunchError                  LAUNCH_FAILED    -32012
          +-- DeadlineExceeded             DEADLINE_EXCEEDED -32013
          +-- ConnectError                 (client only) connect() failed
          |    +-- ConnectionRejected      the daemon refused the handshake (.status)
          |    +-- ConnectTimeout          no handshake within the client's deadline
          +-- DaemonConnectionLost         (client only) the daemon connection ended
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AccessDenied",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "ConnectionRejected",
    "DaemonConnectionLost",
    "DeadlineExceeded",
    "DomainDestroyed",
    "DomainExists",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "JobQueueFull",
    "JobTimeout",
    "LaunchError",
    "LimitExceeded",
    "LocalProtocolError",
    "MethodNotFound",
    "MonitorError",
    "MonitorTimeout",
    "MonitorUnresponsive",
    "NoDomain",
    "OperationInvalid",
    "ParseError",
    "ProtocolError",
    "QmpCommandError",
    "RemoteProtocolError",
    "ServerBusy",
    "TrioctlError",
    "error_class_for_reason",
]

_BY_REASON: dict[str, type[TrioctlError]] = {}


class TrioctlError(Exception):
    """Root of every error trioctl raises deliberately.

    Attributes:
        message: human-readable text, also ``str(exc)``.
        data: extra JSON-compatible detail that travels in the RPC error's
            ``data`` object beside ``reason``.
    """

    reason: ClassVar[str] = "INTERNAL_ERROR"
    rpc_code: ClassVar[int] = -32603

    def __init__(self, message: str = "", **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = data

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class that declares its own reason is the one the client raises
        # for that reason; subclasses that inherit it refine it locally only.
        if "reason" in cls.__dict__:
            _BY_REASON[cls.reason] = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def error_class_for_reason(reason: str) -> type[TrioctlError]:
    """The class that represents ``reason`` (``TrioctlError`` if unknown)."""
    return _BY_REASON.get(reason, TrioctlError)


class ProtocolError(TrioctlError):
    """A protocol was broken. Abstract: raise a Local or Remote subclass."""

    def __init__(self, message: str = "", **data: Any) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError instead")
        super().__init__(message, **data)


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow in this state
    (for example sending a command before negotiation). You *don't* get this
    for anything the peer did: that is :class:`RemoteProtocolError`."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol: invalid JSON, a message
    of the wrong shape, a line over the length bound, EOF inside a message.
    The connection cannot be trusted afterwards."""


# -- JSON-RPC 2.0 protocol errors -------------------------------------------------


class ParseError(TrioctlError):
    """The request text is not valid JSON."""

    reason = "PARSE_ERROR"
    rpc_code = -32700


class InvalidRequest(TrioctlError):
    """The JSON is valid but not a JSON-RPC 2.0 request object."""

    reason = "INVALID_REQUEST"
    rpc_code = -32600


class LimitExceeded(InvalidRequest):
    """A message over a server limit, and nothing in it is run: a text over
    ``server.max_message_size`` is answered with this one error; a batch of
    more than ``server.max_batch`` items with an array holding this error once
    per item, with the item's id. ``data`` names the limit and the size."""

    reason = "LIMIT_EXCEEDED"
    rpc_code = -32600


class MethodNotFound(TrioctlError):
    """No procedure has that name (or not on this endpoint)."""

    reason = "METHOD_NOT_FOUND"
    rpc_code = -32601


class InvalidParams(TrioctlError):
    """The parameters do not match the procedure's type; ``data`` names the
    field and the reason. Nothing was done."""

    reason = "INVALID_PARAMS"
    rpc_code = -32602


class InternalError(TrioctlError):
    """A bug or an unexpected failure inside the daemon."""

    reason = "INTERNAL_ERROR"
    rpc_code = -32603


# -- application errors -------------------------------------------------------------


class NoDomain(TrioctlError):
    """No domain has that name."""

    reason = "NO_DOMAIN"
    rpc_code = -32001


class DomainExists(TrioctlError):
    """A domain with that name (or uuid) is already defined."""

    reason = "DOMAIN_EXISTS"
    rpc_code = -32002


class OperationInvalid(TrioctlError):
    """The operation is not valid in the domain's current state; the message
    says why. Nothing was done."""

    reason = "OPERATION_INVALID"
    rpc_code = -32003


class JobTimeout(TrioctlError):
    """Waited ``job_wait_timeout`` for a domain's job and did not get it.

    The message and ``data`` name the holder: its procedure, its client and
    how many seconds it has held the job. You don't get this when the queue
    was full from the start: that is :class:`JobQueueFull`, at once.
    """

    reason = "JOB_TIMEOUT"
    rpc_code = -32004


class JobQueueFull(TrioctlError):
    """``max_queued`` callers (for a query: ``max_queued_queries`` queries, in
    the query lane) already wait for this domain's job; refused at once,
    naming the holder like :class:`JobTimeout`."""

    reason = "JOB_QUEUE_FULL"
    rpc_code = -32005


class MonitorTimeout(TrioctlError):
    """A monitor command did not answer within ``monitor_timeout``. The domain
    is now marked monitor-unresponsive. QEMU may still run the command."""

    reason = "MONITOR_TIMEOUT"
    rpc_code = -32006


class MonitorUnresponsive(TrioctlError):
    """The domain's monitor is known not to answer (an earlier command timed
    out, or reconnect found it silent); refused at once without trying."""

    reason = "MONITOR_UNRESPONSIVE"
    rpc_code = -32007


class MonitorError(TrioctlError):
    """The monitor failed: QEMU returned an error, or the connection broke."""

    reason = "MONITOR_ERROR"
    rpc_code = -32008


class QmpCommandError(MonitorError):
    """QEMU answered a command with ``{"error": {"class": ..., "desc": ...}}``.

    Attributes:
        error_class: QMP's error class, such as ``CommandNotFound``.
        desc: QMP's description.
        command: the command that failed.
    """

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(
            f"{command}: {error_class}: {desc}",
            command=command,
            error_class=error_class,
            desc=desc,
        )
        self.command = command
        self.error_class = error_class
        self.desc = desc


class ConnectionLost(MonitorError):
    """The monitor connection closed (EOF, reset, protocol violation) while a
    command waited for its reply, or a command was issued after it closed.
    Every waiter gets it at once. You don't get it if you cancelled first."""


class DomainDestroyed(TrioctlError):
    """The domain was destroyed while this call held or waited for its job."""

    reason = "DOMAIN_DESTROYED"
    rpc_code = -32009


class ServerBusy(TrioctlError):
    """A bounded queue (a worker pool's pending jobs) is full; refused at once
    instead of blocking the submitter."""

    reason = "SERVER_BUSY"
    rpc_code = -32010


class AccessDenied(TrioctlError):
    """The caller's role does not allow this procedure. Nothing was done."""

    reason = "ACCESS_DENIED"
    rpc_code = -32011


class LaunchError(TrioctlError):
    """The emulator could not be started: it exited with an error (its stderr
    is in the message), or its monitor socket did not accept in time; what it
    launched is killed."""

    reason = "LAUNCH_FAILED"
    rpc_code = -32012


class DeadlineExceeded(TrioctlError):
    """A call did not finish within its procedure's deadline and was
    cancelled. Monitor commands and job waits have shorter bounds of their
    own, so this is a last resort; what the call had done may stand."""

    reason = "DEADLINE_EXCEEDED"
    rpc_code = -32013


# -- client library errors (never on the wire) ------------------------------------------


class ConnectError(TrioctlError):
    """:func:`trioctl.connect` could not open a session: nothing listens
    there, the handshake was refused or took too long, or the URL is not a
    ``ws://``/``wss://`` one. The cause, if any, is ``__cause__``."""


class ConnectionRejected(ConnectError):
    """The daemon answered the WebSocket handshake with an HTTP error:
    401 (bad token), 403 (role, or a refused ``Origin``), 404 (path),
    503 (too many clients, or shutting down).

    Attributes:
        status: the HTTP status code.
        body: the first line of the response body (at most 200 characters).
    """

    def __init__(self, message: str = "", **data: Any) -> None:
        super().__init__(message, **data)
        status = data.get("status", 0)
        body = data.get("body", "")
        self.status: int = status if isinstance(status, int) else 0
        self.body: str = body if isinstance(body, str) else ""


class ConnectTimeout(ConnectError):
    """No completed handshake within ``connect_timeout``."""


class DaemonConnectionLost(TrioctlError):
    """The connection to the daemon closed (by the daemon, the network, or
    :func:`trioctl.connect`'s block ending) while a call waited for its
    reply, or a call was made after it closed. Unlike the monitor's
    :class:`ConnectionLost`, this is not a :class:`MonitorError`: whether the
    call ran is unknown."""
