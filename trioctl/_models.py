"""Typed records of the domain driver, and the one cattrs converter.

Every request and result is an attrs class; :data:`converter` structures
input with unknown keys refused, and :func:`structure` turns cattrs' errors
into :class:`~trioctl.InvalidParams` naming each bad field and why.
"""

from __future__ import annotations

import enum
import re
import uuid as uuid_mod
from typing import Any, Final, TypeVar

import attrs
import cattrs

from ._errors import InvalidParams

__all__ = [
    "DomainDefinition",
    "DomainEvent",
    "DomainInfo",
    "DomainState",
    "DomainStats",
    "JobInfo",
    "MonitorState",
    "converter",
    "structure",
    "unstructure",
]

T = TypeVar("T")

NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
EMULATORS: Final = ("sim", "qemu")


class DomainState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"


class MonitorState(enum.Enum):
    NONE = "none"  #: not running: no monitor
    CONNECTING = "connecting"  #: (re)connecting; the reconnect holds the job
    OK = "ok"  #: answering
    UNRESPONSIVE = "unresponsive"  #: a command timed out or connect failed


def _check_name(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not NAME_RE.match(value):
        raise ValueError(f"'{attr.name}' must be 1 to 64 letters, digits, '_', '.' or '-'")


def _check_uuid(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    try:
        uuid_mod.UUID(value)
    except ValueError:
        raise ValueError(f"'{attr.name}' is not a UUID: {value!r}") from None


def _check_emulator(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value and value not in EMULATORS and not value.startswith("/"):
        raise ValueError(f"'{attr.name}' must be 'sim', 'qemu' or an absolute path")


def _check_extra_args(
    _inst: object, attr: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for arg in value:
        if "\0" in arg:
            raise ValueError(f"'{attr.name}' must not contain NUL bytes")


def _new_uuid() -> str:
    return str(uuid_mod.uuid4())


@attrs.frozen
class DomainDefinition:
    """A domain's persistent definition (``schemas/domain.json``)."""

    name: str = attrs.field(validator=_check_name)
    """Unique name: 1 to 64 letters, digits, ``_``, ``.`` or ``-``."""
    uuid: str = attrs.field(factory=_new_uuid, validator=_check_uuid)
    """Generated when absent."""
    memory_mib: int = attrs.field(
        default=128, validator=[attrs.validators.ge(1), attrs.validators.le(1 << 20)]
    )
    vcpus: int = attrs.field(
        default=1, validator=[attrs.validators.ge(1), attrs.validators.le(255)]
    )
    machine: str = attrs.field(default="none", validator=attrs.validators.min_len(1))
    """QEMU machine type (``-machine``); ``none`` has no guest at all."""
    emulator: str = attrs.field(default="", validator=_check_emulator)
    """``sim`` (the built-in simulator), ``qemu`` (qemu-system-x86_64) or an
    absolute path to a QEMU binary; empty: the daemon's default backend,
    filled in when the domain is defined."""
    extra_args: tuple[str, ...] = attrs.field(default=(), validator=_check_extra_args)
    """Extra emulator arguments, passed as a list (never through a shell)."""
    autostart: bool = False
    """Start the domain when the daemon starts, if it is not running."""


@attrs.frozen
class JobInfo:
    """Who holds a domain's job, and who waits."""

    domain: str
    kind: str
    procedure: str
    client: str
    held_seconds: float
    queued: int
    """Callers waiting for the job, queries included."""
    queued_queries: int = 0
    """Of them, queries waiting in the domain's query lane."""


@attrs.frozen
class DomainInfo:
    """Cached state of a domain: never asks the monitor."""

    name: str
    uuid: str
    state: DomainState
    reason: str
    monitor: MonitorState
    pid: int | None
    memory_mib: int
    vcpus: int
    emulator: str
    autostart: bool
    started_at: float | None
    """Wall-clock start time (seconds since the epoch), if running."""
    job: JobInfo | None


@attrs.frozen
class DomainStats:
    """Live figures, read through the monitor and /proc."""

    name: str
    status: str
    """QMP ``query-status`` status (running, paused, prelaunch, ...)."""
    running: bool
    vcpus: int
    """CPUs QEMU reports (``query-cpus-fast``)."""
    cpu_seconds: float
    """User plus system CPU time of the QEMU process."""
    rss_kib: int


@attrs.frozen
class DomainEvent:
    """Something happened to a domain."""

    domain: str
    kind: str
    """``lifecycle``, ``monitor`` or ``qmp``."""
    detail: str
    """For lifecycle: defined, undefined, started, suspended, resumed, reset,
    shutdown, destroyed, crashed, stopped; for monitor: responsive,
    unresponsive; for qmp: the QMP event's name."""
    timestamp: float
    data: dict[str, Any] = attrs.Factory(dict)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    # Refuse booleans where integers are expected, and numbers where strings
    # are: cattrs' defaults call int()/str() and would accept "12" or 12.
    def _int(value: Any, _t: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        return value

    def _str(value: Any, _t: type) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value

    def _bool(value: Any, _t: type) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected a boolean, got {type(value).__name__}")
        return value

    def _float(value: Any, _t: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        return float(value)

    def _str_tuple(value: Any, _t: type) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list of strings, got {type(value).__name__}")
        return tuple(_str(v, str) for v in value)

    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _str_tuple)
    return conv


converter: Final = _make_converter()


def structure(data: Any, cls: type[T]) -> T:
    """Structure ``data`` as ``cls``, refusing unknown keys.

    Raises:
        InvalidParams: with ``data["errors"]`` listing each bad field and why.
    """
    if not isinstance(data, dict):
        raise InvalidParams(
            f"expected a JSON object for {cls.__name__}, got {type(data).__name__}",
            errors=[f"$: expected an object, got {type(data).__name__}"],
        )
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            errors = cattrs.transform_error(exc, path="$", format_exception=_describe)
        else:
            errors = [f"$: {exc}"]
        raise InvalidParams(
            f"invalid {cls.__name__}: " + "; ".join(errors), errors=errors
        ) from None


def _describe(exc: BaseException, type_: type | None) -> str:
    # Validators raise ValueError naming the field and the rule; say it as is.
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def unstructure(obj: Any) -> Any:
    """The JSON-compatible form of ``obj``."""
    return converter.unstructure(obj)
