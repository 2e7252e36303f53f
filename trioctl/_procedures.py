"""THE procedure table: every RPC procedure, declared once.

As libvirt's ``remote_protocol.x`` declares each procedure with its
``@priority`` and ``@acl``, each :class:`Procedure` here names its params and
result types (attrs classes, structured by cattrs with unknown keys refused),
its priority, the role it needs, the domain job it takes, its deadline and its
documentation. The server dispatches from it; ``trioctl._tools.gen_schemas``
generates ``schemas/`` and ``docs/procedures.md`` from it; the client library
has one method per entry.

libvirt's rule for priorities: a procedure that may touch a monitor (and so
block) is LOW; destroy is the exception. Lookups, listing and cached info are
HIGH.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import attrs

from ._bulkstats import MAX_WAIT_SECONDS, NOWAIT_SECONDS, AllDomainStats, get_all_domain_stats
from ._errors import AccessDenied
from ._jobs import JobKind
from ._models import DomainDefinition, DomainInfo, DomainState, DomainStats, JobInfo
from ._policy import WRITE_MONITOR_COMMANDS, monitor_command_allowed
from ._pools import Priority

if TYPE_CHECKING:
    # Only a type here: the client library imports this module for the result
    # types, and must not load the driver (the daemon's side).
    from ._driver import Driver

__all__ = [
    "PROCEDURES",
    "PROTOCOL_VERSION",
    "CallContext",
    "Procedure",
    "ProcedureTable",
    "Role",
]

#: Bumped when a procedure's params or result change incompatibly.
PROTOCOL_VERSION: Final = 1


class Role(enum.IntEnum):
    """Access roles, each including the ones below it (libvirt's read-only,
    full and admin sockets)."""

    READ = 1
    WRITE = 2
    ADMIN = 3


# -- params -----------------------------------------------------------------------


@attrs.frozen
class NoParams:
    """No parameters."""


@attrs.frozen
class ListDomainsParams:
    state: DomainState | None = None
    """Only domains in this state."""


@attrs.frozen
class AllDomainStatsParams:
    names: list[str] | None = None
    """Only these domains (NO_DOMAIN if one is not defined)."""
    states: list[DomainState] | None = None
    """Only domains in one of these states."""
    wait: float | None = None
    """Seconds each domain may wait for its job and monitor (at most 30);
    absent: NOWAIT, busy or hung domains come from cached state at once."""


@attrs.frozen
class DomainRef:
    name: str
    """The domain's name."""


@attrs.frozen
class DefineParams:
    definition: DomainDefinition


@attrs.frozen
class StartParams:
    name: str
    paused: bool = False
    """Start with the CPUs stopped (QEMU's ``-S``)."""


@attrs.frozen
class MonitorCommandParams:
    name: str
    command: str
    """A QMP command, such as ``query-status``."""
    arguments: dict[str, Any] | None = None


@attrs.frozen
class SubscribeParams:
    domains: list[str] | None = None
    """Only events of these domains (all when absent)."""


@attrs.frozen
class SetThreadpoolParams:
    min_workers: int | None = None
    max_workers: int | None = None
    prio_workers: int | None = None


@attrs.frozen
class SetClientLimitsParams:
    max_clients: int | None = None
    max_client_requests: int | None = None


@attrs.frozen
class ClientRef:
    id: str
    """A client id from ``admin.list_clients``."""


# -- results ------------------------------------------------------------------------


@attrs.frozen
class VersionInfo:
    daemon: str
    """trioctl's version."""
    protocol: int
    backend: str
    """The default emulator for new definitions: ``sim`` or ``qemu``."""
    role: str = ""
    """The calling client's role: ``read``, ``write`` or ``admin``."""


@attrs.frozen
class DomainList:
    domains: list[DomainInfo]


@attrs.frozen
class Subscribed:
    subscribed: bool
    domains: list[str] | None


@attrs.frozen
class ThreadpoolInfo:
    min_workers: int
    max_workers: int
    prio_workers: int
    max_pending: int
    workers: int
    """General workers alive now."""
    free_workers: int
    current_prio_workers: int
    free_prio_workers: int
    queue_depth_high: int
    queue_depth_low: int
    completed: int
    rejected: int


@attrs.frozen
class ClientLimits:
    max_clients: int
    max_client_requests: int
    clients: int
    """Clients connected now."""


@attrs.frozen
class ClientInfo:
    id: str
    role: str
    endpoint: str
    """``api`` or ``admin``."""
    peer: str
    connected_seconds: float
    in_flight: int
    calls: int
    subscribed: bool
    events_dropped: int


@attrs.frozen
class ClientList:
    clients: list[ClientInfo]


@attrs.frozen
class Disconnected:
    disconnected: bool


@attrs.frozen
class JobList:
    jobs: list[JobInfo]


@attrs.frozen
class LatencyPercentiles:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@attrs.frozen
class ServerStats:
    uptime_seconds: float
    calls: dict[str, int]
    """Calls per procedure."""
    errors: dict[str, int]
    """Errors per reason."""
    latency: dict[str, LatencyPercentiles]
    """Per priority (``high``, ``low``), over the last calls."""
    events_dropped: int


# -- the services a handler may use ----------------------------------------------------


class Services(Protocol):
    """What the server offers to handlers (implemented by the server)."""

    driver: Driver

    def version(self) -> VersionInfo: ...
    def threadpool_info(self) -> ThreadpoolInfo: ...
    def set_threadpool(self, params: SetThreadpoolParams) -> ThreadpoolInfo: ...
    def client_limits(self) -> ClientLimits: ...
    def set_client_limits(self, params: SetClientLimitsParams) -> ClientLimits: ...
    def list_clients(self) -> ClientList: ...
    def disconnect_client(self, client_id: str) -> Disconnected: ...
    def server_stats(self) -> ServerStats: ...


class Session(Protocol):
    """The calling client's session (implemented by the server)."""

    id: str
    role: Role
    """What the caller may do: handlers check content-dependent rights
    (``extra_args``, monitor commands) with it."""

    def subscribe(self, domains: list[str] | None) -> None: ...
    def unsubscribe(self) -> None: ...


@attrs.frozen
class CallContext:
    services: Services
    session: Session


Handler = Callable[[CallContext, Any], Awaitable[Any]]


@attrs.frozen
class Procedure:
    """One procedure: everything about it, in one place."""

    name: str
    params: type
    result: type | None
    """None: the result is any JSON value (QMP passthrough)."""
    handler: Handler
    priority: Priority
    role: Role
    job: JobKind | None = None
    """The domain job the dispatcher takes before the handler runs (params
    must then have a ``name``); None: no job, or the handler manages it."""
    shared: bool = False
    """A QUERY whose result depends only on its params: a call joins an
    identical one still waiting for the domain's job and shares its answer
    (see ``trioctl._dispatch``)."""
    deadline: float = 60.0
    """The dispatcher cancels the call after this many seconds."""
    endpoint: Literal["api", "admin"] = "api"
    doc: str = ""


class ProcedureTable:
    """Procedures by name; refuses duplicates."""

    def __init__(self, procedures: list[Procedure]) -> None:
        self._by_name: dict[str, Procedure] = {}
        for proc in procedures:
            if proc.name in self._by_name:
                raise ValueError(f"duplicate procedure {proc.name}")
            if proc.name.startswith("rpc."):
                raise ValueError(f"{proc.name}: names starting with 'rpc.' are reserved")
            if proc.job is not None and "name" not in attrs.fields_dict(proc.params):
                raise ValueError(f"{proc.name}: a domain job needs a 'name' parameter")
            if proc.shared and proc.job is not JobKind.QUERY:
                raise ValueError(f"{proc.name}: only a query job can be shared")
            self._by_name[proc.name] = proc

    def get(self, name: str) -> Procedure | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Procedure]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


# -- handlers ----------------------------------------------------------------------------
# Handlers with a job run while the dispatcher holds the domain's job, so they
# call the driver's *_locked operations.


async def _get_version(ctx: CallContext, _p: NoParams) -> VersionInfo:
    return attrs.evolve(ctx.services.version(), role=ctx.session.role.name.lower())


async def _list_domains(ctx: CallContext, p: ListDomainsParams) -> DomainList:
    return DomainList(ctx.services.driver.list_domains(p.state))


async def _get_all_domain_stats(ctx: CallContext, p: AllDomainStatsParams) -> AllDomainStats:
    return await get_all_domain_stats(
        ctx.services.driver, names=p.names, states=p.states, wait=p.wait, client=ctx.session.id
    )


async def _get_info(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return ctx.services.driver.get_info(p.name)


async def _define(ctx: CallContext, p: DefineParams) -> DomainInfo:
    if p.definition.extra_args and ctx.session.role < Role.ADMIN:
        raise AccessDenied(
            "'extra_args' (raw emulator options) needs the admin role; this client has "
            f"{ctx.session.role.name.lower()}: use the typed fields (disks, nics, serial_log, "
            "kernel) instead",
            method="domain.define",
        )
    return await ctx.services.driver.define(p.definition)


async def _undefine(ctx: CallContext, p: DomainRef) -> DomainInfo:
    # The last state of the domain, without this call's own job.
    info = attrs.evolve(ctx.services.driver.get_info(p.name), job=None)
    await ctx.services.driver.undefine_locked(p.name)
    return info


async def _start(ctx: CallContext, p: StartParams) -> DomainInfo:
    return await ctx.services.driver.start_locked(p.name, p.paused)


async def _shutdown(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return await ctx.services.driver.shutdown_locked(p.name)


async def _suspend(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return await ctx.services.driver.suspend_locked(p.name)


async def _resume(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return await ctx.services.driver.resume_locked(p.name)


async def _reset(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return await ctx.services.driver.reset_locked(p.name)


async def _destroy(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return await ctx.services.driver.destroy(p.name, client=ctx.session.id)


async def _get_stats(ctx: CallContext, p: DomainRef) -> DomainStats:
    return await ctx.services.driver.get_stats_locked(p.name)


async def _monitor_command(ctx: CallContext, p: MonitorCommandParams) -> Any:
    if not monitor_command_allowed(p.command) and ctx.session.role < Role.ADMIN:
        raise AccessDenied(
            f"monitor command {p.command!r} needs the admin role; the "
            f"{ctx.session.role.name.lower()} role may send query-* and "
            f"{', '.join(sorted(WRITE_MONITOR_COMMANDS))}",
            method="domain.monitor_command",
            command=p.command,
        )
    return await ctx.services.driver.monitor_command_locked(p.name, p.command, p.arguments)


async def _subscribe(ctx: CallContext, p: SubscribeParams) -> Subscribed:
    ctx.session.subscribe(p.domains)
    return Subscribed(True, p.domains)


async def _unsubscribe(ctx: CallContext, _p: NoParams) -> Subscribed:
    ctx.session.unsubscribe()
    return Subscribed(False, None)


async def _get_threadpool(ctx: CallContext, _p: NoParams) -> ThreadpoolInfo:
    return ctx.services.threadpool_info()


async def _set_threadpool(ctx: CallContext, p: SetThreadpoolParams) -> ThreadpoolInfo:
    return ctx.services.set_threadpool(p)


async def _get_client_limits(ctx: CallContext, _p: NoParams) -> ClientLimits:
    return ctx.services.client_limits()


async def _set_client_limits(ctx: CallContext, p: SetClientLimitsParams) -> ClientLimits:
    return ctx.services.set_client_limits(p)


async def _list_clients(ctx: CallContext, _p: NoParams) -> ClientList:
    return ctx.services.list_clients()


async def _disconnect_client(ctx: CallContext, p: ClientRef) -> Disconnected:
    return ctx.services.disconnect_client(p.id)


async def _list_jobs(ctx: CallContext, _p: NoParams) -> JobList:
    return JobList(ctx.services.driver.list_jobs())


async def _get_stats_admin(ctx: CallContext, _p: NoParams) -> ServerStats:
    return ctx.services.server_stats()


HIGH, LOW = Priority.HIGH, Priority.LOW
READ, WRITE, ADMIN = Role.READ, Role.WRITE, Role.ADMIN

PROCEDURES: Final = ProcedureTable(
    [
        Procedure("connect.get_version", NoParams, VersionInfo, _get_version, HIGH, READ,
                  deadline=5, doc="The daemon's version, protocol version and default backend."),
        Procedure("connect.list_domains", ListDomainsParams, DomainList, _list_domains, HIGH,
                  READ, deadline=5,
                  doc="Every domain (or those in `state`), from cached state: never waits."),
        Procedure("connect.get_all_domain_stats", AllDomainStatsParams, AllDomainStats,
                  _get_all_domain_stats, HIGH, READ, deadline=MAX_WAIT_SECONDS + 5,
                  doc="Stats of every domain (or `names`, `states`) in one call, gathered "
                      "concurrently, each under its own deadline. By default (NOWAIT) a domain "
                      "whose job is held, or whose monitor is unresponsive or reconnecting, "
                      "is reported at once from cached state with `skipped` saying why and "
                      "`info.job` naming the holder; the others get "
                      f"{NOWAIT_SECONDS:g} s each (else `skipped: timeout`). With `wait`, "
                      "every running domain may wait that long for its job and monitor."),
        Procedure("domain.lookup", DomainRef, DomainInfo, _get_info, HIGH, READ, deadline=5,
                  doc="One domain by name, from cached state."),
        Procedure("domain.get_info", DomainRef, DomainInfo, _get_info, HIGH, READ, deadline=5,
                  doc="Cached state of one domain (state, reason, monitor, pid, job holder); "
                      "never touches the monitor, so it answers even for hung domains."),
        Procedure("domain.define", DefineParams, DomainInfo, _define, HIGH, WRITE, deadline=10,
                  doc="Add a domain or replace its definition (a running domain keeps its "
                      "configuration, shown by get_info with `pending_changes`, and uses the "
                      "new one at its next start; the uuid never changes). The emulator is a "
                      "configured name, the machine type from `driver.machines`, files from "
                      "`driver.storage_dirs` (else INVALID_PARAMS); `extra_args` needs the "
                      "admin role (else ACCESS_DENIED) and taints the runs it starts."),
        Procedure("domain.undefine", DomainRef, DomainInfo, _undefine, HIGH, WRITE,
                  job=JobKind.MODIFY, deadline=40,
                  doc="Remove a domain's definition; refused while it runs."),
        Procedure("domain.start", StartParams, DomainInfo, _start, LOW, WRITE,
                  job=JobKind.MODIFY, deadline=60,
                  doc="Launch the emulator and connect its monitor."),
        Procedure("domain.shutdown", DomainRef, DomainInfo, _shutdown, LOW, WRITE,
                  job=JobKind.MODIFY, deadline=120,
                  doc="Press the power button (QMP `system_powerdown`) and wait for the "
                      "guest to power off, up to `shutdown_timeout`."),
        Procedure("domain.suspend", DomainRef, DomainInfo, _suspend, LOW, WRITE,
                  job=JobKind.MODIFY, deadline=60, doc="Pause the CPUs (QMP `stop`)."),
        Procedure("domain.resume", DomainRef, DomainInfo, _resume, LOW, WRITE,
                  job=JobKind.MODIFY, deadline=60, doc="Resume the CPUs (QMP `cont`)."),
        Procedure("domain.reset", DomainRef, DomainInfo, _reset, LOW, WRITE,
                  job=JobKind.MODIFY, deadline=60, doc="Hard reset (QMP `system_reset`)."),
        Procedure("domain.destroy", DomainRef, DomainInfo, _destroy, HIGH, WRITE, deadline=30,
                  doc="Kill the emulator at once, even if hung (SIGKILL for a stopped "
                      "process), then take the job, bypassing `max_queued`; the job's "
                      "holder gets DOMAIN_DESTROYED."),
        Procedure("domain.get_stats", DomainRef, DomainStats, _get_stats, LOW, READ,
                  job=JobKind.QUERY, shared=True, deadline=60,
                  doc="Live figures through the monitor (`query-status`, `query-cpus-fast`) "
                      "and /proc."),
        Procedure("domain.monitor_command", MonitorCommandParams, None, _monitor_command, LOW,
                  WRITE, job=JobKind.MODIFY, deadline=60,
                  doc="QMP passthrough: returns QMP's return value; a QMP error is "
                      "MONITOR_ERROR with its class and description. The write role may send "
                      "`query-*` and " + ", ".join(f"`{c}`" for c in sorted(WRITE_MONITOR_COMMANDS))
                      + "; any other command needs the admin role (else ACCESS_DENIED) and "
                      "taints the run (`custom-monitor`)."),
        Procedure("events.subscribe", SubscribeParams, Subscribed, _subscribe, HIGH, READ,
                  deadline=5,
                  doc="Receive `events.event` notifications (all domains, or `domains`)."),
        Procedure("events.unsubscribe", NoParams, Subscribed, _unsubscribe, HIGH, READ,
                  deadline=5, doc="Stop receiving events."),
        Procedure("admin.get_threadpool", NoParams, ThreadpoolInfo, _get_threadpool, HIGH,
                  ADMIN, deadline=5, endpoint="admin",
                  doc="Worker pool limits, workers alive and free, queue depth."),
        Procedure("admin.set_threadpool", SetThreadpoolParams, ThreadpoolInfo, _set_threadpool,
                  HIGH, ADMIN, deadline=5, endpoint="admin",
                  doc="Change pool limits at run time (libvirt's validation); running jobs "
                      "are never cancelled."),
        Procedure("admin.get_client_limits", NoParams, ClientLimits, _get_client_limits, HIGH,
                  ADMIN, deadline=5, endpoint="admin", doc="max_clients, max_client_requests."),
        Procedure("admin.set_client_limits", SetClientLimitsParams, ClientLimits,
                  _set_client_limits, HIGH, ADMIN, deadline=5, endpoint="admin",
                  doc="Change client limits; applies to new requests and connections."),
        Procedure("admin.list_clients", NoParams, ClientList, _list_clients, HIGH, ADMIN,
                  deadline=5, endpoint="admin", doc="Connected clients."),
        Procedure("admin.disconnect_client", ClientRef, Disconnected, _disconnect_client, HIGH,
                  ADMIN, deadline=5, endpoint="admin", doc="Close a client's connection."),
        Procedure("admin.list_jobs", NoParams, JobList, _list_jobs, HIGH, ADMIN, deadline=5,
                  endpoint="admin",
                  doc="Every held domain job: holder procedure, client, seconds held, "
                      "callers queued (and how many of them are queries)."),
        Procedure("admin.get_stats", NoParams, ServerStats, _get_stats_admin, HIGH, ADMIN,
                  deadline=5, endpoint="admin",
                  doc="Calls per procedure, errors per reason, latency percentiles per "
                      "priority."),
    ]
)  # fmt: skip
