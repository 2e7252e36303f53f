"""The Trio shell around the sans-I/O QMP core: one monitor connection.

:func:`open_monitor` connects to one QEMU's QMP socket and negotiates; the
monitor lives exactly as long as the ``async with`` block
(:func:`connect_monitor`: until it is lost or :meth:`Monitor.close`).

A monitor over a socket has no task of its own. The run's **hub**
(:class:`_Hub`: one Trio system task, a nested ``select.epoll`` holding every
monitor's socket) reads each ready monitor: one read, every whole message of
it fed to :class:`~trioctl._sansio.qmp.QmpConnection`, each reply routed to
the caller waiting for its id and each event to the subscribers; EOF, a
reset or a protocol violation closes the monitor. It reads one buffer per
monitor per pass and waits again, so a monitor flooding cannot hold the
loop.

* **Reads.** The caller that is the only one waiting reads its reply itself
  (:meth:`Monitor._read_directly`: ``wait_readable`` on the socket while the
  hub's registration is paused): a round trip wakes one task, the caller.
  Any other caller parks until its reply is routed to it.
* **Handshake.** Over a socket it runs on the descriptor (wait readable,
  one read per message), before the hub reads the monitor. Every read of a
  socket goes through the hub's one receive buffer (:meth:`_Hub.read`).
* **Writes.** A caller writes its encoded command itself, synchronously (no
  checkpoint, so a cancellation never leaves half a line on the wire), when
  nothing is queued and the socket takes all of it; otherwise the rest is
  queued and the hub sends everything queued, in order, when the socket is
  writable again. (Many tasks writing under a lock were 3.5-4x slower than
  one writer on this machine.)

Over a stream that is not a socket (tests' memory streams) a reader task
and a writer task, started on demand, in a nursery of the block, do the
same.

:meth:`Monitor.execute` has no ``timeout=`` argument: callers put it under a
cancel scope. A cancelled caller's id is dropped; QEMU may still run the
command, and its late reply is logged and discarded when it comes (QMP spec
2.4). EOF, a reset or a protocol violation fails every waiter at once with
:class:`~trioctl.ConnectionLost`.

Event overflow policy: each subscriber has a bounded channel. The reader never
waits for a subscriber; an event that does not fit is dropped *for that
subscriber only*, and counted in ``Subscription.dropped`` and in
``MonitorStatistics.events_dropped``. Command replies never wait behind
events.

Event rate policy: :class:`EventRateLimit` is the token bucket the driver
puts in front of each domain's fan-out (``driver.max_events_per_second``),
so one QEMU flooding events cannot take the daemon's loop with notifications
to every subscriber: state tracking still sees every event; what passes the
bucket goes on to subscribers; the rest is dropped, counted and reported.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any

import attrs
import trio

from ._errors import (
    ConnectionLost,
    LocalProtocolError,
    MonitorTimeout,
    QmpCommandError,
    RemoteProtocolError,
)
from ._fanout import FanOut, Feed
from ._sansio.qmp import (
    NEED_DATA,
    Closed,
    ErrorReply,
    Event,
    Greeting,
    QmpConnection,
    QmpState,
    Return,
)
from ._util import Reply, ReplyWaiters, open_service_nursery

__all__ = [
    "EventRateLimit",
    "Monitor",
    "MonitorStatistics",
    "Subscription",
    "connect_monitor",
    "open_monitor",
    "open_monitor_stream",
]

logger = logging.getLogger(__name__)


class EventRateLimit:
    """A token bucket: ``rate`` events a second on average, bursts of up to
    ``burst``. Sans-I/O: the caller passes the time.

    ``admit(now)`` says whether one more event may pass; refused events are
    counted in :attr:`dropped` (in total) and :attr:`unreported` (since the
    last :meth:`take_unreported`). A ``rate`` of 0 admits everything.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._tokens = self.burst
        self._last: float | None = None
        self.dropped = 0
        self.unreported = 0

    def admit(self, now: float) -> bool:
        if self.rate <= 0:
            return True
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        self.unreported += 1
        return False

    def take_unreported(self) -> int:
        """Events dropped since the last call (and reset that count)."""
        count, self.unreported = self.unreported, 0
        return count


_RECEIVE_SIZE = 65536
_CLOSE_TIMEOUT = 1.0

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


class _Hub:
    """One reader for every socket monitor of a Trio run: a nested
    ``select.epoll`` on which the monitors' descriptors are registered, and
    one task (a Trio system task, started with the first monitor and ending
    with the run) that waits for that epoll with ``wait_readable`` and calls
    each ready monitor synchronously: :meth:`Monitor._on_readable` (one read,
    every whole message of it parsed, replies routed, events dispatched,
    EOF or an error closes the monitor) and :meth:`Monitor._on_writable`
    (what the socket did not take at once).

    So an idle monitor costs no task, no nursery and no cancel scope: its
    file descriptor in the epoll and its entry here. The task reads at most
    one buffer per monitor per pass and waits again (a checkpoint) before
    the next: one monitor flooding cannot hold the loop. It never raises:
    a monitor whose handler fails is closed (ConnectionLost) and logged.
    """

    __slots__ = ("_buffer", "_epoll", "_monitors", "_running", "_view")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._monitors: dict[int, Monitor] = {}
        self._running = False
        self._buffer = bytearray(_RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        """Every read of the run's monitors goes here first (see :meth:`read`)."""

    def read(self, fd: int) -> bytes:
        """One read of ``fd`` into the run's one receive buffer, returned as
        bytes of exactly the length read (b"" at EOF).

        ``os.read(fd, 65536)`` would allocate 64 KiB from the C heap for
        every read and shrink it to the few hundred bytes a QMP message
        takes: with thousands of handshakes in flight (a daemon's restart)
        that left the heap fragmented, and the daemon's RSS after a restart
        varied with how many overlapped. Raises as ``os.readv``.
        """
        count = os.readv(fd, (self._view,))
        return bytes(self._view[:count])

    def __len__(self) -> int:
        return len(self._monitors)

    def register(self, fd: int, monitor: Monitor) -> None:
        stale = self._monitors.get(fd)
        if stale is not None and stale is not monitor:
            # The descriptor was closed behind the hub's back (the kernel
            # forgot it then) and its number is reused: that monitor is gone.
            stale._close(ConnectionLost("the monitor's socket was closed"))
        try:
            self._epoll.register(fd, _IN)
        except FileExistsError:
            self._epoll.modify(fd, _IN)
        self._monitors[fd] = monitor
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="trioctl monitor reader")

    def unregister(self, fd: int, monitor: Monitor) -> None:
        """Forget ``monitor`` (only if ``fd`` is still its own)."""
        if self._monitors.get(fd) is monitor:
            del self._monitors[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed: the kernel forgot it

    def want_write(self, fd: int, monitor: Monitor, on: bool) -> None:
        if self._monitors.get(fd) is monitor:
            reading = 0 if monitor._direct else _IN
            self._epoll.modify(fd, reading | _OUT if on else reading)

    def pause(self, fd: int, monitor: Monitor, writing: bool) -> None:
        """Stop reading ``fd`` (a caller reads it); still write if ``writing``."""
        if self._monitors.get(fd) is monitor:
            self._epoll.modify(fd, _OUT if writing else 0)

    def resume(self, fd: int, monitor: Monitor, writing: bool) -> None:
        if self._monitors.get(fd) is monitor:
            self._epoll.modify(fd, _IN | _OUT if writing else _IN)

    async def _run(self) -> None:
        epoll, monitors = self._epoll, self._monitors
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, mask in epoll.poll(0):
                    monitor = monitors.get(fd)
                    if monitor is None:
                        continue
                    try:
                        if mask & _OUT:
                            monitor._on_writable()
                        if mask & ~_OUT:
                            monitor._on_readable()
                    except Exception as exc:
                        logger.exception("the monitor reader failed")
                        monitor._close(ConnectionLost(f"the monitor reader failed: {exc!r}"))
        finally:
            # The run ends (system tasks are cancelled last): nothing to read for.
            self._running = False
            for monitor in list(monitors.values()):
                monitor._close(ConnectionLost("the monitor reader stopped"))
            epoll.close()


_hubs: trio.lowlevel.RunVar[_Hub] = trio.lowlevel.RunVar("trioctl_monitor_hub")


def _hub() -> _Hub:
    try:
        hub: _Hub | None = _hubs.get()
    except LookupError:
        hub = None
    if hub is None or hub._epoll.closed:
        hub = _Hub()
        _hubs.set(hub)
    return hub


@attrs.frozen
class MonitorStatistics:
    """A snapshot of one monitor connection."""

    pending: int
    """Commands sent whose reply has not come yet."""
    commands_sent: int
    replies_dropped: int
    """Late replies (their caller had been cancelled) and replies with no id."""
    events_received: int
    events_dropped: int
    """Events that did not fit in some subscriber's buffer."""
    subscribers: int
    closed: bool


Subscription = Feed[Event]
"""One subscriber's bounded stream of events (see the overflow policy)."""


class Monitor:
    """One negotiated QMP connection. Create it with :func:`open_monitor`."""

    def __init__(self, stream: trio.abc.Stream, conn: QmpConnection) -> None:
        self._stream = stream
        self._conn = conn
        self._pending = ReplyWaiters[Return | ErrorReply]()
        self._out: list[bytes] = []
        """Bytes waiting for the writer task, in order."""
        self._writing = False
        """The writer task runs (it sends ``_out``)."""
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        """A socket's descriptor: the hub reads and writes it (None: another
        stream, served by a reader task and a writer task)."""
        self._hub: _Hub | None = None
        """The hub while the monitor is registered with it."""
        self._direct = False
        """A caller reads the socket itself (:meth:`_read_directly`)."""
        self._on_close: Callable[[], None] | None = None
        self._owns_socket = False
        """Closing the monitor closes its socket (:func:`connect_monitor`; a
        block of :func:`open_monitor` closes it as it ends)."""
        self._nursery: trio.Nursery | None = None
        self._subscribers = FanOut[Event]()
        self._handlers: list[Callable[[Event], None]] = []
        self._closed: ConnectionLost | None = None
        self._closed_event = trio.Event()
        self._commands_sent = 0
        self._replies_dropped = 0
        self._events_received = 0
        self._first_command: str | None = None
        """A command to send right behind ``qmp_capabilities`` (pipelined)."""
        self._first: (
            tuple[AbstractContextManager[Reply[Return | ErrorReply]], Reply[Return | ErrorReply]]
            | None
        ) = None
        """The pipelined command's wait (:meth:`first_reply`)."""

    @property
    def greeting(self) -> Greeting:
        """The greeting QEMU sent when the connection opened."""
        assert self._conn.greeting is not None
        return self._conn.greeting

    @property
    def closed(self) -> bool:
        """True once the connection is lost or the monitor was closed."""
        return self._closed is not None

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value.

        There is no timeout argument: put the call under a cancel scope. If you
        cancel it, QEMU may still run the command; its reply is dropped.

        Raises:
            QmpCommandError: QEMU answered with an error.
            ConnectionLost: the connection closed before the reply came, or
                was already closed.
            LocalProtocolError: ``command`` or ``arguments`` cannot be sent.
        """
        if self._closed is not None:
            # A checkpoint still: a caller that retries in a loop must not hold the loop.
            await trio.lowlevel.checkpoint()
            raise ConnectionLost(self._closed.message)
        cmd_id, wire = self._conn.send_command(command, arguments)
        # Cancelled or done, the id is no longer ours when the block ends: a
        # reply that arrives after a cancellation finds no waiter and is dropped.
        with self._pending.expect(cmd_id) as waiter:
            self._write(wire)
            self._commands_sent += 1
            if self._hub is not None and not self._direct and len(self._pending) == 1:
                reply = await self._read_directly(waiter)
            else:
                reply = await waiter.wait()
        if isinstance(reply, ErrorReply):
            raise QmpCommandError(command, reply.error_class, reply.desc)
        assert isinstance(reply, Return)
        return reply.value

    async def first_reply(self) -> Any:
        """The ``return`` value of the command :func:`connect_monitor` sent
        right behind ``qmp_capabilities`` (its ``first_command``); once.

        Raises as :meth:`execute`; LocalProtocolError: no such command, or
        its reply was asked for already.
        """
        if self._first is None or self._first_command is None:
            raise LocalProtocolError("no pipelined first command waits for its reply")
        (expect, waiter), self._first = self._first, None
        try:
            if (
                not waiter.done
                and self._hub is not None
                and not self._direct
                and len(self._pending) == 1
            ):
                reply = await self._read_directly(waiter)
            else:
                reply = await waiter.wait()
        finally:
            expect.__exit__(None, None, None)
        if isinstance(reply, ErrorReply):
            raise QmpCommandError(self._first_command, reply.error_class, reply.desc)
        assert isinstance(reply, Return)
        return reply.value

    def _negotiated(self) -> bool:
        """The negotiation's reply came (the core matched it by its id)."""
        return self._conn.state is QmpState.RUNNING

    def _negotiation(self) -> bytes:
        """The bytes of ``qmp_capabilities``, and of the first command if
        there is one: QEMU answers them in order, the negotiation first."""
        wire = self._conn.negotiate()
        if self._first_command is None:
            return wire
        cmd_id, cmd_wire = self._conn.send_command(self._first_command)
        expect = self._pending.expect(cmd_id)
        self._first = (expect, expect.__enter__())
        self._commands_sent += 1
        return wire + cmd_wire

    async def _read_directly(self, waiter: Reply[Return | ErrorReply]) -> Return | ErrorReply:
        """Wait for the reply of the only caller waiting by reading the socket
        in the caller's task: the hub lets go of the descriptor meanwhile, so
        the reply costs one wake-up (this task's) instead of two (the hub's,
        then the caller's). Whatever else comes meanwhile is handled as the
        hub would (events, replies of callers that came since, EOF); when
        the reply is here, or the caller is cancelled, the hub reads again.
        """
        assert self._hub is not None and self._fd is not None
        fd, hub = self._fd, self._hub
        self._direct = True
        hub.pause(fd, self, self._writing)
        try:
            while not waiter.done:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    # _close woke this task (see there), or the socket closed.
                    self._close(ConnectionLost("the monitor was closed"))
                    break
                self._on_readable()
        finally:
            self._direct = False
            if self._hub is not None:
                self._hub.resume(fd, self, self._writing)
        return waiter.result()

    async def wait_closed(self) -> None:
        """Return once the connection is lost or the monitor closed."""
        await self._closed_event.wait()

    @contextmanager
    def subscribe(self, max_buffer: int = 256) -> Iterator[Subscription]:
        """Receive events in a bounded buffer while the block lasts.

        Events that do not fit are dropped for this subscriber and counted.
        The channel ends (iteration stops) when the connection closes.
        """
        with self._subscribers.subscribe(max_buffer, closed=self._closed is not None) as sub:
            try:
                yield sub
            finally:
                sub.receive_channel.close()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, synchronously, when the monitor closes
        (at once if it has): EOF, a reset, a protocol violation, or
        :meth:`close`. It must not block; an exception it raises is logged."""
        if self._closed is not None:
            self._call_on_close(callback)
        else:
            self._on_close = callback

    def close(self) -> None:
        """Close the connection now (synchronous; for :func:`connect_monitor`).

        Waiting commands get :class:`~trioctl.ConnectionLost`.
        """
        self._owns_socket = isinstance(self._stream, trio.SocketStream)
        self._close(ConnectionLost("the monitor was closed"))

    @staticmethod
    def _call_on_close(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            logger.exception("a monitor close callback failed")

    def add_event_handler(self, handler: Callable[[Event], None]) -> None:
        """Call ``handler(event)`` synchronously from the reader for each event.

        The handler must not block or raise; an exception it raises is logged.
        This suits state tracking that must see every event (no overflow).
        """
        self._handlers.append(handler)

    def statistics(self) -> MonitorStatistics:
        return MonitorStatistics(
            pending=len(self._pending),
            commands_sent=self._commands_sent,
            replies_dropped=self._replies_dropped,
            events_received=self._events_received,
            events_dropped=self._subscribers.dropped,
            subscribers=len(self._subscribers),
            closed=self.closed,
        )

    # -- service tasks (run in the monitor's nursery) -------------------------------

    async def _handshake(self) -> None:
        if self._fd is not None:
            await self._handshake_socket(self._fd)
            return
        try:
            greeting = await self._next_message()
            assert isinstance(greeting, Greeting)
            await self._stream.send_all(self._negotiation())
            while self._conn.state is QmpState.NEGOTIATING:
                msg = await self._next_message()
                if isinstance(msg, Event):
                    self._dispatch_event(msg)
                elif isinstance(msg, Return | ErrorReply) and not self._negotiated():
                    self._route_reply(msg)  # a pipelined command's (not QEMU's order)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A reset (ECONNRESET, EPIPE) is not an OSError in Trio.
            raise ConnectionLost(
                f"the monitor connection failed during the handshake: {exc!r}"
            ) from None

    async def _handshake_socket(self, fd: int) -> None:
        """The handshake over a socket, on its descriptor: a wait for it to
        be readable, then one read into the run's buffer (:meth:`_Hub.read`),
        per message; the negotiation written at once (a socket just
        connected takes it). Two wake-ups of this task for the greeting and
        the negotiation's reply, none more (the stream's ``receive_some``
        adds two checkpoints to each read), and no 64 KiB allocation per read.
        """
        conn = self._conn
        try:
            greeting = await self._next_message_socket(fd)
            assert isinstance(greeting, Greeting)
            await self._send_socket(fd, self._negotiation())
            while conn.state is QmpState.NEGOTIATING:
                msg = await self._next_message_socket(fd)
                if isinstance(msg, Event):
                    self._dispatch_event(msg)
                elif isinstance(msg, Return | ErrorReply) and not self._negotiated():
                    self._route_reply(msg)  # a pipelined command's (not QEMU's order)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(
                f"the monitor connection failed during the handshake: {exc!r}"
            ) from None

    async def _next_message_socket(self, fd: int) -> Greeting | Return | ErrorReply | Event:
        conn, hub = self._conn, _hub()
        while True:
            msg = conn.next_event()
            if msg is NEED_DATA:
                await trio.lowlevel.wait_readable(fd)
                try:
                    conn.receive_data(hub.read(fd))
                except BlockingIOError:
                    pass
                continue
            if isinstance(msg, Closed):
                raise ConnectionLost("the monitor closed during the handshake")
            return msg

    @staticmethod
    async def _send_socket(fd: int, data: bytes) -> None:
        while True:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            await trio.lowlevel.wait_writable(fd)

    async def _next_message(self) -> Greeting | Return | ErrorReply | Event:
        """Used only during the handshake, before the reader runs."""
        while True:
            msg = self._conn.next_event()
            if msg is NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(_RECEIVE_SIZE))
                continue
            if isinstance(msg, Closed):
                raise ConnectionLost("the monitor closed during the handshake")
            return msg

    async def _reader(self) -> None:
        """The reader task of a monitor over a stream that is not a socket."""
        try:
            while True:
                if self._parse():
                    return
                self._conn.receive_data(await self._stream.receive_some(_RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._close(ConnectionLost(f"the monitor connection failed: {exc!r}"))

    def _parse(self) -> bool:
        """Handle every whole message received; True once the monitor is closed."""
        conn = self._conn
        try:
            while self._closed is None:
                msg = conn.next_event()
                if msg is NEED_DATA:
                    return False
                if isinstance(msg, Return | ErrorReply):
                    self._route_reply(msg)
                elif isinstance(msg, Event):
                    self._dispatch_event(msg)
                elif isinstance(msg, Closed):
                    self._close(ConnectionLost("the monitor closed the connection (EOF)"))
        except RemoteProtocolError as exc:
            self._close(ConnectionLost(f"the monitor broke the protocol: {exc}"))
        return True

    def _attach(self) -> None:
        """A socket: no task of its own, the run's hub reads and writes it."""
        assert self._fd is not None
        self._hub = _hub()
        self._hub.register(self._fd, self)
        # What came with the handshake's last read is handled now.
        self._parse()

    def _on_readable(self) -> None:
        """The hub saw the socket readable: one read, and what it completes."""
        assert self._fd is not None
        try:
            data = (self._hub or _hub()).read(self._fd)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close(ConnectionLost(f"the monitor connection failed: {exc!r}"))
            return
        self._conn.receive_data(data)
        self._parse()

    def _send_now(self, data: bytes) -> int | None:
        """Write what the socket takes at once: how much; ``None`` if the
        write failed, which closed the monitor."""
        assert self._fd is not None
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._close(ConnectionLost(f"writing to the monitor failed: {exc!r}"))
            return None

    def _on_writable(self) -> None:
        """The hub saw the full socket writable again: send what is queued."""
        assert self._fd is not None
        data = b"".join(self._out)
        sent = self._send_now(data)
        if sent is None:
            return
        if sent < len(data):
            self._out = [data[sent:]]
            return
        self._out = []
        self._writing = False
        if self._hub is not None:
            self._hub.want_write(self._fd, self, False)

    def _write(self, wire: bytes) -> None:
        """Send ``wire`` after everything queued before it, without waiting.

        Synchronous: what the socket takes at once goes now; the rest is
        queued, and the hub sends it when the socket is writable again (over
        another stream: a writer task). A failure closes the monitor (the
        waiters get ConnectionLost).
        """
        if self._closed is not None:
            return
        if not self._writing and self._fd is not None:
            sent = self._send_now(wire)
            if sent is None:
                return
            if sent == len(wire):
                return
            wire = wire[sent:]
        self._out.append(wire)
        if self._writing:
            return
        if self._hub is not None:
            assert self._fd is not None
            self._writing = True
            self._hub.want_write(self._fd, self, True)
        elif self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        try:
            while self._out:
                chunks, self._out = self._out, []
                await self._stream.send_all(b"".join(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._close(ConnectionLost(f"writing to the monitor failed: {exc!r}"))
        finally:
            self._writing = False

    def _route_reply(self, reply: Return | ErrorReply) -> None:
        if not self._pending.deliver(reply.id, reply):
            self._replies_dropped += 1
            logger.debug("dropping QMP reply with unknown id %r (caller cancelled?)", reply.id)

    def _dispatch_event(self, event: Event) -> None:
        self._events_received += 1
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                logger.exception("QMP event handler failed on %s", event.name)
        self._subscribers.publish(event)

    def _close(self, why: ConnectionLost) -> None:
        """Fail every waiter at once and end every subscription."""
        if self._closed is None:
            self._closed = why
            self._closed_event.set()
            logger.debug("monitor closed: %s", why.message)
        if self._hub is not None:
            assert self._fd is not None
            self._hub.unregister(self._fd, self)
            self._hub = None
            self._writing = False
            if self._direct:
                # The caller reading the socket waits for it, not its reply.
                trio.lowlevel.notify_closing(self._fd)
        self._pending.fail(lambda: ConnectionLost(str(why)))
        self._subscribers.close()
        self._out.clear()
        if self._owns_socket:
            assert isinstance(self._stream, trio.SocketStream)
            self._stream.socket.close()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            self._call_on_close(callback)


@asynccontextmanager
async def open_monitor(path: str, *, handshake_timeout: float = 10.0) -> AsyncIterator[Monitor]:
    """Connect to the QMP UNIX socket at ``path`` and negotiate capabilities.

    The monitor lives as long as the block. Leaving the block closes the
    connection; commands still waiting get :class:`~trioctl.ConnectionLost`.

    Args:
        path: the QMP socket (QEMU's ``-qmp unix:PATH,server=on,wait=off``).
        handshake_timeout: how long the greeting and negotiation may take.

    Raises:
        OSError: the socket cannot be connected (no such file, refused).
        MonitorTimeout: no greeting or negotiation within ``handshake_timeout``
            (a hung QEMU accepts connections but never greets).
        ConnectionLost: the peer closed during the handshake.
        RemoteProtocolError: the peer does not speak QMP.
    """
    stream = await trio.open_unix_socket(path)
    async with open_monitor_stream(
        stream, handshake_timeout=handshake_timeout, peer=path
    ) as monitor:
        yield monitor


async def connect_monitor(
    path: str,
    *,
    handshake_timeout: float = 10.0,
    first_command: str | None = None,
    event_handler: Callable[[Event], None] | None = None,
) -> Monitor:
    """Like :func:`open_monitor`, without a block: the monitor stays open,
    read by the run's hub (no task of its own), until it is lost or
    :meth:`Monitor.close` closes it. Raises as :func:`open_monitor` (a
    refused negotiation: RemoteProtocolError, for the first command too).

    Args:
        first_command: a command without arguments sent in the same write
            as ``qmp_capabilities``, before its reply (one round trip less);
            :meth:`Monitor.first_reply` waits for its result.
        event_handler: added (:meth:`Monitor.add_event_handler`) before the
            monitor handles anything that came after the negotiation's reply.
    """
    stream = await trio.open_unix_socket(path)
    monitor = Monitor(stream, QmpConnection())
    monitor._owns_socket = True
    monitor._first_command = first_command
    try:
        await _negotiate(monitor, handshake_timeout, path)
    except BaseException:
        monitor.close()
        raise
    if event_handler is not None:
        monitor.add_event_handler(event_handler)
    monitor._attach()
    return monitor


async def _negotiate(monitor: Monitor, handshake_timeout: float, peer: str) -> None:
    with trio.move_on_after(handshake_timeout) as scope:
        await monitor._handshake()
    if scope.cancelled_caught:
        raise MonitorTimeout(
            f"no QMP handshake on {peer} within {handshake_timeout:g} s", peer=peer
        )


@asynccontextmanager
async def open_monitor_stream(
    stream: trio.abc.Stream, *, handshake_timeout: float = 10.0, peer: str = "stream"
) -> AsyncIterator[Monitor]:
    """Like :func:`open_monitor`, over a stream that is already connected.

    The monitor owns ``stream`` from here on and closes it on exit.
    """
    monitor = Monitor(stream, QmpConnection())
    try:
        await _negotiate(monitor, handshake_timeout, peer)
        if monitor._fd is not None:
            monitor._attach()
            yield monitor
        else:
            async with open_service_nursery() as nursery:
                monitor._nursery = nursery
                nursery.start_soon(monitor._reader)
                try:
                    yield monitor
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        monitor._close(ConnectionLost("the monitor was closed"))
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            await stream.aclose()
