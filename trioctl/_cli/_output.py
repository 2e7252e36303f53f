"""What every client command shares: settings, running a call, output, errors.

Exit codes:

* 0: done.
* 1: the operation failed (the daemon's error, or the simulator's); stderr
  reads ``error: REASON: message``.
* 2: bad usage (click's), or no usable connection: nothing listens, the
  handshake was refused (bad token: 401, role: 403, too many clients or
  shutting down: 503), no handshake in time, or the connection was lost.
* 130: interrupted (Ctrl-C).

With ``--json``, stdout holds exactly one JSON document, the result, or
``{"error": {"reason", "message", "data"}}`` on failure (``events`` prints
one document per line instead).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
import click
import trio
import trio_websocket

from .._client import DEFAULT_URL, Client, connect
from .._errors import (
    ConnectError,
    ConnectionRejected,
    ConnectTimeout,
    DaemonConnectionLost,
    TrioctlError,
)
from .._models import DomainInfo, JobInfo, converter
from .._tokens import ROLE_NAMES, TokensFileError, read_tokens_file
from .._util import exception_leaves

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "CliFailure",
    "CliGroup",
    "Settings",
    "classify",
    "duration",
    "echo_json",
    "fail",
    "format_domain_info",
    "format_job",
    "json_option",
    "keyvalues",
    "run_client",
    "run_trio",
    "table",
    "timestamp",
    "unstructure",
]

T = TypeVar("T")

#: Exit code of an operation the daemon (or simulator) refused or failed.
EXIT_FAILED = 1
#: Exit code of bad usage and of connection failures.
EXIT_CONNECTION = 2
#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


@attrs.define
class Settings:
    """The group's global options, shared by every client command."""

    url: str = DEFAULT_URL
    token: str | None = None
    tokens_file: Path | None = None
    json: bool = False
    connect_timeout: float = 10.0
    token_source: str = "--token"
    """Where ``token`` came from: ``--token`` or ``$TRIOCTL_TOKEN``."""

    def find_token(self, admin: bool) -> tuple[str | None, str]:
        """The token to send and where it came from, for the messages.

        ``--token`` (or ``$TRIOCTL_TOKEN``) first; else the best token of the
        tokens file (its first admin token; for the API endpoint, else its
        first token). The second item names the source: ``--token``,
        ``$TRIOCTL_TOKEN``, ``FILE``, or why no token was found.
        """
        if self.token:
            return self.token, self.token_source
        path = self.tokens_file
        if path is None:
            from .._paths import default_tokens_file

            path = default_tokens_file()
        try:
            found = read_tokens_file(path)
        except TokensFileError as exc:
            return None, f"no token: none given, and {exc}"
        ranked = sorted(found, key=lambda pair: -ROLE_NAMES.index(pair[1]))
        if not ranked or (admin and ranked[0][1] != "admin"):
            need = "an admin token" if admin else "a token"
            return None, f"no token: none given, and tokens file {path} holds no {need}"
        return ranked[0][0], str(path)

    @property
    def admin_url(self) -> str:
        """The same daemon's ``/admin`` endpoint."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path="/admin"))

    def checked_url(self, admin: bool) -> str:
        """The URL to use, or a usage error if it is not ws:// or wss://."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise click.BadParameter(
                f"{self.url!r} is not a ws:// or wss:// URL", param_hint="'-c' / '--connect'"
            )
        return self.admin_url if admin else self.url


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json = True


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` on a command too (``trioctl list --json``), as on the group."""
    return click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Machine-readable output: one JSON document on stdout.",
    )(f)


class CliFailure(Exception):
    """An error the command line reports itself (not one of the daemon's).

    Attributes:
        reason: a stable name, like the daemon's reasons (``CONNECTION_FAILED``...).
        message: what happened, in words.
        exit_code: 1 for a failed operation, 2 for a connection problem.
        data: extra detail for ``--json``.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        exit_code: int = EXIT_FAILED,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.exit_code = exit_code
        self.data = data or {}


def fail(settings: Settings, failure: CliFailure) -> NoReturn:
    """Report ``failure`` (stderr, and stdout with ``--json``) and exit."""
    if settings.json:
        error = {"reason": failure.reason, "message": failure.message, "data": failure.data}
        _echo_safely(json.dumps({"error": error}), err=False)
    _echo_safely(f"error: {failure.reason}: {failure.message}", err=True)
    sys.exit(failure.exit_code)


class CliGroup(click.Group):
    """A group that reports a :class:`CliFailure` raised by any command under
    it, and exits quietly when stdout's reader has gone (``| head``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliFailure as failure:
            fail(ctx.find_object(Settings) or Settings(), failure)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(EXIT_FAILED)


def _echo_safely(text: str, *, err: bool) -> None:
    try:
        click.echo(text, err=err)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # The reader went away (``trioctl events | head -1``): stop writing to it,
    # and let the interpreter's final flush go nowhere instead of failing.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _rejected_message(exc: ConnectionRejected, url: str, token_source: str | None) -> str:
    body, status = exc.body, exc.status
    kind = str(exc.data.get("content_type", ""))
    size = exc.data.get("body_bytes", len(body))
    if "html" in kind or exc.data.get("multiline") or len(body) >= 200 or body.startswith("<"):
        # Not the daemon's one-line reason: a web server's page. Say so in
        # one line instead of printing the page.
        return (
            f"{url} is not a trioctl daemon: it answered HTTP {status} "
            f"({kind or 'no content type'}, {size} bytes) instead of a WebSocket "
            f"handshake; check -c / $TRIOCTL_URL"
        )
    hint = {
        401: "give a token with --token or $TRIOCTL_TOKEN, or --tokens-file "
        "(the daemon's STATE_DIR/tokens.json)",
        403: "this token's role does not allow that endpoint",
        503: "the daemon is busy or stopping; try again later",
    }.get(status, "")
    if status == 401 and token_source is not None:
        # The daemon never says which file it reads (an unauthenticated peer
        # must not learn paths): the client says where its token came from.
        if token_source.startswith("no token"):
            text = f"{url} refused the connection (HTTP 401): {token_source}"
        else:
            text = f"{url}: the token from {token_source} was refused (HTTP 401)"
        return f"{text}; {hint}"
    text = f"{url} refused the connection (HTTP {status})"
    if body:
        text += f": {body}"
    if hint:
        text += f"; {hint}"
    return text


def classify(
    exc: BaseException, url: str | None, *, token_source: str | None = None
) -> CliFailure | None:
    """The failure to report for an expected exception; None for a bug.

    ``token_source``: where the token sent came from, named on a 401.
    """
    where = url or "the daemon"
    if isinstance(exc, CliFailure):
        return exc
    if isinstance(exc, DaemonConnectionLost):
        # Raised by the client library itself: the daemon's own errors come
        # back as the class of their reason, never as DaemonConnectionLost.
        return CliFailure("CONNECTION_LOST", f"{where}: {exc.message}", exit_code=EXIT_CONNECTION)
    if isinstance(exc, ConnectionRejected):
        return CliFailure(
            "CONNECTION_REJECTED",
            _rejected_message(exc, where, token_source),
            exit_code=EXIT_CONNECTION,
            data={"url": url, "status_code": exc.status}
            | ({"token_from": token_source} if exc.status == 401 and token_source else {}),
        )
    if isinstance(exc, ConnectTimeout):
        return CliFailure(
            "CONNECTION_TIMEOUT",
            f"{where} did not complete the WebSocket handshake in time",
            exit_code=EXIT_CONNECTION,
            data={"url": url},
        )
    if isinstance(exc, ConnectError):
        return CliFailure(
            "CONNECTION_FAILED",
            f"{exc.message} (is `trioctl daemon` running there?)"
            if isinstance(exc.__cause__, OSError)
            else exc.message,
            exit_code=EXIT_CONNECTION,
            data={"url": url},
        )
    if isinstance(exc, TrioctlError):
        reason = exc.reason
        wire_reason = exc.data.get("reason")
        if type(exc) is TrioctlError and isinstance(wire_reason, str):
            reason = wire_reason  # a reason this client does not know: keep it
        return CliFailure(reason, exc.message, data=dict(exc.data))
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return CliFailure(
            "CONNECTION_TIMEOUT",
            f"{where} did not complete the WebSocket handshake in time",
            exit_code=EXIT_CONNECTION,
            data={"url": url},
        )
    if isinstance(exc, trio_websocket.HandshakeError | trio_websocket.ConnectionClosed):
        return CliFailure(
            "CONNECTION_FAILED",
            f"{where}: the WebSocket handshake failed: {exc!r}",
            exit_code=EXIT_CONNECTION,
            data={"url": url},
        )
    if isinstance(exc, OSError) and url is not None:
        detail = exc.strerror or str(exc)
        return CliFailure(
            "CONNECTION_FAILED",
            f"cannot connect to {where}: {detail} (is `trioctl daemon` running there?)",
            exit_code=EXIT_CONNECTION,
            data={"url": url},
        )
    return None


def run_trio(
    settings: Settings,
    main: Callable[[], Awaitable[T]],
    *,
    url: str | None,
    token_source: str | None = None,
) -> T:
    """``trio.run(main)``, turning every expected failure into a report and
    an exit code. ``url`` is what ``main`` connects to, ``token_source``
    where its token came from, for the messages."""
    try:
        return trio.run(main)
    except BaseException as exc:
        if isinstance(exc, SystemExit | click.exceptions.Exit | click.ClickException):
            raise
        leaves = exception_leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            _echo_safely("", err=True)
            sys.exit(EXIT_INTERRUPTED)
        if any(isinstance(leaf, BrokenPipeError) for leaf in leaves):
            _silence_stdout()
            sys.exit(EXIT_FAILED)
        for leaf in leaves:
            failure = classify(leaf, url, token_source=token_source)
            if failure is not None:
                fail(settings, failure)
        raise


def run_client(
    settings: Settings, fn: Callable[[Client], Awaitable[T]], *, admin: bool = False
) -> T:
    """Connect (to ``/admin`` if ``admin``), run ``fn(client)``, return its result."""
    url = settings.checked_url(admin)
    token, source = settings.find_token(admin)

    async def main() -> T:
        async with trio.open_nursery() as nursery:
            probe = trio.CancelScope()
            if url.startswith("wss://"):
                nursery.start_soon(_plain_http_probe, url, probe)
            async with connect(
                url,
                # "": no token at all (connect() would look for one again).
                token or "",
                tokens_file=settings.tokens_file,
                connect_timeout=settings.connect_timeout,
            ) as client:
                probe.cancel()
                return await fn(client)
        raise AssertionError("unreachable")  # pragma: no cover

    return run_trio(settings, main, url=url, token_source=source)


#: Seconds a TLS handshake may take before :func:`_plain_http_probe` checks
#: whether the server speaks plain HTTP (a local TLS server answers in ms).
PLAIN_PROBE_AFTER = 0.5


async def _plain_http_probe(url: str, scope: trio.CancelScope) -> None:
    """For wss:// URLs: a daemon without TLS never answers the TLS hello, so
    the handshake would only end at --connect-timeout. If it has not ended
    after :data:`PLAIN_PROBE_AFTER`, ask the same address in plain HTTP; an
    HTTP answer means TLS will never come: fail at once, saying so."""
    with scope:
        await trio.sleep(PLAIN_PROBE_AFTER)
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        try:
            stream = await trio.open_tcp_stream(host, parts.port or 443)
        except OSError:
            return  # the real connection reports it
        async with stream:
            try:
                await stream.send_all(
                    f"GET / HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
                )
                with trio.move_on_after(2):
                    answer = await stream.receive_some(16)
            except (OSError, trio.BrokenResourceError):
                return
        if answer.startswith(b"HTTP/"):
            plain = urllib.parse.urlunsplit(parts._replace(scheme="ws"))
            raise CliFailure(
                "CONNECTION_FAILED",
                f"{url}: the server speaks plain HTTP, not TLS (a daemon without [tls]?); "
                f"use {plain}",
                exit_code=EXIT_CONNECTION,
                data={"url": url},
            )


# -- output -------------------------------------------------------------------------------


def unstructure(value: Any) -> Any:
    """The JSON form of a result (attrs classes, enums, lists of them)."""
    return converter.unstructure(value)


def echo_json(value: Any, *, pretty: bool = False) -> None:
    """Print one JSON document on stdout."""
    text = json.dumps(value, indent=2 if pretty else None, sort_keys=False)
    click.echo(text)


def show(settings: Settings, value: T, render: Callable[[T], str]) -> None:
    """Print ``value``: its JSON form with ``--json``, else ``render(value)``."""
    if settings.json:
        echo_json(unstructure(value))
    else:
        click.echo(render(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on two spaces; the last column is not padded."""
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def keyvalues(pairs: Sequence[tuple[str, object]]) -> str:
    """``Key:   value`` lines, the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0) + 1
    return "\n".join(f"{k + ':':<{width}}  {_cell(v)}".rstrip() for k, v in pairs)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 20 s``, ``2 h 5 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def timestamp(epoch: float, *, millis: bool = False) -> str:
    """Local time, ``YYYY-MM-DD HH:MM:SS`` (``.mmm`` with ``millis``)."""
    moment = datetime.datetime.fromtimestamp(epoch)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{moment.microsecond // 1000:03d}"
    return text


def format_job(job: JobInfo | None) -> str:
    """A domain job in words: ``domain.start (modify) by c3 for 0.2 s, 1 queued``."""
    if job is None:
        return "none"
    return (
        f"{job.procedure} ({job.kind}) by {job.client} for {duration(job.held_seconds)}, "
        f"{job.queued} queued"
    )


def format_domain_info(info: DomainInfo) -> str:
    """``dominfo``'s key-value block."""
    started = None
    if info.started_at is not None:
        started = (
            f"{timestamp(info.started_at)} (up {duration(max(0.0, time.time() - info.started_at))})"
        )
    return keyvalues(
        [
            ("Name", info.name),
            ("UUID", info.uuid),
            ("State", f"{info.state.value} ({info.reason})" if info.reason else info.state.value),
            ("Monitor", info.monitor.value),
            ("PID", info.pid),
            ("Memory", f"{info.memory_mib} MiB"),
            ("vCPUs", info.vcpus),
            ("Emulator", info.emulator),
            ("Autostart", info.autostart),
            ("Started", started),
            ("Job", format_job(info.job)),
        ]
    )
