"""Crash-safe persistence of domain definitions and runtime records.

Layout::

    STATE_DIR/domains/NAME.json   one definition each (schemas/domain.json)
    RUN_DIR/NAME.json             runtime record of a running domain
    RUN_DIR/NAME.qmp              its QMP socket; NAME.pid its pidfile

Every file is written atomically: a temporary file in the same directory,
``fsync``, ``rename`` over the old one, then ``fsync`` of the directory. A
crash at any point leaves either the old file or the new one, never a torn
one. A file that is corrupt or unreadable anyway (disk trouble, a hand edit)
is reported with its path and reason and moved aside to ``*.corrupt``, never
deleted, and never stops the other files from loading.

These functions do blocking file I/O; async callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import math
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Final

import attrs

from ._errors import TrioctlError
from ._models import NAME_RE, DomainDefinition, structure, unstructure

__all__ = [
    "MAX_DEFINITION_BYTES",
    "LoadProblem",
    "RuntimeRecord",
    "Store",
    "UnsafeDirectory",
    "check_private_dir",
    "encode_definition",
    "read_regular",
    "write_atomic",
]

logger = logging.getLogger(__name__)


#: A definition's bound, encoded (issue 10: 100 definitions of 3 MB each
#: put 656 MB on disk).
MAX_DEFINITION_BYTES: Final = 64 * 1024
#: A runtime record is small; anything bigger is not one of ours.
MAX_RECORD_BYTES: Final = 64 * 1024
#: pid_max cannot exceed 2**22 on Linux.
_PID_MAX: Final = 2**22
_MAX_EXIT_BYTES: Final = 1024
_EXIT_STATES: Final = ("shutoff", "crashed")
_EXIT_REASON: Final = re.compile(r"[a-z][a-z-]{0,31}")
_TICKS_MAX: Final = 2**63


class UnsafeDirectory(PermissionError):
    """A state or run directory another user could tamper with."""


@attrs.frozen
class RuntimeRecord:
    """What the daemon must remember about a domain's process across restarts.

    A record gives names, never paths: the monitor socket and other files of
    the domain are derived from the run directory and the name.
    """

    name: str
    pid: int | None
    """None while ``starting`` and the emulator is not yet spawned."""
    start_ticks: int | None
    """Process start time (/proc), so a recycled pid is never mistaken for it."""
    emulator: str
    started_at: float
    """Wall-clock start time, seconds since the epoch."""
    taints: list[str] = attrs.Factory(list)
    """Why this run is tainted (``custom-argv``, ``custom-monitor``)."""
    definition: dict[str, Any] | None = None
    """The definition the process was started with (a redefine while it runs
    changes the stored definition only)."""
    state: str = "running"
    """``starting``: written before the launch, the start never completed;
    ``running``: the start completed (the monitor answered)."""
    shared: bool = False
    """The process serves many domains (the simulator's ``many`` mode)."""


@attrs.frozen
class LoadProblem:
    """A file that could not be loaded, and where it was moved."""

    path: str
    reason: str
    moved_to: str | None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new, whole.

    The one way the daemon writes a file. The temporary file gets a random
    name in the same directory, created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` and
    mode 0600, so nobody can have created it before us or point it elsewhere;
    ``rename`` then replaces ``path`` itself (a symlink there is replaced, not
    followed; a file another user created there is replaced, and that user's
    open descriptor keeps the old, empty inode). Then ``fsync`` of the
    directory.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        break
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Never follows a symlink (``O_NOFOLLOW``), never blocks on a FIFO or device
    (``O_NONBLOCK``, then ``fstat``), never reads more than ``limit + 1`` bytes.
    Refuses a file owned by another user.

    Raises:
        OSError, ValueError: with the reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"owned by uid {st.st_uid}, not by the daemon's user")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"more than the limit of {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_private_dir(path: Path, what: str) -> None:
    """Create ``path`` (mode 0700) if missing; refuse one another user could tamper with.

    Raises:
        UnsafeDirectory: not a directory, a symlink, not owned by the daemon's
            user, or writable by group or others; or a directory above it is
            owned by another user than root and the daemon's, or writable by
            group or others without the sticky bit (one line saying which).
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(f"{what} {path} is a symbolic link; give the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"{what} {path} is owned by uid {st.st_uid}, not by the daemon's user "
            f"(uid {os.geteuid()}); refusing it"
        )
    if st.st_mode & 0o022:
        raise UnsafeDirectory(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "refusing it (chmod go-w)"
        )
    # Whoever may rename entries of a directory above could put a symlink in
    # its place after this check: every one (as given, and resolved) must be
    # root's or the daemon's user's, and not writable by others unless sticky.
    absolute = Path(os.path.abspath(path))
    for parent in dict.fromkeys([*absolute.parents, *Path(os.path.realpath(path)).parents]):
        pst = os.stat(parent)
        if pst.st_uid not in (0, os.geteuid()):
            raise UnsafeDirectory(
                f"{what} {path} lies in {parent}, owned by uid {pst.st_uid}, which could "
                "replace it; refusing it (choose a directory only root or the daemon's user owns)"
            )
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            raise UnsafeDirectory(
                f"{what} {path} lies in {parent}, writable by group or others (mode "
                f"{stat.S_IMODE(pst.st_mode):04o}) without the sticky bit; refusing it"
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scan(directory: Path) -> list[tuple[str, bool]]:
    """The ``*.json`` entries of ``directory`` by name, sorted, each with
    whether it is a directory (not a symlink to one); and, in the same pass,
    remove the temporary files of writers that died before their rename:
    never valid (names start with a letter or digit, so no definition looks
    like one).

    One ``scandir``: at start-up with 1,000 domains, globbing and sorting
    ``Path`` objects took most of the load's time (issue 14 goal 5)."""
    found: list[tuple[str, bool]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") and fnmatch.fnmatchcase(name, ".*.tmp-*"):
                logger.info("removing %s, left by an interrupted write", entry.path)
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif name.endswith(".json"):
                found.append((name, entry.is_dir(follow_symlinks=False)))
    found.sort()
    return found


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def encode_definition(definition: DomainDefinition) -> bytes:
    """A definition as the store writes it."""
    return _encode(unstructure(definition))


_LEGACY_RECORD_KEYS: Final = frozenset({"qmp_path", "pidfile", "control_path"})


def _parse_record(raw: object, name: str) -> RuntimeRecord:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    raw = {k: v for k, v in raw.items() if k not in _LEGACY_RECORD_KEYS}
    record = RuntimeRecord(**raw)
    if not NAME_RE.fullmatch(name):
        # The loader joins the name to the run directory: ".." would reach
        # above it.
        raise ValueError(f"{name[:70]!r} is not a domain name")
    if record.name != name:
        raise ValueError(f"names domain {record.name!r}, not {name!r}")
    if record.state not in ("starting", "running"):
        raise ValueError(f"unknown state {record.state!r}")
    for field, low, top in (("pid", 1, _PID_MAX), ("start_ticks", 0, _TICKS_MAX)):
        value = getattr(record, field)
        if value is None and record.state == "starting":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise ValueError(f"{field} {str(value)[:40]} is not a valid {field}")
    if not isinstance(record.emulator, str) or not isinstance(record.shared, bool):
        raise ValueError("malformed record")
    if not isinstance(record.started_at, int | float) or not math.isfinite(record.started_at):
        raise ValueError("malformed started_at")
    return record


class Store:
    """Definitions under ``state_dir/domains`` and runtime records in ``run_dir``.

    Raises (on creation):
        UnsafeDirectory: a directory another user could tamper with.
    """

    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.state_dir = state_dir
        self.domains_dir = state_dir / "domains"
        self.run_dir = run_dir
        for d, what in (
            (state_dir, "state directory"),
            (self.domains_dir, "definitions directory"),
            (run_dir, "run directory"),
        ):
            check_private_dir(d, what)

    # -- definitions ---------------------------------------------------------------

    def definition_path(self, name: str) -> Path:
        return self.domains_dir / f"{name}.json"

    def save_definition(self, definition: DomainDefinition) -> None:
        write_atomic(self.definition_path(definition.name), encode_definition(definition))

    def delete_definition(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.definition_path(name).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.exit_path(name).unlink()
        _fsync_dir(self.domains_dir)

    # -- how each domain last stopped (kept beside its definition) -----------------------

    def exit_path(self, name: str) -> Path:
        # ".exit", never ".json": no definition file can have this name.
        return self.domains_dir / f"{name}.exit"

    def save_exit(self, name: str, state: str, reason: str) -> None:
        """Remember that ``name`` stopped (``shutoff``/``crashed``) and why, so
        that the next daemon shows the same state and reason."""
        write_atomic(self.exit_path(name), _encode({"state": state, "reason": reason}))

    def load_exits(self) -> dict[str, tuple[str, str]]:
        """Every saved ``(state, reason)`` by domain name. A file that cannot be
        used is logged and ignored (the domain then reads shutoff/defined)."""
        found: dict[str, tuple[str, str]] = {}
        for path in sorted(self.domains_dir.glob("*.exit")):
            try:
                raw = json.loads(read_regular(path, _MAX_EXIT_BYTES))
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
                state, reason = raw.get("state"), raw.get("reason")
                if state not in _EXIT_STATES or not isinstance(reason, str):
                    raise ValueError(f"unknown state {str(state)[:20]!r}")
                if not _EXIT_REASON.fullmatch(reason):
                    raise ValueError(f"unknown reason {reason[:20]!r}")
            except (OSError, ValueError, RecursionError) as exc:
                # RecursionError: nested too deeply, even within 1 KiB.
                logger.warning("ignoring %s: %s", path, str(exc)[:200])
                continue
            found[path.stem] = (state, reason)
        return found

    def load_definitions(self) -> tuple[list[DomainDefinition], list[LoadProblem]]:
        """Every definition; a file that cannot be loaded, for ANY reason, is
        set aside with its reason and the others load."""
        found: list[DomainDefinition] = []
        problems: list[LoadProblem] = []
        directory = str(self.domains_dir)
        for name, _ in _scan(self.domains_dir):
            stem = name[: -len(".json")]
            try:
                raw = json.loads(read_regular(os.path.join(directory, name), MAX_DEFINITION_BYTES))
                definition = structure(raw, DomainDefinition)
                if definition.name != stem:
                    raise ValueError(f"holds domain {definition.name!r}, not {stem!r}")
            except Exception as exc:  # any bad file is set aside
                problems.append(self._set_aside(self.domains_dir / name, exc))
                continue
            found.append(definition)
        return found, problems

    # -- runtime records and per-domain run directories --------------------------------

    def record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def domain_run_dir(self, name: str) -> Path:
        """The directory of the domain's own runtime files (monitor socket,
        log): the only place the emulator may write."""
        return self.run_dir / name

    def save_record(self, record: RuntimeRecord) -> None:
        write_atomic(self.record_path(record.name), _encode(attrs.asdict(record)))

    def delete_record(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(name).unlink()

    def load_records(self) -> tuple[dict[str, RuntimeRecord], list[LoadProblem]]:
        """Every runtime record; a file that cannot be loaded, for ANY reason
        (a pid of 2**70, a FIFO, a symlink), is set aside with its reason."""
        found: dict[str, RuntimeRecord] = {}
        problems: list[LoadProblem] = []
        directory = str(self.run_dir)
        for name, is_dir in _scan(self.run_dir):
            if is_dir:
                continue  # the run directory of a domain named "x.json"
            try:
                raw = json.loads(read_regular(os.path.join(directory, name), MAX_RECORD_BYTES))
                record = _parse_record(raw, name[: -len(".json")])
            except Exception as exc:  # any bad file is set aside
                problems.append(self._set_aside(self.run_dir / name, exc))
                continue
            found[record.name] = record
        return found, problems

    def _set_aside(self, path: Path, exc: BaseException) -> LoadProblem:
        if isinstance(exc, TrioctlError):
            reason = exc.message
        elif isinstance(exc, RecursionError):
            reason = "nested too deeply"
        else:
            reason = str(exc)[:300] or type(exc).__name__
        target = path.with_name(path.name + ".corrupt")
        n = 1
        while os.path.lexists(target):
            target = path.with_name(f"{path.name}.corrupt.{n}")
            n += 1
        try:
            path.rename(target)
            moved: str | None = str(target)
        except OSError as err:
            moved = None
            reason += f" (and could not be moved aside: {err})"
        logger.error("cannot load %s: %s; moved to %s", path, reason, moved)
        return LoadProblem(str(path), reason, moved)
