"""One domain's supervision: a run of its process, from start to exit.

Shape (one :class:`DomainRun` per running domain)::

    DomainRun.supervise()                 while the domain starts or reconnects
    └── domain nursery                    cancelled when the process exits
        ├── monitor loop                  in the supervisor's task: connect_monitor(...);
        │                                 reconnect with backoff; returns once `ok`
        ├── reconnect job holder          (after a daemon restart only)
        └── probe                         while the monitor is unresponsive

An idle domain has no task: its supervision task ends once the monitor is
`ok` and nothing else runs. The monitor stays open, read by the run's hub
(:mod:`trioctl._monitor`); its close calls :meth:`DomainRun._on_monitor_closed`
back, which starts a supervision task (:meth:`DomainRun._work`, in the
driver's nursery, with a domain nursery of its own) to reconnect, as
:meth:`DomainRun.mark_unresponsive` does for the probe.

The exit watcher is the process table's (one task per process, see
:mod:`trioctl._processes`): it calls :meth:`DomainRun._on_exit`, which
closes the monitor and cancels the domain nursery if a task runs.

A failure inside the domain nursery is logged and ends that domain's
supervision; it never reaches the driver nursery. The registry (the driver)
is reached through :class:`Host`: events, state transitions, and the
bookkeeping of an exit.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ._errors import (
    DomainDestroyed,
    LaunchError,
    MonitorError,
    MonitorTimeout,
    RemoteProtocolError,
)
from ._jobs import DomainJobs, JobHandle
from ._launcher import QemuProcess
from ._lifecycle import EventKind, Lifecycle, Reason, Trigger
from ._log import log
from ._models import DomainDefinition, DomainState, MonitorState
from ._monitor import EventRateLimit, Monitor, connect_monitor
from ._processes import ProcessTable
from ._sansio.qmp import Event
from ._store import RuntimeRecord
from ._util import open_service_nursery

if TYPE_CHECKING:
    from ._driver import DriverConfig

__all__ = ["Domain", "DomainRun", "Host"]

logger = logging.getLogger("trioctl._driver")

_RECONNECT_BACKOFF_MIN = 0.05


@attrs.define(eq=False)
class Domain:
    """The driver's entry for one domain."""

    definition: DomainDefinition
    state: DomainState = DomainState.SHUTOFF
    reason: str = Reason.DEFINED
    """A :class:`~trioctl._lifecycle.Reason`, or one saved by another version."""
    monitor_state: MonitorState = MonitorState.NONE
    run: DomainRun | None = None
    unresponsive_why: str = ""
    """Why the monitor was last marked unresponsive (in MonitorUnresponsive)."""
    unresponsive_since: float = 0.0


class Host(Protocol):
    """What a run needs of the driver."""

    config: DriverConfig
    jobs: DomainJobs
    _events_throttled: int
    _nursery: trio.Nursery
    _processes: ProcessTable

    def _emit(
        self, domain: str, kind: EventKind, detail: str, data: dict[str, Any] | None = None
    ) -> None: ...

    def _move(
        self, dom: Domain, trigger: Trigger, *, quiet: bool = False
    ) -> tuple[str, dict[str, Any]] | None: ...

    def _run_ended(self, dom: Domain, run: DomainRun, trigger: Trigger) -> None: ...


def _weak_host(host: Host) -> weakref.ref[Host]:
    return weakref.ref(host)


def _weak_domain(dom: Domain) -> weakref.ref[Domain]:
    return weakref.ref(dom)


@attrs.define(eq=False)
class DomainRun:
    """One run of a domain's process, from start (or reconnect) to exit, and
    its supervision (:meth:`supervise`)."""

    _host: weakref.ref[Host] = attrs.field(converter=_weak_host)
    """The driver: weak, as the next, so that no reference cycle keeps a
    run, and all it holds, alive once the registry lets go of it (with 10,000
    domains the final collection of such cycles took seconds at stop)."""
    _dom: weakref.ref[Domain] = attrs.field(converter=_weak_domain)
    proc: QemuProcess
    record: RuntimeRecord
    qmp_path: str
    """Derived from the run directory and the name, never read from the record."""
    monitor: Monitor | None = None
    nursery: trio.Nursery | None = None
    """The domain nursery, while the run is supervised."""
    exited: trio.Event = attrs.Factory(trio.Event)
    connected: trio.Event = attrs.Factory(trio.Event)
    shutdown_reason: str | None = None
    destroying: bool = False
    probing: bool = False
    released: bool = False
    """The run's hold on its process (pidfd) has been given back."""
    definition: DomainDefinition | None = None
    """The definition the process was started with (None: unknown, after a
    restart from an old record; the stored one is shown then)."""
    taints: list[str] = attrs.Factory(list)
    """Why the run is tainted; kept until the process exits."""
    events: EventRateLimit | None = None
    """The bound on QMP events passed on to subscribers (None: unbounded)."""
    drop_report_due: bool = False
    held_lifecycle: tuple[str, dict[str, Any]] | None = None
    """The last lifecycle event of a dropped QMP event (STOP, RESUME), sent
    with the drop report if the domain is still in its state then."""
    """A report of dropped events is scheduled (see _report_drops)."""
    stopped_by: str = ""
    """The client whose destroy or shutdown ended the process (for the log)."""
    reconnected: bool = False
    """The run was adopted by a restarted daemon (not started by it)."""
    detached: bool = False
    """Supervision has ended (see :meth:`detach`); the process may run on."""
    pending_work: list[Callable[[], Awaitable[None]]] | None = None
    """Work for the supervision task that :meth:`_start_work` started and
    that has not run yet."""
    reconnect_job: JobHandle | None = None
    """After a parallel reconnect: the domain's job, taken by the driver as it
    loaded the domain (:meth:`DomainJobs.claim`), held by the supervisor's
    reconnect job holder until the monitor answers."""

    @property
    def host(self) -> Host:
        host = self._host()
        assert host is not None, "the driver outlives its runs"
        return host

    @property
    def dom(self) -> Domain:
        dom = self._dom()
        assert dom is not None, "a domain outlives its runs"
        return dom

    @property
    def name(self) -> str:
        return self.dom.definition.name

    def release(self) -> None:
        """Give back the run's hold on its process (once)."""
        if not self.released:
            self.released = True
            self.host._processes.release(self.proc)

    # -- the supervisor ---------------------------------------------------------------

    async def supervise(
        self,
        reconnecting: bool,
        on_ready: Callable[[], None] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Own the run: its nursery, monitor, exit watcher.

        Reports back (``task_status``, ``on_ready``) once the run can be
        served: after a fresh start or a serial reconnect when the monitor
        is negotiated; after a parallel reconnect at once (the driver took the
        domain's job for it, :attr:`reconnect_job`, before it started this
        task). A fresh start that fails raises to its ``nursery.start``;
        a reconnect never raises.
        """
        started = False

        def ready() -> None:
            nonlocal started
            started = True
            task_status.started()
            if on_ready is not None:
                on_ready()

        name = self.name
        self.reconnected = reconnecting
        clean = False
        nursery: trio.Nursery | None = None
        try:
            async with open_service_nursery() as nursery:
                self.nursery = nursery
                # The exit watcher: the process table's one task per process
                # calls _on_exit, which cancels this nursery.
                self.host._processes.watch(self.proc, self._on_exit)
                # The monitor loop runs in this task rather than a child of
                # its own: one task fewer per domain to schedule, keep and
                # cancel at stop.
                if self.reconnect_job is not None:
                    nursery.start_soon(self._hold_reconnect_job, self.reconnect_job)
                    ready()
                    await self._monitor_loop(True)
                else:
                    # A fresh start (or a serial reconnect) reports back once
                    # the monitor is negotiated, or fails.
                    await self._monitor_loop(reconnecting, ready)
            clean = True
        except Exception:
            if not started and not reconnecting:
                raise
            logger.exception("supervision of domain %s failed", name)
        except BaseException as exc:
            # The service nursery raises the lone exception of its group with
            # the group, which holds it, as its context: a reference cycle
            # per domain, through every frame of the traceback, that only the
            # cyclic collector frees (at stop with 10,000 domains: seconds).
            exc.__context__ = None
            raise
        finally:
            if self.reconnect_job is not None:
                # Never entered only if this task ended before its first
                # checkpoint; the job must not stay held by nobody.
                self.reconnect_job.discard()
                self.reconnect_job = None
            self._end_work(nursery, clean)
        if not started:
            # The process exited before the monitor came up.
            if not reconnecting:
                raise LaunchError(f"domain {name!r} exited while starting", domain=name)
            ready()

    # -- work after idle ------------------------------------------------------------

    def _start_work(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Run ``work()`` in the domain nursery, starting a supervision task
        (:meth:`_work`) if none runs: an idle domain has none. False if the
        run is no longer supervised (its process exited, or detached)."""
        if self.detached or self.exited.is_set():
            return False
        if self.nursery is not None:
            try:
                self.nursery.start_soon(work)
                return True
            except RuntimeError:
                pass  # that task is ending (its nursery takes no more): start another
        if self.pending_work is not None:
            self.pending_work.append(work)  # a supervision task is on its way
        else:
            self.pending_work = [work]
            self.host._nursery.start_soon(self._work)
        return True

    async def _work(self) -> None:
        """A supervision task for work that came while the domain was idle
        (a reconnect, a probe): the domain nursery while it lasts."""
        works, self.pending_work = self.pending_work or [], None
        if self.detached or self.exited.is_set():
            return
        clean = False
        nursery: trio.Nursery | None = None
        try:
            async with open_service_nursery() as nursery:
                self.nursery = nursery
                for work in works:
                    nursery.start_soon(work)
            clean = True
        except Exception:
            logger.exception("supervision of domain %s failed", self.name)
        except BaseException as exc:
            exc.__context__ = None  # as in supervise
            raise
        finally:
            self._end_work(nursery, clean)

    def _end_work(self, nursery: trio.Nursery | None, clean: bool) -> None:
        """A supervision task ends. Done (``clean``), the domain is idle: its
        monitor is read by the hub, its exit watched by the process table,
        and either calls back. Failed or cancelled (the driver stops), the
        run is no longer supervised (:meth:`detach`)."""
        if self.nursery is nursery:
            self.nursery = None
        if not clean or self.exited.is_set():
            self.detach()

    def detach(self) -> None:
        """End the run's supervision without a task: stop watching its
        process and close its monitor (the process runs on)."""
        self.detached = True
        self.host._processes.unwatch(self.proc, self._on_exit)
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.close()

    def _on_monitor_closed(self) -> None:
        """The idle monitor closed (EOF, reset, protocol violation, a call's
        failed write): reconnect, unless the process exited."""
        if self.monitor is None:
            return  # closed by detach or _on_exit
        self.monitor = None
        if self.exited.is_set():
            return
        if self.dom.monitor_state is MonitorState.OK:
            self.dom.monitor_state = MonitorState.CONNECTING
        self._start_work(self._reconnect)

    async def _reconnect(self) -> None:
        await trio.sleep(_RECONNECT_BACKOFF_MIN)
        if not (self.exited.is_set() or self.destroying or self.shutdown_reason):
            # Said only now: a monitor closes as its process exits (destroy,
            # shutdown, crash: _on_exit says which), and then this task
            # is usually cancelled during the sleep above.
            log(
                logger, logging.WARNING,
                "monitor of domain %s closed while its process runs; reconnecting", self.name,
                event="monitor_closed", domain=self.name,
            )  # fmt: skip
        backoff = min(_RECONNECT_BACKOFF_MIN * 2, self.host.config.probe_interval)
        await self._monitor_loop(self.reconnected, first=False, backoff=backoff)

    def _on_exit(self) -> None:
        """The process exited: say how, forget the run, end its supervision."""
        if self.destroying:
            trigger = Trigger.EXIT_DESTROYED
        elif self.shutdown_reason is not None:
            trigger = Trigger.EXIT_SHUTDOWN
        else:
            trigger = Trigger.CRASH
        try:
            if self.dom.run is self:
                self._log_exit(trigger)
                self.host._run_ended(self.dom, self, trigger)
        except Exception:
            logger.exception("supervision of domain %s failed", self.name)
        self.release()
        self.exited.set()
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.close()

    def _log_exit(self, trigger: Trigger) -> None:
        name = self.name
        pid, status = self.proc.pid, self.proc.returncode
        reason = {
            Trigger.EXIT_DESTROYED: Reason.DESTROYED,
            Trigger.EXIT_SHUTDOWN: Reason.SHUTDOWN,
        }.get(trigger, Reason.CRASHED)
        if status is None:
            how = "exit status unknown (not the daemon's child)"
        elif status < 0:
            how = f"killed by {_signal_name(-status)}"
        else:
            how = f"exit status {status}"
        fields: dict[str, Any] = {"domain": name, "pid": pid, "reason": reason.value}
        if status is not None and status < 0:
            fields["signal"] = _signal_name(-status)
        elif status is not None:
            fields["exit_status"] = status
        if reason is Reason.DESTROYED:
            log(
                logger, logging.INFO, "domain %s destroyed (pid %d, %s)", name, pid, how,
                event="destroyed", client=self.stopped_by or None, **fields,
            )  # fmt: skip
        elif reason is Reason.SHUTDOWN:
            log(
                logger, logging.INFO, "domain %s shut down (pid %d, %s; QEMU says %s)",
                name, pid, how, self.shutdown_reason,
                event="shutdown", client=self.stopped_by or None,
                shutdown_reason=self.shutdown_reason, **fields,
            )  # fmt: skip
        else:
            log(
                logger, logging.WARNING, "domain %s crashed (pid %d, %s)", name, pid, how,
                event="crashed", **fields,
            )  # fmt: skip

    async def _hold_reconnect_job(self, job: JobHandle) -> None:
        config = self.host.config
        try:
            async with job:
                with trio.move_on_after(config.reconnect_timeout):
                    await self.connected.wait()
                if not self.connected.is_set() and not self.exited.is_set():
                    self.mark_unresponsive(
                        f"no monitor handshake within {config.reconnect_timeout:g} s "
                        "of reconnecting, calls waited for the reconnect until then"
                    )
        except DomainDestroyed:
            pass

    async def _monitor_loop(
        self,
        reconnecting: bool,
        on_first: Callable[[], None] | None = None,
        *,
        first: bool = True,
        backoff: float = _RECONNECT_BACKOFF_MIN,
    ) -> None:
        """Connect a monitor, and reconnect with backoff until one is `ok`
        (or the process exited); call ``on_first()`` once the first monitor
        is negotiated. Returns with the monitor open: the hub reads it, and
        its close calls :meth:`_on_monitor_closed` back."""
        dom, config, name = self.dom, self.host.config, self.name
        serial = reconnecting and config.reconnect == "serial"
        while not self.exited.is_set():
            if serial or config.monitor_timeout is None:
                handshake = math.inf  # pre-patch libvirt: wait as long as it takes
            elif first and not reconnecting:
                handshake = config.start_timeout
            else:
                handshake = config.monitor_timeout
            # After a (re)connect, query-status goes in the negotiation's
            # write (pipelined): one round trip less per domain.
            sync = reconnecting or not first
            try:
                mon = await connect_monitor(
                    self.qmp_path,
                    handshake_timeout=handshake,
                    first_command="query-status" if sync else None,
                    event_handler=functools.partial(DomainRun.on_qmp_event, self),
                )
                self.monitor = mon
                try:
                    if sync:
                        await self._sync_state(mon)
                except BaseException:
                    self.monitor = None
                    mon.close()
                    raise
                self.set_monitor(MonitorState.OK)
                self.connected.set()
                if first:
                    if on_first is not None:
                        on_first()
                    first = False
                # Idle from here: no task waits for the monitor (if it closed
                # already, the callback comes at once and reconnects).
                mon.on_close(self._on_monitor_closed)
                return
            except Exception as exc:
                # Whatever the peer did, this loop must not end the domain's
                # supervision (and with it the exit watcher).
                self.monitor = None
                if not isinstance(
                    exc, OSError | MonitorError | MonitorTimeout | RemoteProtocolError
                ):
                    logger.exception("unexpected failure of the monitor of %s", name)
                if first and not reconnecting:
                    raise LaunchError(
                        f"the monitor of domain {name!r} did not come up: {exc}", domain=name
                    ) from None
                if self.exited.is_set():
                    return
                # A process on its way out (destroyed, or QEMU said SHUTDOWN)
                # closes its socket before it exits: no reason to alarm.
                exiting = self.destroying or self.shutdown_reason is not None
                if (
                    dom.monitor_state is not MonitorState.UNRESPONSIVE
                    and not (reconnecting and first)
                    and not exiting
                ):
                    self.mark_unresponsive(f"cannot connect the monitor: {exc}")
                logger.debug("monitor of %s: %s; retrying in %.2f s", name, exc, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, config.probe_interval)

    async def _sync_state(self, mon: Monitor) -> None:
        """After a (re)connect, learn whether the VM runs or is paused (the
        reply of the query-status sent behind the negotiation)."""
        limit = self.host.config.monitor_timeout
        with trio.move_on_after(math.inf if limit is None else limit):
            status = await mon.first_reply()
            if not isinstance(status, dict):
                return
            running = bool(status.get("running"))
            self.host._move(self.dom, Trigger.SYNC_RUNNING if running else Trigger.SYNC_PAUSED)

    # -- monitor state ----------------------------------------------------------------

    def set_monitor(self, state: MonitorState, why: str = "") -> None:
        dom = self.dom
        if dom.monitor_state is state:
            return
        old = dom.monitor_state
        dom.monitor_state = state
        name = self.name
        if state is MonitorState.UNRESPONSIVE:
            dom.unresponsive_why = why
            dom.unresponsive_since = trio.current_time()
            log(
                logger, logging.WARNING, "monitor of domain %s is unresponsive: %s", name, why,
                event="monitor_unresponsive", domain=name, reason=why,
            )  # fmt: skip
            self.host._emit(name, EventKind.MONITOR, "unresponsive", {"reason": why})
        elif state is MonitorState.OK and old is MonitorState.UNRESPONSIVE:
            seconds = round(trio.current_time() - dom.unresponsive_since, 3)
            log(
                logger, logging.INFO,
                "monitor of domain %s responds again after %.1f s unresponsive", name, seconds,
                event="monitor_recovered", domain=name, seconds=seconds,
            )  # fmt: skip
            self.host._emit(name, EventKind.MONITOR, "responsive")

    def mark_unresponsive(self, why: str) -> None:
        """Mark the monitor unresponsive, and probe it until it answers."""
        self.set_monitor(MonitorState.UNRESPONSIVE, why)
        if not self.probing:
            self.probing = self._start_work(self._probe)

    async def _probe(self) -> None:
        """Send ``query-status`` every probe_interval until the monitor answers."""
        config = self.host.config
        try:
            while self.dom.monitor_state is MonitorState.UNRESPONSIVE:
                await trio.sleep(config.probe_interval)
                monitor = self.monitor
                if monitor is None or monitor.closed:
                    continue  # the monitor loop is reconnecting; it sets OK itself
                with trio.move_on_after(config.monitor_timeout or config.probe_interval):
                    try:
                        await monitor.execute("query-status")
                    except MonitorError:
                        continue
                    self.set_monitor(MonitorState.OK)
        finally:
            self.probing = False

    # -- QMP events -------------------------------------------------------------------

    def on_qmp_event(self, event: Event) -> None:
        """The monitor's event handler: state tracking sees every event."""
        dom = self.dom
        passed = self._forward_qmp_event(event)
        if dom.run is not self:
            return
        # The lifecycle events these cause share the QMP events' bound: a
        # QEMU flooding STOP and RESUME changes the state each time, but
        # subscribers hear of it at the bounded rate, and of the last
        # state with the drop report.
        if event.name in ("STOP", "RESUME"):
            trigger = Trigger.SUSPEND if event.name == "STOP" else Trigger.RESUME
            held = self.host._move(dom, trigger, quiet=not passed)
            if held is not None:
                self.held_lifecycle = held
        elif event.name == "RESET" and passed:
            self.host._emit(self.name, EventKind.LIFECYCLE, Lifecycle.RESET)
        elif event.name == "SHUTDOWN":
            self.shutdown_reason = str(event.data.get("reason", "shutdown"))

    def _forward_qmp_event(self, event: Event) -> bool:
        """Pass a QMP event on to subscribers, within the domain's rate bound.

        Beyond ``max_events_per_second`` (a burst of one second's worth) the
        event is dropped and counted (``events_dropped`` in the driver and the
        server stats); the next event that passes is preceded by a
        ``monitor``/``events_dropped`` event whose ``data.count`` says how
        many were dropped since the last such report; if no event passes
        within a second of the first drop, the report goes alone then.
        Returns whether the event passed.
        """
        host, name = self.host, self.name
        rate = host.config.max_events_per_second
        if rate > 0:
            if self.events is None:
                self.events = EventRateLimit(rate)
            if not self.events.admit(trio.current_time()):
                host._events_throttled += 1
                if not self.drop_report_due:
                    self.drop_report_due = True
                    host._nursery.start_soon(self._report_drops)
                if self.events.dropped == 1 or self.events.dropped % 10_000 == 0:
                    logger.warning(
                        "domain %s sends more than %g QMP events a second: dropping (%d so far)",
                        name,
                        rate,
                        self.events.dropped,
                    )
                return False
            self._emit_drops()
        host._emit(name, EventKind.QMP, event.name, dict(event.data))
        return True

    def _emit_drops(self) -> None:
        dropped = self.events.take_unreported() if self.events is not None else 0
        if dropped:
            self.host._emit(
                self.name,
                EventKind.MONITOR,
                "events_dropped",
                {"count": dropped, "max_events_per_second": self.host.config.max_events_per_second},
            )
        held, self.held_lifecycle = self.held_lifecycle, None
        # Only while it is still true: not after the process exited (its own
        # event said so) or the state moved on by another way.
        if held is not None and self.dom.run is self and self.dom.state.value == held[1]["state"]:
            self.host._emit(self.name, EventKind.LIFECYCLE, held[0], held[1])

    async def _report_drops(self) -> None:
        """Report drops a second after the first, if no event passed since."""
        try:
            await trio.sleep(1.0)
            self._emit_drops()
        finally:
            self.drop_report_due = False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
