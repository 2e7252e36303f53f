"""The daemon's configuration: one TOML file, every key with a default.

The file has a top-level ``mode`` key and six tables, each read into a frozen
attrs class; the runtime classes are the tables themselves::

    mode = "default"          DaemonConfig.mode ("default" or "legacy")
    [server]                  ServerConfig    the WebSocket endpoint and its limits
    [pools]                   PoolLimits      worker pools (libvirtd.conf)
    [driver]                  DriverConfig    domains, jobs, monitors (qemu.conf)
    [auth]                    AuthConfig      tokens
    [tls]                     TlsConfig       certificate and key
    [log]                     LogConfig       level and format

Each key is a field carrying its check and help (:mod:`trioctl._settings`).
:func:`load_config` is the only validating entry point: one cattrs converter
builds the classes, refusing an unknown table or key ("did you mean"), a value
of the wrong type (an integer is not a boolean, a boolean is not an integer, a
number is not a string) and a bad value, with a :class:`ConfigError` naming the
file, the dotted key and the reason. ``load_config(None, overrides={...})``
gives the defaults plus a few settings, as the command line does.
:meth:`DaemonConfig.to_toml` writes a file back through :func:`dump_toml`, the
one TOML writer (the benchmarks use it too).

Where libvirt has the setting, the name and the default are libvirt's.

``mode = "legacy"`` reproduces pre-patch libvirt for the benchmarks: it changes
the *defaults* of the keys in :data:`LEGACY_DEFAULTS` and makes the dispatcher
take a worker before waiting for a domain's job (:attr:`DaemonConfig.legacy`).
A key given explicitly, in the file or on the command line, still wins.

Paths are expanded (``~``) and made absolute: relative paths in a file are
relative to the file's directory, relative paths given on the command line to
the current directory. The default directories follow the XDG base directory
spec for users and the FHS for root (:mod:`trioctl._paths`).

A ``ConfigError`` is a start-up error, not an RPC error: it is not part of the
:class:`~trioctl.TrioctlError` hierarchy.
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import logging
import os
import re
import ssl
import stat
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._driver import DriverConfig
from ._paths import (
    default_run_dir as default_run_dir,
    default_state_dir as default_state_dir,
    default_tokens_file as default_tokens_file,
)
from ._pools import PoolLimits
from ._settings import (
    Invalid as _Invalid,
    Setting,
    boolean as _boolean,
    choice as _choice,
    integer as _integer,
    path as _path,
    seconds as _seconds,
    setting as _meta,
    setting_of,
    show as _show,
)

__all__ = [
    "KEYS",
    "LEGACY_DEFAULTS",
    "AuthConfig",
    "ConfigError",
    "DaemonConfig",
    "LogConfig",
    "ServerConfig",
    "TlsConfig",
    "default_run_dir",
    "default_state_dir",
    "dump_toml",
    "load_config",
    "parse_listen",
]

COMMAND_LINE: Final = "command line"
"""The :attr:`ConfigError.file` of an error in ``load_config``'s ``overrides``."""

DEFAULTS: Final = "defaults"
"""The :attr:`ConfigError.file` of an error in a default value (a default
directory that exists but is a file, say) when no file was given."""


class ConfigError(Exception):
    """The configuration cannot be used; the daemon refuses to start.

    ``str()`` reads ``FILE: KEY: REASON``, for instance
    ``config.toml: driver.monitor_timeout: expected a positive number or
    false, got "fast"``, or ``FILE: REASON`` when the whole file is at fault
    (missing, unreadable, not TOML).

    Attributes:
        file: the file as it was given to :func:`load_config`, or
            ``"command line"`` for an error in ``overrides``.
        key: the dotted key (``driver.monitor_timeout``), a table name
            (``server``), or ``None`` when the error is about the file itself.
        reason: what is wrong, in words.

    You *don't* get this error from a running daemon: it is raised only while
    the configuration is read, before anything starts.
    """

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        if self.key is None:
            return f"{self.file}: {self.reason}"
        return f"{self.file}: {self.key}: {self.reason}"


_HOSTNAME_RE: Final = re.compile(
    r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?", re.ASCII
)
_PORT_RE: Final = re.compile(r"[0-9]{1,5}", re.ASCII)
_NUMERIC_RE: Final = re.compile(r"[0-9.]+", re.ASCII)


def parse_listen(text: str) -> tuple[str, int]:
    """Split a listen address into host and port.

    ``"127.0.0.1:16509"`` gives ``("127.0.0.1", 16509)``; IPv6 addresses go in
    brackets, ``"[::1]:16509"`` gives ``("::1", 16509)``. The host is an IPv4
    address, a bracketed IPv6 address or a host name; ``0.0.0.0`` and ``[::]``
    listen on every interface. The port is 0 to 65535, 0 meaning any free
    port (for tests).

    Raises:
        ValueError: ``text`` is not ``host:port`` as above; the message says
            why.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {_show(text)}")
    shape = 'expected "host:port" (IPv6 as "[::1]:16509")'
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{shape}, got {_show(text)}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} is not an IPv6 address, in {_show(text)}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{shape}, got {_show(text)}")
        if ":" in host:
            raise ValueError(f'put an IPv6 address in brackets ("[::1]:16509"), got {_show(text)}')
        if not host:
            raise ValueError(f"missing host, got {_show(text)}")
        if not _HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise ValueError(f"{_show(host)} is not a host name or address, in {_show(text)}")
        if _NUMERIC_RE.fullmatch(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"{_show(host)} is not an IPv4 address, in {_show(text)}"
                ) from None
    if not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"the port must be 0 to 65535, got {_show(text)}")
    return host, int(port_text)


_ORIGIN_RE: Final = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", re.ASCII)


def _origins(value: object, _base: Path | None) -> tuple[str, ...]:
    """A list of origins, each ``scheme://host[:port]`` (RFC 6454), lower-cased."""
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of origins, got {_show(value)}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not _ORIGIN_RE.fullmatch(item.lower()):
            raise _Invalid(f'expected origins such as "https://ui.example:8443", got {_show(item)}')
        out.append(item.lower())
    return tuple(out)


def _listen(value: object, _base: Path | None) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    try:
        parse_listen(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return value


# -- the tables -------------------------------------------------------------------------


@attrs.frozen
class ServerConfig:
    """The ``[server]`` table: the WebSocket endpoint and its limits."""

    listen: str = attrs.field(
        default="127.0.0.1:16509",
        metadata=_meta(
            _listen,
            'Address to listen on, "host:port"; IPv6 as "[::1]:16509". Port 0 picks any '
            "free port. libvirtd: listen_addr + tcp_port.",
            textual=True,
        ),
    )
    max_clients: int = attrs.field(
        default=5000,
        metadata=_meta(
            _integer(1),
            "Clients connected at once; the WebSocket handshake of the next one is "
            "refused. libvirtd: max_clients.",
        ),
    )
    max_client_requests: int = attrs.field(
        default=5,
        metadata=_meta(
            _integer(1),
            "Calls in flight per client; beyond it the client's reader stops reading. "
            "libvirtd: max_client_requests.",
        ),
    )
    keepalive_interval: float = attrs.field(
        default=5.0,
        metadata=_meta(
            _seconds(zero=True),
            "Seconds between WebSocket pings to an idle client; 0 disables keepalive. "
            "libvirtd: keepalive_interval (which uses -1 to disable).",
        ),
    )
    keepalive_count: int = attrs.field(
        default=5,
        metadata=_meta(
            _integer(1),
            "Unanswered pings before the client is disconnected. libvirtd: keepalive_count.",
        ),
    )
    max_message_size: int = attrs.field(
        default=4 * 1024 * 1024,
        metadata=_meta(_integer(1), "Bytes of one WebSocket message, at most."),
    )
    shutdown_grace: float = attrs.field(
        default=2.0,
        metadata=_meta(
            _seconds(zero=True),
            "Seconds the daemon takes at most to stop on SIGTERM/SIGINT: calls in flight "
            "get the grace less a reserve for closing (a quarter, at most 0.3 s), then "
            "they are cancelled.",
        ),
    )
    event_queue: int = attrs.field(
        default=256,
        metadata=_meta(
            _integer(1),
            "Event notifications buffered per client; beyond it they are dropped and counted.",
        ),
    )
    max_batch: int = attrs.field(
        default=100,
        metadata=_meta(
            _integer(1),
            "Items of one JSON-RPC batch, at most; nothing in a larger batch runs, and each "
            "item is answered with an Invalid Request (data.reason LIMIT_EXCEEDED).",
        ),
    )
    max_output_bytes: int = attrs.field(
        default=8 * 1024 * 1024,
        metadata=_meta(
            _integer(1),
            "Bytes of replies and events queued for one client that does not read; beyond "
            "it the client's reader stops reading (one message may exceed it alone).",
        ),
    )
    handshake_timeout: float = attrs.field(
        default=5.0,
        metadata=_meta(
            _seconds(),
            "Seconds a new connection gets to complete its WebSocket handshake "
            "(TLS included); then it is closed.",
        ),
    )
    max_anonymous_clients: int = attrs.field(
        default=20,
        metadata=_meta(
            _integer(1),
            "Connections still in their handshake at once; the next one evicts the oldest "
            "of them. libvirtd: max_anonymous_clients.",
        ),
    )
    admin_max_clients: int = attrs.field(
        default=5000,
        metadata=_meta(
            _integer(1),
            "Clients of /admin at once, counted apart from max_clients, so an admin "
            "can connect when the API is full. libvirtd: admin_max_clients.",
        ),
    )
    reserved_write_clients: int = attrs.field(
        default=50,
        metadata=_meta(
            _integer(0),
            "Slots of max_clients that read-only clients cannot take: read tokens connect "
            "while fewer than max_clients - reserved_write_clients (at least 1) are "
            "connected, so they cannot lock writers out.",
        ),
    )
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_meta(
            _origins,
            'Origins (such as "https://ui.example:8443") whose pages may open a WebSocket; '
            "a handshake with any other Origin header is refused with 403, with or without "
            "auth. Clients that send no Origin (not browsers) are unaffected.",
        ),
    )
    metrics_access: Literal["loopback", "token"] = attrs.field(
        default="loopback",
        metadata=_meta(
            _choice("loopback", "token"),
            'Who may GET /metrics: "loopback" (the default): any token, or no token from '
            'a loopback peer naming a loopback Host; "token": any valid token only.',
        ),
    )

    @property
    def host(self) -> str:
        """The host part of :attr:`listen` (without brackets)."""
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of :attr:`listen`."""
        return parse_listen(self.listen)[1]


@attrs.frozen
class AuthConfig:
    """The ``[auth]`` table."""

    tokens_file: Path = attrs.field(
        metadata=_meta(
            _path(),
            "Access tokens; created by the daemon with mode 0600. Default: STATE_DIR/tokens.json.",
            textual=True,
        ),
    )
    required: bool = attrs.field(
        default=True,
        metadata=_meta(
            _boolean,
            'false: no token is needed and every caller gets role "admin" (tests and demos only).',
        ),
    )


def _refuse_password() -> NoReturn:
    raise _Invalid("the key is encrypted; trioctl needs an unencrypted key")


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key, password=_refuse_password)
    return context


@attrs.frozen
class TlsConfig:
    """The ``[tls]`` table: both files or neither; no files means plain ``ws://``."""

    cert: Path | None = attrs.field(
        default=None,
        metadata=_meta(
            _path(optional=True),
            'PEM certificate (chain) for wss://; "" for none. Give both cert and key, or '
            "neither. libvirtd: cert_file.",
            textual=True,
        ),
    )
    key: Path | None = attrs.field(
        default=None,
        metadata=_meta(
            _path(optional=True),
            'PEM private key, unencrypted; "" for none. libvirtd: key_file.',
            textual=True,
        ),
    )

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None

    def server_context(self) -> ssl.SSLContext | None:
        """A server-side :class:`ssl.SSLContext` with the pair loaded, or None.

        Raises:
            ssl.SSLError, OSError: the files changed since the configuration
                was loaded and no longer form a usable pair.
        """
        if self.cert is None or self.key is None:
            return None
        try:
            return _server_context(self.cert, self.key)
        except _Invalid as exc:
            raise ssl.SSLError(exc.reason) from None


_LOG_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


@attrs.frozen
class LogConfig:
    """The ``[log]`` table."""

    level: Literal["debug", "info", "warning", "error"] = attrs.field(
        default="info",
        metadata=_meta(
            _choice(*_LOG_LEVELS),
            "Least severe messages logged: debug, info, warning or error. libvirtd: log_level.",
            textual=True,
        ),
    )
    format: Literal["human", "json"] = attrs.field(
        default="human",
        metadata=_meta(
            _choice("human", "json"),
            '"human" (one readable line per message) or "json" (one JSON object per line).',
            textual=True,
        ),
    )

    @property
    def level_number(self) -> int:
        """:attr:`level` as a :mod:`logging` level."""
        return _LOG_LEVELS[self.level]


LEGACY_DEFAULTS: Final[Mapping[str, object]] = {
    "pools.prio_workers": 0,
    "driver.max_queued": 0,
    "driver.query_lane": False,
    "driver.monitor_timeout": None,
    "driver.reconnect": "serial",
}
"""The defaults ``mode = "legacy"`` changes, by dotted key."""


@attrs.frozen(kw_only=True)
class DaemonConfig:
    """The whole configuration, its tables in file order. Build it with
    :func:`load_config`: ``driver`` then has its ``run_dir`` and, as
    ``private_dirs``, the tokens file's directory."""

    mode: Literal["default", "legacy"] = attrs.field(
        default="default",
        metadata=_meta(
            _choice("default", "legacy"),
            '"default", or "legacy" to reproduce pre-patch libvirt for benchmarks: the '
            "defaults of pools.prio_workers (0), driver.max_queued (0, unbounded), "
            "driver.query_lane (false), driver.monitor_timeout (false, forever) and "
            'driver.reconnect ("serial") change, and the dispatcher takes a worker before '
            "waiting for a domain's job. Keys given explicitly still win over the legacy "
            "defaults.",
            textual=True,
        ),
    )
    server: ServerConfig = attrs.Factory(ServerConfig)
    pools: PoolLimits = attrs.Factory(PoolLimits)
    driver: DriverConfig
    auth: AuthConfig
    tls: TlsConfig = attrs.Factory(TlsConfig)
    log: LogConfig = attrs.Factory(LogConfig)

    @property
    def legacy(self) -> bool:
        """Reproduce pre-patch libvirt: the RPC dispatcher takes a pool worker
        first and waits for the domain's job while holding it."""
        return self.mode == "legacy"

    def driver_config(self) -> DriverConfig:
        """The ``[driver]`` table, the driver's own settings."""
        return self.driver

    def to_toml(self) -> str:
        """A complete, commented configuration file holding every current value.

        ``load_config`` of the result gives back an equal ``DaemonConfig``.
        """
        values: dict[str, object] = {}
        comments: dict[str, str] = {}
        for dotted, spec in _SETTINGS.items():
            obj: Any = self
            for part in dotted.split("."):
                obj = getattr(obj, part)
            values[dotted] = (False if spec.none == "false" else "") if obj is None else obj
            comments[dotted] = spec.help
        header = "trioctl daemon configuration, with every key and its current value.\n"
        return dump_toml(
            values, comments, header + "Every key is optional; see docs/configuration.md."
        )


_TABLES: Final[Mapping[str, type[Any]]] = {
    f.name: f.type
    for f in attrs.fields(attrs.resolve_types(DaemonConfig))
    if isinstance(f.type, type) and attrs.has(f.type)
}
_CLASSES: Final[Mapping[str, type[Any]]] = {**_TABLES, "": DaemonConfig}
"""Each table's class, and DaemonConfig for the top level (last: its
structure function is made from the tables')."""
_SETTINGS: Final[Mapping[str, Setting]] = {
    f"{table}.{field.name}".lstrip("."): spec
    for table, cls in [("", DaemonConfig), *_TABLES.items()]
    for field in attrs.fields(cls)
    if (spec := setting_of(field)) is not None
}
KEYS: Final[tuple[str, ...]] = tuple(_SETTINGS)
"""Every dotted key, in file order (``mode`` first)."""


# -- writing ----------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # floats: the shortest round-trip form
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return '"' + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m[0]):04x}", text) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(
    values: Mapping[str, object], comments: Mapping[str, str] | None = None, header: str = ""
) -> str:
    """Dotted keys (``"driver.max_queued": 0``) as a TOML document: top-level
    keys first, then one table per prefix; a key's comment, wrapped, before it."""
    comments = comments or {}
    lines = [f"# {line}" for line in header.splitlines()]
    tables: dict[str, list[str]] = {"": []}
    for dotted, value in values.items():
        table, _, key = dotted.rpartition(".")
        out = tables.setdefault(table, [])
        if table and out and dotted in comments:
            out.append("")
        out += ["# " + line for line in textwrap.wrap(comments.get(dotted, ""), 86)]
        out.append(f"{key} = {_toml_value(value)}")
    for table, out in tables.items():
        if lines and out:
            lines.append("")
        lines += ([f"[{table}]"] if table else []) + out
    return "\n".join(lines) + "\n"


# -- loading ----------------------------------------------------------------------------


@attrs.frozen
class _Given:
    """Where a key's value was given."""

    source: str
    base: Path | None
    """Base of relative paths (None: the current directory)."""
    override: bool


_given: Final[contextvars.ContextVar[Mapping[str, _Given]]] = contextvars.ContextVar("given")
"""The sources of the keys of the :func:`load_config` call in progress."""


def _suggest(name: str, known: list[str]) -> str:
    """A hint for an unknown name: the closest known one, or all of them."""
    match = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {match[0]}?" if match else f" (known: {', '.join(known)})"


def _literal(text: str) -> object:
    """A command-line string as a TOML value (``"10"``, ``"false"``, ``"2.5"``);
    the string itself when it is not one."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except ValueError:  # TOMLDecodeError, or an integer of over 4300 digits
        return text
    return parsed["v"] if len(parsed) == 1 else text


def _given_at(key: str) -> _Given:
    return _given.get().get(key, _Given(DEFAULTS, None, override=False))


def _parse(dotted: str, raw: object) -> Any:
    """``raw`` checked as the value of ``dotted``."""
    spec, item = _SETTINGS[dotted], _given_at(dotted)
    if item.override and isinstance(raw, str) and not spec.textual:
        raw = _literal(raw)
    try:
        return spec.check(raw, item.base)
    except _Invalid as exc:
        raise ConfigError(item.source, dotted, exc.reason) from None


def _make_converter() -> cattrs.Converter:
    """One converter for the whole file: each key through its check; an
    unknown key, or a field of a table that is not a key, raises
    ForbiddenExtraKeysError (named by :func:`_unknown`)."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=False)

    def key(dotted: str) -> Any:
        return override(struct_hook=lambda raw, _type: _parse(dotted, raw))

    def refuse(cls: type[Any], name: str) -> Any:
        def hook(raw: object, _type: Any) -> NoReturn:
            raise cattrs.ForbiddenExtraKeysError("", cls, {name})

        return override(struct_hook=hook)

    def structure_fn(table: str, cls: type[Any]) -> Callable[[object, Any], Any]:
        hooks = {
            f.name: key(f"{table}.{f.name}".lstrip(".")) if setting_of(f) else refuse(cls, f.name)
            for f in attrs.fields(cls)
            if setting_of(f) or table  # the tables of DaemonConfig: their own hooks
        }
        build = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **hooks)

        def hook(raw: object, _type: Any) -> Any:
            if not isinstance(raw, Mapping):
                reason = f"expected a table [{table}], got {_show(raw)}"
                raise ConfigError(_given_at(table).source, table, reason)
            return build(raw, cls)

        return hook

    for table, cls in _CLASSES.items():
        conv.register_structure_hook(cls, structure_fn(table, cls))
    return conv


_converter: Final = _make_converter()


def _read_file(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, None, f"not valid UTF-8 (byte {exc.start}): {exc.reason}"
        ) from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of over 4300 digits
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None


def _unknown(exc: cattrs.ForbiddenExtraKeysError, raw: Mapping[str, Any]) -> NoReturn:
    """The first extra key of ``exc`` (in file order) as a ConfigError."""
    table = next((t for t, cls in _TABLES.items() if cls is exc.cl), "")
    within = raw.get(table, {}) if table else raw
    name = next(k for k in within if k in exc.extra_fields)
    dotted = f"{table}.{name}".lstrip(".")
    if table:
        known = [k.partition(".")[2] for k in KEYS if k.startswith(f"{table}.")]
        hint = _suggest(name, known)
    elif isinstance(within[name], dict):
        hint = _suggest(f"[{name}]", [f"[{t}]" for t in _TABLES])
    else:
        hint = _suggest(name, ["mode", *(f"[{t}]" for t in _TABLES)])
    kind = "table" if isinstance(within[name], dict) else "key"
    raise ConfigError(_given_at(dotted).source, dotted, f"unknown {kind}{hint}")


def load_config(path: Path | None, *, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Read the daemon's configuration.

    Args:
        path: the TOML file, or None for the defaults alone.
        overrides: dotted keys with values, applied on top of the file with
            the same checks (``{"server.listen": "127.0.0.1:0"}``). For a key
            whose TOML value is not a string, a string value is read as a TOML
            literal (``"10"``, ``"false"``, ``"2.5"``), so the command line can
            pass text. Relative paths are taken from the current directory.

    Raises:
        ConfigError: the file cannot be read or is not TOML, or a table, key
            or value is refused. Nothing else: a bad configuration never
            raises another exception.
    """
    raw: dict[str, Any] = {}
    given: dict[str, _Given] = {}
    fallback = DEFAULTS
    if path is not None:
        fallback = str(path)
        raw = _read_file(path)
        try:
            base = Path(os.path.abspath(path)).parent
        except OSError as exc:
            raise ConfigError(str(path), None, f"cannot locate: {exc.strerror}") from None
        for name, value in raw.items():
            given[name] = _Given(fallback, base, override=False)
            for key in value if isinstance(value, dict) else ():
                given[f"{name}.{key}"] = _Given(fallback, base, override=False)
    for dotted, value in (overrides or {}).items():
        if not isinstance(dotted, str):
            raise ConfigError(COMMAND_LINE, repr(dotted), "expected a dotted key (table.key)")
        if dotted not in _SETTINGS:
            if dotted in _TABLES:
                first = next(k for k in KEYS if k.startswith(f"{dotted}."))
                reason = f"a table, not a key: give {dotted}.KEY, such as {first}"
            else:
                reason = "unknown key" + _suggest(dotted, list(KEYS))
            raise ConfigError(COMMAND_LINE, dotted, reason)
        given[dotted] = _Given(COMMAND_LINE, None, override=True)
        table, _, key = dotted.rpartition(".")
        if not table:
            raw[key] = value
        elif isinstance(raw.setdefault(table, {}), dict):
            raw[table] = {**raw[table], key: value}
    token = _given.set(given)
    try:
        return _build(raw, given, fallback)
    except cattrs.ForbiddenExtraKeysError as exc:
        _unknown(exc, raw)
    finally:
        _given.reset(token)


def _put(raw: dict[str, Any], dotted: str, value: object) -> None:
    """A default into ``raw``, if its table is a table."""
    table, _, key = dotted.partition(".")
    if isinstance(within := raw.setdefault(table, {}), dict):
        raw[table] = {key: value, **within}


def _build(raw: dict[str, Any], given: Mapping[str, _Given], fallback: str) -> DaemonConfig:
    def fail(reason: str, *keys: str) -> NoReturn:
        """Blame the first of ``keys`` given on the command line, else in the file."""
        for want_override in (True, False):
            for key in keys:
                if key in given and given[key].override == want_override:
                    raise ConfigError(given[key].source, key, reason)
        raise ConfigError(fallback, keys[0], reason)

    raw = dict(raw)
    if _parse("mode", raw.get("mode", "default")) == "legacy":
        for dotted, value in LEGACY_DEFAULTS.items():
            if dotted not in given:
                _put(raw, dotted, value)
    driver = raw.get("driver")
    if "driver.state_dir" in given and isinstance(driver, dict):
        state = _parse("driver.state_dir", driver["state_dir"])
    else:
        state = default_state_dir()
        _put(raw, "driver.state_dir", state)
        _put(raw, "driver.run_dir", default_run_dir(state))
    _put(raw, "driver.run_dir", state / "run")  # state_dir given, run_dir not
    _put(raw, "auth.tokens_file", state / "tokens.json")
    config: DaemonConfig = _converter.structure(raw, DaemonConfig)
    assert config.driver.run_dir is not None

    for dotted, file, want_dir in (
        ("driver.state_dir", config.driver.state_dir, True),
        ("driver.run_dir", config.driver.run_dir, True),
        ("auth.tokens_file", config.auth.tokens_file, False),
    ):
        try:
            mode_bits = os.stat(file).st_mode
        except OSError:
            continue  # missing (created later) or not reachable (reported when used)
        if want_dir and not stat.S_ISDIR(mode_bits):
            fail(f"{_show(file)} exists and is not a directory", dotted)
        if not want_dir and stat.S_ISDIR(mode_bits):
            fail(f"{_show(file)} is a directory", dotted)
    _check_own_dirs(config.driver, config.auth.tokens_file, fail)
    pools = config.pools
    if pools.min_workers > pools.max_workers:
        fail(
            f"min_workers ({pools.min_workers}) cannot be larger than max_workers "
            f"({pools.max_workers})",
            "pools.min_workers",
            "pools.max_workers",
        )
    _check_tls(config.tls, fail)
    tokens_dir = config.auth.tokens_file.parent
    return attrs.evolve(config, driver=attrs.evolve(config.driver, private_dirs=(tokens_dir,)))


def _real(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return path


def _check_own_dirs(driver: DriverConfig, tokens_file: Path, fail: Callable[..., NoReturn]) -> None:
    """Keep the daemon's own files apart (paths compared after resolving
    symlinks): runtime records never share a directory with definitions or
    the tokens file, and no storage directory holds, or lies in, the state
    directory, the run directory or the tokens file's directory (a disk image
    there could be the tokens file)."""
    state, run = _real(driver.state_dir), _real(driver.runtime_dir)
    domains, tokens_dir = state / "domains", _real(tokens_file.parent)
    if run in (state, domains):
        fail(
            f"the run directory {_show(str(run))} cannot be the state directory or its "
            "domains directory: runtime records (NAME.json) would mix with the daemon's "
            "files; use another directory (the default is STATE_DIR/run)",
            "driver.run_dir",
            "driver.state_dir",
        )
    if tokens_dir in (run, domains):
        fail(
            f"the tokens file cannot be in {_show(str(tokens_dir))}, the run directory or "
            "the domains directory: it would be read as a runtime record or a definition",
            "auth.tokens_file",
            "driver.run_dir",
        )
    own = (("state", state), ("run", run), ("tokens file's", tokens_dir))
    for storage in driver.storage_dirs:
        real = _real(storage)
        for what, directory in own:
            if real == directory or directory.is_relative_to(real):
                relation = "is" if real == directory else "contains"
            elif real.is_relative_to(directory):
                relation = "is inside"
            else:
                continue
            fail(
                f"storage directory {_show(str(storage))} {relation} the {what} directory "
                f"{_show(str(directory))}; keep images apart from the daemon's own files",
                "driver.storage_dirs",
            )


def _check_tls(tls: TlsConfig, fail: Callable[..., NoReturn]) -> None:
    """Both files or neither, readable, and a usable pair."""
    if (tls.cert is None) != (tls.key is None):
        present, missing = ("cert", "key") if tls.key is None else ("key", "cert")
        fail(f"tls.{missing} is missing: give both cert and key, or neither", f"tls.{present}")
    if tls.cert is None or tls.key is None:
        return
    for name, file in (("cert", tls.cert), ("key", tls.key)):
        try:
            with open(file, "rb"):
                pass
        except OSError as exc:
            fail(f"cannot read {_show(file)}: {exc.strerror or exc}", f"tls.{name}")
    try:
        _server_context(tls.cert, tls.key)
    except _Invalid as exc:
        fail(exc.reason, "tls.key")
    except (ssl.SSLError, OSError, ValueError) as exc:
        fail(f"cannot load the certificate and key: {exc}", "tls.cert", "tls.key")
