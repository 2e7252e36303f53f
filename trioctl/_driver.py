"""The domain driver: the registry of domains, their operations, reconnect.

The registry keeps each domain's definition and cached state; one running
domain's supervision (a task with its nursery only while there is work:
monitor loop, reconnect job holder, probe; none while the domain is idle)
is a :class:`~trioctl._supervisor.DomainRun`, its tasks in the driver's
nursery; the processes' pidfds, and one exit watcher per process, are in a
:class:`~trioctl._processes.ProcessTable`; every change of state is a row of
:data:`trioctl._lifecycle.TRANSITIONS`; events reach subscribers through a
:class:`~trioctl._fanout.FanOut`. See docs/design.md.

Operations come in two forms. ``*_locked`` methods take the handle of the
domain's job, which the caller holds already: the RPC dispatcher takes the
job first, in the domain's bounded queue, and only then runs the handler,
passing it the handle, on a pool worker (see docs/design.md). The plain
methods (``start``, ``suspend``...) take the job themselves, for embedding.
Queries (``list_domains``, ``get_info``) read cached state and never wait
for anything.

Every monitor command runs under ``monitor_timeout``. When it expires the
caller gets :class:`~trioctl.MonitorTimeout`, the domain's monitor is marked
unresponsive (an event), and a probe sends ``query-status`` every
``probe_interval`` until QEMU answers again. Meanwhile monitor calls fail at
once with :class:`~trioctl.MonitorUnresponsive` (``monitor_fail_fast``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

import attrs
import trio

from . import _settings as checks, procfs
from ._errors import (
    ConnectionLost,
    DomainDestroyed,
    DomainExists,
    InvalidParams,
    LaunchError,
    MonitorTimeout,
    MonitorUnresponsive,
    NoDomain,
    OperationInvalid,
)
from ._fanout import FanOut, Feed
from ._jobs import (
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_QUEUED_QUERIES,
    DomainJobs,
    HeldJobInfo,
    JobHandle,
    JobKind,
)
from ._launcher import (
    CONTROL_SOCKET,
    MONITOR_SOCKET,
    SERIAL_LOG,
    LaunchSpec,
    QemuProcess,
    QemuUser,
    cmdline,
    find_processes,
    launch,
    monitor_matcher,
    names_monitor,
    prepare_domain_dir,
    resolve_qemu_user,
    verify_process,
)
from ._lifecycle import EventKind, Lifecycle, Trigger, transition
from ._log import log
from ._models import (
    DEFAULT_MACHINES,
    DomainDefinition,
    DomainEvent,
    DomainInfo,
    DomainState,
    DomainStats,
    JobInfo,
    MonitorState,
    new_uuid,
    structure,
    unstructure,
)
from ._policy import (
    TAINT_CUSTOM_ARGV,
    TAINT_CUSTOM_MONITOR,
    check_definition,
    check_qcow2,
    copy_boot_file,
    emulator_table,
    monitor_command_allowed,
    open_storage_file,
    resolve_file,
)
from ._procedures import PROCEDURES
from ._processes import ProcessTable
from ._settings import setting
from ._store import MAX_DEFINITION_BYTES, LoadProblem, RuntimeRecord, Store, encode_definition
from ._supervisor import Domain, DomainRun
from ._util import open_service_nursery, wait_all_tasks_blocked

__all__ = ["Driver", "DriverConfig", "EventSubscription", "open_driver"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RECONNECT_BACKOFF_MIN = 0.05


@attrs.frozen
class DriverConfig:
    """The driver's settings: the ``[driver]`` table of the daemon's config,
    each key's check and help on its field (:mod:`trioctl._settings`)."""

    state_dir: Path = attrs.field(
        metadata=setting(
            checks.path(),
            "Domain definitions and daemon state. Default: /var/lib/trioctl for root, "
            "else $XDG_STATE_HOME/trioctl or ~/.local/state/trioctl.",
            textual=True,
        )
    )
    run_dir: Path | None = attrs.field(
        default=None,
        metadata=setting(
            checks.path(),
            "Runtime records and QMP sockets; keep it short (socket paths are limited to "
            "107 bytes). Default: STATE_DIR/run when state_dir is set; else "
            "$XDG_RUNTIME_DIR/trioctl, /run/trioctl for root, or STATE_DIR/run. Never "
            "state_dir itself.",
            textual=True,
        ),
    )
    max_queued: int = attrs.field(
        default=DEFAULT_MAX_QUEUED,
        metadata=setting(
            checks.integer(0),
            "Callers that may wait for one domain's job; the next gets JOB_QUEUE_FULL at "
            "once (destroy is exempt). 0: unbounded. qemu.conf: max_queued (default 0).",
        ),
    )
    max_queued_queries: int = attrs.field(
        default=DEFAULT_MAX_QUEUED_QUERIES,
        metadata=setting(
            checks.integer(0),
            "Queries (domain.get_stats) that may wait for one domain's job in their own "
            "queue (with query_lane); the next gets JOB_QUEUE_FULL at once. 0: unbounded.",
        ),
    )
    query_lane: bool = attrs.field(
        default=True,
        metadata=setting(
            checks.boolean,
            "Queries wait in their own queue, alternating with the other jobs, so read-only "
            "callers cannot fill the writers' queue, and concurrent domain.get_stats calls "
            "share one monitor round trip. false: libvirt's one queue, no sharing.",
        ),
    )
    job_wait_timeout: float | None = attrs.field(
        default=30.0,
        metadata=setting(
            checks.seconds(forever=True),
            "Seconds a caller waits for a domain's job before JOB_TIMEOUT; false: forever. "
            "libvirt: VIR_JOB_WAIT_TIME (30 s, not configurable).",
            none="false",
        ),
    )
    monitor_timeout: float | None = attrs.field(
        default=5.0,
        metadata=setting(
            checks.seconds(forever=True),
            "Deadline of every monitor command, in seconds; on expiry MONITOR_TIMEOUT and "
            "the monitor is marked unresponsive. false: wait forever, as libvirt.",
            none="false",
        ),
    )
    monitor_fail_fast: bool = attrs.field(
        default=True,
        metadata=setting(
            checks.boolean,
            "While a monitor is unresponsive, refuse monitor calls at once "
            "(MONITOR_UNRESPONSIVE) instead of letting each wait out monitor_timeout.",
        ),
    )
    probe_interval: float = attrs.field(
        default=1.0,
        metadata=setting(
            checks.seconds(), "Seconds between query-status probes of an unresponsive monitor."
        ),
    )
    destroy_grace: float = attrs.field(
        default=1.0,
        metadata=setting(
            checks.seconds(zero=True),
            "Seconds between SIGTERM and SIGKILL on destroy (a stopped process gets "
            "SIGKILL at once).",
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=30.0,
        metadata=setting(checks.seconds(), "Seconds shutdown waits for the guest to power off."),
    )
    start_timeout: float = attrs.field(
        default=10.0,
        metadata=setting(
            checks.seconds(), "Seconds a start may take until the monitor is negotiated."
        ),
    )
    reconnect: Literal["parallel", "serial"] = attrs.field(
        default="parallel",
        metadata=setting(
            checks.choice("parallel", "serial"),
            'After a restart: "parallel" reconnects each running domain in its own task '
            'and serves at once; "serial" reconnects one by one before serving, with no '
            "deadline (pre-patch libvirt).",
            textual=True,
        ),
    )
    reconnect_timeout: float = attrs.field(
        default=10.0,
        metadata=setting(
            checks.seconds(),
            "Seconds a reconnecting domain holds its job before it is declared "
            "monitor-unresponsive (attempts continue in the background).",
        ),
    )
    event_buffer: int = attrs.field(
        default=1024,
        metadata=setting(
            checks.integer(1),
            "Events buffered per subscriber inside the driver; beyond it they are dropped "
            "and counted.",
        ),
    )
    max_events_per_second: float = attrs.field(
        default=100.0,
        metadata=setting(
            checks.seconds(zero=True),
            "QMP events one domain passes on to subscribers per second, with a burst of one "
            "second's worth; beyond it they are dropped, counted (admin.get_stats "
            "events_dropped) and reported by a monitor event events_dropped. 0: no bound.",
        ),
    )
    backend: str = attrs.field(
        default="sim",
        metadata=setting(
            checks.choice("sim", "qemu"),
            'Emulator of definitions that do not name one: "sim" (the built-in '
            'simulator) or "qemu" (qemu-system-x86_64).',
            textual=True,
        ),
    )
    emulators: Mapping[str, str] = attrs.field(
        factory=dict,
        metadata=setting(
            checks.emulators,
            "Emulator names definitions may use, to absolute paths of executables "
            '([driver.emulators] name = "/path"), besides the built-in "qemu" (the host\'s '
            'qemu-system-x86_64 found on PATH) and "sim"; an entry "qemu" replaces the '
            "default. Definitions name an emulator, never a path.",
        ),
    )
    machines: tuple[str, ...] = attrs.field(
        default=DEFAULT_MACHINES,
        metadata=setting(
            checks.machines,
            "Machine types definitions may name; '*' matches the rest of a name "
            "(pc-q35-* allows pc-q35-7.2).",
        ),
    )
    storage_dirs: tuple[Path, ...] = attrs.field(
        default=(),
        metadata=setting(
            checks.storage_dirs,
            "Directories disk images, kernels and initrds must lie in, as written and after "
            "resolving symlinks. Empty: definitions cannot name files. None may be, contain or "
            "lie in state_dir, run_dir or the tokens file's directory.",
        ),
    )
    qemu_user: str = attrs.field(
        default="",
        metadata=setting(
            checks.account,
            "When the daemon runs as root, the account QEMU runs as (its primary group, no "
            'supplementary groups), dropped before exec. "": trioctl-qemu if that account '
            "exists, else nobody. Ignored when the daemon is not root. qemu.conf: user, group.",
            textual=True,
        ),
    )
    max_domains: int = attrs.field(
        default=10000,
        metadata=setting(
            checks.integer(1),
            "How many domains may be defined; the next define is refused (OPERATION_INVALID, "
            "data.limit). Definitions already on disk all load.",
        ),
    )
    private_dirs: tuple[Path, ...] = ()
    """Directories no file named by a definition may lie in, besides
    ``state_dir`` and the run directory (the daemon adds the tokens file's);
    not a key of the file."""

    @property
    def runtime_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else self.state_dir / "run"

    @property
    def own_dirs(self) -> tuple[Path, ...]:
        """The daemon's own directories: no definition may name a file there."""
        return (self.state_dir, self.runtime_dir, *self.private_dirs)


_Domain = Domain
_Run = DomainRun
EventSubscription: TypeAlias = Feed[DomainEvent]
"""A bounded stream of :class:`DomainEvent` (dropped beyond the buffer)."""


class Driver:
    """The registry of domains. Create it with :func:`open_driver`."""

    def __init__(self, config: DriverConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.store = Store(config.state_dir, config.runtime_dir)
        self.qemu_user = resolve_qemu_user(config.qemu_user)
        """Who real QEMU runs as (None: as the daemon, which is not root)."""
        self.jobs = DomainJobs(
            max_queued=config.max_queued,
            max_queued_queries=config.max_queued_queries,
            query_lane=config.query_lane,
            wait_timeout=config.job_wait_timeout,
        )
        self.load_problems: list[LoadProblem] = []
        self.loaded = trio.Event()
        """Set once the definitions and records are loaded (:meth:`load`)."""
        self.serve_first: trio.Event | None = None
        """When given (``open_daemon`` gives the server's first answer), a
        parallel reconnect starts no supervisor before it is set, or
        _SERVE_FIRST_PATIENCE seconds have passed."""
        self._nursery = nursery
        self._domains: dict[str, _Domain] = {}
        self._events = FanOut[DomainEvent]()
        self._events_throttled = 0
        """QMP events over a domain's rate bound (see DomainRun._forward_qmp_event)."""
        self._define_lock = trio.Lock()
        self.emulators = emulator_table(config.emulators)
        """Emulator names to binaries (``sim``: the built-in simulator)."""
        self._processes = ProcessTable(nursery)

    @property
    def events_dropped(self) -> int:
        """Events dropped: over a domain's rate bound, or for a full subscriber."""
        return self._events_throttled + self._events.dropped

    # -- queries: cached state only, never wait -------------------------------------

    def list_domains(self, state: DomainState | None = None) -> list[DomainInfo]:
        """Every domain (or those in ``state``), sorted by name."""
        return [
            self._info(dom)
            for name, dom in sorted(self._domains.items())
            if state is None or dom.state is state
        ]

    def get_info(self, name: str) -> DomainInfo:
        """Cached state of one domain; never touches the monitor.

        Raises:
            NoDomain: no domain has that name.
        """
        return self._info(self._get(name))

    def list_jobs(self) -> list[JobInfo]:
        """Every held domain job: holder, for how long, how many wait."""
        return [_job_record(j) for j in self.jobs.list_jobs()]

    def _get(self, name: str) -> _Domain:
        try:
            return self._domains[name]
        except KeyError:
            raise NoDomain(f"no domain named {name!r}", domain=name) from None

    def _info(self, dom: _Domain) -> DomainInfo:
        run = dom.run
        # A running domain shows the configuration it runs with.
        d = run.definition if run is not None and run.definition is not None else dom.definition
        job = self.jobs.job_info(d.name)
        return DomainInfo(
            name=d.name,
            uuid=d.uuid,
            state=dom.state,
            reason=dom.reason,
            monitor=dom.monitor_state,
            pid=run.proc.pid if run else None,
            memory_mib=d.memory_mib,
            vcpus=d.vcpus,
            emulator=d.emulator,
            autostart=d.autostart,
            started_at=run.record.started_at if run else None,
            job=_job_record(job) if job is not None else None,
            taints=list(run.taints) if run else [],
            pending_changes=run is not None and d != dom.definition,
        )

    # -- events --------------------------------------------------------------------

    @contextmanager
    def subscribe(
        self, domains: frozenset[str] | None = None, max_buffer: int | None = None
    ) -> Iterator[EventSubscription]:
        """Receive domain events (optionally only for ``domains``) while the block lasts.

        Overflow policy: the driver never waits for a subscriber; an event that
        does not fit in its buffer is dropped for it and counted in ``dropped``.
        """
        size = max_buffer if max_buffer is not None else self.config.event_buffer
        with self._events.subscribe(size, domains) as sub:
            yield sub

    def _emit(
        self, domain: str, kind: EventKind, detail: str, data: dict[str, Any] | None = None
    ) -> None:
        event = DomainEvent(domain, kind, detail, time.time(), data or {})
        logger.debug("event %s %s %s %s", domain, kind, detail, data)
        self._events.publish(event, domain)

    def _move(
        self, dom: _Domain, trigger: Trigger, *, quiet: bool = False
    ) -> tuple[str, dict[str, Any]] | None:
        """Take ``dom`` through one row of the lifecycle table (with its event).

        With ``quiet`` the event is not sent but returned (``(detail, data)``),
        for a caller that sends it later or not at all."""
        step = transition(dom.definition.name, dom.state, trigger)
        if step is None:
            return None
        dom.state, dom.reason = step.target, step.reason
        if step.event is None:
            return None
        data = {"state": step.target.value, "reason": step.reason.value}
        if quiet:
            return step.event, data
        self._emit(dom.definition.name, EventKind.LIFECYCLE, step.event, data)
        return None

    def _run_ended(self, dom: _Domain, run: DomainRun, trigger: Trigger) -> None:
        """The process of ``dom``'s current run exited: forget the run."""
        name = dom.definition.name
        dom.run = None
        dom.monitor_state = MonitorState.NONE
        self.store.delete_record(name)
        if not run.record.shared:
            self._remove_runtime_files(name)
        self._move(dom, trigger)
        self._save_exit(name, dom.state, dom.reason)

    # -- jobs ----------------------------------------------------------------------

    async def run_job(
        self,
        name: str,
        kind: JobKind,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        procedure: str,
        client: str = "local",
    ) -> T:
        """Take ``name``'s job, then run ``fn(*args)`` holding it.

        Raises:
            NoDomain, JobQueueFull, JobTimeout, DomainDestroyed: and whatever
            ``fn`` raises.
        """
        self._get(name)
        async with self.jobs.job(name, kind, procedure=procedure, client=client):
            return await fn(*args)

    # -- definitions ----------------------------------------------------------------

    async def define(self, definition: DomainDefinition) -> DomainInfo:
        """Add a domain, or replace the definition of an existing one.

        A running domain keeps its current process and configuration
        (``get_info`` shows it, with ``pending_changes``); the new definition
        applies at its next start. A domain's uuid never changes: without
        one the existing uuid is kept. Written to disk atomically before it
        takes effect. The emulator, machine type and files are checked
        against the configuration (see ``_policy``); who may use
        ``extra_args`` is the caller's business (the RPC layer: admin only).

        Raises:
            DomainExists: another domain already has this uuid.
            InvalidParams: an unknown emulator, a machine type outside the
                allow-list, a file outside the storage directories, or a
                uuid other than the existing domain's.
        """
        if not definition.emulator:
            definition = attrs.evolve(definition, emulator=self.config.backend)
        size = len(encode_definition(definition))
        if size > MAX_DEFINITION_BYTES:
            raise InvalidParams(
                f"the definition of {definition.name!r} is {size} bytes encoded; "
                f"the limit is {MAX_DEFINITION_BYTES}",
                domain=definition.name,
                limit="definition_bytes",
            )
        await trio.to_thread.run_sync(self._check_content, definition)
        async with self._define_lock:
            existing = self._domains.get(definition.name)
            if existing is None and len(self._domains) >= self.config.max_domains:
                raise OperationInvalid(
                    f"{len(self._domains)} domains are defined, the limit "
                    f"(driver.max_domains) is {self.config.max_domains}; undefine one first",
                    domain=definition.name,
                    limit="driver.max_domains",
                )
            if existing is not None:
                uuid = existing.definition.uuid
                if definition.uuid and definition.uuid != uuid:
                    raise InvalidParams(
                        f"domain {definition.name!r} has uuid {uuid}; a domain's uuid never "
                        "changes (leave 'uuid' out to keep it)",
                        errors=["$.uuid: differs from the existing domain's"],
                    )
                definition = attrs.evolve(definition, uuid=uuid)
            elif not definition.uuid:
                definition = attrs.evolve(definition, uuid=new_uuid())
            for other in self._domains.values():
                if (
                    other.definition.uuid == definition.uuid
                    and other.definition.name != definition.name
                ):
                    raise DomainExists(
                        f"domain {other.definition.name!r} already has uuid {definition.uuid}",
                        domain=other.definition.name,
                    )
            await trio.to_thread.run_sync(self.store.save_definition, definition)
            dom = self._domains.get(definition.name)
            if dom is None:
                self._domains[definition.name] = _Domain(definition)
            else:
                dom.definition = definition
        self._emit(definition.name, EventKind.LIFECYCLE, Lifecycle.DEFINED)
        return self.get_info(definition.name)

    def _check_content(self, definition: DomainDefinition) -> None:
        check_definition(
            definition,
            self.emulators,
            self.config.machines,
            self.config.storage_dirs,
            self.config.own_dirs,
        )

    async def undefine_locked(self, job: JobHandle) -> None:
        """Remove a domain's definition. Refused while it runs."""
        name = _held(job)
        dom = self._get(name)
        if dom.run is not None:
            raise OperationInvalid(f"domain {name!r} is running: destroy or shut it down first")
        async with self._define_lock:
            await trio.to_thread.run_sync(self.store.delete_definition, name)
            del self._domains[name]
        self._emit(name, EventKind.LIFECYCLE, Lifecycle.UNDEFINED)

    async def undefine(self, name: str, *, client: str = "local") -> None:
        await self._job("domain.undefine", self.undefine_locked, name, client=client)

    # -- lifecycle -----------------------------------------------------------------

    def _holder(self, name: str) -> dict[str, str]:
        """Who holds ``name``'s job (the caller of a *_locked operation), as log fields."""
        job = self.jobs.job_info(name)
        if job is None:
            return {}
        return {"client": job.owner.client, "procedure": job.owner.procedure}

    def _own_info(self, dom: _Domain) -> DomainInfo:
        """The info a *_locked operation returns: without its own job, which
        its caller releases as it returns."""
        return attrs.evolve(self._info(dom), job=None)

    async def start_locked(self, job: JobHandle, paused: bool = False) -> DomainInfo:
        """Launch the domain's emulator and connect its monitor.

        Raises:
            OperationInvalid: it is already running.
            LaunchError: the emulator failed to start or its monitor to answer.
        """
        name = _held(job)
        try:
            info = await self._start_locked(name, paused)
        except LaunchError as exc:
            stderr = exc.data.get("stderr")
            log(
                logger, logging.WARNING, "domain %s failed to start: %s", name, exc.message,
                event="launch_failed", domain=name, reason=exc.reason,
                stderr=stderr if isinstance(stderr, str) else None, **self._holder(name),
            )  # fmt: skip
            raise
        log(
            logger, logging.INFO, "domain %s started (pid %s)%s", name, info.pid,
            " paused" if paused else "",
            event="started", domain=name, pid=info.pid, **self._holder(name),
        )  # fmt: skip
        return info

    async def _start_locked(self, name: str, paused: bool) -> DomainInfo:
        dom = self._get(name)
        if dom.run is not None:
            raise OperationInvalid(f"domain {name!r} is already running")
        d = dom.definition
        # Checked again against the configuration before anything is created.
        await trio.to_thread.run_sync(self._check_content, d)
        sim = self.emulators[d.emulator or self.config.backend] == "sim"
        user = None if sim else self.qemu_user
        try:
            dom_dir = await trio.to_thread.run_sync(
                prepare_domain_dir, self.config.runtime_dir, d.name, user, self.config.state_dir
            )
        except OSError as exc:
            raise LaunchError(
                f"cannot prepare the run directory of domain {name!r}: {exc}", domain=name
            ) from None
        spec = await trio.to_thread.run_sync(self._launch_spec, d, paused, dom_dir, user)
        try:
            qmp_path = spec.qmp_path
            taints = [TAINT_CUSTOM_ARGV] if d.extra_args else []
            if taints:
                log(
                    logger, logging.WARNING, "domain %s starts tainted (%s): extra_args %s",
                    name, ", ".join(taints), list(d.extra_args),
                    event="tainted", domain=name, taint=", ".join(taints),
                    reason=f"extra_args {list(d.extra_args)}", **self._holder(name),
                )  # fmt: skip
            # No emulator without a record naming it: "starting" before the spawn,
            # with its pid right after (launch shields both), "running" once the
            # monitor answered. A daemon killed in between finds the record at its
            # next start and kills what it launched (see _load).
            record = RuntimeRecord(
                name=d.name,
                pid=None,
                start_ticks=None,
                emulator=d.emulator,
                started_at=time.time(),
                state="starting",
                taints=list(taints),
                definition=unstructure(d),
            )
            await trio.to_thread.run_sync(self.store.save_record, record)
            spawned: QemuProcess | None = None

            async def on_spawn(proc: QemuProcess) -> None:
                nonlocal record, spawned
                spawned = proc
                record = attrs.evolve(record, pid=proc.pid, start_ticks=proc.start_ticks)
                await trio.to_thread.run_sync(self.store.save_record, record)

            try:
                proc = self._processes.hold(
                    await launch(
                        spec,
                        run_dir=dom_dir,
                        user=user,
                        on_spawn=on_spawn,
                        startup_timeout=self.config.start_timeout,
                    )
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    if spawned is None or spawned.exited():
                        await trio.to_thread.run_sync(self._forget_start, d.name)
                raise
        finally:
            # The emulator holds its own copies of the disks' descriptors.
            for fd in spec.disk_fds:
                os.close(fd)
        run = DomainRun(self, dom, proc, record, qmp_path, definition=d, taints=taints)
        try:
            dom.run = run
            dom.monitor_state = MonitorState.CONNECTING
            await self._nursery.start(run.supervise, False)
            if dom.run is not run or run.exited.is_set():
                raise LaunchError(f"domain {name!r} exited while starting", domain=name)
            run.record = attrs.evolve(record, state="running")
            await trio.to_thread.run_sync(self.store.save_record, run.record)
        except BaseException:
            if dom.run is run:
                dom.run = None
                dom.monitor_state = MonitorState.NONE
            with trio.CancelScope(shield=True):
                await proc.kill(grace=0)
                run.exited.set()
                run.release()
                await trio.to_thread.run_sync(self._forget_start, d.name)
            raise
        self._move(dom, Trigger.START_PAUSED if paused else Trigger.START)
        return self._own_info(dom)

    def _launch_spec(
        self, d: DomainDefinition, paused: bool, dom_dir: Path, user: QemuUser | None
    ) -> LaunchSpec:
        """What to launch for ``d``. The domain's sockets and logs live in
        ``dom_dir`` (its own directory in the run directory). Files are
        resolved and opened now, and what was opened is checked: QEMU gets
        the disks as descriptors (``spec.disk_fds``, which the caller closes)
        and private copies of the kernel and initrd in ``dom_dir``.

        Raises:
            InvalidParams: see :meth:`define`; or a file is missing, is not a
                regular file with one link, lies in the daemon's own
                directories (:attr:`DriverConfig.own_dirs`), or changed.
        """
        self._check_content(d)
        dirs, own = self.config.storage_dirs, self.config.own_dirs
        owner = None if user is None else (user.uid, user.gid)
        disks = tuple(
            attrs.evolve(
                disk, path=resolve_file(f"disks[{i}].path", disk.path, dirs, private_dirs=own)
            )
            for i, disk in enumerate(d.disks)
        )
        disk_fds: list[int] = []
        try:
            for i, disk in enumerate(disks):
                field = f"disks[{i}].path"
                fd = open_storage_file(
                    field, disk.path, dirs, writable=not disk.readonly, private_dirs=own
                )
                disk_fds.append(fd)
                if disk.format == "qcow2":
                    check_qcow2(field, disk.path, fd)
            boot: dict[str, str] = {}
            for field, path in (("kernel", d.kernel), ("initrd", d.initrd)):
                if not path:
                    continue
                real = resolve_file(field, path, dirs, private_dirs=own)
                fd = open_storage_file(field, real, dirs, writable=False, private_dirs=own)
                try:
                    target = dom_dir / field
                    with contextlib.suppress(FileNotFoundError):
                        target.unlink()
                    copy_boot_file(field, fd, str(target), owner)
                finally:
                    os.close(fd)
                boot[field] = str(target)
        except BaseException:
            for fd in disk_fds:
                os.close(fd)
            raise
        emulator = self.emulators[d.emulator or self.config.backend]
        sim = emulator == "sim"
        return LaunchSpec(
            name=d.name,
            qmp_path=str(dom_dir / MONITOR_SOCKET),
            emulator=emulator,
            memory_mib=d.memory_mib,
            vcpus=d.vcpus,
            machine=d.machine,
            paused=paused,
            extra_args=d.extra_args,
            sim_control_path=str(dom_dir / CONTROL_SOCKET) if sim else None,
            disks=disks,
            disk_fds=tuple(disk_fds),
            nics=d.nics,
            serial_log=str(dom_dir / SERIAL_LOG) if d.serial_log else None,
            kernel=boot.get("kernel", ""),
            initrd=boot.get("initrd", ""),
            cmdline=d.cmdline,
        )

    def _forget_start(self, name: str) -> None:
        """After a failed start whose emulator is gone: no record, no files."""
        self.store.delete_record(name)
        self._remove_runtime_files(name)

    def _remove_runtime_files(self, name: str) -> None:
        """The sockets a killed emulator could not remove itself: names in the
        domain's run directory only, never a path from a record."""
        directory = self.store.domain_run_dir(name)
        paths = [directory / MONITOR_SOCKET, directory / CONTROL_SOCKET]
        # And those of the flat layout of older daemons (RUN_DIR/NAME.qmp ...).
        paths += [self.store.run_dir / f"{name}{suffix}" for suffix in (".qmp", ".pid", ".ctl")]
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def start(self, name: str, paused: bool = False, *, client: str = "local") -> DomainInfo:
        return await self._job("domain.start", self.start_locked, name, paused, client=client)

    async def suspend(self, name: str, *, client: str = "local") -> DomainInfo:
        return await self._job("domain.suspend", self.suspend_locked, name, client=client)

    async def resume(self, name: str, *, client: str = "local") -> DomainInfo:
        return await self._job("domain.resume", self.resume_locked, name, client=client)

    async def reset(self, name: str, *, client: str = "local") -> DomainInfo:
        return await self._job("domain.reset", self.reset_locked, name, client=client)

    async def shutdown(self, name: str, *, client: str = "local") -> DomainInfo:
        return await self._job("domain.shutdown", self.shutdown_locked, name, client=client)

    async def get_stats(self, name: str, *, client: str = "local") -> DomainStats:
        return await self._job("domain.get_stats", self.get_stats_locked, name, client=client)

    async def monitor_command(
        self,
        name: str,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        client: str = "local",
    ) -> Any:
        return await self._job(
            "domain.monitor_command",
            self.monitor_command_locked,
            name,
            command,
            arguments,
            client=client,
        )

    async def _job(
        self,
        procedure: str,
        fn: Callable[..., Awaitable[T]],
        name: str,
        *args: Any,
        client: str,
    ) -> T:
        """``fn(job, *args)`` holding ``name``'s ``job``, of the kind the
        procedure table gives ``procedure`` (as a call over RPC takes it)."""
        kind = PROCEDURES[procedure].job
        assert kind is not None, f"{procedure} takes no domain job"
        self._get(name)
        async with self.jobs.job(name, kind, procedure=procedure, client=client) as job:
            return await fn(job, *args)

    async def suspend_locked(self, job: JobHandle) -> DomainInfo:
        name = _held(job)
        dom = self._running(name)
        if dom.state is DomainState.PAUSED:
            raise OperationInvalid(f"domain {name!r} is already paused")
        await self._monitor_call(dom, "stop")
        # The STOP event usually came before the reply and did this already.
        self._move(dom, Trigger.SUSPEND)
        return self._own_info(dom)

    async def resume_locked(self, job: JobHandle) -> DomainInfo:
        name = _held(job)
        dom = self._running(name)
        if dom.state is not DomainState.PAUSED:
            raise OperationInvalid(f"domain {name!r} is not paused")
        await self._monitor_call(dom, "cont")
        self._move(dom, Trigger.RESUME)
        return self._own_info(dom)

    async def reset_locked(self, job: JobHandle) -> DomainInfo:
        name = _held(job)
        dom = self._running(name)
        await self._monitor_call(dom, "system_reset")
        return self._own_info(dom)

    async def shutdown_locked(self, job: JobHandle) -> DomainInfo:
        """Press the power button (``system_powerdown``) and wait for the exit.

        Raises:
            OperationInvalid: not running, paused, or the guest did not power
                off within ``shutdown_timeout``; destroy it then.
        """
        name = _held(job)
        dom = self._running(name)
        run = dom.run
        assert run is not None
        if dom.state is DomainState.PAUSED:
            raise OperationInvalid(
                f"domain {name!r} is paused: a guest with stopped CPUs cannot react to the "
                "power button; resume it first, or destroy it",
                domain=name,
            )
        await self._monitor_call(dom, "system_powerdown")
        run.stopped_by = self._holder(name).get("client", "")
        limit = self.config.shutdown_timeout
        with trio.move_on_after(limit):
            await run.exited.wait()
        if not run.exited.is_set():
            raise OperationInvalid(
                f"domain {name!r} did not power off within {limit:g} s "
                "(the guest may ignore the power button); destroy it instead",
                domain=name,
            )
        return self._own_info(dom)

    async def get_stats_locked(self, job: JobHandle) -> DomainStats:
        name = _held(job)
        dom = self._running(name)
        run = dom.run
        assert run is not None
        status = await self._monitor_call(dom, "query-status")
        cpus = await self._monitor_call(dom, "query-cpus-fast")
        cpu_seconds, rss_kib = _proc_usage(run.proc.pid)
        return DomainStats(
            name=name,
            status=str(status.get("status", "unknown")),
            running=bool(status.get("running", False)),
            vcpus=len(cpus) if isinstance(cpus, list) else 0,
            cpu_seconds=cpu_seconds,
            rss_kib=rss_kib,
        )

    async def monitor_command_locked(
        self, job: JobHandle, command: str, arguments: dict[str, Any] | None = None
    ) -> Any:
        """QMP passthrough: run ``command`` and return QEMU's return value.

        No role check here (the RPC layer refuses commands outside
        :data:`~trioctl._policy.WRITE_MONITOR_COMMANDS` and ``query-*`` below
        the admin role); such a command taints the run (``custom-monitor``).

        Raises:
            OperationInvalid: not running, or ``qmp_capabilities`` (the driver
                negotiates itself).
            QmpCommandError: QEMU answered with an error.
        """
        name = _held(job)
        dom = self._running(name)
        if command == "qmp_capabilities":
            raise OperationInvalid("the driver negotiates capabilities itself")
        if not monitor_command_allowed(command):
            await self._taint(dom, TAINT_CUSTOM_MONITOR, f"monitor command {command!r}")
        return await self._monitor_call(dom, command, arguments)

    async def _taint(self, dom: _Domain, taint: str, why: str) -> None:
        """Mark the running process tainted (logged; kept in its record)."""
        run = dom.run
        assert run is not None
        name = dom.definition.name
        log(
            logger, logging.WARNING, "domain %s is tainted (%s): %s", name, taint, why,
            event="tainted", domain=name, taint=taint, reason=why, **self._holder(name),
        )  # fmt: skip
        if taint in run.taints:
            return
        run.taints.append(taint)
        run.record = attrs.evolve(run.record, taints=list(run.taints))
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.store.save_record, run.record)

    async def destroy(
        self, name: str, *, client: str = "local", procedure: str = "domain.destroy"
    ) -> DomainInfo:
        """Kill the domain's process at once, even if it is hung.

        A stopped (SIGSTOPped) process gets SIGKILL at once; otherwise SIGTERM
        and ``destroy_grace`` seconds, then SIGKILL. The holder of the
        domain's job is interrupted (its call ends with DomainDestroyed). The
        kill comes first and needs no job; then the destroy takes the job,
        exempt from the queue bound, to settle the state.

        Raises:
            OperationInvalid: the domain is not running.
        """
        dom = self._get(name)
        run = dom.run
        if run is None:
            raise OperationInvalid(f"domain {name!r} is not running")
        users = self._processes.users(run.proc)
        if users > 1:
            raise OperationInvalid(
                f"domain {name!r} shares its process (pid {run.proc.pid}) with {users - 1} "
                "other domains (the simulator's many-VMs mode); destroy would kill them all",
                domain=name,
            )
        run.destroying = True
        run.stopped_by = client
        # Once begun, a destroy finishes even if its caller goes away: a
        # half-done one (SIGTERM sent, no SIGKILL) would leave the domain
        # marked as destroying. It is bounded by the grace and a SIGKILL.
        with trio.CancelScope(shield=True):
            await run.proc.kill(grace=self.config.destroy_grace)
            with trio.move_on_after(5):
                await run.exited.wait()
        async with self.jobs.job(name, JobKind.DESTROY, procedure=procedure, client=client):
            pass
        return self._info(dom)

    # -- monitor access --------------------------------------------------------------

    def _running(self, name: str) -> _Domain:
        dom = self._get(name)
        if dom.run is None or dom.state not in (DomainState.RUNNING, DomainState.PAUSED):
            raise OperationInvalid(f"domain {name!r} is not running", domain=name)
        return dom

    async def _monitor_call(
        self, dom: _Domain, command: str, arguments: dict[str, Any] | None = None
    ) -> Any:
        name = dom.definition.name
        run = dom.run
        if run is None:
            raise OperationInvalid(f"domain {name!r} is not running", domain=name)
        if dom.monitor_state is MonitorState.UNRESPONSIVE and self.config.monitor_fail_fast:
            raise MonitorUnresponsive(
                f"the monitor of domain {name!r} is not responding ({dom.unresponsive_why}); "
                "calls fail at once until it answers a probe (destroy works)",
                domain=name,
            )
        monitor = run.monitor
        if monitor is None and run.destroying:
            # The emulator closed its monitor as destroy's signal ends it.
            raise DomainDestroyed(f"domain {name!r} was destroyed", domain=name)
        if monitor is None:
            raise MonitorUnresponsive(
                f"the monitor of domain {name!r} is not connected (reconnecting)", domain=name
            )
        limit = self.config.monitor_timeout
        try:
            with trio.move_on_after(math.inf if limit is None else limit) as scope:
                return await monitor.execute(command, arguments)
        except ConnectionLost:
            if run.destroying:
                raise DomainDestroyed(f"domain {name!r} was destroyed", domain=name) from None
            raise
        assert limit is not None and scope.cancelled_caught
        log(
            logger, logging.WARNING, "monitor of domain %s did not answer %s within %g s",
            name, command, limit,
            event="monitor_timeout", domain=name, command=command, reason=MonitorTimeout.reason,
            **self._holder(name),
        )  # fmt: skip
        run.mark_unresponsive(f"{command} did not answer within {limit:g} s")
        raise MonitorTimeout(
            f"the monitor of domain {name!r} did not answer {command} within {limit:g} s; "
            "it is now marked unresponsive",
            domain=name,
            command=command,
        )

    def _save_exit(self, name: str, state: DomainState, reason: str) -> None:
        """Keep how the domain last stopped, for the next daemon (see Store.save_exit)."""
        try:
            self.store.save_exit(name, state.value, str(reason))
        except OSError as exc:
            log(
                logger, logging.WARNING, "domain %s: cannot save how it stopped: %s", name, exc,
                event="state_not_saved", domain=name, reason=str(exc),
            )  # fmt: skip

    # -- open/close --------------------------------------------------------------------

    async def load(self) -> None:
        """Load the definitions and records (once), then set :attr:`loaded`
        and start the autostarts. :func:`open_driver` calls it unless told
        not to; the caller then must, before anything uses the driver."""
        await self._load()
        self.loaded.set()
        self._nursery.start_soon(self._autostart)

    async def _load(self) -> None:
        definitions, problems = await trio.to_thread.run_sync(self.store.load_definitions)
        records, record_problems = await trio.to_thread.run_sync(self.store.load_records)
        exits = await trio.to_thread.run_sync(self.store.load_exits)
        self.load_problems = problems + record_problems
        for d in definitions:
            if not d.uuid:  # a hand-written file: every domain has a uuid
                d = attrs.evolve(d, uuid=new_uuid())
            if not d.emulator:
                d = attrs.evolve(d, emulator=self.config.backend)
            loaded = self._domains[d.name] = _Domain(d)
            if d.name in exits:
                state_value, loaded.reason = exits[d.name]
                loaded.state = DomainState(state_value)
        reconnecting: list[DomainRun] = []
        # Each shared process's command line, read once (monitor_matcher).
        matchers: dict[int, Callable[[str], bool] | None] = {}
        run_dir = str(self.store.run_dir)
        for name, record in records.items():
            dom = self._domains.get(name)
            if dom is not None:  # a defined name is one plain path component
                qmp_path = os.path.join(run_dir, name, MONITOR_SOCKET)
            else:
                qmp_path = str(self.store.domain_run_dir(name) / MONITOR_SOCKET)
            if record.state == "starting":
                # A start the previous daemon never finished: kill what it
                # launched (found by its command line, even if the pid was
                # never recorded), then forget the start.
                killed = await trio.to_thread.run_sync(self._kill_unfinished_start, qmp_path)
                logger.warning(
                    "domain %s: a start was interrupted by the daemon's exit; "
                    "killed its emulator %s",
                    name,
                    killed or "(none was running)",
                )
                await trio.to_thread.run_sync(self._forget_start, name)
                continue
            if dom is None:
                logger.warning("runtime record for undefined domain %s left in place", name)
                continue
            assert record.pid is not None and record.start_ticks is not None
            try:
                shared = self._processes.get(record.pid, record.start_ticks)
                if shared is not None:
                    matches = matchers.get(record.pid)
                    if matches is None or not matches(qmp_path):
                        raise PermissionError(f"pid {record.pid} does not serve {qmp_path}")
                    proc = self._processes.hold(shared)
                else:
                    try:
                        found = verify_process(record.pid, record.start_ticks, qmp_path)
                    except PermissionError:
                        # An emulator started by a daemon from before per-domain
                        # run directories serves RUN_DIR/NAME.qmp: adopt it too.
                        qmp_path = str(self.config.runtime_dir / f"{name}.qmp")
                        found = verify_process(record.pid, record.start_ticks, qmp_path)
                    proc = self._processes.hold(found)
                    argv = cmdline(record.pid)
                    matchers[record.pid] = None if argv is None else monitor_matcher(argv)
            except PermissionError as exc:
                # A record naming a process that is not this domain's emulator:
                # never signal it; forget the record.
                log(
                    logger, logging.ERROR, "domain %s: runtime record discarded: %s", name, exc,
                    event="record_discarded", domain=name, reason=str(exc),
                )  # fmt: skip
                self.store.delete_record(name)
                self._move(dom, Trigger.CRASH)
                self._save_exit(name, dom.state, dom.reason)
                continue
            except (ProcessLookupError, OSError) as exc:
                log(
                    logger, logging.WARNING,
                    "domain %s crashed while the daemon was down (pid %d: %s)", name, record.pid,
                    exc.strerror or exc,
                    event="crashed", domain=name, pid=record.pid, reason="crashed",
                )  # fmt: skip
                self.store.delete_record(name)
                self._remove_runtime_files(name)
                self._move(dom, Trigger.CRASH)
                self._save_exit(name, dom.state, dom.reason)
                continue
            run = DomainRun(
                self,
                dom,
                proc,
                record,
                qmp_path,
                definition=_running_definition(record),
                taints=_taints(record),
            )
            dom.run = run
            self._move(dom, Trigger.ADOPT)
            dom.monitor_state = MonitorState.CONNECTING
            if self.config.reconnect == "serial":
                await self._nursery.start(run.supervise, True)
            else:
                # Parallel: the domain's job is taken here, synchronously, so
                # that no call can slip in before the monitor is back; the
                # supervisor's job holder holds it from its first step on,
                # and the daemon serves without waiting for any supervisor.
                run.reconnect_job = self.jobs.claim(
                    name, JobKind.RECONNECT, procedure="reconnect", client="daemon"
                )
                reconnecting.append(run)
        if reconnecting:
            self._nursery.start_soon(self._start_supervisors, reconnecting)

    async def _start_supervisors(self, runs: list[DomainRun]) -> None:
        """Start the supervisors of a parallel reconnect, a batch at a time,
        each batch when the loop is idle (or after a short wait at the
        latest): serving comes first. A thousand reconnects started at once
        fill every pass of Trio's scheduler with their steps, and a client's
        first call, a dozen steps, waited hundreds of milliseconds behind
        them (docs/benchmarks.md, restart). With :attr:`serve_first`, none
        starts before the first call is answered (or a short patience): the
        batches that started while the loop waited for the client's request
        were on that call's path. The jobs are held already."""
        if self.serve_first is not None:
            with trio.move_on_after(_SERVE_FIRST_PATIENCE):
                await self.serve_first.wait()
        young: list[tuple[float, DomainRun]] = []
        for i in range(0, len(runs), _SUPERVISORS_PER_PASS):
            with trio.move_on_after(_SUPERVISORS_PATIENCE):
                await wait_all_tasks_blocked()
            young = await _wait_for_handshake_room(young)
            now = trio.current_time()
            for run in runs[i : i + _SUPERVISORS_PER_PASS]:
                self._nursery.start_soon(run.supervise, True)
                young.append((now, run))

    def _kill_unfinished_start(self, qmp_path: str) -> list[int]:
        """SIGKILL every emulator serving ``qmp_path`` (run by the daemon's
        user or the emulators' user), and wait for each to exit. Blocking."""
        owners = {os.geteuid()} | ({self.qemu_user.uid} if self.qemu_user else set())
        killed = []
        for pid in find_processes(qmp_path):
            try:
                if os.stat(f"/proc/{pid}").st_uid not in owners:
                    continue
                proc = QemuProcess.attach(pid)
            except OSError:
                continue
            try:
                argv = cmdline(pid)
                if argv is None or not names_monitor(argv, qmp_path):
                    continue
                if proc.send_signal(signal.SIGKILL):
                    killed.append(pid)
                poller = select.poll()
                poller.register(proc.fileno(), select.POLLIN)
                poller.poll(5000)
                proc.exited()  # reaps it if it is our child
            finally:
                proc.close()
        return killed

    async def _autostart(self) -> None:
        async with trio.open_nursery() as nursery:
            for dom in list(self._domains.values()):
                if dom.definition.autostart and dom.run is None:
                    nursery.start_soon(self._autostart_one, dom.definition.name)

    async def _autostart_one(self, name: str) -> None:
        try:
            await self.start(name, client="daemon")
        except Exception as exc:
            log(
                logger, logging.ERROR, "autostart of %s failed: %s", name, exc,
                event="autostart_failed", domain=name,
                reason=getattr(exc, "reason", type(exc).__name__),
            )  # fmt: skip


#: A parallel reconnect starts this many supervisors whenever the loop is
#: idle, or after _SUPERVISORS_PATIENCE seconds at the latest ...
_SUPERVISORS_PER_PASS = 32
_SUPERVISORS_PATIENCE = 0.05
#: ... and while fewer than _YOUNG_HANDSHAKES of those started in the last
#: _YOUNG_HANDSHAKE_S seconds are still negotiating. The memory a restart
#: keeps grew with the handshakes in flight at once (docs/benchmarks.md,
#: scale); one older than that no longer counts, so a hung monitor holds
#: back the others for that long at most.
_YOUNG_HANDSHAKES = 256
_YOUNG_HANDSHAKE_S = 0.25
_HANDSHAKE_ROOM_POLL = 0.005


async def _wait_for_handshake_room(
    young: list[tuple[float, DomainRun]],
) -> list[tuple[float, DomainRun]]:
    """Wait until fewer than _YOUNG_HANDSHAKES of ``young`` (when each
    supervisor started, and its run) are young and still negotiating;
    return those."""
    while True:
        oldest = trio.current_time() - _YOUNG_HANDSHAKE_S
        young = [
            (started, run)
            for started, run in young
            if started > oldest and not (run.connected.is_set() or run.exited.is_set())
        ]
        if len(young) < _YOUNG_HANDSHAKES:
            return young
        await trio.sleep(_HANDSHAKE_ROOM_POLL)


#: How long a parallel reconnect's supervisors wait for Driver.serve_first.
_SERVE_FIRST_PATIENCE = 0.25


def _running_definition(record: RuntimeRecord) -> DomainDefinition | None:
    """The definition a record says its process runs with (None if unknown)."""
    if record.definition is None:
        return None
    try:
        return structure(record.definition, DomainDefinition)
    except InvalidParams as exc:
        logger.warning("runtime record of %s: unusable definition: %s", record.name, exc)
        return None


def _taints(record: RuntimeRecord) -> list[str]:
    taints = record.taints if isinstance(record.taints, list) else []
    return [t for t in taints if isinstance(t, str)]


def _held(job: JobHandle) -> str:
    """The domain whose job ``job`` holds (a ``*_locked`` operation's check)."""
    if job.owner is None:
        raise RuntimeError(f"the job of domain {job.domain!r} is not held: enter the handle first")
    return job.domain


def _job_record(job: HeldJobInfo) -> JobInfo:
    return JobInfo(
        domain=job.domain,
        kind=job.kind.value,
        procedure=job.owner.procedure,
        client=job.owner.client,
        held_seconds=round(job.held_seconds, 3),
        queued=job.queued,
        queued_queries=job.queued_queries,
    )


def _proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and resident KiB of ``pid`` from /proc (0 if unreadable)."""
    try:
        stat = procfs.read_stat(pid)
    except (OSError, ValueError):
        return 0.0, 0
    return stat.cpu_seconds, stat.rss_kib


@asynccontextmanager
async def open_driver(config: DriverConfig, *, load: bool = True) -> AsyncIterator[Driver]:
    """Load the domains and run the driver while the block lasts.

    With ``load=False`` the block starts before anything is loaded, and must
    call :meth:`Driver.load` before it uses the driver (``open_daemon``
    listens meanwhile; calls wait for :attr:`Driver.loaded`).

    Returns at once: each running domain found in the runtime records
    reconnects in its own task, holding its job until its monitor answers
    (``reconnect = "parallel"``). Leaving the block stops supervision; the
    QEMU processes keep running and are reconnected next time.
    """
    driver: Driver | None = None
    try:
        async with open_service_nursery() as nursery:
            driver = Driver(config, nursery)
            if load:
                await driver.load()
            try:
                yield driver
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Supervision has ended; the processes run on, unwatched. An idle
        # domain has no task that the cancellation ended: close its monitor.
        if driver is not None:
            for dom in driver._domains.values():
                if dom.run is not None:
                    dom.run.detach()
            driver._processes.close()
