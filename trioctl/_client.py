"""The Trio client library: one typed method per procedure, derived from the
procedure table (a method is a signature; its call and result type come from
:data:`trioctl._procedures.PROCEDURES`).

::

    async with trioctl.connect("ws://127.0.0.1:16509/") as client:
        for info in await client.list_domains():
            print(info.name, info.state.value)
        await client.subscribe()
        async for event in client.events():
            ...

Errors come back as the same exception classes the daemon raised
(``NoDomain``, ``JobTimeout``, ...), with ``message`` and ``data``. Several
calls may be in flight at once on one connection; replies are routed by id.

Everything :func:`connect` raises is a :class:`~trioctl.TrioctlError`:
:class:`~trioctl.ConnectError` when no session could be opened
(:class:`~trioctl.ConnectionRejected` with the HTTP ``status``,
:class:`~trioctl.ConnectTimeout`), :class:`~trioctl.DaemonConnectionLost`
when the session ends under a call, and the daemon's own errors. Closing
never raises trio-websocket's pong-while-closing error.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import ssl
import typing
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio_websocket
import wsproto.utilities

from ._errors import (
    ConnectError,
    ConnectionRejected,
    ConnectTimeout,
    DaemonConnectionLost,
    RemoteProtocolError,
    TrioctlError,
)
from ._fanout import Feed
from ._models import (
    AllDomainStats,
    DomainDefinition,
    DomainEvent,
    DomainInfo,
    DomainState,
    DomainStats,
    JobInfo,
    converter as _converter,
)
from ._procedures import (
    PROCEDURES,
    ClientInfo,
    ClientLimits,
    ServerStats,
    ThreadpoolInfo,
    VersionInfo,
)
from ._sansio import rpc
from ._util import ReplyWaiters, open_service_nursery, raise_unwrapped

__all__ = [
    "DEFAULT_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "Client",
    "connect",
    "find_token",
    "open_websocket",
]

logger = logging.getLogger(__name__)


DEFAULT_URL = "ws://127.0.0.1:16509/"
URL_ENV = "TRIOCTL_URL"
TOKEN_ENV = "TRIOCTL_TOKEN"


def find_token(tokens_file: Path | None = None, *, admin: bool = False) -> str | None:
    """The token to use when none is given.

    Order: ``$TRIOCTL_TOKEN``; then the daemon's tokens file (``tokens_file``,
    or the default one in the default state directory) if this user can read
    it: its first admin token, else (unless ``admin``) its first token.
    """
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    if tokens_file is None:
        from ._paths import default_tokens_file

        tokens_file = default_tokens_file()
    try:
        from ._tokens import Tokens

        tokens = Tokens.load(tokens_file)
    except (OSError, ValueError):
        return None
    by_role = sorted(tokens.roles.items(), key=lambda kv: -kv[1])
    if not by_role:
        return None
    best, role = by_role[0]
    if admin and role.name != "ADMIN":
        return None
    return best


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

METHODS: dict[str, str] = {}
"""The :class:`Client` method of each procedure, by procedure name."""


def _procedure(name: str, **wire_names: str) -> Callable[[F], F]:
    """Make the decorated method (a signature only) call procedure ``name``.

    Everything but the signature comes from the procedure table: each
    argument is the parameter of its name (or the one ``wire_names`` gives),
    sent unstructured unless None; the result is structured as the table's
    result type, then returned as the method's return annotation says: that
    type itself, the type of its one field (``DomainList`` as
    ``list[DomainInfo]``), or None. Anything else is a ``TypeError`` when this
    module is imported.
    """
    proc = PROCEDURES[name]

    def make(stub: F) -> F:
        signature = inspect.signature(stub)
        args = list(signature.parameters)[1:]
        wire = {arg: wire_names.get(arg, arg) for arg in args}
        fields = [f.name for f in attrs.fields(proc.params)]
        if sorted(wire.values()) != sorted(fields):
            raise TypeError(f"{stub.__name__}({', '.join(wire.values())}): {name} takes {fields}")
        unwrap = _result_adapter(name, proc.result, typing.get_type_hints(stub)["return"])

        @functools.wraps(stub)
        async def call(self: Client, *a: Any, **kw: Any) -> Any:
            bound = signature.bind(self, *a, **kw)
            params = {
                wire[arg]: _wire(value)
                for arg, value in list(bound.arguments.items())[1:]
                if value is not None
            }
            raw = await self.call(name, params)
            if proc.result is None:
                return raw
            try:
                result: Any = _converter.structure(raw, proc.result)
            except Exception as exc:
                raise RemoteProtocolError(f"unexpected result of {name}: {exc}") from None
            return unwrap(result)

        call.__doc__ = stub.__doc__ or proc.doc
        METHODS[name] = stub.__name__
        return typing.cast(F, call)

    return make


def _wire(value: Any) -> Any:
    """An argument's JSON form (a mapping of any kind is sent as an object)."""
    if isinstance(value, Mapping):
        return {key: _converter.unstructure(item) for key, item in value.items()}
    return _converter.unstructure(value)


def _result_adapter(name: str, result: type | None, returns: Any) -> Callable[[Any], Any]:
    """How a method returning ``returns`` gives procedure ``name``'s ``result``."""
    if result is None and returns is Any:
        return lambda raw: raw
    if returns is result:
        return lambda value: value
    if returns is type(None):
        return lambda _value: None
    if result is not None:
        hints = typing.get_type_hints(result)
        fields = attrs.fields(result)
        if len(fields) == 1 and hints[fields[0].name] == returns:
            field = fields[0].name
            return lambda value: getattr(value, field)
    raise TypeError(f"a method returning {returns} cannot return {name}'s result {result}")


class Client:
    """A connection to a trioctl daemon. Create it with :func:`connect`."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, event_buffer: int) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending = ReplyWaiters[rpc.Response]()
        self._events = Feed[DomainEvent](event_buffer)
        self._closed: TrioctlError | None = None

    # -- generic -------------------------------------------------------------------

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call ``method`` and return its JSON result.

        Raises:
            TrioctlError: the daemon's error, as its own class.
            DaemonConnectionLost: the connection closed before the reply.
        """
        if self._closed is not None:
            # A checkpoint still: a caller that retries in a loop must not hold the loop.
            await trio.lowlevel.checkpoint()
            raise DaemonConnectionLost(self._closed.message)
        call_id = next(self._ids)
        with self._pending.expect(call_id) as waiter:
            try:
                await self._ws.send_message(rpc.encode_request(method, dict(params or {}), call_id))
                response = await waiter.wait()
            except trio_websocket.ConnectionClosed as exc:
                # trio-websocket refuses a send on a closed connection without
                # a checkpoint: take one, as above.
                await trio.lowlevel.checkpoint()
                raise DaemonConnectionLost(
                    f"the daemon closed the connection: {exc.reason}"
                ) from None
        del waiter
        error = response.exc
        if error is None:
            return response.value
        # Raised with no reference from this frame to the response or the
        # error (whose traceback holds this frame): a failed call leaves no
        # cycle for the collector (tests/test_loop_share.py).
        del response
        try:
            raise error
        finally:
            del error

    def events(self) -> trio.MemoryReceiveChannel[DomainEvent]:
        """Events after :meth:`subscribe` (``async for event in client.events()``);
        the iteration ends when the connection closes.

        The buffer is bounded: events that do not fit while nobody reads are
        dropped and counted in ``events_dropped``.
        """
        return self._events.receive_channel

    @property
    def events_dropped(self) -> int:
        """Events dropped because the buffer of :meth:`events` was full."""
        return self._events.dropped

    # -- one method per procedure (see _procedure) -----------------------------------

    @_procedure("connect.get_version")
    async def get_version(self) -> VersionInfo: ...

    @_procedure("connect.list_domains")
    async def list_domains(self, state: DomainState | str | None = None) -> list[DomainInfo]: ...

    @_procedure("connect.get_all_domain_stats")
    async def get_all_domain_stats(
        self,
        names: list[str] | None = None,
        states: list[DomainState | str] | None = None,
        wait: float | None = None,
    ) -> AllDomainStats:
        """Every domain's stats in one call; NOWAIT unless ``wait`` is given."""

    @_procedure("domain.lookup")
    async def lookup(self, name: str) -> DomainInfo: ...

    @_procedure("domain.get_info")
    async def get_info(self, name: str) -> DomainInfo: ...

    @_procedure("domain.define")
    async def define(self, definition: DomainDefinition | Mapping[str, Any]) -> DomainInfo: ...

    @_procedure("domain.undefine")
    async def undefine(self, name: str) -> DomainInfo: ...

    @_procedure("domain.start")
    async def start(self, name: str, *, paused: bool = False) -> DomainInfo: ...

    @_procedure("domain.shutdown")
    async def shutdown(self, name: str) -> DomainInfo: ...

    @_procedure("domain.suspend")
    async def suspend(self, name: str) -> DomainInfo: ...

    @_procedure("domain.resume")
    async def resume(self, name: str) -> DomainInfo: ...

    @_procedure("domain.reset")
    async def reset(self, name: str) -> DomainInfo: ...

    @_procedure("domain.destroy")
    async def destroy(self, name: str) -> DomainInfo: ...

    @_procedure("domain.get_stats")
    async def get_stats(self, name: str) -> DomainStats: ...

    @_procedure("domain.monitor_command")
    async def monitor_command(
        self, name: str, command: str, arguments: Mapping[str, Any] | None = None
    ) -> Any: ...

    @_procedure("events.subscribe")
    async def subscribe(self, domains: list[str] | None = None) -> None: ...

    @_procedure("events.unsubscribe")
    async def unsubscribe(self) -> None: ...

    # -- admin.* (connect to the /admin endpoint) ------------------------------------------

    @_procedure("admin.get_threadpool")
    async def get_threadpool(self) -> ThreadpoolInfo: ...

    @_procedure("admin.set_threadpool")
    async def set_threadpool(
        self,
        *,
        min_workers: int | None = None,
        max_workers: int | None = None,
        prio_workers: int | None = None,
    ) -> ThreadpoolInfo: ...

    @_procedure("admin.get_client_limits")
    async def get_client_limits(self) -> ClientLimits: ...

    @_procedure("admin.set_client_limits")
    async def set_client_limits(
        self, *, max_clients: int | None = None, max_client_requests: int | None = None
    ) -> ClientLimits: ...

    @_procedure("admin.list_clients")
    async def list_clients(self) -> list[ClientInfo]: ...

    @_procedure("admin.disconnect_client", client_id="id")
    async def disconnect_client(self, client_id: str) -> None: ...

    @_procedure("admin.list_jobs")
    async def list_jobs(self) -> list[JobInfo]: ...

    @_procedure("admin.get_stats")
    async def get_server_stats(self) -> ServerStats: ...

    # -- the reader ------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                text = await self._ws.get_message()
                for msg in rpc.parse_response_text(text):
                    if isinstance(msg, rpc.ServerNotification):
                        self._on_notification(msg)
                        continue
                    if not self._pending.deliver(msg.id, msg):
                        logger.debug("dropping reply with unknown id %r", msg.id)
        except trio_websocket.ConnectionClosed as exc:
            self._close(DaemonConnectionLost(f"the daemon closed the connection ({exc.reason})"))
        except RemoteProtocolError as exc:
            self._close(DaemonConnectionLost(f"the daemon broke the protocol: {exc.message}"))

    def _on_notification(self, msg: rpc.ServerNotification) -> None:
        if msg.method != "events.event":
            return
        try:
            event = _converter.structure(msg.params, DomainEvent)
        except Exception:
            logger.warning("malformed event: %r", msg.params)
            return
        self._events.offer(event)

    def _close(self, why: TrioctlError) -> None:
        if self._closed is None:
            self._closed = why
        self._pending.fail(lambda: DaemonConnectionLost(why.message))
        self._events.close()


@asynccontextmanager
async def connect(
    url: str | None = None,
    token: str | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    tokens_file: Path | None = None,
    event_buffer: int = 1024,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Connect to a daemon (``url`` defaults to ``$TRIOCTL_URL`` or the local one).

    With no ``token``, :func:`find_token` looks for one (``$TRIOCTL_TOKEN``,
    then the daemon's tokens file), so local use needs no setup.

    Raises:
        ConnectionRejected: refused (401 bad token, 403 role or Origin, 404
            path, 503 too many clients); ``status`` says which, ``body`` is
            the first line of the daemon's explanation.
        ConnectTimeout: no handshake within ``connect_timeout``.
        ConnectError: nothing listens there, the URL is not ws:// or wss://,
            or the handshake failed otherwise.
    """
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    if token is None:
        token = find_token(tokens_file, admin=url.rstrip("/").endswith("/admin"))
    async with open_websocket(
        url,
        token,
        ssl_context=ssl_context,
        connect_timeout=connect_timeout,
        max_message_size=64 * 1024 * 1024,
    ) as ws:
        client = Client(ws, event_buffer)
        async with open_service_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                client._close(DaemonConnectionLost("the client closed the connection"))
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_websocket(
    url: str,
    token: str | None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 10.0,
    max_message_size: int = 64 * 1024 * 1024,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A raw WebSocket to a daemon, with the bearer token; it owns its socket.

    trio-websocket's own ``open_websocket_url`` can leave the socket open when
    the handshake is refused; here the TCP (or TLS) stream is ours and is
    closed whatever happens.

    Raises:
        ConnectError: as :func:`connect` (``ConnectionRejected``,
            ``ConnectTimeout``, or a connection or URL failure).
    """
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port == -1:
        raise ConnectError(f"not a ws:// or wss:// URL: {url!r}", url=url)
    secure = parts.scheme == "wss"
    port = port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    connected = False
    closing = False
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.move_on_after(connect_timeout) as scope:
                    if secure:
                        stream = await trio.open_ssl_over_tcp_stream(
                            parts.hostname,
                            port,
                            ssl_context=ssl_context or ssl.create_default_context(),
                            https_compatible=True,
                        )
                    else:
                        stream = await trio.open_tcp_stream(parts.hostname, port)
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        host_header,
                        resource,
                        extra_headers=headers,
                        max_message_size=max_message_size,
                    )
            except Exception as exc:
                raise _connect_error(url, exc) from exc
            connected = not scope.cancelled_caught
            if scope.cancelled_caught:
                raise ConnectTimeout(
                    f"{url} did not complete the WebSocket handshake within {connect_timeout:g} s",
                    url=url,
                )
            try:
                yield ws
            finally:
                closing = True
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # trio-websocket 0.12 answers a ping that arrives while it closes with
        # a pong wsproto refuses; it escapes the connection's reader task.
        # Closing never raises it; anything else propagates (bare if alone).
        # (subgroup applies the test to groups too: let it judge leaves only.)
        rest = group.subgroup(
            lambda exc: (
                not isinstance(exc, BaseExceptionGroup) and not (closing and _closing_pong(exc))
            )
        )
        if rest is not None:
            only = rest.exceptions[0] if len(rest.exceptions) == 1 else None
            if (
                not connected
                and isinstance(only, Exception)
                and not isinstance(only, BaseExceptionGroup)
            ):
                # trio-websocket raises a refusal from its reader task.
                error = _connect_error(url, only)
                if error is not only:
                    raise error from only
            raise_unwrapped(rest)
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _closing_pong(exc: BaseException) -> bool:
    return (
        isinstance(exc, wsproto.utilities.LocalProtocolError)
        and "Pong" in str(exc)
        and "cannot be sent in state" in str(exc)
    )


def _connect_error(url: str, exc: Exception) -> TrioctlError:
    """What opening a connection raised, as a trioctl error."""
    if isinstance(exc, TrioctlError):
        return exc
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return _rejected(url, exc)
    if isinstance(exc, trio_websocket.HandshakeError | trio_websocket.ConnectionClosed):
        error = ConnectError(f"{url}: the WebSocket handshake failed: {exc!r}", url=url)
    elif isinstance(exc, OSError | trio.BrokenResourceError):
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        error = ConnectError(f"cannot connect to {url}: {detail}", url=url)
    else:
        error = ConnectError(f"cannot connect to {url}: {type(exc).__name__}: {exc}", url=url)
    return error


def _rejected(url: str, exc: trio_websocket.ConnectionRejected) -> ConnectionRejected:
    """trio-websocket's refusal as trioctl's, with the body cut to one line."""
    raw = (exc.body or b"").decode("utf-8", "replace").strip()
    line = raw.splitlines()[0].strip() if raw else ""
    if len(line) > 200:
        line = line[:199] + "\u2026"
    message = f"{url} refused the connection (HTTP {exc.status_code})"
    if line:
        message += f": {line}"
    content_type = ""
    for key, value in exc.headers or ():
        if key.lower() == b"content-type":
            content_type = value.decode("latin-1").split(";")[0].strip()
    return ConnectionRejected(
        message,
        url=url,
        status=exc.status_code,
        body=line,
        content_type=content_type,
        body_bytes=len(exc.body or b""),
        multiline="\n" in raw,
    )
