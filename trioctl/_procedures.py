"""THE procedure table: every RPC procedure, declared once.

As libvirt's ``remote_protocol.x`` declares each procedure with its
``@priority`` and ``@acl``, each :class:`Procedure` here names its params and
result types (attrs classes, structured by cattrs with unknown keys refused),
its priority, the role it needs, the domain job it takes, whether it touches
a monitor, its deadline and its documentation. From it:

- the server dispatches (``trioctl._handlers`` binds a handler to each entry);
- ``trioctl._tools.gen_schemas`` generates ``schemas/`` and
  ``docs/procedures.md`` (constraints from the validators of the models);
- the client library derives one method per entry, with the entry's result
  type (``trioctl._client``; a test fails if one is missing or differs);
- the CLI takes its commands' help from the entries' docs.

This module imports only the models: the client library loads it, and must
not load the daemon's side.

libvirt's rule for priorities, checked here: a procedure that may touch a
monitor (and so block) is LOW, every other one HIGH (destroy kills without
asking the monitor). Lookups, listing and cached info are HIGH.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Literal

import attrs

from ._models import (
    MAX_WAIT_SECONDS,
    NOWAIT_SECONDS,
    WRITE_MONITOR_COMMANDS,
    AllDomainStats,
    DomainDefinition,
    DomainInfo,
    DomainState,
    DomainStats,
    JobInfo,
    JobKind,
    Priority,
)

__all__ = [
    "PROCEDURES",
    "PROTOCOL_VERSION",
    "Handler",
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


Handler = Callable[..., Awaitable[Any]]
"""``handler(ctx, params)``: ``ctx`` is the server's call context
(``trioctl._handlers.CallContext``)."""


@attrs.frozen
class Procedure:
    """One procedure: everything about it, in one place."""

    name: str
    params: type
    result: type | None
    """None: the result is any JSON value (QMP passthrough)."""
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
    touches_monitor: bool = False
    """The handler may talk to the domain's monitor (and so block): LOW
    priority, under a domain job."""
    immediate: bool = False
    """The handler never waits (no job, no monitor, no I/O: it answers from
    memory): the session's reader runs the call itself, with the same table,
    role check, deadline and worker token, instead of a task of its own."""
    bound: Handler | None = None
    """The server's handler, bound by ``trioctl._handlers``."""

    @property
    def handler(self) -> Handler:
        """The bound handler (the daemon's table, ``trioctl._handlers.PROCEDURES``)."""
        if self.bound is None:
            raise RuntimeError(
                f"{self.name} has no handler here: the daemon's table is trioctl._handlers"
            )
        return self.bound


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
            expected = Priority.LOW if proc.touches_monitor else Priority.HIGH
            if proc.priority is not expected:
                raise ValueError(
                    f"{proc.name}: a procedure that "
                    f"{'touches' if proc.touches_monitor else 'never touches'} a monitor "
                    f"is {expected.value} priority (libvirt's rule)"
                )
            if proc.touches_monitor and proc.job is None:
                raise ValueError(f"{proc.name}: a procedure touching a monitor needs a domain job")
            self._by_name[proc.name] = proc

    def get(self, name: str) -> Procedure | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> Procedure:
        return self._by_name[name]

    def bind(self, handlers: dict[str, Handler]) -> ProcedureTable:
        """This table with a handler bound to every procedure; refuses a
        missing or unknown one."""
        missing = sorted(set(self._by_name) - set(handlers))
        unknown = sorted(set(handlers) - set(self._by_name))
        if missing or unknown:
            raise ValueError(f"handlers missing for {missing}, unknown for {unknown}")
        return ProcedureTable([attrs.evolve(proc, bound=handlers[proc.name]) for proc in self])

    def __iter__(self) -> Iterator[Procedure]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


HIGH, LOW = Priority.HIGH, Priority.LOW
READ, WRITE, ADMIN = Role.READ, Role.WRITE, Role.ADMIN

PROCEDURES: Final = ProcedureTable(
    [
        Procedure("connect.get_version", NoParams, VersionInfo, HIGH, READ,
                  deadline=5, immediate=True,
                  doc="The daemon's version, protocol version and default backend."),
        Procedure("connect.list_domains", ListDomainsParams, DomainList, HIGH,
                  READ, deadline=5, immediate=True,
                  doc="Every domain (or those in `state`), from cached state: never waits."),
        Procedure("connect.get_all_domain_stats", AllDomainStatsParams, AllDomainStats,
                  HIGH, READ, deadline=MAX_WAIT_SECONDS + 5,
                  doc="Stats of every domain (or `names`, `states`) in one call, gathered "
                      "concurrently, each under its own deadline. By default (NOWAIT) a domain "
                      "whose job is held, or whose monitor is unresponsive or reconnecting, "
                      "is reported at once from cached state with `skipped` saying why and "
                      "`info.job` naming the holder; the others get "
                      f"{NOWAIT_SECONDS:g} s each (else `skipped: timeout`). With `wait`, "
                      "every running domain may wait that long for its job and monitor."),
        Procedure("domain.lookup", DomainRef, DomainInfo, HIGH, READ, deadline=5,
                  doc="One domain by name, from cached state."),
        Procedure("domain.get_info", DomainRef, DomainInfo, HIGH, READ, deadline=5,
                  doc="Cached state of one domain (state, reason, monitor, pid, job holder); "
                      "never touches the monitor, so it answers even for hung domains."),
        Procedure("domain.define", DefineParams, DomainInfo, HIGH, WRITE, deadline=10,
                  doc="Add a domain or replace its definition (a running domain keeps its "
                      "configuration, shown by get_info with `pending_changes`, and uses the "
                      "new one at its next start; the uuid never changes). The emulator is a "
                      "configured name, the machine type from `driver.machines`, files from "
                      "`driver.storage_dirs` (else INVALID_PARAMS); `extra_args` needs the "
                      "admin role (else ACCESS_DENIED) and taints the runs it starts."),
        Procedure("domain.undefine", DomainRef, DomainInfo, HIGH, WRITE,
                  job=JobKind.MODIFY, deadline=40,
                  doc="Remove a domain's definition; refused while it runs."),
        Procedure("domain.start", StartParams, DomainInfo, LOW, WRITE,
                  touches_monitor=True, job=JobKind.MODIFY, deadline=60,
                  doc="Launch the emulator and connect its monitor."),
        Procedure("domain.shutdown", DomainRef, DomainInfo, LOW, WRITE,
                  touches_monitor=True, job=JobKind.MODIFY, deadline=120,
                  doc="Press the power button (QMP `system_powerdown`) and wait for the "
                      "guest to power off, up to `shutdown_timeout`."),
        Procedure("domain.suspend", DomainRef, DomainInfo, LOW, WRITE,
                  touches_monitor=True, job=JobKind.MODIFY, deadline=60,
                  doc="Pause the CPUs (QMP `stop`)."),
        Procedure("domain.resume", DomainRef, DomainInfo, LOW, WRITE,
                  touches_monitor=True, job=JobKind.MODIFY, deadline=60,
                  doc="Resume the CPUs (QMP `cont`)."),
        Procedure("domain.reset", DomainRef, DomainInfo, LOW, WRITE,
                  touches_monitor=True, job=JobKind.MODIFY, deadline=60,
                  doc="Hard reset (QMP `system_reset`)."),
        Procedure("domain.destroy", DomainRef, DomainInfo, HIGH, WRITE, deadline=30,
                  doc="Kill the emulator at once, even if hung (SIGKILL for a stopped "
                      "process), then take the job, bypassing `max_queued`; the job's "
                      "holder gets DOMAIN_DESTROYED."),
        Procedure("domain.get_stats", DomainRef, DomainStats, LOW, READ,
                  touches_monitor=True, job=JobKind.QUERY, shared=True, deadline=60,
                  doc="Live figures through the monitor (`query-status`, `query-cpus-fast`) "
                      "and /proc."),
        Procedure("domain.monitor_command", MonitorCommandParams, None, LOW,
                  WRITE, touches_monitor=True, job=JobKind.MODIFY, deadline=60,
                  doc="QMP passthrough: returns QMP's return value; a QMP error is "
                      "MONITOR_ERROR with its class and description. The write role may send "
                      "`query-*` and " + ", ".join(f"`{c}`" for c in sorted(WRITE_MONITOR_COMMANDS))
                      + "; any other command needs the admin role (else ACCESS_DENIED) and "
                      "taints the run (`custom-monitor`)."),
        Procedure("events.subscribe", SubscribeParams, Subscribed, HIGH, READ,
                  deadline=5,
                  doc="Receive `events.event` notifications (all domains, or `domains`)."),
        Procedure("events.unsubscribe", NoParams, Subscribed, HIGH, READ,
                  deadline=5, doc="Stop receiving events."),
        Procedure("admin.get_threadpool", NoParams, ThreadpoolInfo, HIGH,
                  ADMIN, deadline=5, endpoint="admin",
                  doc="Worker pool limits, workers alive and free, queue depth."),
        Procedure("admin.set_threadpool", SetThreadpoolParams, ThreadpoolInfo, HIGH, ADMIN,
                  deadline=5, endpoint="admin",
                  doc="Change pool limits at run time (libvirt's validation); running jobs "
                      "are never cancelled."),
        Procedure("admin.get_client_limits", NoParams, ClientLimits, HIGH,
                  ADMIN, deadline=5, endpoint="admin", doc="max_clients, max_client_requests."),
        Procedure("admin.set_client_limits", SetClientLimitsParams, ClientLimits,
                  HIGH, ADMIN, deadline=5, endpoint="admin",
                  doc="Change client limits; applies to new requests and connections."),
        Procedure("admin.list_clients", NoParams, ClientList, HIGH, ADMIN,
                  deadline=5, endpoint="admin", doc="Connected clients."),
        Procedure("admin.disconnect_client", ClientRef, Disconnected, HIGH,
                  ADMIN, deadline=5, endpoint="admin", doc="Close a client's connection."),
        Procedure("admin.list_jobs", NoParams, JobList, HIGH, ADMIN, deadline=5,
                  endpoint="admin",
                  doc="Every held domain job: holder procedure, client, seconds held, "
                      "callers queued (and how many of them are queries)."),
        Procedure("admin.get_stats", NoParams, ServerStats, HIGH, ADMIN,
                  deadline=5, endpoint="admin",
                  doc="Calls per procedure, errors per reason, latency percentiles per "
                      "priority."),
    ]
)  # fmt: skip
