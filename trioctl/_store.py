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
import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs

from ._errors import TrioctlError
from ._models import DomainDefinition, structure, unstructure

__all__ = ["LoadProblem", "RuntimeRecord", "Store", "write_atomic"]

logger = logging.getLogger(__name__)


@attrs.frozen
class RuntimeRecord:
    """What the daemon must remember about a running domain across restarts."""

    name: str
    pid: int
    start_ticks: int
    """Process start time (/proc), so a recycled pid is never mistaken for it."""
    qmp_path: str
    pidfile: str
    emulator: str
    started_at: float
    """Wall-clock start time, seconds since the epoch."""
    control_path: str | None = None
    """The simulator's fault-injection control socket, if any."""
    taints: list[str] = attrs.Factory(list)
    """Why this run is tainted (``custom-argv``, ``custom-monitor``)."""
    definition: dict[str, Any] | None = None
    """The definition the process was started with (a redefine while it runs
    changes the stored definition only)."""


@attrs.frozen
class LoadProblem:
    """A file that could not be loaded, and where it was moved."""

    path: str
    reason: str
    moved_to: str | None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: Path) -> None:
    """Temporary files of writers that died before their rename: never valid."""
    for tmp in directory.glob(".*.tmp-*"):
        logger.info("removing %s, left by an interrupted write", tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


class Store:
    """Definitions under ``state_dir/domains`` and runtime records in ``run_dir``."""

    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.state_dir = state_dir
        self.domains_dir = state_dir / "domains"
        self.run_dir = run_dir
        for d in (state_dir, self.domains_dir, run_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- definitions ---------------------------------------------------------------

    def definition_path(self, name: str) -> Path:
        return self.domains_dir / f"{name}.json"

    def save_definition(self, definition: DomainDefinition) -> None:
        write_atomic(self.definition_path(definition.name), _encode(unstructure(definition)))

    def delete_definition(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.definition_path(name).unlink()
        _fsync_dir(self.domains_dir)

    def load_definitions(self) -> tuple[list[DomainDefinition], list[LoadProblem]]:
        _remove_stale_temporaries(self.domains_dir)
        found: list[DomainDefinition] = []
        problems: list[LoadProblem] = []
        for path in sorted(self.domains_dir.glob("*.json")):
            try:
                definition = structure(json.loads(path.read_bytes()), DomainDefinition)
                if definition.name != path.stem:
                    raise ValueError(f"holds domain {definition.name!r}, not {path.stem!r}")
            except (OSError, ValueError, TrioctlError) as exc:
                problems.append(self._set_aside(path, exc))
                continue
            found.append(definition)
        return found, problems

    # -- runtime records ---------------------------------------------------------------

    def record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def save_record(self, record: RuntimeRecord) -> None:
        write_atomic(self.record_path(record.name), _encode(attrs.asdict(record)))

    def delete_record(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(name).unlink()

    def load_records(self) -> tuple[dict[str, RuntimeRecord], list[LoadProblem]]:
        _remove_stale_temporaries(self.run_dir)
        found: dict[str, RuntimeRecord] = {}
        problems: list[LoadProblem] = []
        for path in sorted(self.run_dir.glob("*.json")):
            try:
                raw = json.loads(path.read_bytes())
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
                record = RuntimeRecord(**raw)
                if not isinstance(record.pid, int) or record.name != path.stem:
                    raise ValueError("inconsistent record")
            except (OSError, ValueError, TypeError) as exc:
                problems.append(self._set_aside(path, exc))
                continue
            found[record.name] = record
        return found, problems

    def _set_aside(self, path: Path, exc: BaseException) -> LoadProblem:
        reason = exc.message if isinstance(exc, TrioctlError) else str(exc)
        target = path.with_name(path.name + ".corrupt")
        n = 1
        while target.exists():
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
