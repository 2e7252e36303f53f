"""The WebSocket JSON-RPC endpoint: connections, sessions, limits, auth, dispatch, events.

Shape::

    serve (the server nursery)
    ├── accept loop, one per listener       pauses while the process is out of fds
    ├── keepalive                           one task for every session: a heap of
    │                                       the times their next pings are due
    └── one task per connection
        ├── request head                    read here first: a plain GET
        │                                   (/metrics, the console) is answered
        │                                   by _http and the connection closed
        ├── handshake                       server.handshake_timeout; at most
        │                                   server.max_anonymous_clients at once
        │                                   (a new one evicts the oldest)
        ├── Origin, auth (header or         403 / 401 / 404 / 503 before accepting
        │   subprotocol), limits
        └── session                         its own nursery, cancelled when the
            │                               peer closes, resets or misses pongs
            ├── reader                      one message at a time; stops reading at
            │                               max_client_requests messages in flight;
            │                               after a failed call, waits for a turn
            │                               in the error lane (_Turns)
            ├── one task per message        a single call or a whole batch; each call
            │   └── one task per call       holds one of the session's
            │                               max_client_requests call slots (a
            │                               call of an ``immediate`` procedure,
            │                               which never waits, runs in the
            │                               reader itself)
            ├── writer                      sends the outbox (bounded in bytes);
            │                               runs only while the outbox holds frames
            ├── watcher                     the peer went away: cancel the session
            │                               (started the first time the reader stops
            │                               for anything but the next message; polls
            │                               the socket only while the reader is
            │                               stopped)
            ├── ping                        one keepalive ping and its pong, started
            │                               by the keepalive task every
            │                               keepalive_interval; a peer missing
            │                               keepalive_count pongs is closed
            └── event forwarder             driver events -> events.event notifications

An idle session is two tasks: the connection's (its reader waits for the next
message) and trio-websocket's reader. When the peer closes, resets or sends
EOF, trio-websocket's reader ends, and the session's reader, waiting for the
next message, cancels the session.

One call: text frame -> sans-I/O JSON-RPC parse -> procedure table -> role
check -> params (an object, or an array in the procedure's parameter order)
-> cattrs structure (unknown keys refused) -> dispatcher (domain queue first,
then a worker of the procedure's priority) -> handler -> unstructure ->
outbox -> frame. Every call runs under its procedure's deadline.

Bounds of one session (docs/design.md, "The RPC edge: what one client can
make the daemon hold"): a message is one slot whatever it holds, single call
or batch of up to ``max_batch`` items, so a batch never waits for slots it
holds itself; its items run as calls, at most ``max_client_requests`` of the
session's calls at once. The slot is released once the reply is in the
outbox; the outbox holds at most ``max_output_bytes`` (one reply may exceed
it alone) and a reply waits for room, so a client that does not read stops
being read.

Event policy: each subscribed client has a bounded queue (``event_queue``);
the driver never waits for it; events that do not fit are dropped and counted
(``admin.list_clients`` shows ``events_dropped`` per client).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import itertools
import logging
import math
import os
import select
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import attrs
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.handshake import H11Handshake

from . import _http
from ._config import ServerConfig
from ._dispatch import Dispatcher
from ._driver import Driver, EventSubscription
from ._errors import (
    AccessDenied,
    DeadlineExceeded,
    InternalError,
    InvalidParams,
    JobQueueFull,
    MethodNotFound,
    ServerBusy,
    TrioctlError,
)
from ._handlers import PROCEDURES, CallContext
from ._histogram import Histogram
from ._log import RefusalLog, log
from ._models import structure, unstructure
from ._pools import Priority
from ._procedures import (
    PROTOCOL_VERSION,
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
from ._sansio.wsframes import MessageSizes
from ._tokens import Tokens
from ._util import open_service_nursery, wait_all_tasks_blocked
from ._version import __version__

__all__ = ["BEARER_PREFIX", "SUBPROTOCOL", "Server", "Tokens", "serve"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_LATENCY_WINDOW: Final = 10_000
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_POLICY: Final = 1008

SUBPROTOCOL: Final = "trioctl.v1"
"""The WebSocket subprotocol the server selects when a client offers it."""
BEARER_PREFIX: Final = "bearer."
"""A browser, which cannot set ``Authorization``, offers ``bearer.<token>``
beside :data:`SUBPROTOCOL`; the server selects only ``trioctl.v1``."""

_FD_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FD_RESERVE: Final = 16
"""Descriptors held at start and given back when accept runs out, so the
daemon's own work (a domain start, a state file) still gets some."""
_FD_RETRY: Final = 0.1
_HANGUP_POLL: Final = 0.25
_ANSWER_BYTES: Final = 200
"""About the size of one answer to an item of a batch over max_batch."""
_POLLRDHUP: Final = getattr(select, "POLLRDHUP", 0x2000)
_STOP_RESERVE: Final = 0.3
"""Of the shutdown grace, at most this much is kept for closing the sessions
and the daemon's exit (see :meth:`Server.drain`)."""


class _Outbox:
    """Frames waiting for the session's writer, bounded in bytes.

    :meth:`put` waits while the queue is not empty and the frame would take
    it past ``limit`` (so one frame larger than the limit still goes, alone).
    Frames are ASCII (the encoder escapes everything else), so characters are
    bytes. An idle session's outbox holds no event: one is made only while a
    frame waits for room.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._queue: collections.deque[str] | None = None
        """Made for the first frame that waits, dropped once all are sent."""
        self._changed: trio.Event | None = None

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def empty(self) -> bool:
        return not self._queue

    def fits(self, text: str) -> bool:
        return not self._queue or self.size + len(text) <= self.limit

    async def put(self, text: str) -> None:
        while not self.fits(text):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append(text)
        self.size += len(text)

    def pop(self) -> str | None:
        """The oldest frame, or None when the outbox is empty."""
        if not self._queue:
            return None
        text = self._queue.popleft()
        if not self._queue:
            self._queue = None
        self.size -= len(text)
        self._wake()
        return text


_LANE_PATIENCE: Final = 0.05
"""A failing session's message waits at most this long for an idle loop
(see :class:`_Turns`)."""


_LANE_SHARE: Final = 0.25
"""The error lane's turns take at most about this share of the loop's time:
after a turn that kept the loop busy ``t`` seconds, the next waits
``t * (1 - share) / share`` (at most :data:`_LANE_PATIENCE`); see
:class:`_Turns`."""


_LANE_AFTER: Final = 2
"""Failed calls in a row that put a session in the error lane: a client whose
one call failed (a typo, a domain just undefined) goes on at once; a client
that retries a failing call is in the lane from its second failure, so it
never waits behind a flood for a single mistake."""


class _Turns:
    """The loop's time left over, for clients whose calls fail: the error lane.

    Every message costs the one event loop its parsing, dispatch, reply and
    send. A client whose calls fail at once (a hung domain's monitor
    refused, a domain that does not exist) and that retries at once sends
    as many as the loop takes, and Trio runs each runnable task once per
    pass of its scheduler: with 30 such clients each pass runs a step of
    each of their calls, and a call from anyone else waits that long for
    each of its own steps. So a session whose last :data:`_LANE_AFTER` calls
    failed takes a turn before it starts its next message, and a turn is given, one at a time in
    the order asked, when every other task of the daemon is blocked (Trio's
    ``wait_all_tasks_blocked``: the loop has nothing else to run), or after
    :data:`_LANE_PATIENCE` seconds at the latest. The failing clients then
    get the loop's idle time, one call at a time, whatever their number, and
    every other session's steps come round at the pace of an idle daemon.

    Idle time alone is not a share, though: given every idle moment, the
    flood keeps the daemon's process busy all the time, and the host then
    schedules it as a busy process (a probe's message waits for the process
    to get a core back, not for the loop; measured in docs/benchmarks.md,
    storm). So the turns are paced too: a turn lasts until the loop is idle
    again, and the next one waits in proportion, so that the lane takes at
    most about :data:`_LANE_SHARE` of the loop's time, and the daemon sleeps
    between turns like an idle one.
    Nothing is refused: a failing client's next call starts once the loop
    is idle (at once on an idle daemon), and its reader reads later
    (``max_client_requests`` backpressure as before). A session leaves the
    lane with its first call that succeeds.

    One task hands the turns out while sessions wait, and none otherwise.
    It never spins: it sleeps until the loop is idle.
    """

    def __init__(self, patience: float = _LANE_PATIENCE, share: float = _LANE_SHARE) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"the lane's share must be in (0, 1], not {share!r}")
        self.patience = patience
        self.share = share
        self.waited = 0
        """Turns given (statistics)."""
        self._rested_at = -math.inf
        """No turn before this time (trio clock): the rest after the last one."""
        self.nursery: trio.Nursery | None = None
        self._waiting: collections.deque[trio.Event] = collections.deque()
        self._keeping = False

    def waiting(self) -> int:
        return len(self._waiting)

    async def take(self) -> None:
        """Wait for a turn (FIFO)."""
        if self.nursery is None:  # not serving: nothing to share
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        self._waiting.append(event)
        if not self._keeping:
            self._keeping = True
            self.nursery.start_soon(self._keep)
        try:
            await event.wait()
        except BaseException:
            if not event.is_set():
                self._waiting.remove(event)
            raise

    async def _keep(self) -> None:
        try:
            while self._waiting:
                with trio.move_on_after(self.patience):
                    await trio.sleep_until(self._rested_at)
                    await wait_all_tasks_blocked()
                if not self._waiting:
                    break
                started = trio.current_time()
                self._waiting.popleft().set()
                self.waited += 1
                # The turn lasts until the loop is idle again (its call
                # answered, or waiting for something); then rest in proportion.
                with trio.move_on_after(self.patience):
                    await wait_all_tasks_blocked()
                spent = trio.current_time() - started
                rest = min(self.patience, spent * (1 - self.share) / self.share)
                self._rested_at = trio.current_time() + rest
        finally:
            self._keeping = False


@attrs.define(eq=False)
class _Session:
    id: str
    role: Role
    endpoint: str
    peer: str
    ws: trio_websocket.WebSocketConnection
    server: Server
    limiter: trio.CapacityLimiter
    """The session's call slots (``max_client_requests``), shared by single
    calls and batch items."""
    outbox: _Outbox
    stream: trio.abc.Stream | None = None
    """The transport, to notice a peer that hung up while nothing reads it."""
    reader_waiting: bool = False
    """The reader is stopped: max_client_requests messages are in flight."""
    reader_paused: trio.Event | None = None
    """Set when the reader stops (``reader_waiting``), made by whoever waits
    for that; dropped when the reader resumes."""
    connected_at: float = attrs.Factory(time.monotonic)
    in_flight: int = 0
    """Messages (single calls or batches) read and not yet answered."""
    calls: int = 0
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    nursery: trio.Nursery | None = None
    events: EventSubscription | None = None
    events_scope: trio.CancelScope | None = None
    slot_free: trio.Event | None = None
    """What the stopped reader waits for (None while it reads)."""
    failing: int = 0
    """Its calls that failed in a row; from :data:`_LANE_AFTER` on, its next
    message waits for a turn (:class:`_Turns`)."""
    writing: bool = False
    """A writer task sends the outbox (it runs only while the outbox holds frames)."""
    watched: bool = False
    """The peer watcher runs (started the first time the reader stops reading
    for anything but the next message: see :meth:`Server._watch_peer`)."""
    missed_pongs: int = 0
    """Keepalive pings in a row without a pong (see :meth:`Server._ping`)."""

    async def put(self, text: str) -> None:
        """Queue a frame in the outbox (waiting for room) and make sure a
        writer sends it."""
        await self.outbox.put(text)
        if not self.writing:
            self.writing = True
            assert self.nursery is not None
            self.nursery.start_soon(self.server._writer, self)

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
                    # Waits while the outbox is full: the driver then drops
                    # this client's events and counts them.
                    await self.put(text)

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
        self._histograms: collections.defaultdict[str, Histogram] = collections.defaultdict(
            Histogram
        )
        """Call durations per procedure, for /metrics."""
        self._accepting = True
        self._handshaking: collections.Counter[str] = collections.Counter()
        self._anonymous = 0
        self._reserve: list[int] = []
        self.turns = _Turns()
        self._messages = 0
        """Messages in flight, all sessions together."""
        self._quiet = trio.Event()
        """Set when the last message in flight ends or the last session
        closes (what :meth:`drain` waits for)."""
        self.first_served = trio.Event()
        """Set when no message is in flight any more for the first time (the
        first call answered), or a call needs a domain's job (it may wait for
        a reconnect): a reconnect's supervisors wait for it."""
        self.close_by = math.inf
        """When closing handshakes are cut short (set by :meth:`drain`)."""
        """The loop's share among the sessions' readers."""
        self._fd_lock = trio.Lock()
        self._ping_times: list[tuple[float, int, weakref.ref[_Session]]] = []
        """When each session's next keepalive ping is due (a heap)."""
        self._ping_order = itertools.count()
        self._pinger_wake = trio.Event()
        self._pinger_until = -math.inf
        """The keepalive task sleeps until then (woken for an earlier ping)."""
        self._openrpc: dict[str, Any] | None = None
        self._max_answers = max(config.max_batch + 1, config.max_output_bytes // _ANSWER_BYTES)
        """Items of a batch over max_batch answered one by one, at most."""
        self._anonymous_slots: collections.OrderedDict[int, _AnonymousSlot] = (
            collections.OrderedDict()
        )
        """Connections in their handshake, oldest first."""
        self.fds_exhausted = False
        """Accepting is paused: the process ran out of file descriptors."""
        self.fd_pauses = 0
        """How many times accepting paused for want of file descriptors."""
        self.anonymous_refused = 0
        """Handshakes cut short for a newcomer: max_anonymous_clients were in
        their handshake, and the oldest of them was closed."""
        self._refusals_pending = trio.Event()
        self.refusals = RefusalLog(logger, on_pending=lambda: self._refusals_pending.set())
        """Refusals at a limit, logged at most once per kind per 10 s with counts."""

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

    @property
    def max_read_clients(self) -> int:
        """Read-only clients of the API endpoint at once: ``max_clients``
        less ``reserved_write_clients``, at least 1."""
        return max(1, self.max_clients - self.config.reserved_write_clients)

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
                session.limiter.total_tokens = params.max_client_requests
                if session.slot_free is not None:
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

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener and serve each connection until cancelled
        (``nursery.start(server.run, listeners)``)."""
        self._take_reserve()
        try:
            async with trio.open_nursery() as nursery:
                self.turns.nursery = nursery
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                nursery.start_soon(self._flush_refusals)
                if self.config.keepalive_interval > 0:
                    nursery.start_soon(self._keepalive)
                task_status.started()
        finally:
            self.turns.nursery = None
            self._give_back_reserve()

    async def _flush_refusals(self) -> None:
        """Say the refusals counted since each kind's last line, every
        interval while some are pending (and sleep without waking otherwise)."""
        while True:
            await self._refusals_pending.wait()
            while self.refusals.pending:
                await trio.sleep(self.refusals.interval)
                self.refusals.flush(trio.current_time())
            self._refusals_pending = trio.Event()

    def _take_reserve(self) -> bool:
        """Hold :data:`_FD_RESERVE` descriptors; False if the process has not
        that many free (nothing is held then)."""
        while len(self._reserve) < _FD_RESERVE:
            try:
                self._reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                self._give_back_reserve()
                return False
        return True

    def _give_back_reserve(self) -> None:
        while self._reserve:
            os.close(self._reserve.pop())

    async def _accept_loop(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _FD_ERRNOS:
                    raise
                await self._wait_for_fds(exc)
                continue
            if self.fds_exhausted:
                self.fds_exhausted = False
                logger.warning("file descriptors available again: accepting connections")
            nursery.start_soon(self._handle_stream, stream)

    async def _wait_for_fds(self, exc: OSError) -> None:
        """Out of descriptors: give the reserve to the daemon's own work, stop
        accepting (pending connections wait in the kernel's backlog) for at
        least :data:`_FD_RETRY` and until the reserve can be taken again.
        Said once per episode (until an accept succeeds), not once per accept."""
        async with self._fd_lock:
            if not self.fds_exhausted:
                self.fds_exhausted = True
                self.fd_pauses += 1
                logger.warning(
                    "out of file descriptors (%s): not accepting connections until %d are free",
                    os.strerror(exc.errno or errno.EMFILE),
                    _FD_RESERVE,
                )
            self._give_back_reserve()
            await trio.sleep(_FD_RETRY)
            while not self._take_reserve():
                await trio.sleep(_FD_RETRY)

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        """One connection, from accept to close; its socket is closed on return."""
        try:
            if self._anonymous >= self.config.max_anonymous_clients:
                # Evict the oldest handshake, not the newcomer: a real client
                # finishes its handshake in milliseconds, a stalled one sits on
                # its slot, so refusing newcomers would lock real clients out.
                _, oldest = self._anonymous_slots.popitem(last=False)
                oldest.evict()
                self.anonymous_refused += 1
                self.refusals.refused(
                    "max_anonymous_clients",
                    f"the oldest of {self.config.max_anonymous_clients} connections in their "
                    "handshake closed for a newcomer",
                    trio.current_time(),
                )
            slot = _AnonymousSlot(self)
            try:
                await self._connection(stream, slot)
            finally:
                slot.release()
        except Exception:
            # A failure here must end this connection only, never the listener.
            logger.exception("client connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.abc.Stream, slot: _AnonymousSlot) -> None:
        # The request head is read here first: a plain HTTP GET (/metrics,
        # the console) is answered by _http; an upgrade goes on to
        # trio-websocket with the bytes read put back in front.
        deadline = trio.current_time() + self.config.handshake_timeout
        head = None
        # Eviction (a newcomer while every anonymous slot is taken) ends the
        # phase in progress: reading the head, serving a GET or the handshake.
        with slot.phase(), trio.move_on_at(deadline) as head_scope:
            head = await _http.read_head(stream)
        if head_scope.cancelled_caught:
            self._refuse_slow_handshake()
        if head is None:
            return
        http_request = _http.parse_head(head)
        if http_request is None:
            with slot.phase(), trio.move_on_at(deadline):
                await _http.respond(stream, 400, b"not an HTTP/1.1 request\n")
            return
        if not _http.is_upgrade(http_request):
            with slot.phase(), trio.move_on_at(deadline):
                await _http.serve_http(self, stream, http_request, _http.peer_host(stream))
            return
        peer = _peer_name(stream)
        host = (_http.header(http_request, b"host") or b"").decode("latin-1").strip().lower()
        # The parsed head is not kept for the session's lifetime.
        del http_request
        wsconn = WSConnection(ConnectionType.SERVER)
        edge = _EdgeStream(stream, head, peer, wsconn, self.config.max_message_size)
        ws = trio_websocket.WebSocketConnection(
            edge,
            wsconn,
            message_queue_size=1,
            max_message_size=self.config.max_message_size,
        )
        edge.ws = ws
        async with trio.open_nursery() as conn_nursery:
            # trio-websocket's reader for this connection: it runs until the
            # stream is closed, so the closing handshake completes in the session.
            conn_nursery.start_soon(ws._reader_task)
            session = await self._open_session(ws, host, slot, deadline, edge)
            if session is not None:
                # Nothing of the handshake is kept for the session's lifetime.
                del head, head_scope
                _drop_handshake(ws)
                session.stream = stream
                await self._session(session)
            conn_nursery.cancel_scope.cancel()

    async def _open_session(
        self,
        ws: trio_websocket.WebSocketConnection,
        host: str,
        slot: _AnonymousSlot,
        deadline: float,
        edge: _EdgeStream | None = None,
    ) -> _Session | None:
        """The WebSocket handshake (trio-websocket's reader runs): the session
        registered, or None if the connection was refused, left or ran out
        of time. (A method of its own, so that what it holds, such as the
        request and its headers, goes when it returns.)"""
        session: _Session | None = None
        with slot.phase(), trio.move_on_at(deadline) as handshake_scope:
            async with trio.open_nursery() as handshake:
                # A peer that leaves before its request is gone now, not
                # at the deadline.
                handshake.start_soon(_cancel_when_closed, ws, handshake.cancel_scope)
                try:
                    request = await ws._get_request()
                    accepted = await self._handshake(request, host)
                    if accepted is not None:
                        session = self._register(accepted)
                        if edge is not None:
                            edge.client = session.id
                        slot.release()  # no longer anonymous: never evicted
                except (trio_websocket.ConnectionClosed, trio_websocket.HandshakeError):
                    pass
                handshake.cancel_scope.cancel()
        if handshake_scope.cancelled_caught:
            self._refuse_slow_handshake()
        slot.release()
        return session

    def _refuse_slow_handshake(self) -> None:
        self.refusals.refused(
            "handshake_timeout",
            f"a connection with no handshake within {self.config.handshake_timeout:g} s",
            trio.current_time(),
        )

    def _origin_allowed(self, request: trio_websocket.WebSocketRequest, host: str) -> bool:
        headers = {key.lower(): value for key, value in request.headers}
        if b"origin" not in headers:
            return True
        origin = headers[b"origin"].decode("latin-1").strip().lower()
        if origin in self.config.allowed_origins:
            return True
        # The daemon's own console page (GET /): same origin as this request,
        # when the Host is an address or localhost (a DNS name could be
        # rebound to this listener; list such origins in allowed_origins).
        return _http.own_origin(origin, host)

    def _authenticate(self, request: trio_websocket.WebSocketRequest) -> Role | None:
        """The token of the ``Authorization`` header, else of a ``bearer.``
        subprotocol; the role it grants, or None."""
        if self.tokens is None:
            return Role.ADMIN
        for key, value in request.headers:
            if key.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token:
                    return self.tokens.role_for(token.strip())
                return None
        for proposed in request.proposed_subprotocols:
            if proposed.startswith(BEARER_PREFIX) and len(proposed) > len(BEARER_PREFIX):
                return self.tokens.role_for(proposed[len(BEARER_PREFIX) :])
        return None

    async def _handshake(
        self, request: trio_websocket.WebSocketRequest, host: str = ""
    ) -> _Accepted | None:
        path = request.path.split("?", 1)[0]
        if path not in ("/", "/admin"):
            await request.reject(404, body=b"no such endpoint: use / or /admin\n")
            return None
        if sum(1 for key, _ in request.headers if key.lower() == b"origin") > 1:
            await request.reject(400, body=b"more than one Origin header\n")
            return None
        if not self._origin_allowed(request, host):
            await request.reject(403, body=b"this Origin is not in server.allowed_origins\n")
            return None
        offered = request.proposed_subprotocols
        bearer = any(p.startswith(BEARER_PREFIX) for p in offered)
        if bearer and SUBPROTOCOL not in offered:
            await request.reject(
                400, body=b"offer the trioctl.v1 subprotocol with bearer.<token>\n"
            )
            return None
        if not self._accepting:
            await request.reject(503, body=b"the daemon is shutting down\n")
            return None
        endpoint = "admin" if path == "/admin" else "api"
        limit = self.config.admin_max_clients if endpoint == "admin" else self.max_clients
        current = sum(1 for s in self._sessions.values() if s.endpoint == endpoint)
        if current + self._handshaking[endpoint] >= limit:
            which = "admin_max_clients" if endpoint == "admin" else "max_clients"
            self.refusals.refused(
                which, f"a client while {current} were connected", trio.current_time()
            )
            await request.reject(503, body=f"too many clients ({which})\n".encode())
            return None
        role = self._authenticate(request)
        if role is None:
            await request.reject(401, body=b"a valid bearer token is required\n")
            return None
        if endpoint == "admin" and role < Role.ADMIN:
            await request.reject(403, body=b"/admin needs an admin token\n")
            return None
        if endpoint == "api" and role == Role.READ:
            reads = sum(1 for s in self._sessions.values() if s.role == Role.READ)
            if reads + self._handshaking["read"] >= self.max_read_clients:
                await request.reject(
                    503, body=b"too many read-only clients (max_clients - reserved_write_clients)\n"
                )
                return None
        # Count this client from here on: concurrent handshakes must not all
        # pass the limit check while none is registered yet.
        kinds = (endpoint, "read") if endpoint == "api" and role == Role.READ else (endpoint,)
        self._handshaking.update(kinds)
        try:
            ws = await request.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        except BaseException:
            self._handshaking.subtract(kinds)
            raise
        try:
            remote = request.remote
            peer = str(remote) if isinstance(remote, str) else f"{remote.address}:{remote.port}"
        except OSError:
            peer = "?"
        return _Accepted(ws, role, endpoint, peer)

    def _register(self, accepted: _Accepted) -> _Session:
        session = _Session(
            f"c{next(self._ids)}",
            accepted.role,
            accepted.endpoint,
            accepted.peer,
            accepted.ws,
            self,
            trio.CapacityLimiter(self.max_client_requests),
            _Outbox(self.config.max_output_bytes),
        )
        self._sessions[session.id] = session
        self._handshaking[accepted.endpoint] -= 1
        if accepted.endpoint == "api" and accepted.role == Role.READ:
            self._handshaking["read"] -= 1
        log(
            logger, logging.DEBUG, "client %s connected from %s as %s",
            session.id, session.peer, session.role.name.lower(),
            event="client_connected", client=session.id, peer=session.peer,
            role=session.role.name.lower(), endpoint=session.endpoint,
        )  # fmt: skip
        return session

    async def _session(self, session: _Session) -> None:
        ws = session.ws
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    session.nursery = nursery
                    if self.config.keepalive_interval > 0:
                        self._schedule_ping(
                            session, trio.current_time() + self.config.keepalive_interval
                        )
                    await self._read_loop(session, nursery)
        finally:
            session.nursery = None
            session.unsubscribe()
            close_by = min(trio.current_time() + 1, self.close_by)
            with trio.CancelScope(shield=True), trio.move_on_at(close_by):
                await ws.aclose(_CLOSE_GOING_AWAY if session.scope.cancel_called else 1000)
            # Only now: drain() waits for this, while the WebSocket readers
            # that complete the closing handshake still run.
            del self._sessions[session.id]
            if not self._sessions:
                self._quiet.set()
            log(
                logger, logging.DEBUG, "client %s disconnected after %d calls",
                session.id, session.calls,
                event="client_disconnected", client=session.id, calls=session.calls,
            )  # fmt: skip

    def _watch(self, session: _Session, nursery: trio.Nursery) -> None:
        """Start the session's peer watcher unless it runs: the reader is
        about to stop reading for something other than the next message."""
        if not session.watched:
            session.watched = True
            nursery.start_soon(self._watch_peer, session)

    async def _watch_peer(self, session: _Session) -> None:
        """Cancel the session as soon as its peer is gone.

        While the session's reader waits for the next message, trio-websocket
        ends that wait when the peer closes, resets or sends EOF, and the
        reader cancels the session: an idle session needs no watcher. The
        watcher starts the first time the reader stops reading for anything
        else (all its slots in flight, or a turn of the error lane), and runs
        until the session ends. It waits for trio-websocket's reader to see
        the close, without waking. While the session's reader is stopped by
        backpressure (all its slots in flight, or the outbox full),
        trio-websocket's reader is stopped too, behind the one message it
        holds, and sees nothing: then, and only then, the socket itself is
        asked every :data:`_HANGUP_POLL` seconds whether the peer hung up
        (``POLLRDHUP``, which shows even behind unread data). An idle session
        costs no wake-ups.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._poll_hangup_while_paused, session, nursery.cancel_scope)
            await _cancel_when_closed(session.ws, nursery.cancel_scope)
        session.scope.cancel()

    async def _poll_hangup_while_paused(self, session: _Session, done: trio.CancelScope) -> None:
        while True:
            if not session.reader_waiting:
                if session.reader_paused is None:
                    session.reader_paused = trio.Event()
                await session.reader_paused.wait()
                continue
            await trio.sleep(_HANGUP_POLL)
            if session.reader_waiting and _peer_hung_up(session.stream):
                log(
                    logger, logging.INFO, "client %s hung up while its calls ran", session.id,
                    event="client_hung_up", client=session.id,
                )  # fmt: skip
                done.cancel()
                return

    async def _send(self, session: _Session, text: str) -> None:
        """Send a reply: at once from the caller's task while nothing waits
        in the outbox (saving the hand-off to the writer, one scheduler pass
        per call), else through the outbox behind what waits there.

        A reply sent here holds its message's slot (``in_flight``) until the
        peer took it, so a peer that does not read stops the session's
        reader as a full outbox does; concurrent sends are serialized by
        trio-websocket's stream lock, each frame whole.
        """
        if not session.outbox.empty():
            await session.put(text)
            return
        try:
            await session.ws.send_message(text)
        except trio_websocket.ConnectionClosed:
            session.scope.cancel()

    async def _writer(self, session: _Session) -> None:
        """Send the outbox until it is empty, then end (:meth:`_Session.put`
        starts the next writer)."""
        try:
            while (text := session.outbox.pop()) is not None:
                try:
                    await session.ws.send_message(text)
                except trio_websocket.ConnectionClosed:
                    session.scope.cancel()
                    return
        finally:
            session.writing = False

    def _schedule_ping(self, session: _Session, when: float) -> None:
        """Have the keepalive task ping ``session`` at ``when``."""
        heapq.heappush(self._ping_times, (when, next(self._ping_order), weakref.ref(session)))
        if when < self._pinger_until:
            self._pinger_wake.set()

    async def _keepalive(self) -> None:
        """One task for every session's keepalive: it sleeps until the next
        session's ping is due (a heap of due times) and starts that ping in
        the session's nursery (:meth:`_ping`), which schedules the next one.
        An idle session holds one heap entry between its pings, not a task."""
        heap = self._ping_times
        while True:
            self._pinger_wake = trio.Event()
            if not heap:
                self._pinger_until = math.inf
                await self._pinger_wake.wait()
                continue
            when = heap[0][0]
            if when > trio.current_time():
                self._pinger_until = when
                with trio.move_on_at(when):
                    await self._pinger_wake.wait()
                continue
            self._pinger_until = -math.inf
            session = heapq.heappop(heap)[2]()
            if session is not None and session.nursery is not None:
                # (A session's nursery is set to None as it closes, before
                # this task can run again; a session must never end the server.)
                with contextlib.suppress(RuntimeError):
                    session.nursery.start_soon(self._ping, session)

    async def _ping(self, session: _Session) -> None:
        """A ping every ``keepalive_interval``; ``keepalive_count`` pings in a
        row without a pong close the connection: a silent peer is gone after
        ``interval * (count + 1)`` seconds, as with libvirt's keepalive. Pings
        missed while the session's reader is stopped by backpressure do not
        count (the pong cannot be read then). One ping: it waits for its pong
        until the next ping is due, then schedules that one."""
        deadline = trio.current_time() + self.config.keepalive_interval
        with trio.move_on_at(deadline) as scope:
            try:
                await session.ws.ping()
            except trio_websocket.ConnectionClosed:
                session.scope.cancel()
                return
        if not scope.cancelled_caught:
            session.missed_pongs = 0
        elif not session.reader_waiting:
            # (With the reader stopped, all its slots are in flight and the
            # client sent more: the connection's reader waits behind that
            # message and cannot see the pong. The watcher covers a peer
            # that hangs up then.)
            session.missed_pongs += 1
            missed = session.missed_pongs
            if missed >= self.config.keepalive_count:
                log(
                    logger, logging.INFO, "client %s missed %d keepalive pongs: closing",
                    session.id, missed,
                    event="keepalive_timeout", client=session.id, missed=missed,
                )  # fmt: skip
                with trio.move_on_after(1):
                    await session.ws.aclose(_CLOSE_POLICY, "keepalive timeout")
                session.scope.cancel()
                return
        self._schedule_ping(session, deadline)

    async def _read_loop(self, session: _Session, nursery: trio.Nursery) -> None:
        while True:
            # Backpressure: a message (a call or a whole batch) holds its
            # slot until its reply is in the outbox; beyond
            # max_client_requests, stop reading.
            while session.in_flight >= self.max_client_requests:
                self._watch(session, nursery)
                free = session.slot_free = trio.Event()
                session.reader_waiting = True
                if session.reader_paused is not None:
                    session.reader_paused.set()
                try:
                    await free.wait()
                finally:
                    session.reader_waiting = False
                    session.slot_free = session.reader_paused = None
            try:
                message = await session.ws.get_message()
            except trio_websocket.ConnectionClosed:
                session.scope.cancel()
                return
            if session.failing >= _LANE_AFTER:
                # The error lane: clients that keep failing get the loop's
                # idle time (see _Turns).
                self._watch(session, nursery)
                await self.turns.take()
            if len(message) < _LARGE:
                incoming = rpc.parse_request_text(
                    message,
                    max_size=self.config.max_message_size,
                    max_batch=self.config.max_batch,
                    max_answers=self._max_answers,
                )
            else:
                # A large batch is decoded in steps, letting the other
                # sessions run between them.
                incoming = await _paused(
                    rpc.parse_request_steps(
                        message,
                        max_size=self.config.max_message_size,
                        max_batch=self.config.max_batch,
                        max_answers=self._max_answers,
                    )
                )
            del message
            session.in_flight += 1
            self._messages += 1
            if self._immediate(incoming):
                # A call that never waits (get_version, a cached read): run
                # here, saving a task and its scheduler passes per call. It
                # goes through the same path (slot, table, role, deadline,
                # worker token); the next message is read once it is answered.
                # Meanwhile the reader counts as stopped, as under
                # backpressure (keepalive: see _ping): such a call waits only
                # for a worker token, and at most its deadline.
                session.reader_waiting = True
                if session.reader_paused is not None:
                    session.reader_paused.set()
                try:
                    await self._handle_message(session, incoming)
                finally:
                    session.reader_waiting = False
                    session.reader_paused = None
            else:
                nursery.start_soon(self._handle_message, session, incoming)

    def _immediate(self, incoming: rpc.Incoming) -> bool:
        """Whether ``incoming`` is one call of an ``immediate`` procedure."""
        items = incoming.items
        if len(items) != 1:
            return False
        item = items[0]
        if isinstance(item, rpc.Invalid):
            return False
        proc = self.table.get(item.method)
        return proc is not None and proc.immediate

    async def _handle_message(self, session: _Session, incoming: rpc.Incoming) -> None:
        try:
            replies: list[rpc.Response | None] = [None] * len(incoming.items)
            items = incoming.items
            if len(items) == 1 and not isinstance(items[0], rpc.Invalid):
                # One call (or a batch of one): run it in this task; a task
                # and a nursery per call cost about a tenth of a no-op call.
                await self._call(session, items[0], replies, 0)
            else:
                async with trio.open_nursery() as calls:
                    for index, item in enumerate(items):
                        if isinstance(item, rpc.Invalid):
                            # Refused before it runs (parse error, Invalid
                            # Request, batch over its bound): a failing call
                            # all the same, so the error lane (_Turns).
                            session.failing += 1
                            replies[index] = item.response()
                            if not (index + 1) % rpc.STEP:
                                # (Tens of thousands of them: let others run.)
                                await trio.lowlevel.checkpoint()
                        else:
                            calls.start_soon(self._call, session, item, replies, index)
            if incoming.expects_reply:
                answers = [r for r in replies if r is not None]
                if not incoming.batch:
                    text = rpc.encode_responses(answers[0] if answers else None)
                else:
                    text = await _paused(rpc.encode_responses_steps(answers))
                if text is not None:
                    await self._send(session, text)
        finally:
            session.in_flight -= 1
            if session.slot_free is not None:
                session.slot_free.set()
            self._messages -= 1
            if not self._messages:
                self._quiet.set()
                self.first_served.set()

    async def _call(
        self,
        session: _Session,
        item: rpc.Request | rpc.Notification,
        replies: list[rpc.Response | None],
        index: int,
    ) -> None:
        call_id = item.id if isinstance(item, rpc.Request) else None
        limiter = session.limiter
        try:
            # A free slot is taken without a scheduler pass (the reply's send
            # is this call's checkpoint); else wait for one.
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await limiter.acquire()
        try:
            start = time.perf_counter()
            proc = None
            try:
                if item.method == DISCOVER:
                    result = self._discover(item.params)
                else:
                    proc = self._lookup(session, item.method)
                    result = await self._invoke(session, proc, item.params)
                response = rpc.Response.result(call_id, result)
                session.failing = 0
            except TrioctlError as exc:
                session.failing += 1
                self._errors[exc.reason] += 1
                if exc.reason in _REFUSALS:
                    self.refusals.refused(
                        _REFUSALS[exc.reason],
                        exc.message,
                        trio.current_time(),
                        client=session.id,
                        procedure=item.method,
                        domain=exc.data.get("domain"),
                        reason=exc.reason,
                    )
                # Without its traceback: the reply needs the error's reason,
                # message and data, and a traceback kept by the reply would
                # hold this frame, which holds the reply: a reference cycle
                # per failed call (traceback, frames, cancel scopes, the job's
                # objects: about 45 objects), left for the cyclic collector.
                # A flood of failing calls made its young collections, each
                # tens of milliseconds, the storm's p99 (docs/benchmarks.md,
                # storm).
                response = rpc.Response.error(call_id, exc.with_traceback(None))
            except Exception as exc:
                log(
                    logger, logging.ERROR, "internal error in %s", item.method, exc_info=True,
                    event="internal_error", client=session.id, procedure=item.method,
                    reason=InternalError.reason,
                )  # fmt: skip
                session.failing += 1
                self._errors[InternalError.reason] += 1
                response = rpc.Response.error(
                    call_id, InternalError(f"internal error: {type(exc).__name__}: {exc}")
                )
            finally:
                session.calls += 1
            if proc is not None:
                self._calls[proc.name] += 1
                elapsed = time.perf_counter() - start
                self._latency[proc.priority].append(elapsed)
                self._histograms[proc.name].observe(elapsed)
            if isinstance(item, rpc.Request):
                replies[index] = response
        finally:
            limiter.release()

    def _discover(self, params: rpc.Params) -> Any:
        if params:
            raise InvalidParams(f"{DISCOVER} takes no parameters", method=DISCOVER)
        if self._openrpc is None:
            # Built from the procedure table on first use, as gen_schemas
            # writes it to schemas/openrpc.json.
            from ._tools.gen_schemas import openrpc_document

            self._openrpc = openrpc_document()
        return self._openrpc

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
            raw = positional_params(proc, raw)
        params: Any = structure(raw if raw is not None else {}, proc.params)
        ctx = CallContext(self, session)
        with trio.move_on_after(proc.deadline) as scope:
            if not self.driver.loaded.is_set():
                # open_daemon listens while the domains load: wait for them.
                await self.driver.loaded.wait()
            if proc.job is not None:
                name = params.name
                self.driver.get_info(name)  # NO_DOMAIN before queueing for a job
                # It may wait for a reconnect: supervisors no longer wait.
                self.first_served.set()
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
                    with_job=True,
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
        """Stop accepting, let calls in flight finish, then close every
        session: all of it within ``grace`` seconds.

        Calls in flight get the grace less a reserve (a quarter of it, at
        most :data:`_STOP_RESERVE`); then they are cancelled and the sessions
        close, a closing handshake the peer does not answer cut short half
        the reserve before the end. Returns by a quarter of the reserve
        before the end, which is left to the daemon's own exit.
        """
        self._accepting = False
        deadline = trio.current_time() + grace
        reserve = min(_STOP_RESERVE, grace / 4)
        self.close_by = deadline - reserve / 2
        with trio.move_on_at(deadline - reserve):
            while self._messages:
                self._quiet = trio.Event()
                await self._quiet.wait()
        for session in list(self._sessions.values()):
            session.scope.cancel()
        # Let each session finish its closing handshake while the WebSocket
        # reader tasks still run (they live in the server nursery).
        with trio.move_on_at(deadline - reserve / 4):
            while self._sessions:
                self._quiet = trio.Event()
                await self._quiet.wait()


_LARGE: Final = 64 * 1024
"""A message at least this long is decoded in steps (a batch of about 1,000
short calls or more)."""


async def _paused(steps: Generator[None, None, T]) -> T:
    """Run a sans-I/O generator of pauses (see :data:`rpc.STEP`) to its end,
    letting the other tasks run at each pause; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result
        await trio.lowlevel.checkpoint()


def _percentiles(samples: Sequence[float]) -> LatencyPercentiles:
    if not samples:
        return LatencyPercentiles(0, 0.0, 0.0, 0.0)
    ordered = sorted(samples)
    n = len(ordered)

    def pick(q: float) -> float:
        return round(ordered[min(n - 1, math.ceil(q * n) - 1)] * 1000, 3)

    return LatencyPercentiles(n, pick(0.50), pick(0.99), round(ordered[-1] * 1000, 3))


DISCOVER: Final = "rpc.discover"

_REFUSALS: Final = {JobQueueFull.reason: "job_queue", ServerBusy.reason: "server_busy"}
"""Error reasons of calls refused at a limit, to the kind of their log line."""


def positional_params(proc: Procedure, values: list[Any]) -> dict[str, Any]:
    """Map a params array onto ``proc``'s parameters in table order
    (JSON-RPC 2.0 section 4.2); ``[]`` means none.

    Raises:
        InvalidParams: more values than the procedure has parameters.
    """
    names = [field.name for field in attrs.fields(proc.params)]
    if len(values) > len(names):
        order = ", ".join(names) if names else "none"
        raise InvalidParams(
            f"{proc.name} takes at most {len(names)} positional parameters ({order}), "
            f"got {len(values)}",
            method=proc.name,
            order=names,
        )
    return dict(zip(names, values, strict=False))


_CLOSE_SEND: Final = 1.0
"""How long a close frame for a protocol error may take to go out."""
_UNSENDABLE: Final = frozenset({1005, 1006, 1015})
"""Close codes a close frame must not carry (RFC 6455 section 7.4.1)."""


def _close_frame(code: int, reason: str) -> bytes:
    """A server's (unmasked) close frame: ``code`` and at most 123 bytes of
    ``reason``, ASCII."""
    payload = code.to_bytes(2, "big") + reason.encode("ascii", "replace")[:123]
    return bytes([0x88, len(payload)]) + payload


class _EdgeStream(_http.PrefixedStream):
    """The connection's stream, as trio-websocket reads and writes it, with the
    two protocol failures trio-websocket and wsproto leave silent answered
    with a close frame and a log line.

    * A frame header declaring a message over ``max_message_size`` (text or
      binary frame and its continuations, in bytes): 1009 at the header
      (:class:`~trioctl._sansio.wsframes.MessageSizes`), before any of its
      payload is read or buffered; then trio-websocket sees the end of the
      stream.
    * A frame wsproto refuses (invalid UTF-8 in a text message: 1007; an
      unmasked client frame, a bad opcode or close code: 1002): wsproto
      reports it as a close from the peer, and trio-websocket closes the
      stream without a close frame. :meth:`aclose` sees it (the connection
      closed, wsproto's state still ``OPEN``: no close frame went either
      way) and sends one with wsproto's code and reason first.

    Only once the session is registered (``client`` set): a failure during
    the handshake just ends the connection. While the close frame goes out,
    any other send is refused (trio-websocket then reports the connection
    closed), and a send in progress is waited for, so frames never interleave.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        head: bytes,
        peer: str,
        wsconn: WSConnection,
        max_message_size: int,
    ) -> None:
        super().__init__(stream, head, peer)
        self.wsconn = wsconn
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.client: str | None = None
        """The session's id, once registered."""
        self.refused: tuple[int, str] | None = None
        """The close code and reason the connection was refused with."""
        end = head.find(b"\r\n\r\n")
        self.sizes = MessageSizes(max_message_size, skip=end + 4 if end >= 0 else len(head))
        self._sending = False
        self._sent: trio.Event | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await super().receive_some(max_bytes)
        if data and self.refused is None:
            size = self.sizes.feed(data)
            if size is not None:
                limit = self.sizes.limit
                await self.refuse(1009, f"message of {size} bytes over max_message_size {limit}")
                return b""
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.refused is not None:
            raise trio.ClosedResourceError("connection refused for a protocol error")
        self._sending = True
        try:
            await self.stream.send_all(data)
        finally:
            self._sending = False
            if self._sent is not None:
                self._sent.set()
                self._sent = None

    async def aclose(self) -> None:
        try:
            ws = self.ws
            closed = ws.closed if ws is not None else None
            if (
                self.refused is None
                and self.client is not None
                and closed is not None
                and self.wsconn.state is ConnectionState.OPEN
            ):
                # wsproto refused a frame (it reports that as a close from
                # the peer, but no close frame came, nor went).
                await self.refuse(closed.code, closed.reason or "")
        finally:
            await super().aclose()

    async def refuse(self, code: int, reason: str) -> None:
        """Log, and send a close frame with ``code`` once no other frame is
        being sent (at most :data:`_CLOSE_SEND` seconds); refuse other sends
        from now on."""
        self.refused = (code, reason)
        log(
            logger, logging.INFO, "client %s (%s): protocol error, closing with %d: %s",
            self.client or "in handshake", repr(self), code, reason,
            event="client_protocol_error", client=self.client, peer=repr(self),
            code=code, detail=reason,
        )  # fmt: skip
        if self.client is None:
            return
        if code in _UNSENDABLE:
            code = 1002
        with trio.move_on_after(_CLOSE_SEND):
            while self._sending:
                if self._sent is None:
                    self._sent = trio.Event()
                await self._sent.wait()
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(_close_frame(code, reason))


class _AnonymousSlot:
    """A connection counted against ``max_anonymous_clients`` until its
    handshake ends; :meth:`release` is idempotent. :meth:`evict` ends the
    handshake (its connection is then closed) and frees the slot."""

    __slots__ = ("_number", "_scope", "_server", "evicted")
    _numbers = itertools.count()

    def __init__(self, server: Server) -> None:
        self._server: Server | None = server
        self._number = next(self._numbers)
        self._scope: trio.CancelScope | None = None
        self.evicted = False
        server._anonymous += 1
        server._anonymous_slots[self._number] = self

    def phase(self) -> trio.CancelScope:
        """A cancel scope for the next phase of the anonymous connection
        (reading its request head, serving a GET, the WebSocket handshake):
        eviction cancels the phase in progress, or the next one at once."""
        scope = self._scope = trio.CancelScope()
        if self.evicted:
            scope.cancel()
        return scope

    def evict(self) -> None:
        self.evicted = True
        if self._scope is not None:
            self._scope.cancel()
        self.release()

    def release(self) -> None:
        if self._server is not None:
            self._server._anonymous -= 1
            self._server._anonymous_slots.pop(self._number, None)
            self._server = None
            # Out of _anonymous_slots: never evicted now, nor its phase cancelled.
            self._scope = None


@attrs.frozen
class _Accepted:
    ws: trio_websocket.WebSocketConnection
    role: Role
    endpoint: str
    peer: str


async def _cancel_when_closed(
    ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope
) -> None:
    """Cancel ``scope`` as soon as the connection is closed, by either side:
    a close frame, EOF or a reset all end trio-websocket's reader, which then
    sets its close event."""
    closed = getattr(ws, "_close_handshake", None)
    if isinstance(closed, trio.Event):
        await closed.wait()
    else:  # pragma: no cover - another trio-websocket: poll the public state
        while ws.closed is None:
            await trio.sleep(0.25)
    scope.cancel()


_OPENED: Final = H11Handshake(ConnectionType.SERVER)
"""An opening handshake with no events, shared by every open connection (see
:func:`_drop_handshake`)."""


def _drop_handshake(ws: trio_websocket.WebSocketConnection) -> None:
    """Let go of a connection's finished opening handshake.

    wsproto keeps it (an h11 connection with its buffers and state, an event
    queue) for the connection's lifetime, about 2 KB, though once the
    WebSocket is open it only asks it for events, of which it makes no more:
    bytes that follow the request go to the open connection. It is replaced
    by :data:`_OPENED`, which has none either. These are wsproto's and
    trio-websocket's private attributes: if a version lacks them, the
    handshake is simply kept."""
    try:
        conn = ws._wsproto
        if conn.connection is not None and not conn.handshake._events:
            conn.handshake = _OPENED
    except AttributeError:
        return


def _peer_name(stream: trio.abc.Stream) -> str:
    """``address:port`` of a socket stream's peer (through TLS), else ``?``."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            address, port, *_ = stream.socket.getpeername()
            return f"{address}:{port}"
        except (OSError, ValueError):
            pass
    return "?"


def _peer_hung_up(stream: trio.abc.Stream | None) -> bool:
    """Whether the peer of a socket stream closed or reset it, even with
    unread data in front of the FIN (Linux ``POLLRDHUP``). False for streams
    without a socket."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return False
    try:
        fd = stream.socket.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, _POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


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
    listeners: list[trio.abc.Listener[Any]] = []
    sockets = await trio.open_tcp_listeners(port, host=host)
    server.port = sockets[0].socket.getsockname()[1]
    for sock in sockets:
        listeners.append(sock if ssl_context is None else trio.SSLListener(sock, ssl_context))
    try:
        async with open_service_nursery() as nursery:
            await nursery.start(server.run, listeners)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
