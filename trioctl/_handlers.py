"""The daemon's side of the procedure table: each procedure's handler.

:data:`trioctl._procedures.PROCEDURES` declares the procedures (and is all
the client library loads); here each gets its handler, and
:data:`PROCEDURES` is the table the server dispatches from.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs

from ._bulkstats import get_all_domain_stats
from ._driver import Driver
from ._errors import AccessDenied
from ._jobs import JobHandle
from ._models import WRITE_MONITOR_COMMANDS, AllDomainStats, DomainInfo, DomainStats
from ._policy import monitor_command_allowed
from ._procedures import (
    PROCEDURES as DECLARED,
    AllDomainStatsParams,
    ClientLimits,
    ClientList,
    ClientRef,
    DefineParams,
    Disconnected,
    DomainList,
    DomainRef,
    Handler,
    JobList,
    ListDomainsParams,
    MonitorCommandParams,
    NoParams,
    Role,
    ServerStats,
    SetClientLimitsParams,
    SetThreadpoolParams,
    StartParams,
    Subscribed,
    SubscribeParams,
    ThreadpoolInfo,
    VersionInfo,
)

__all__ = ["PROCEDURES", "CallContext", "Services", "Session"]


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


# -- handlers ----------------------------------------------------------------------------
# Handlers with a job run while the dispatcher holds the domain's job, and get
# its handle, which the driver's *_locked operations take.


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


async def _undefine(ctx: CallContext, p: DomainRef, job: JobHandle) -> DomainInfo:
    # The last state of the domain, without this call's own job.
    info = attrs.evolve(ctx.services.driver.get_info(p.name), job=None)
    await ctx.services.driver.undefine_locked(job)
    return info


async def _start(ctx: CallContext, p: StartParams, job: JobHandle) -> DomainInfo:
    return await ctx.services.driver.start_locked(job, p.paused)


async def _shutdown(ctx: CallContext, _p: DomainRef, job: JobHandle) -> DomainInfo:
    return await ctx.services.driver.shutdown_locked(job)


async def _suspend(ctx: CallContext, _p: DomainRef, job: JobHandle) -> DomainInfo:
    return await ctx.services.driver.suspend_locked(job)


async def _resume(ctx: CallContext, _p: DomainRef, job: JobHandle) -> DomainInfo:
    return await ctx.services.driver.resume_locked(job)


async def _reset(ctx: CallContext, _p: DomainRef, job: JobHandle) -> DomainInfo:
    return await ctx.services.driver.reset_locked(job)


async def _destroy(ctx: CallContext, p: DomainRef) -> DomainInfo:
    return await ctx.services.driver.destroy(p.name, client=ctx.session.id)


async def _get_stats(ctx: CallContext, _p: DomainRef, job: JobHandle) -> DomainStats:
    return await ctx.services.driver.get_stats_locked(job)


async def _monitor_command(ctx: CallContext, p: MonitorCommandParams, job: JobHandle) -> Any:
    if not monitor_command_allowed(p.command) and ctx.session.role < Role.ADMIN:
        raise AccessDenied(
            f"monitor command {p.command!r} needs the admin role; the "
            f"{ctx.session.role.name.lower()} role may send query-* and "
            f"{', '.join(sorted(WRITE_MONITOR_COMMANDS))}",
            method="domain.monitor_command",
            command=p.command,
        )
    return await ctx.services.driver.monitor_command_locked(job, p.command, p.arguments)


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


_HANDLERS: Final[dict[str, Handler]] = {
    "connect.get_version": _get_version,
    "connect.list_domains": _list_domains,
    "connect.get_all_domain_stats": _get_all_domain_stats,
    "domain.lookup": _get_info,
    "domain.get_info": _get_info,
    "domain.define": _define,
    "domain.undefine": _undefine,
    "domain.start": _start,
    "domain.shutdown": _shutdown,
    "domain.suspend": _suspend,
    "domain.resume": _resume,
    "domain.reset": _reset,
    "domain.destroy": _destroy,
    "domain.get_stats": _get_stats,
    "domain.monitor_command": _monitor_command,
    "events.subscribe": _subscribe,
    "events.unsubscribe": _unsubscribe,
    "admin.get_threadpool": _get_threadpool,
    "admin.set_threadpool": _set_threadpool,
    "admin.get_client_limits": _get_client_limits,
    "admin.set_client_limits": _set_client_limits,
    "admin.list_clients": _list_clients,
    "admin.disconnect_client": _disconnect_client,
    "admin.list_jobs": _list_jobs,
    "admin.get_stats": _get_stats_admin,
}

#: The table the server dispatches from: the declared one, each procedure
#: with its handler.
PROCEDURES: Final = DECLARED.bind(_HANDLERS)
