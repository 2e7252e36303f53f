"""The client commands: domains, events, QMP passthrough, and ``admin``.

Each command connects to the daemon (``-c/--connect``), makes its call(s) and
prints the result: aligned tables and ``Key: value`` lists for people, one
JSON document with ``--json``. Failures follow :mod:`._output`'s rules.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import tomllib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from .._client import Client
from .._errors import InvalidParams
from .._models import DomainEvent, DomainInfo, DomainState
from .._procedures import PROCEDURES, ClientInfo, ServerStats, ThreadpoolInfo
from ._output import (
    EXIT_CONNECTION,
    CliFailure,
    Settings,
    duration,
    echo_json,
    format_domain_info,
    json_option,
    keyvalues,
    run_client,
    show,
    table,
    timestamp,
    unstructure,
)

__all__ = ["register"]

_Call = Callable[[Client], Coroutine[Any, Any, Any]]
_F = TypeVar("_F", bound=Callable[..., Any])

#: The procedure each command calls, by command path (``admin jobs``).
COMMAND_PROCEDURES: dict[str, str] = {}


def procedure_help(procedure: str, command: str) -> Callable[[_F], _F]:
    """Give the decorated command function the procedure's doc as its help,
    followed by the function's own docstring (what the command adds)."""
    doc = PROCEDURES[procedure].doc.replace("`", "")

    def set_help(fn: _F) -> _F:
        own = inspect.getdoc(fn)
        fn.__doc__ = f"{doc}\n\n{own}" if own else doc
        COMMAND_PROCEDURES[command] = procedure
        return fn

    return set_help


pass_settings = click.make_pass_decorator(Settings, ensure=True)


def register(group: click.Group) -> None:
    """Add every client command to ``group`` (the ``trioctl`` group)."""
    for command in (
        version,
        list_domains,
        define,
        undefine,
        start,
        shutdown,
        destroy,
        suspend,
        resume,
        reset,
        dominfo,
        domstats,
        qmp,
        events,
        console,
        admin,
    ):
        group.add_command(command)


# -- connect.* / domain.* ----------------------------------------------------------------


@click.command()
@json_option
@pass_settings
@procedure_help("connect.get_version", "version")
def version(settings: Settings) -> None:
    info = run_client(settings, lambda c: c.get_version())
    if settings.json:
        echo_json(unstructure(info))
    else:
        click.echo(
            keyvalues(
                [
                    ("Daemon", info.daemon),
                    ("Protocol", info.protocol),
                    ("Backend", info.backend),
                    ("URL", settings.url),
                ]
            )
        )


@click.command()
@pass_settings
def console(settings: Settings) -> None:
    """Print the web console's URL, with the token in its fragment (never sent
    to the server; the page reads it). Open it in a browser."""
    import urllib.parse

    token, _source = settings.find_token(admin=False)
    parts = urllib.parse.urlsplit(settings.url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    fragment = "token=" + urllib.parse.quote(token, safe="") if token else ""
    click.echo(urllib.parse.urlunsplit((scheme, parts.netloc, "/", "", fragment)))


@click.command("list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in DomainState]),
    help="Only domains in this state.",
)
@json_option
@pass_settings
@procedure_help("connect.list_domains", "list")
def list_domains(settings: Settings, state: str | None) -> None:
    domains = run_client(settings, lambda c: c.list_domains(state))
    if settings.json:
        echo_json(unstructure(domains))
        return
    rows = [
        (
            d.name,
            d.state.value,
            d.reason,
            d.monitor.value,
            d.pid,
            f"{d.job.procedure} {duration(d.job.held_seconds)}" if d.job else None,
        )
        for d in domains
    ]
    click.echo(table(["NAME", "STATE", "REASON", "MONITOR", "PID", "JOB"], rows))


def _load_definition(file: str) -> dict[str, Any]:
    """A definition from a .toml or .json file, or JSON on stdin (``-``).

    Raises:
        InvalidParams: the file cannot be parsed, or is not a table/object.
    """
    if file == "-":
        text, kind = sys.stdin.read(), "json"
    else:
        path = Path(file)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidParams(f"{file}: cannot read: {exc}") from None
        suffix = path.suffix.lower()
        if suffix in (".toml", ".json"):
            kind = suffix[1:]
        else:
            kind = "json" if text.lstrip().startswith("{") else "toml"
    try:
        value: Any = json.loads(text) if kind == "json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidParams(f"{file}: not valid {kind.upper()}: {exc}", file=file) from None
    if not isinstance(value, dict):
        raise InvalidParams(
            f"{file}: a definition is a JSON object, got {type(value).__name__}", file=file
        )
    return value


def _summary(verb: str, info: DomainInfo) -> str:
    if verb == "undefined":
        return f"Domain {info.name} undefined."
    text = f"Domain {info.name} {verb}: {info.state.value}"
    if info.reason:
        text += f" ({info.reason})"
    if info.pid is not None:
        text += f", pid {info.pid}, monitor {info.monitor.value}"
    return text + "."


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@json_option
@pass_settings
@procedure_help("domain.define", "define")
def define(settings: Settings, file: str) -> None:
    """FILE is TOML (.toml) or JSON (.json, or '-' for JSON on stdin), with the
    definition's keys at the top level: name (required), memory_mib, vcpus,
    machine, emulator, extra_args, autostart, uuid.
    """
    try:
        definition = _load_definition(file)
    except InvalidParams as exc:
        raise CliFailure(exc.reason, exc.message, data=exc.data) from None
    info = run_client(settings, lambda c: c.define(definition))
    if settings.json:
        echo_json(unstructure(info))
    else:
        click.echo(f"Domain {info.name} defined.")
        click.echo(format_domain_info(info))


def _lifecycle(
    name: str,
    verb: str,
    call: Callable[[Client, str], Coroutine[Any, Any, DomainInfo]],
    procedure: str,
) -> click.Command:
    @click.command(name)
    @click.argument("domain")
    @json_option
    @pass_settings
    @procedure_help(procedure, name)
    def command(settings: Settings, domain: str) -> None:
        info = run_client(settings, lambda c: call(c, domain))
        if settings.json:
            echo_json(unstructure(info))
        else:
            click.echo(_summary(verb, info))

    return command


undefine = _lifecycle(
    "undefine",
    "undefined",
    Client.undefine,
    "domain.undefine",
)
shutdown = _lifecycle(
    "shutdown",
    "shut down",
    Client.shutdown,
    "domain.shutdown",
)
destroy = _lifecycle(
    "destroy",
    "destroyed",
    Client.destroy,
    "domain.destroy",
)
suspend = _lifecycle("suspend", "suspended", Client.suspend, "domain.suspend")
resume = _lifecycle("resume", "resumed", Client.resume, "domain.resume")
reset = _lifecycle("reset", "reset", Client.reset, "domain.reset")


@click.command()
@click.argument("domain")
@click.option("--paused", is_flag=True, help="Start with the CPUs stopped.")
@json_option
@pass_settings
@procedure_help("domain.start", "start")
def start(settings: Settings, domain: str, paused: bool) -> None:
    info = run_client(settings, lambda c: c.start(domain, paused=paused))
    if settings.json:
        echo_json(unstructure(info))
    else:
        click.echo(_summary("started", info))


@click.command()
@click.argument("domain")
@json_option
@pass_settings
@procedure_help("domain.get_info", "dominfo")
def dominfo(settings: Settings, domain: str) -> None:
    info = run_client(settings, lambda c: c.get_info(domain))
    show(settings, info, format_domain_info)


@click.command()
@click.argument("domain")
@json_option
@pass_settings
@procedure_help("domain.get_stats", "domstats")
def domstats(settings: Settings, domain: str) -> None:
    stats = run_client(settings, lambda c: c.get_stats(domain))
    if settings.json:
        echo_json(unstructure(stats))
        return
    click.echo(
        keyvalues(
            [
                ("Name", stats.name),
                ("Status", stats.status),
                ("Running", stats.running),
                ("vCPUs", stats.vcpus),
                ("CPU time", f"{stats.cpu_seconds:.2f} s"),
                ("RSS", f"{stats.rss_kib} KiB"),
            ]
        )
    )


def _json_object(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object, like '{\"key\": 1}'")
    return parsed


@click.command()
@click.argument("domain")
@click.argument("command")
@click.argument("arguments", required=False, callback=_json_object)
@json_option
@pass_settings
@procedure_help("domain.monitor_command", "qmp")
def qmp(settings: Settings, domain: str, command: str, arguments: dict[str, Any] | None) -> None:
    """Runs COMMAND on DOMAIN's monitor and prints QMP's return value.

    ARGUMENTS is a JSON object: trioctl qmp vm1 query-status, or
    trioctl qmp vm1 human-monitor-command '{"command-line": "info status"}'.
    """
    result = run_client(settings, lambda c: c.monitor_command(domain, command, arguments))
    echo_json(result, pretty=not settings.json)


def _format_event(event: DomainEvent) -> str:
    text = (
        f"{timestamp(event.timestamp, millis=True)}  {event.domain}  {event.kind}  {event.detail}"
    )
    if event.data:
        text += "  " + json.dumps(event.data, sort_keys=True)
    return text


@click.command()
@click.option("--domain", "domains", multiple=True, help="Only this domain's events (repeatable).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after N events.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after S seconds (an error if --count events did not come by then).",
)
@json_option
@pass_settings
def events(
    settings: Settings, domains: tuple[str, ...], count: int | None, timeout: float | None
) -> None:
    """Print domain events as they come, until Ctrl-C, --count or --timeout.

    One line per event: time, domain, kind (lifecycle, monitor, qmp), detail
    and data; with --json, one JSON object per line.
    """

    async def watch(client: Client) -> int:
        await client.subscribe(list(domains) or None)
        seen = 0
        with trio.move_on_after(math.inf if timeout is None else timeout):
            async for event in client.events():
                if settings.json:
                    click.echo(json.dumps(unstructure(event)))
                else:
                    click.echo(_format_event(event))
                seen += 1
                if count is not None and seen >= count:
                    return seen
            raise CliFailure(
                "CONNECTION_LOST",
                "the daemon closed the connection",
                exit_code=EXIT_CONNECTION,
            )
        return seen

    seen = run_client(settings, watch)
    if count is not None and seen < count:
        raise CliFailure(
            "TIMEOUT",
            f"{seen} of {count} events within {timeout:g} s",
            data={"events": seen, "count": count, "timeout": timeout},
        )


# -- admin ------------------------------------------------------------------------------------


@click.group()
@json_option
def admin() -> None:
    """Administration through the daemon's /admin endpoint (admin token)."""


def _threadpool_text(info: ThreadpoolInfo) -> str:
    return keyvalues(
        [
            ("Min workers", info.min_workers),
            ("Max workers", info.max_workers),
            ("Priority workers", info.prio_workers),
            ("Workers", info.workers),
            ("Free workers", info.free_workers),
            ("Current priority workers", info.current_prio_workers),
            ("Free priority workers", info.free_prio_workers),
            ("Queue depth (high)", info.queue_depth_high),
            ("Queue depth (low)", info.queue_depth_low),
            ("Max pending", info.max_pending),
            ("Completed", info.completed),
            ("Rejected", info.rejected),
        ]
    )


@admin.command("threadpool-info")
@json_option
@pass_settings
@procedure_help("admin.get_threadpool", "admin threadpool-info")
def threadpool_info(settings: Settings) -> None:
    info = run_client(settings, lambda c: c.get_threadpool(), admin=True)
    show(settings, info, _threadpool_text)


@admin.command("threadpool-set")
@click.option("--min-workers", type=click.IntRange(min=0))
@click.option("--max-workers", type=click.IntRange(min=1))
@click.option("--prio-workers", type=click.IntRange(min=0))
@json_option
@pass_settings
@procedure_help("admin.set_threadpool", "admin threadpool-set")
def threadpool_set(
    settings: Settings,
    min_workers: int | None,
    max_workers: int | None,
    prio_workers: int | None,
) -> None:
    """Prints the new state."""
    if min_workers is None and max_workers is None and prio_workers is None:
        raise click.UsageError("give --min-workers, --max-workers or --prio-workers")
    info = run_client(
        settings,
        lambda c: c.set_threadpool(
            min_workers=min_workers, max_workers=max_workers, prio_workers=prio_workers
        ),
        admin=True,
    )
    show(settings, info, _threadpool_text)


@admin.command("client-limits")
@click.option("--max-clients", type=click.IntRange(min=1), help="Set the client limit.")
@click.option(
    "--max-client-requests", type=click.IntRange(min=1), help="Set the per-client call limit."
)
@json_option
@pass_settings
def client_limits(
    settings: Settings, max_clients: int | None, max_client_requests: int | None
) -> None:
    """Show the client limits, or change them with the options."""

    async def call(client: Client) -> Any:
        if max_clients is None and max_client_requests is None:
            return await client.get_client_limits()
        return await client.set_client_limits(
            max_clients=max_clients, max_client_requests=max_client_requests
        )

    limits = run_client(settings, call, admin=True)
    if settings.json:
        echo_json(unstructure(limits))
    else:
        click.echo(
            keyvalues(
                [
                    ("Max clients", limits.max_clients),
                    ("Max client requests", limits.max_client_requests),
                    ("Clients", limits.clients),
                ]
            )
        )


def _clients_table(clients: list[ClientInfo]) -> str:
    rows = [
        (
            c.id,
            c.role,
            c.endpoint,
            c.peer,
            duration(c.connected_seconds),
            c.in_flight,
            c.calls,
            c.subscribed,
            c.events_dropped,
        )
        for c in clients
    ]
    headers = ["ID", "ROLE", "ENDPOINT", "PEER", "CONNECTED", "IN-FLIGHT", "CALLS"]
    return table([*headers, "SUBSCRIBED", "DROPPED"], rows)


@admin.command("clients")
@json_option
@pass_settings
@procedure_help("admin.list_clients", "admin clients")
def clients(settings: Settings) -> None:
    """This command's own connection included."""
    found = run_client(settings, lambda c: c.list_clients(), admin=True)
    show(settings, found, _clients_table)


@admin.command("client-disconnect")
@click.argument("client_id", metavar="ID")
@json_option
@pass_settings
@procedure_help("admin.disconnect_client", "admin client-disconnect")
def client_disconnect(settings: Settings, client_id: str) -> None:
    """ID: from `trioctl admin clients`."""
    run_client(settings, lambda c: c.disconnect_client(client_id), admin=True)
    if settings.json:
        echo_json({"disconnected": True, "id": client_id})
    else:
        click.echo(f"Client {client_id} disconnected.")


@admin.command("jobs")
@json_option
@pass_settings
@procedure_help("admin.list_jobs", "admin jobs")
def jobs(settings: Settings) -> None:
    found = run_client(settings, lambda c: c.list_jobs(), admin=True)
    if settings.json:
        echo_json(unstructure(found))
        return
    rows = [
        (j.domain, j.kind, j.procedure, j.client, duration(j.held_seconds), j.queued) for j in found
    ]
    click.echo(table(["DOMAIN", "KIND", "PROCEDURE", "CLIENT", "HELD", "QUEUED"], rows))


def _stats_text(stats: ServerStats) -> str:
    parts = [
        keyvalues(
            [
                ("Uptime", duration(stats.uptime_seconds)),
                ("Calls", sum(stats.calls.values())),
                ("Errors", sum(stats.errors.values())),
                ("Events dropped", stats.events_dropped),
            ]
        ),
        "",
        table(
            ["PRIORITY", "CALLS", "P50 MS", "P99 MS", "MAX MS"],
            [
                (prio, lat.count, f"{lat.p50_ms:.2f}", f"{lat.p99_ms:.2f}", f"{lat.max_ms:.2f}")
                for prio, lat in sorted(stats.latency.items())
            ],
        ),
        "",
        table(["PROCEDURE", "CALLS"], sorted(stats.calls.items())),
    ]
    if stats.errors:
        parts += ["", table(["ERROR", "COUNT"], sorted(stats.errors.items()))]
    return "\n".join(parts)


@admin.command("stats")
@json_option
@pass_settings
@procedure_help("admin.get_stats", "admin stats")
def stats(settings: Settings) -> None:
    found = run_client(settings, lambda c: c.get_server_stats(), admin=True)
    show(settings, found, _stats_text)
