"""Typed records of the domain driver, and the one cattrs converter.

Every request and result is an attrs class; :data:`converter` structures
input with unknown keys refused, and :func:`structure` turns cattrs' errors
into :class:`~trioctl.InvalidParams` naming each bad field and why.
"""

from __future__ import annotations

import difflib
import enum
import re
import typing
import uuid as uuid_mod
from typing import Any, Final, TypeVar

import attrs
import cattrs

from ._errors import InvalidParams

__all__ = [
    "DEFAULT_MACHINES",
    "MAX_WAIT_SECONDS",
    "NOWAIT_SECONDS",
    "WRITE_MONITOR_COMMANDS",
    "AllDomainStats",
    "Disk",
    "DomainDefinition",
    "DomainEvent",
    "DomainInfo",
    "DomainState",
    "DomainStats",
    "DomainStatsRecord",
    "JobInfo",
    "JobKind",
    "MonitorState",
    "Nic",
    "Priority",
    "converter",
    "structure",
    "unstructure",
]

T = TypeVar("T")

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EMULATOR_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
"""An emulator is named, never given as a path (``driver.emulators`` maps
names to binaries)."""
MACHINE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""A plain machine type name: no ``,`` or ``=``, so no QEMU sub-options."""
DEFAULT_MACHINES: Final = ("none", "pc", "q35", "isapc", "microvm", "pc-i440fx-*", "pc-q35-*")
"""``driver.machines``' default: machine types a definition may name
(``*`` matches the rest of a versioned name, such as ``pc-q35-7.2``)."""
DISK_FORMATS: Final = ("raw", "qcow2")
NIC_MODELS: Final = ("virtio-net-pci", "e1000")
MAC_RE: Final = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}")
MAX_PATH: Final = 1024
MAX_CMDLINE: Final = 4096
MAX_DISKS: Final = 16
MAX_NICS: Final = 8

SCHEMA: Final = "json_schema"
"""Key of an attrs field's ``metadata``: the JSON Schema constraints its
validator enforces, written next to it. ``trioctl._tools.gen_schemas`` puts
them in ``schemas/`` and reads attrs' own validators (``ge``, ``le``,
``max_len``) itself; a field whose validator is neither fails generation."""


def _whole(regex: re.Pattern[str], *, optional: bool = False) -> dict[str, Any]:
    """The JSON Schema ``pattern`` of a ``fullmatch`` of ``regex``."""
    body = f"({regex.pattern})?" if optional else regex.pattern
    return {"pattern": f"^{body}$"}


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


class Priority(enum.Enum):
    """A procedure's priority (libvirt's ``@priority`` annotation): anything
    that may touch a hypervisor monitor (and so may block) is LOW; HIGH is only
    for calls guaranteed to end quickly."""

    LOW = "low"
    HIGH = "high"


class JobKind(enum.Enum):
    """What a domain job is for."""

    QUERY = "query"
    """Reads live state through the monitor; waits in the query lane."""
    MODIFY = "modify"
    """Changes the domain (start, shutdown, suspend, monitor commands)."""
    DESTROY = "destroy"
    """Kills the domain: exempt from the bounds, first in line, interrupts."""
    RECONNECT = "reconnect"
    """Held while the daemon reopens the monitor after a restart."""


WRITE_MONITOR_COMMANDS: Final = frozenset(
    {"stop", "cont", "system_reset", "system_powerdown", "system_wakeup"}
)
"""Monitor commands the write role may send, besides every ``query-*``
command (which only read). Everything else (``human-monitor-command``,
``migrate``, ``chardev-add``, ``blockdev-add``, ``device_add``,
``object-add``, ``getfd``, ``quit``, ...) needs the admin role and taints
the run."""


def _check_name(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"'{attr.name}' must be 1 to 64 letters, digits, '_', '.' or '-'")


def _normal_uuid(value: Any) -> Any:
    """The canonical form of a uuid (lower case, with dashes), so that one
    uuid written two ways is the same uuid; anything else is left for the
    validator to refuse."""
    if isinstance(value, str) and value:
        try:
            return str(uuid_mod.UUID(value))
        except ValueError:
            pass
    return value


def _utf8(attr: attrs.Attribute[Any], value: str) -> None:
    """Refuse a string that is not valid Unicode text (a lone surrogate such
    as ``"\\ud800"``, which JSON can carry): it cannot be a file name or an
    argument."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"'{attr.name}' is not valid UTF-8 (it contains a lone surrogate)"
        ) from None


def _check_uuid(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not value:
        return  # filled in by the driver: the existing domain's, or a new one
    try:
        uuid_mod.UUID(value)
    except ValueError:
        raise ValueError(f"'{attr.name}' is not a UUID: {value!r}") from None


def _check_emulator(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value and not EMULATOR_NAME_RE.fullmatch(value):
        raise ValueError(
            f"'{attr.name}' must be the name of a configured emulator (such as 'qemu' or "
            f"'sim'), not {value[:80]!r}: binaries are chosen by the daemon's configuration"
        )


def _check_machine(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if not MACHINE_RE.fullmatch(value):
        raise ValueError(
            f"'{attr.name}' must be a plain machine type name (lower-case letters, digits, "
            f"'.', '_', '-'; no ',' or '='), not {value[:80]!r}"
        )


def _check_file(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    """A file path: absolute, normal (no ``.``, ``..`` or ``//``), no ``,``."""
    if not value and attr.name in ("kernel", "initrd"):
        return
    if "\0" in value or len(value) > MAX_PATH:
        raise ValueError(f"'{attr.name}' must be a path of at most {MAX_PATH} characters, no NUL")
    _utf8(attr, value)
    parts = value.split("/")
    if not value.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
        raise ValueError(
            f"'{attr.name}' must be an absolute path without '.', '..' or empty components, "
            f"not {value[:80]!r}"
        )
    if "," in value:
        raise ValueError(f"'{attr.name}' must not contain ',' (QEMU's option separator)")


def _check_cmdline(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if "\0" in value or len(value) > MAX_CMDLINE:
        raise ValueError(
            f"'{attr.name}' must be at most {MAX_CMDLINE} characters, without NUL bytes"
        )
    _utf8(attr, value)


def _one_of(options: tuple[str, ...]) -> Any:
    def check(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
        if value not in options:
            raise ValueError(
                f"'{attr.name}' must be one of {', '.join(options)}, not {value[:40]!r}"
            )

    return check


def _check_mac(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value and not MAC_RE.fullmatch(value):
        raise ValueError(
            f"'{attr.name}' must be a unicast MAC address in lower case, such as "
            f"'52:54:00:12:34:56', not {value[:40]!r}"
        )


def _check_extra_args(
    _inst: object, attr: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for arg in value:
        if "\0" in arg:
            raise ValueError(f"'{attr.name}' must not contain NUL bytes")
        _utf8(attr, arg)


def new_uuid() -> str:
    """A fresh random uuid for a new domain."""
    return str(uuid_mod.uuid4())


@attrs.frozen
class Disk:
    """A disk image from a storage directory (``driver.storage_dirs``)."""

    path: str = attrs.field(
        validator=_check_file, metadata={SCHEMA: {"pattern": "^/[^,]*$", "maxLength": MAX_PATH}}
    )
    """Absolute path of the image; after resolving symlinks it must lie inside
    one of the daemon's storage directories (checked at define and at start).
    No ``,``, ``.`` or ``..`` components."""
    format: str = attrs.field(
        default="raw", validator=_one_of(DISK_FORMATS), metadata={SCHEMA: {"enum": DISK_FORMATS}}
    )
    """``raw`` or ``qcow2`` (never probed; a qcow2 image's backing file is not
    opened)."""
    readonly: bool = False


@attrs.frozen
class Nic:
    """A user-mode (slirp) network interface."""

    model: str = attrs.field(
        default="virtio-net-pci",
        validator=_one_of(NIC_MODELS),
        metadata={SCHEMA: {"enum": NIC_MODELS}},
    )
    """``virtio-net-pci`` or ``e1000``."""
    mac: str = attrs.field(
        default="", validator=_check_mac, metadata={SCHEMA: _whole(MAC_RE, optional=True)}
    )
    """Unicast MAC address; QEMU picks one when empty."""


_BOOT_FILE: Final = {"pattern": "^(|/[^,]*)$", "maxLength": MAX_PATH}


def _bounded(limit: int) -> Any:
    return attrs.validators.max_len(limit)


@attrs.frozen
class DomainDefinition:
    """A domain's persistent definition (``schemas/domain.json``)."""

    name: str = attrs.field(validator=_check_name, metadata={SCHEMA: _whole(NAME_RE)})
    """Unique name: 1 to 64 letters, digits, ``_``, ``.`` or ``-``."""
    uuid: str = attrs.field(
        default="",
        converter=_normal_uuid,
        validator=_check_uuid,
        metadata={SCHEMA: {"anyOf": [{"format": "uuid"}, {"const": ""}]}},
    )
    """Generated when absent; kept in canonical form (lower case, with
    dashes), so one uuid written in upper case or without dashes is the same
    uuid. A domain's uuid never changes: a redefine without one keeps it, a
    redefine with another one is refused."""
    memory_mib: int = attrs.field(
        default=128, validator=[attrs.validators.ge(1), attrs.validators.le(1 << 20)]
    )
    vcpus: int = attrs.field(
        default=1, validator=[attrs.validators.ge(1), attrs.validators.le(255)]
    )
    machine: str = attrs.field(
        default="none", validator=_check_machine, metadata={SCHEMA: _whole(MACHINE_RE)}
    )
    """QEMU machine type (``-machine``): a plain name from the daemon's
    ``driver.machines`` allow-list; ``none`` has no guest at all."""
    emulator: str = attrs.field(
        default="",
        validator=_check_emulator,
        metadata={SCHEMA: _whole(EMULATOR_NAME_RE, optional=True)},
    )
    """The name of an emulator in the daemon's ``driver.emulators`` table:
    ``qemu`` (the host's qemu-system-x86_64), ``sim`` (the built-in
    simulator) or another configured name; never a path. Empty: the daemon's
    default backend, filled in when the domain is defined."""
    extra_args: tuple[str, ...] = attrs.field(
        default=(),
        validator=_check_extra_args,
        metadata={SCHEMA: {"items": {"type": "string", "pattern": "^[^\\u0000]*$"}}},
    )
    """Raw emulator arguments, passed as a list (never through a shell).
    Admin role only; a run started with them is tainted ``custom-argv``."""
    autostart: bool = False
    """Start the domain when the daemon starts, if it is not running."""
    disks: tuple[Disk, ...] = attrs.field(default=(), validator=_bounded(MAX_DISKS))
    """Up to 16 disk images (``-blockdev``), from the storage directories."""
    nics: tuple[Nic, ...] = attrs.field(default=(), validator=_bounded(MAX_NICS))
    """Up to 8 user-mode network interfaces (``-netdev user``)."""
    serial_log: bool = False
    """Log the first serial port to ``serial.log`` in the domain's run directory."""
    kernel: str = attrs.field(default="", validator=_check_file, metadata={SCHEMA: _BOOT_FILE})
    """Direct kernel boot (``-kernel``): a file from the storage directories."""
    initrd: str = attrs.field(default="", validator=_check_file, metadata={SCHEMA: _BOOT_FILE})
    """Initial ramdisk (``-initrd``), from the storage directories; needs ``kernel``."""
    cmdline: str = attrs.field(
        default="",
        validator=_check_cmdline,
        metadata={SCHEMA: {"pattern": "^[^\\u0000]*$", "maxLength": MAX_CMDLINE}},
    )
    """Kernel command line (``-append``), at most 4096 characters; needs ``kernel``."""

    def __attrs_post_init__(self) -> None:
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ValueError("'initrd' and 'cmdline' need 'kernel'")
        if self.kernel and self.machine == "none":
            raise ValueError("'kernel' needs a machine type other than 'none'")

    def files(self) -> list[tuple[str, str]]:
        """Every file the definition names, as (field, path)."""
        found = [(f"disks[{i}].path", disk.path) for i, disk in enumerate(self.disks)]
        found += [(field, getattr(self, field)) for field in ("kernel", "initrd")]
        return [(field, path) for field, path in found if path]


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
    taints: list[str] = attrs.Factory(list)
    """Why the running process is tainted: ``custom-argv`` (started with
    ``extra_args``), ``custom-monitor`` (an admin sent a monitor command
    outside the write role's allow-list). Kept until the process exits."""
    pending_changes: bool = False
    """The domain runs and was redefined since it started: the figures above
    are the running configuration; the new definition applies at the next
    start."""


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


NOWAIT_SECONDS: Final = 0.2
"""Without ``wait``: the deadline of each domain whose job was free and whose
monitor looked responsive (its two QMP round trips and /proc)."""

MAX_WAIT_SECONDS: Final = 30.0
"""The largest ``wait`` a caller may ask for."""


@attrs.frozen
class DomainStatsRecord:
    """One domain in a bulk stats reply."""

    name: str
    info: DomainInfo
    """Cached state when the domain's entry was made: state, monitor state,
    pid, the job's holder and for how long, taints."""
    stats: DomainStats | None
    """Live figures, or None (``skipped`` says why)."""
    skipped: str | None = None
    """Why there are no live figures: ``not-running``, ``job-held`` (another
    call holds the domain's job; ``info.job`` names it), ``unresponsive``,
    ``reconnecting``, ``timeout`` (no answer within the deadline), ``error``
    (``error`` says what)."""
    error: str | None = None
    """The error's message when ``skipped`` is ``error`` or the job queue
    refused."""


@attrs.frozen
class AllDomainStats:
    domains: list[DomainStatsRecord]
    """Sorted by name."""
    fresh: int
    """Domains with live figures."""
    skipped: int
    """Domains reported from cached state."""
    elapsed_seconds: float
    """Time this call spent gathering."""


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
    # are: cattrs' defaults call int()/str() and would accept "12", 12.5 or 12.
    # A JSON number without a fractional part (``64.0``) is an integer, as
    # JSON Schema's "integer" type says: the schemas and the server agree.
    def _int(value: Any, _t: type) -> int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            got = f"{value!r}" if isinstance(value, float) else type(value).__name__
            raise TypeError(f"expected an integer, got {got}")
        return value

    def _str(value: Any, _t: type) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON's "\ud800" escape: not text any file name or argument can hold.
            raise TypeError("expected valid UTF-8 text, got a lone surrogate") from None
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

    def _is_object_tuple(t: Any) -> bool:
        args = typing.get_args(t)
        return (
            typing.get_origin(t) is tuple
            and len(args) == 2
            and args[1] is Ellipsis
            and attrs.has(args[0])
        )

    def _object_tuple(value: Any, t: Any) -> tuple[Any, ...]:
        # cattrs would iterate a string or a mapping; say what is wrong instead.
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list of objects, got {type(value).__name__}")
        inner = typing.get_args(t)[0]
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                if not isinstance(item, dict):
                    raise TypeError(f"expected an object, got {type(item).__name__}")
                items.append(conv.structure(item, inner))
            except Exception as exc:
                note = cattrs.IterableValidationNote(
                    f"Structuring {t!r} @ index {index}", index, inner
                )
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError(f"While structuring {t!r}", errors, t)
        return tuple(items)

    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)
    conv.register_structure_hook(float, _float)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _str_tuple)
    conv.register_structure_hook_func(_is_object_tuple, _object_tuple)
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
        errors = []
        if isinstance(exc, cattrs.BaseValidationError):
            errors = cattrs.transform_error(exc, path="$", format_exception=_describe)
        # Every bad field, not only the first: the validators of the fields
        # that structured, one by one (attrs stops at the first that fails).
        per_field = _validator_errors(data, cls, errors)
        if per_field:
            # cattrs reports a failed validator at its object ("... @ $"):
            # the per-field lines say it with the field's path.
            said = {e.rsplit(" @ ", 1)[0] for e in per_field}
            errors = [e for e in errors if e.rsplit(" @ ", 1)[0] not in said]
        errors += per_field
        if not errors:
            errors = [f"$: {exc}"]
        raise InvalidParams(
            f"invalid {cls.__name__}: " + "; ".join(errors), errors=errors
        ) from None


def _validator_errors(
    data: dict[str, Any], cls: type, known: list[str], path: str = "$"
) -> list[str]:
    """``"message @ $.field"`` for each field of ``cls`` (nested attrs
    classes too) whose value in ``data`` structures but fails its validator;
    fields that already have an error in ``known`` are skipped."""
    if not attrs.has(cls):
        return []
    found = []
    for field in attrs.fields(attrs.resolve_types(cls)):
        where = f"{path}.{field.name}"
        if field.name not in data:
            continue
        value = data[field.name]
        if isinstance(field.type, type) and attrs.has(field.type) and isinstance(value, dict):
            found += _validator_errors(value, field.type, known, where)
            continue
        if field.validator is None or any(
            e.endswith(f"@ {where}") or f"@ {where}." in e or f"@ {where}[" in e for e in known
        ):
            continue
        try:
            field.validator(None, field, converter.structure(value, field.type))
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            found.append(f"{_describe(exc, None)} @ {where}")
    return found


def _describe(exc: BaseException, type_: type | None) -> str:
    # Validators raise ValueError naming the field and the rule, the type
    # hooks TypeError "expected ..., got ...": say them as they are.
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    if isinstance(exc, TypeError) and str(exc).startswith("expected "):
        return str(exc)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        return "; ".join(
            f"unknown key {key!r}{_did_you_mean(key, known)}" for key in sorted(exc.extra_fields)
        )
    return cattrs.v.format_exception(exc, type_)


def _did_you_mean(name: str, known: list[str]) -> str:
    """The closest known name as a hint (as the configuration file does)."""
    match = difflib.get_close_matches(name, known, n=1)
    if match:
        return f"; did you mean {match[0]!r}?"
    return f" (known: {', '.join(known)})" if known else ""


def unstructure(obj: Any) -> Any:
    """The JSON-compatible form of ``obj``."""
    return converter.unstructure(obj)
