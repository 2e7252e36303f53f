"""The daemon's configuration: one TOML file, every key with a default.

The file has a top-level ``mode`` key and six tables, each read into a frozen
attrs class::

    mode = "default"          DaemonConfig.mode ("default" or "legacy")
    [server]                  ServerConfig    the WebSocket endpoint and its limits
    [pools]                   PoolsConfig     worker pools (libvirtd.conf)
    [driver]                  DriverSettings  domains, jobs, monitors (qemu.conf)
    [auth]                    AuthConfig      tokens
    [tls]                     TlsConfig       certificate and key
    [log]                     LogConfig       level and format

:func:`load_config` is the only validating entry point: it refuses an unknown
table or key, a value of the wrong type (an integer is not a boolean, a
boolean is not an integer, a number is not a string) and a bad value, with a
:class:`ConfigError` naming the file, the dotted key and the reason. The
classes themselves do not validate again; build them through
:func:`load_config` (``load_config(None, overrides={...})`` gives the defaults
plus a few settings, as the command line does).

Where libvirt has the setting, the name and the default are libvirt's.

``mode = "legacy"`` reproduces pre-patch libvirt for the benchmarks: it changes
the *defaults* of five keys (``pools.prio_workers = 0``,
``driver.max_queued = 0``, ``driver.query_lane = false``,
``driver.monitor_timeout = false``, ``driver.reconnect = "serial"``) and
makes the dispatcher take a worker before waiting for a domain's job
(:attr:`DaemonConfig.legacy`). A key given explicitly, in the file or on the
command line, still wins over the legacy default.

Paths are expanded (``~``) and made absolute: relative paths in a file are
relative to the file's directory, relative paths given on the command line to
the current directory. The default directories follow the XDG base directory
spec for users and the FHS for root; see :func:`default_state_dir` and
:func:`default_run_dir`.

A ``ConfigError`` is a start-up error, not an RPC error: it is not part of the
:class:`~trioctl.TrioctlError` hierarchy.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
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

from ._driver import DriverConfig
from ._paths import (
    default_run_dir as default_run_dir,
    default_state_dir as default_state_dir,
    default_tokens_file as default_tokens_file,
)
from ._pools import PoolLimits

__all__ = [
    "KEYS",
    "LEGACY_DEFAULTS",
    "AuthConfig",
    "ConfigError",
    "DaemonConfig",
    "DriverSettings",
    "LogConfig",
    "PoolsConfig",
    "ServerConfig",
    "TlsConfig",
    "default_run_dir",
    "default_state_dir",
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


class _Invalid(Exception):
    """A checker's refusal; :func:`load_config` adds the file and the key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- values: checking, showing, writing ------------------------------------------------

_Check = Callable[[object, "Path | None"], Any]
"""``check(raw value, base directory for relative paths) -> value``; raises
:class:`_Invalid`. A base of ``None`` means the current directory."""

_META: Final = "trioctl.config"


@attrs.frozen
class _Spec:
    check: _Check
    help: str
    textual: bool = False
    """The value is a string in TOML: a string override is taken as it is,
    never parsed as a TOML literal."""
    none: str = '""'
    """How ``None`` is written in TOML."""


def _meta(check: _Check, help: str, *, textual: bool = False, none: str = '""') -> dict[str, Any]:
    return {_META: _Spec(check, help, textual=textual, none=none)}


def _spec_of(field: attrs.Attribute[Any]) -> _Spec:
    spec = field.metadata[_META]
    assert isinstance(spec, _Spec)
    return spec


def _show(value: object) -> str:
    """A value as the error message quotes it (TOML spelling where possible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, os.PathLike):
        return json.dumps(os.fsdecode(value), ensure_ascii=False)
    if isinstance(value, int | float):
        try:
            return repr(value)
        except ValueError:  # an integer beyond Python's 4300-digit string limit
            return "a huge integer"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if value is None:
        return "None"
    return f"{type(value).__name__} {value!s}"


def _toml_str(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: object, none: str) -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form; finite values are valid TOML
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, Path):
        return _toml_str(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, none) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_toml_str(k)} = {_toml_value(v, none)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _integer(minimum: int) -> _Check:
    wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )

    def check(value: object, _base: Path | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Invalid(f"expected {wanted}, got {_show(value)}")
        return value

    return check


def _seconds(*, zero: bool = False, forever: bool = False) -> _Check:
    """A finite number of seconds, > 0 (``zero``: >= 0); ``forever``: or false."""
    wanted = "a non-negative number" if zero else "a positive number"
    if forever:
        wanted += " or false"

    def check(value: object, _base: Path | None) -> float | None:
        if forever and (value is False or value is None):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected {wanted}, got {_show(value)}")
        try:
            seconds = float(value)
        except OverflowError:
            raise _Invalid(f"expected {wanted}, got {_show(value)}") from None
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
            raise _Invalid(f"expected {wanted}, got {_show(value)}")
        return seconds

    return check


def _boolean(value: object, _base: Path | None) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _choice(*options: str) -> _Check:
    wanted = ", ".join(json.dumps(o) for o in options)

    def check(value: object, _base: Path | None) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid(f"expected one of {wanted}, got {_show(value)}")
        return value

    return check


def _path(*, optional: bool = False) -> _Check:
    """A path string, ``~`` expanded, made absolute; ``optional``: "" is None."""

    def check(value: object, base: Path | None) -> Path | None:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise _Invalid(f"expected a path string, got {_show(value)}")
        if not value:
            if optional:
                return None
            raise _Invalid("expected a path, got an empty string")
        if "\0" in value:
            raise _Invalid(f"a path cannot contain NUL, got {_show(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(f"the path is not valid UTF-8: {value!r}") from None
        expanded = os.path.expanduser(value)
        if expanded.startswith("~"):
            raise _Invalid(f"cannot expand {_show(value)}: unknown user or no home directory")
        try:
            if base is not None:
                expanded = os.path.join(base, expanded)
            return Path(os.path.abspath(expanded))
        except OSError as exc:  # the current directory is gone
            raise _Invalid(f"cannot make {_show(value)} absolute: {exc.strerror}") from None

    return check


_EMULATOR_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)
_MACHINE_PATTERN_RE: Final = re.compile(r"[a-z0-9*][a-z0-9._*-]{0,63}", re.ASCII)


def _emulators(value: object, base: Path | None) -> dict[str, str]:
    """``[driver.emulators]``: name = absolute path of an executable file."""
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a table of name = path, got {_show(value)}")
    table: dict[str, str] = {}
    for name, path in value.items():
        if not isinstance(name, str) or not _EMULATOR_NAME_RE.fullmatch(name):
            raise _Invalid(
                f"emulator name {_show(name)}: expected a lower-case letter, then up to 31 "
                "lower-case letters, digits, '_' or '-'"
            )
        if name == "sim":
            raise _Invalid('"sim" is the built-in simulator and cannot be replaced')
        if not isinstance(path, str) or not os.path.isabs(path):
            raise _Invalid(f"emulator {name}: expected an absolute path, got {_show(path)}")
        checked = _path()(path, base)
        assert checked is not None
        if not (checked.is_file() and os.access(checked, os.X_OK)):
            raise _Invalid(f"emulator {name}: {_show(path)} is not an executable file")
        table[name] = str(checked)
    return dict(sorted(table.items()))


def _machines(value: object, _base: Path | None) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"expected an array of machine type names, got {_show(value)}")
    for item in value:
        if not _MACHINE_PATTERN_RE.fullmatch(item):
            raise _Invalid(
                f"machine type {_show(item)}: expected lower-case letters, digits, '.', '_', "
                "'-' and '*' (no ',' or '=')"
            )
    return tuple(value)


def _storage_dirs(value: object, base: Path | None) -> tuple[Path, ...]:
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of directory paths, got {_show(value)}")
    dirs: list[Path] = []
    for item in value:
        checked = _path()(item, base)
        assert checked is not None
        if checked == Path("/"):
            raise _Invalid('"/" would allow every file on the host; name storage directories')
        dirs.append(checked)
    return tuple(dirs)


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


def _account(value: object, _base: Path | None) -> str:
    """A user name (checked to exist when the daemon starts as root)."""
    if not isinstance(value, str) or (value and not _ACCOUNT_RE.fullmatch(value)):
        raise _Invalid(f"expected a user name, got {_show(value)}")
    return value


_ACCOUNT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", re.ASCII)


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
            "Seconds in-flight calls get to finish on SIGTERM/SIGINT before they are cancelled.",
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
class PoolsConfig:
    """The ``[pools]`` table: worker pools, libvirtd.conf's names and defaults."""

    min_workers: int = attrs.field(
        default=5,
        metadata=_meta(
            _integer(0), "General workers kept alive (at most max_workers). libvirtd: min_workers."
        ),
    )
    max_workers: int = attrs.field(
        default=20,
        metadata=_meta(
            _integer(1),
            "General workers at most; they are added on demand. libvirtd: max_workers.",
        ),
    )
    prio_workers: int = attrs.field(
        default=5,
        metadata=_meta(
            _integer(0),
            "Priority workers, which run only high-priority calls (destroy, queries); 0 "
            "disables them. libvirtd: prio_workers.",
        ),
    )
    max_pending: int = attrs.field(
        default=1000,
        metadata=_meta(
            _integer(1),
            "Calls that may wait for a worker, per priority; beyond it SERVER_BUSY. "
            "libvirt's queue is unbounded; 1000 is its max_queued_clients.",
        ),
    )

    def limits(self) -> PoolLimits:
        """These settings as :class:`~trioctl._pools.PoolLimits`."""
        return PoolLimits(
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            prio_workers=self.prio_workers,
            max_pending=self.max_pending,
        )


_DRIVER_DEFAULTS: Final[Mapping[str, Any]] = {f.name: f.default for f in attrs.fields(DriverConfig)}
"""The driver's own defaults, which the ``[driver]`` table shares."""


@attrs.frozen(kw_only=True)
class DriverSettings:
    """The ``[driver]`` table: :class:`~trioctl._driver.DriverConfig` field by
    field, with the same names, defaults (taken from it) and meaning.

    ``state_dir`` and ``run_dir`` have no default here: :func:`load_config`
    computes them (:func:`default_state_dir`, :func:`default_run_dir`).
    """

    state_dir: Path = attrs.field(
        metadata=_meta(
            _path(),
            "Domain definitions and daemon state. Default: /var/lib/trioctl for root, "
            "else $XDG_STATE_HOME/trioctl or ~/.local/state/trioctl.",
            textual=True,
        ),
    )
    run_dir: Path = attrs.field(
        metadata=_meta(
            _path(),
            "Runtime records and QMP sockets; keep it short (socket paths are limited to "
            "107 bytes). Default: STATE_DIR/run when state_dir is set; else "
            "$XDG_RUNTIME_DIR/trioctl, /run/trioctl for root, or STATE_DIR/run. Never "
            "state_dir itself.",
            textual=True,
        ),
    )
    max_queued: int = attrs.field(
        default=_DRIVER_DEFAULTS["max_queued"],
        metadata=_meta(
            _integer(0),
            "Callers that may wait for one domain's job; the next gets JOB_QUEUE_FULL at "
            "once (destroy is exempt). 0: unbounded. qemu.conf: max_queued (default 0).",
        ),
    )
    max_queued_queries: int = attrs.field(
        default=_DRIVER_DEFAULTS["max_queued_queries"],
        metadata=_meta(
            _integer(0),
            "Queries (domain.get_stats) that may wait for one domain's job in their own "
            "queue (with query_lane); the next gets JOB_QUEUE_FULL at once. 0: unbounded.",
        ),
    )
    query_lane: bool = attrs.field(
        default=_DRIVER_DEFAULTS["query_lane"],
        metadata=_meta(
            _boolean,
            "Queries wait in their own queue, alternating with the other jobs, so read-only "
            "callers cannot fill the writers' queue, and concurrent domain.get_stats calls "
            "share one monitor round trip. false: libvirt's one queue, no sharing.",
        ),
    )
    job_wait_timeout: float | None = attrs.field(
        default=_DRIVER_DEFAULTS["job_wait_timeout"],
        metadata=_meta(
            _seconds(forever=True),
            "Seconds a caller waits for a domain's job before JOB_TIMEOUT; false: forever. "
            "libvirt: VIR_JOB_WAIT_TIME (30 s, not configurable).",
            none="false",
        ),
    )
    monitor_timeout: float | None = attrs.field(
        default=_DRIVER_DEFAULTS["monitor_timeout"],
        metadata=_meta(
            _seconds(forever=True),
            "Deadline of every monitor command, in seconds; on expiry MONITOR_TIMEOUT and "
            "the monitor is marked unresponsive. false: wait forever, as libvirt.",
            none="false",
        ),
    )
    monitor_fail_fast: bool = attrs.field(
        default=_DRIVER_DEFAULTS["monitor_fail_fast"],
        metadata=_meta(
            _boolean,
            "While a monitor is unresponsive, refuse monitor calls at once "
            "(MONITOR_UNRESPONSIVE) instead of letting each wait out monitor_timeout.",
        ),
    )
    probe_interval: float = attrs.field(
        default=_DRIVER_DEFAULTS["probe_interval"],
        metadata=_meta(
            _seconds(),
            "Seconds between query-status probes of an unresponsive monitor.",
        ),
    )
    destroy_grace: float = attrs.field(
        default=_DRIVER_DEFAULTS["destroy_grace"],
        metadata=_meta(
            _seconds(zero=True),
            "Seconds between SIGTERM and SIGKILL on destroy (a stopped process gets "
            "SIGKILL at once).",
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=_DRIVER_DEFAULTS["shutdown_timeout"],
        metadata=_meta(_seconds(), "Seconds shutdown waits for the guest to power off."),
    )
    start_timeout: float = attrs.field(
        default=_DRIVER_DEFAULTS["start_timeout"],
        metadata=_meta(_seconds(), "Seconds a start may take until the monitor is negotiated."),
    )
    reconnect: Literal["parallel", "serial"] = attrs.field(
        default=_DRIVER_DEFAULTS["reconnect"],
        metadata=_meta(
            _choice("parallel", "serial"),
            'After a restart: "parallel" reconnects each running domain in its own task '
            'and serves at once; "serial" reconnects one by one before serving, with no '
            "deadline (pre-patch libvirt).",
            textual=True,
        ),
    )
    reconnect_timeout: float = attrs.field(
        default=_DRIVER_DEFAULTS["reconnect_timeout"],
        metadata=_meta(
            _seconds(),
            "Seconds a reconnecting domain holds its job before it is declared "
            "monitor-unresponsive (attempts continue in the background).",
        ),
    )
    event_buffer: int = attrs.field(
        default=_DRIVER_DEFAULTS["event_buffer"],
        metadata=_meta(
            _integer(1),
            "Events buffered per subscriber inside the driver; beyond it they are dropped "
            "and counted.",
        ),
    )
    max_events_per_second: float = attrs.field(
        default=_DRIVER_DEFAULTS["max_events_per_second"],
        metadata=_meta(
            _seconds(zero=True),
            "QMP events one domain passes on to subscribers per second, with a burst of one "
            "second's worth; beyond it they are dropped, counted (admin.get_stats "
            "events_dropped) and reported by a monitor event events_dropped. 0: no bound.",
        ),
    )
    backend: Literal["sim", "qemu"] = attrs.field(
        default=_DRIVER_DEFAULTS["backend"],
        metadata=_meta(
            _choice("sim", "qemu"),
            'Emulator of definitions that do not name one: "sim" (the built-in '
            'simulator) or "qemu" (qemu-system-x86_64).',
            textual=True,
        ),
    )
    emulators: Mapping[str, str] = attrs.field(
        factory=dict,
        metadata=_meta(
            _emulators,
            "Emulator names definitions may use, to absolute paths of executables "
            '([driver.emulators] name = "/path"), besides the built-in "qemu" (the host\'s '
            'qemu-system-x86_64 found on PATH) and "sim"; an entry "qemu" replaces the '
            "default. Definitions name an emulator, never a path.",
        ),
    )
    machines: tuple[str, ...] = attrs.field(
        default=_DRIVER_DEFAULTS["machines"],
        metadata=_meta(
            _machines,
            "Machine types definitions may name; '*' matches the rest of a name "
            "(pc-q35-* allows pc-q35-7.2).",
        ),
    )
    storage_dirs: tuple[Path, ...] = attrs.field(
        default=_DRIVER_DEFAULTS["storage_dirs"],
        metadata=_meta(
            _storage_dirs,
            "Directories disk images, kernels and initrds must lie in, as written and after "
            "resolving symlinks. Empty: definitions cannot name files. None may be, contain or "
            "lie in state_dir, run_dir or the tokens file's directory.",
        ),
    )
    qemu_user: str = attrs.field(
        default=_DRIVER_DEFAULTS["qemu_user"],
        metadata=_meta(
            _account,
            "When the daemon runs as root, the account QEMU runs as (its primary group, no "
            'supplementary groups), dropped before exec. "": trioctl-qemu if that account '
            "exists, else nobody. Ignored when the daemon is not root. qemu.conf: user, group.",
            textual=True,
        ),
    )
    max_domains: int = attrs.field(
        default=_DRIVER_DEFAULTS["max_domains"],
        metadata=_meta(
            _integer(1),
            "How many domains may be defined; the next define is refused (OPERATION_INVALID, "
            "data.limit). Definitions already on disk all load.",
        ),
    )


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


_MODE: Final = _Spec(
    _choice("default", "legacy"),
    '"default", or "legacy" to reproduce pre-patch libvirt for benchmarks: the defaults '
    "of pools.prio_workers (0), driver.max_queued (0, unbounded), driver.query_lane "
    "(false), driver.monitor_timeout (false, forever) and driver.reconnect "
    '("serial") change, and the dispatcher takes a '
    "worker before waiting for a domain's job. Keys given explicitly still win over the "
    "legacy defaults.",
    textual=True,
)

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
    """The whole configuration. Build it with :func:`load_config`."""

    mode: Literal["default", "legacy"] = "default"
    driver: DriverSettings
    auth: AuthConfig
    server: ServerConfig = attrs.Factory(ServerConfig)
    pools: PoolsConfig = attrs.Factory(PoolsConfig)
    tls: TlsConfig = attrs.Factory(TlsConfig)
    log: LogConfig = attrs.Factory(LogConfig)

    @property
    def legacy(self) -> bool:
        """Reproduce pre-patch libvirt: the RPC dispatcher takes a pool worker
        first and waits for the domain's job while holding it."""
        return self.mode == "legacy"

    def driver_config(self) -> DriverConfig:
        """The ``[driver]`` table as the driver's own :class:`DriverConfig`
        (its ``private_dirs``: the tokens file's directory)."""
        return DriverConfig(
            **{
                f.name: getattr(self.driver, f.name)
                for f in attrs.fields(DriverConfig)
                if f.name != "private_dirs"
            },
            private_dirs=(self.auth.tokens_file.parent,),
        )

    def to_toml(self) -> str:
        """A complete, commented configuration file holding every current value.

        ``load_config`` of the result gives back an equal ``DaemonConfig``.
        """
        lines = [
            "# trioctl daemon configuration, with every key and its current value.",
            "# Every key is optional; see docs/configuration.md.",
            "",
        ]

        def add(name: str, value: object, spec: _Spec) -> None:
            lines.extend("# " + line for line in textwrap.wrap(spec.help, 86))
            lines.append(f"{name} = {_toml_value(value, spec.none)}")

        add("mode", self.mode, _MODE)
        for table in _TABLES:
            section = getattr(self, table)
            lines.extend(["", f"[{table}]"])
            for index, field in enumerate(attrs.fields(type(section))):
                if index:
                    lines.append("")
                add(field.name, getattr(section, field.name), _spec_of(field))
        return "\n".join(lines) + "\n"


_TABLES: Final[Mapping[str, type[Any]]] = {
    "server": ServerConfig,
    "pools": PoolsConfig,
    "driver": DriverSettings,
    "auth": AuthConfig,
    "tls": TlsConfig,
    "log": LogConfig,
}


def _specs() -> dict[str, _Spec]:
    specs = {"mode": _MODE}
    for table, cls in _TABLES.items():
        for field in attrs.fields(cls):
            specs[f"{table}.{field.name}"] = _spec_of(field)
    return specs


KEYS: Final[tuple[str, ...]] = tuple(_specs())
"""Every dotted key, in file order (``mode`` first)."""


# -- default directories: see _paths ---------------------------------------------------


# -- loading ----------------------------------------------------------------------------


@attrs.frozen
class _Given:
    """A value given explicitly, and where."""

    value: object
    source: str
    base: Path | None
    """Base of relative paths (None: the current directory)."""
    override: bool


def _suggest(name: str, known: list[str]) -> str:
    """A hint for an unknown name: the closest known one, or all of them."""
    match = difflib.get_close_matches(name, known, n=1)
    if match:
        return f"; did you mean {match[0]}?"
    return f" (known: {', '.join(known)})"


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


def _collect_file(
    data: Mapping[str, Any], source: str, base: Path, given: dict[str, _Given]
) -> None:
    for name, value in data.items():
        if name == "mode":
            given[name] = _Given(value, source, base, override=False)
            continue
        cls = _TABLES.get(name)
        if cls is None:
            if isinstance(value, dict):
                reason = "unknown table" + _suggest(f"[{name}]", [f"[{t}]" for t in _TABLES])
            else:
                reason = "unknown key" + _suggest(name, ["mode", *(f"[{t}]" for t in _TABLES)])
            raise ConfigError(source, name, reason)
        if not isinstance(value, dict):
            raise ConfigError(source, name, f"expected a table [{name}], got {_show(value)}")
        names = [f.name for f in attrs.fields(cls)]
        for key, item in value.items():
            dotted = f"{name}.{key}"
            if key not in names:
                kind = "table" if isinstance(item, dict) else "key"
                raise ConfigError(source, dotted, f"unknown {kind}" + _suggest(key, names))
            given[dotted] = _Given(item, source, base, override=False)


def _collect_overrides(overrides: Mapping[str, Any], given: dict[str, _Given]) -> None:
    specs = _specs()
    for dotted, value in overrides.items():
        if not isinstance(dotted, str):
            raise ConfigError(COMMAND_LINE, repr(dotted), "expected a dotted key (table.key)")
        if dotted not in specs:
            if dotted in _TABLES:
                first = attrs.fields(_TABLES[dotted])[0].name
                reason = f"a table, not a key: give {dotted}.KEY, such as {dotted}.{first}"
            else:
                reason = "unknown key" + _suggest(dotted, list(specs))
            raise ConfigError(COMMAND_LINE, dotted, reason)
        given[dotted] = _Given(value, COMMAND_LINE, None, override=True)


def _literal(text: str) -> object:
    """A command-line string as a TOML value (``"10"``, ``"false"``, ``"2.5"``);
    the string itself when it is not one."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except ValueError:  # TOMLDecodeError, or an integer of over 4300 digits
        return text
    return parsed["v"] if len(parsed) == 1 else text


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
    given: dict[str, _Given] = {}
    fallback = DEFAULTS
    if path is not None:
        fallback = str(path)
        data = _read_file(path)
        try:
            base = Path(os.path.abspath(path)).parent
        except OSError as exc:
            raise ConfigError(str(path), None, f"cannot locate: {exc.strerror}") from None
        _collect_file(data, str(path), base, given)
    if overrides:
        _collect_overrides(overrides, given)
    return _build(given, fallback)


def _real(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return path


def _check_own_dirs(
    driver: Mapping[str, Any], tokens_file: Path, fail: Callable[..., NoReturn]
) -> None:
    """Keep the daemon's own files apart (paths compared after resolving
    symlinks): runtime records never share a directory with definitions or
    the tokens file, and no storage directory holds, or lies in, the state
    directory, the run directory or the tokens file's directory (a disk image
    there could be the tokens file)."""
    state, run = _real(driver["state_dir"]), _real(driver["run_dir"])
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
    for storage in driver.get("storage_dirs", ()):
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


def _build(given: Mapping[str, _Given], fallback: str) -> DaemonConfig:
    def parse(dotted: str, spec: _Spec) -> Any:
        item = given[dotted]
        raw = item.value
        if item.override and isinstance(raw, str) and not spec.textual:
            raw = _literal(raw)
        try:
            return spec.check(raw, item.base)
        except _Invalid as exc:
            raise ConfigError(item.source, dotted, exc.reason) from None

    def fail(reason: str, *keys: str) -> NoReturn:
        """Blame the first of ``keys`` given on the command line, else in the file."""
        for want_override in (True, False):
            for key in keys:
                if key in given and given[key].override == want_override:
                    raise ConfigError(given[key].source, key, reason)
        raise ConfigError(fallback, keys[0], reason)

    mode: Literal["default", "legacy"] = parse("mode", _MODE) if "mode" in given else "default"
    defaults = LEGACY_DEFAULTS if mode == "legacy" else {}
    tables: dict[str, dict[str, Any]] = {}
    for table, cls in _TABLES.items():
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            dotted = f"{table}.{field.name}"
            if dotted in given:
                values[field.name] = parse(dotted, _spec_of(field))
            elif dotted in defaults:
                values[field.name] = defaults[dotted]
        tables[table] = values

    driver, auth, pools, tls = tables["driver"], tables["auth"], tables["pools"], tables["tls"]
    if "state_dir" not in driver:
        driver["state_dir"] = default_state_dir()
        driver.setdefault("run_dir", default_run_dir(driver["state_dir"]))
    else:
        driver.setdefault("run_dir", driver["state_dir"] / "run")
    auth.setdefault("tokens_file", driver["state_dir"] / "tokens.json")

    for dotted, path, want_dir in (
        ("driver.state_dir", driver["state_dir"], True),
        ("driver.run_dir", driver["run_dir"], True),
        ("auth.tokens_file", auth["tokens_file"], False),
    ):
        try:
            mode_bits = os.stat(path).st_mode
        except OSError:
            continue  # missing (created later) or not reachable (reported when used)
        if want_dir and not stat.S_ISDIR(mode_bits):
            fail(f"{_show(path)} exists and is not a directory", dotted)
        if not want_dir and stat.S_ISDIR(mode_bits):
            fail(f"{_show(path)} is a directory", dotted)

    _check_own_dirs(driver, auth["tokens_file"], fail)

    min_workers: int = pools.get("min_workers", PoolsConfig().min_workers)
    max_workers: int = pools.get("max_workers", PoolsConfig().max_workers)
    if min_workers > max_workers:
        fail(
            f"min_workers ({min_workers}) cannot be larger than max_workers ({max_workers})",
            "pools.min_workers",
            "pools.max_workers",
        )

    cert: Path | None = tls.get("cert")
    key: Path | None = tls.get("key")
    if (cert is None) != (key is None):
        present, missing = ("cert", "key") if key is None else ("key", "cert")
        fail(f"tls.{missing} is missing: give both cert and key, or neither", f"tls.{present}")
    if cert is not None and key is not None:
        for name, file in (("cert", cert), ("key", key)):
            try:
                with open(file, "rb"):
                    pass
            except OSError as exc:
                fail(f"cannot read {_show(file)}: {exc.strerror or exc}", f"tls.{name}")
        try:
            _server_context(cert, key)
        except _Invalid as exc:
            fail(exc.reason, "tls.key")
        except (ssl.SSLError, OSError, ValueError) as exc:
            fail(f"cannot load the certificate and key: {exc}", "tls.cert", "tls.key")

    return DaemonConfig(
        mode=mode,
        server=ServerConfig(**tables["server"]),
        pools=PoolsConfig(**pools),
        driver=DriverSettings(**driver),
        auth=AuthConfig(**auth),
        tls=TlsConfig(**tls),
        log=LogConfig(**tables["log"]),
    )
