"""The WebSocket JSON-RPC endpoint: sessions, limits, auth, dispatch, events.

Shape::

    serve (the server nursery)
    ├── listener (trio-websocket)          refuses beyond max_clients (503)
    └── one session per client             its own nursery
        ├── reader                         stops reading at max_client_requests
        │                                  in flight (backpressure, as libvirt)
        ├── one task per call              table -> access -> params -> dispatcher
        ├── keepalive                      a ping every keepalive_interval; a peer
        │                                  missing keepalive_count pongs is closed
        └── event forwarder                driver events -> events.event notifications

One call: text frame -> sans-I/O JSON-RPC parse -> procedure table -> role
check -> cattrs structure (unknown keys refused) -> dispatcher (domain queue
first, then a worker of the procedure's priority) -> handler -> unstructure ->
frame. Every call runs under its procedure's deadline.

Event policy: each subscribed client has a bounded queue (``event_queue``);
the driver never waits for it; events that do not fit are dropped and counted
(``admin.list_clients`` shows ``events_dropped`` per client).
"""

from __future__ import annotations

import collections
import functools
import hmac
import itertools
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import attrs
import trio
import trio_websocket

from ._config import ServerConfig
from ._dispatch import Dispatcher
from ._driver import Driver, EventSubscription
from ._errors import (
    AccessDenied,
    DeadlineExceeded,
    InternalError,
    InvalidParams,
    MethodNotFound,
    TrioctlError,
)
from ._models import structure, unstructure
from ._pools import Priority
from ._procedures import (
    PROCEDURES,
    PROTOCOL_VERSION,
    CallContext,
    ClientInfo,
    ClientLimits,
    ClientList,
    Disconnected,
    LatencyPercentiles,
    Procedure,
    ProcedureTable,
    Role,
    ServerStats,
    SetClientLimitsParams,
    SetThreadpoolParams,
    ThreadpoolInfo,
    VersionInfo,
)
from ._sansio import rpc
from ._util import open_service_nursery
from ._version import __version__

__all__ = ["Server", "Tokens", "serve"]

logger = logging.getLogger(__name__)

_LATENCY_WINDOW: Final = 10_000
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_POLICY: Final = 1008


@attrs.frozen
class Tokens:
    """Bearer tokens and the role each grants (the tokens file)."""

    roles: dict[str, Role]

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read ``{"tokens": [{"token": ..., "role": "read|write|admin"}, ...]}``.

        Raises:
            ValueError: the file is malformed (with the reason).
            OSError: it cannot be read.
        """
        raw = json.loads(path.read_text())
        entries = raw.get("tokens") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected an object with a 'tokens' list")
        roles: dict[str, Role] = {}
        for i, entry in enumerate(entries):
            try:
                token, role = entry["token"], Role[str(entry["role"]).upper()]
            except (KeyError, TypeError):
                raise ValueError(f"{path}: tokens[{i}] needs 'token' and a valid 'role'") from None
            if not isinstance(token, str) or len(token) < 16:
                raise ValueError(f"{path}: tokens[{i}]: a token must be 16 characters or more")
            roles[token] = role
        return cls(roles)

    def role_for(self, token: str) -> Role | None:
        found = None
        for known, role in self.roles.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = role
        return found


@attrs.define(eq=False)
class _Batch:
    """One incoming message's calls: their replies go out together."""

    replies: list[rpc.Response | None]
    pending: int = 0
    """Calls not finished yet."""
    held: int = 0
    """In-flight slots held until the reply is written (one per request)."""
    done: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class _Session:
    id: str
    role: Role
    endpoint: str
    peer: str
    ws: trio_websocket.WebSocketConnection
    server: Server
    connected_at: float = attrs.Factory(time.monotonic)
    in_flight: int = 0
    calls: int = 0
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    nursery: trio.Nursery | None = None
    events: EventSubscription | None = None
    events_scope: trio.CancelScope | None = None
    slot_free: trio.Event = attrs.Factory(trio.Event)

    # -- the Session protocol of _procedures ---------------------------------------

    def subscribe(self, domains: list[str] | None) -> None:
        self.unsubscribe()
        assert self.nursery is not None
        # The scope exists before the forwarder runs, so an unsubscribe (or
        # another subscribe) right after this one always finds it.
        scope = self.events_scope = trio.CancelScope()
        self.nursery.start_soon(
            self._forward_events, scope, frozenset(domains) if domains else None
        )

    def unsubscribe(self) -> None:
        if self.events_scope is not None:
            self.events_scope.cancel()
            self.events_scope = None

    async def _forward_events(
        self, scope: trio.CancelScope, domains: frozenset[str] | None
    ) -> None:
        with scope:
            driver = self.server.driver
            with driver.subscribe(domains, self.server.config.event_queue) as sub:
                self.events = sub
                async for event in sub:
                    text = rpc.encode_notification("events.event", unstructure(event))
                    try:
                        await self.ws.send_message(text)
                    except trio_websocket.ConnectionClosed:
                        return

    def info(self) -> ClientInfo:
        return ClientInfo(
            id=self.id,
            role=self.role.name.lower(),
            endpoint=self.endpoint,
            peer=self.peer,
            connected_seconds=round(time.monotonic() - self.connected_at, 3),
            in_flight=self.in_flight,
            calls=self.calls,
            subscribed=self.events_scope is not None,
            events_dropped=self.events.dropped if self.events is not None else 0,
        )


class Server:
    """The RPC service over one driver and dispatcher. Run it with :func:`serve`."""

    def __init__(
        self,
        config: ServerConfig,
        driver: Driver,
        dispatcher: Dispatcher,
        *,
        tokens: Tokens | None,
        backend: str = "sim",
        table: ProcedureTable = PROCEDURES,
    ) -> None:
        self.config = config
        self.driver = driver
        self.dispatcher = dispatcher
        self.tokens = tokens
        self.backend = backend
        self.table = table
        self.max_clients = config.max_clients
        self.max_client_requests = config.max_client_requests
        self.port = 0
        self._sessions: dict[str, _Session] = {}
        self._ids = itertools.count(1)
        self._started = time.monotonic()
        self._calls: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        self._latency = {p: collections.deque[float](maxlen=_LATENCY_WINDOW) for p in Priority}
        self._accepting = True
        self._handshaking = 0

    # -- the Services protocol of _procedures ----------------------------------------

    def version(self) -> VersionInfo:
        return VersionInfo(daemon=__version__, protocol=PROTOCOL_VERSION, backend=self.backend)

    def threadpool_info(self) -> ThreadpoolInfo:
        s = self.dispatcher.pools.statistics()
        return ThreadpoolInfo(
            min_workers=s.limits.min_workers,
            max_workers=s.limits.max_workers,
            prio_workers=s.limits.prio_workers,
            max_pending=s.limits.max_pending,
            workers=s.workers,
            free_workers=s.free_workers,
            current_prio_workers=s.prio_workers,
            free_prio_workers=s.free_prio_workers,
            queue_depth_high=s.pending_high,
            queue_depth_low=s.pending_low,
            completed=s.completed,
            rejected=s.rejected,
        )

    def set_threadpool(self, params: SetThreadpoolParams) -> ThreadpoolInfo:
        self.dispatcher.pools.set_limits(
            min_workers=params.min_workers,
            max_workers=params.max_workers,
            prio_workers=params.prio_workers,
        )
        return self.threadpool_info()

    def client_limits(self) -> ClientLimits:
        return ClientLimits(self.max_clients, self.max_client_requests, len(self._sessions))

    def set_client_limits(self, params: SetClientLimitsParams) -> ClientLimits:
        for field in ("max_clients", "max_client_requests"):
            value = getattr(params, field)
            if value is not None and value < 1:
                raise InvalidParams(f"{field} must be at least 1", field=field)
        if params.max_clients is not None:
            self.max_clients = params.max_clients
        if params.max_client_requests is not None:
            self.max_client_requests = params.max_client_requests
            for session in self._sessions.values():
                session.slot_free.set()  # a larger limit may free the reader
        return self.client_limits()

    def list_clients(self) -> ClientList:
        return ClientList([s.info() for s in self._sessions.values()])

    def disconnect_client(self, client_id: str) -> Disconnected:
        session = self._sessions.get(client_id)
        if session is None:
            raise InvalidParams(f"no client {client_id!r}", field="id")
        session.scope.cancel()
        return Disconnected(True)

    def server_stats(self) -> ServerStats:
        return ServerStats(
            uptime_seconds=round(time.monotonic() - self._started, 3),
            calls=dict(self._calls),
            errors=dict(self._errors),
            latency={p.value: _percentiles(self._latency[p]) for p in Priority},
            events_dropped=self.driver.events_dropped,
        )

    # -- connections --------------------------------------------------------------------

    def _authenticate(self, request: trio_websocket.WebSocketRequest) -> Role | None:
        if self.tokens is None:
            return Role.ADMIN
        for key, value in request.headers:
            if key.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token:
                    return self.tokens.role_for(token.strip())
        return None

    async def _handle_connection(self, request: trio_websocket.WebSocketRequest) -> None:
        # A failure here must end this connection only, never the listener.
        try:
            await self._session(request)
        except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError):
            pass
        except Exception:
            logger.exception("client connection failed")

    async def _session(self, request: trio_websocket.WebSocketRequest) -> None:
        path = request.path.split("?", 1)[0]
        if path not in ("/", "/admin"):
            await request.reject(404, body=b"no such endpoint: use / or /admin\n")
            return
        if not self._accepting:
            await request.reject(503, body=b"the daemon is shutting down\n")
            return
        if len(self._sessions) + self._handshaking >= self.max_clients:
            await request.reject(503, body=b"too many clients (max_clients)\n")
            return
        role = self._authenticate(request)
        if role is None:
            await request.reject(401, body=b"a valid bearer token is required\n")
            return
        endpoint = "admin" if path == "/admin" else "api"
        if endpoint == "admin" and role < Role.ADMIN:
            await request.reject(403, body=b"/admin needs an admin token\n")
            return
        # Count this client from here on: concurrent handshakes must not all
        # pass the max_clients check while none is registered yet.
        self._handshaking += 1
        try:
            ws = await request.accept()
        finally:
            self._handshaking -= 1
        remote = request.remote
        peer = str(remote) if isinstance(remote, str) else f"{remote.address}:{remote.port}"
        session = _Session(f"c{next(self._ids)}", role, endpoint, peer, ws, self)
        self._sessions[session.id] = session
        logger.info("client %s connected from %s as %s", session.id, peer, role.name.lower())
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    session.nursery = nursery
                    if self.config.keepalive_interval > 0:
                        nursery.start_soon(self._keepalive, session)
                    await self._read_loop(session, nursery)
                    nursery.cancel_scope.cancel()
        finally:
            session.unsubscribe()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose(_CLOSE_GOING_AWAY if session.scope.cancel_called else 1000)
            # Only now: drain() waits for this, while the WebSocket readers
            # that complete the closing handshake still run.
            del self._sessions[session.id]
            logger.info("client %s disconnected", session.id)

    async def _keepalive(self, session: _Session) -> None:
        """A ping every ``keepalive_interval``; ``keepalive_count`` pings in a
        row without a pong close the connection: a silent peer is gone after
        ``interval * (count + 1)`` seconds, as with libvirt's keepalive."""
        interval = self.config.keepalive_interval
        missed = 0
        await trio.sleep(interval)
        while True:
            deadline = trio.current_time() + interval
            with trio.move_on_at(deadline) as scope:
                try:
                    await session.ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
            if not scope.cancelled_caught:
                missed = 0
                await trio.sleep_until(deadline)
                continue
            missed += 1
            if missed >= self.config.keepalive_count:
                logger.info("client %s missed %d keepalive pongs: closing", session.id, missed)
                with trio.move_on_after(1):
                    await session.ws.aclose(_CLOSE_POLICY, "keepalive timeout")
                session.scope.cancel()
                return

    async def _read_loop(self, session: _Session, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await session.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            incoming = rpc.parse_request_text(message, max_size=self.config.max_message_size)
            batch = _Batch([None] * len(incoming.items))
            for index, item in enumerate(incoming.items):
                if isinstance(item, rpc.Invalid):
                    batch.replies[index] = item.response()
                    continue
                # Backpressure: a call holds its slot until its reply is
                # written; beyond max_client_requests, stop reading.
                while session.in_flight >= self.max_client_requests:
                    session.slot_free = trio.Event()
                    await session.slot_free.wait()
                session.in_flight += 1
                batch.pending += 1
                if isinstance(item, rpc.Request):
                    batch.held += 1
                nursery.start_soon(self._call, session, item, batch, index)
            if batch.pending == 0:
                batch.done.set()
            if incoming.expects_reply:
                nursery.start_soon(self._reply_when_done, session, incoming, batch)

    def _release(self, session: _Session, slots: int) -> None:
        session.in_flight -= slots
        session.slot_free.set()

    async def _reply_when_done(
        self, session: _Session, incoming: rpc.Incoming, batch: _Batch
    ) -> None:
        try:
            await batch.done.wait()
            answers = [r for r in batch.replies if r is not None]
            text = rpc.encode_responses(
                answers if incoming.batch else (answers[0] if answers else None)
            )
            if text is not None:
                with suppress(trio_websocket.ConnectionClosed):
                    await session.ws.send_message(text)
        finally:
            self._release(session, batch.held)

    async def _call(
        self,
        session: _Session,
        item: rpc.Request | rpc.Notification,
        batch: _Batch,
        index: int,
    ) -> None:
        start = time.perf_counter()
        call_id = item.id if isinstance(item, rpc.Request) else None
        try:
            proc = None
            try:
                proc = self._lookup(session, item.method)
                result = await self._invoke(session, proc, item.params)
                response = rpc.Response.result(call_id, result)
            except TrioctlError as exc:
                self._errors[exc.reason] += 1
                response = rpc.Response.error(call_id, exc)
            except Exception as exc:
                logger.exception("internal error in %s", item.method)
                self._errors[InternalError.reason] += 1
                response = rpc.Response.error(
                    call_id, InternalError(f"internal error: {type(exc).__name__}: {exc}")
                )
            if proc is not None:
                self._calls[proc.name] += 1
                self._latency[proc.priority].append(time.perf_counter() - start)
            if isinstance(item, rpc.Request):
                batch.replies[index] = response
        finally:
            session.calls += 1
            if isinstance(item, rpc.Notification):
                self._release(session, 1)  # nothing to write back
            batch.pending -= 1
            if batch.pending == 0:
                batch.done.set()

    def _lookup(self, session: _Session, method: str) -> Procedure:
        proc = self.table.get(method)
        if proc is None or proc.endpoint != session.endpoint:
            where = "" if proc is None else f" on the {session.endpoint} endpoint"
            raise MethodNotFound(f"no procedure {method!r}{where}", method=method)
        if session.role < proc.role:
            raise AccessDenied(
                f"{method} needs the {proc.role.name.lower()} role; "
                f"this client has {session.role.name.lower()}",
                method=method,
            )
        return proc

    async def _invoke(self, session: _Session, proc: Procedure, raw: rpc.Params) -> Any:
        if isinstance(raw, list):
            raise InvalidParams(f"{proc.name} takes named parameters (an object), not an array")
        params: Any = structure(raw if raw is not None else {}, proc.params)
        ctx = CallContext(self, session)
        with trio.move_on_after(proc.deadline) as scope:
            if proc.job is not None:
                name = params.name
                self.driver.get_info(name)  # NO_DOMAIN before queueing for a job
                result = await self.dispatcher.call(
                    proc.priority,
                    proc.handler,
                    ctx,
                    params,
                    domain=name,
                    kind=proc.job,
                    procedure=proc.name,
                    client=session.id,
                    share=params if proc.shared else None,
                )
            else:
                result = await self.dispatcher.call(
                    proc.priority, proc.handler, ctx, params, procedure=proc.name, client=session.id
                )
            return unstructure(result)
        assert scope.cancelled_caught
        raise DeadlineExceeded(
            f"{proc.name} did not finish within its deadline of {proc.deadline:g} s",
            method=proc.name,
        )

    # -- shutdown -------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish within ``grace``, then
        close every session."""
        self._accepting = False
        with trio.move_on_after(grace):
            while any(s.in_flight for s in self._sessions.values()):
                await trio.sleep(0.01)
        for session in list(self._sessions.values()):
            session.scope.cancel()
        # Let each session finish its closing handshake while the WebSocket
        # reader tasks still run (they live in the server nursery).
        with trio.move_on_after(1):
            while self._sessions:
                await trio.sleep(0.005)


def _percentiles(samples: Sequence[float]) -> LatencyPercentiles:
    if not samples:
        return LatencyPercentiles(0, 0.0, 0.0, 0.0)
    ordered = sorted(samples)
    n = len(ordered)

    def pick(q: float) -> float:
        return round(ordered[min(n - 1, math.ceil(q * n) - 1)] * 1000, 3)

    return LatencyPercentiles(n, pick(0.50), pick(0.99), round(ordered[-1] * 1000, 3))


def _ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@asynccontextmanager
async def serve(
    config: ServerConfig,
    driver: Driver,
    dispatcher: Dispatcher,
    *,
    tokens: Tokens | None,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    backend: str = "sim",
) -> AsyncIterator[Server]:
    """Listen on ``host:port`` and serve while the block lasts.

    ``server.port`` is the port bound (useful with port 0). Leaving the block
    closes every session and the listener.
    """
    server = Server(config, driver, dispatcher, tokens=tokens, backend=backend)
    async with open_service_nursery() as nursery:
        ws_server = await nursery.start(
            functools.partial(
                trio_websocket.serve_websocket,
                server._handle_connection,
                host,
                port,
                ssl_context,
                handler_nursery=nursery,
                max_message_size=config.max_message_size,
            )
        )
        server.port = ws_server.port
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
