"""Reading a process from Linux's ``/proc``: the one parser of ``/proc/PID/stat``.

``/proc/PID/stat`` is one line, ``PID (COMM) STATE PPID ...``, where ``COMM``
(the executable's name, or whatever the process set with ``prctl``) may hold
any byte but NUL: spaces, parentheses, ``) (``, even a newline. No field after
it holds a ``)``, so the line is split at its *last* ``)``; splitting on white
space from the start reads the wrong fields as soon as a name has a space.
Field numbers below are those of ``proc(5)``.

A process can end between any two reads: every reader raises
:class:`ProcessGone` (a :class:`ProcessLookupError`, so an ``OSError``) when
its ``/proc`` directory is not there, and lets other errors (such as
``PermissionError``) through.

>>> stat = parse_stat(b"42 (a) (b) S 1 42 42 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 99 0 5")
>>> (stat.comm, stat.state, stat.utime, stat.stime, stat.start_ticks, stat.rss_pages)
('a) (b', 'S', 7, 3, 99, 5)
"""

from __future__ import annotations

import os
from typing import Final

import attrs

__all__ = [
    "CLOCK_TICKS",
    "PAGE_KIB",
    "ProcStat",
    "ProcessGone",
    "parse_stat",
    "pids",
    "read_cmdline",
    "read_stat",
]

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
"""Clock ticks a second: the unit of ``utime``, ``stime`` and ``starttime``."""
PAGE_KIB: Final = os.sysconf("SC_PAGE_SIZE") // 1024
"""KiB in a memory page: the unit of ``rss``."""

# Fields after the closing ")", counted from 0: proc(5) numbers them from 1,
# with pid and comm as 1 and 2.
_STATE, _PPID, _UTIME, _STIME, _STARTTIME, _RSS = 0, 1, 11, 12, 19, 21


class ProcessGone(ProcessLookupError):
    """The process does not exist (any more): ``/proc/PID`` is not there.

    ``pid`` is the process asked about.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(f"no process {pid} in /proc")
        self.pid = pid


@attrs.frozen
class ProcStat:
    """The fields of ``/proc/PID/stat`` that trioctl reads."""

    pid: int
    comm: str
    """The command name without its parentheses (undecodable bytes are kept
    as :func:`os.fsdecode` keeps them)."""
    state: str
    """One letter: ``R`` running, ``S``/``D`` sleeping, ``T``/``t`` stopped,
    ``Z`` zombie, ``X`` dead..."""
    ppid: int
    utime: int
    """User CPU time, in clock ticks (:data:`CLOCK_TICKS`)."""
    stime: int
    """System CPU time, in clock ticks."""
    start_ticks: int
    """Start time in clock ticks since boot: with the pid, it tells a process
    from a later one that got the same pid."""
    rss_pages: int
    """Resident set size, in pages (:data:`PAGE_KIB`)."""

    @property
    def cpu_seconds(self) -> float:
        """User plus system CPU time, in seconds."""
        return (self.utime + self.stime) / CLOCK_TICKS

    @property
    def rss_kib(self) -> int:
        """Resident set size in KiB."""
        return self.rss_pages * PAGE_KIB

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP) or by a tracer."""
        return self.state in "Tt"

    @property
    def ended(self) -> bool:
        """A zombie (ended, not reaped yet) or dead."""
        return self.state in "ZX"


def parse_stat(data: bytes) -> ProcStat:
    """Parse the contents of a ``/proc/PID/stat`` file.

    Raises:
        ValueError: ``data`` is not such a line (no ``(...)`` command name, a
            field missing or not a number).
    """
    open_at, close_at = data.find(b"("), data.rfind(b")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/PID/stat line (no '(COMM)'): {data[:80]!r}")
    fields = data[close_at + 1 :].split()
    if len(fields) <= _RSS:
        raise ValueError(f"not a /proc/PID/stat line ({len(fields) + 2} fields): {data[:80]!r}")
    state = fields[_STATE].decode("ascii", "replace")
    if len(state) != 1:
        raise ValueError(f"not a /proc/PID/stat line (state {state!r}): {data[:80]!r}")
    return ProcStat(
        pid=int(data[:open_at]),
        comm=os.fsdecode(data[open_at + 1 : close_at]),
        state=state,
        ppid=int(fields[_PPID]),
        utime=int(fields[_UTIME]),
        stime=int(fields[_STIME]),
        start_ticks=int(fields[_STARTTIME]),
        rss_pages=int(fields[_RSS]),
    )


def read_stat(pid: int) -> ProcStat:
    """Read and parse ``/proc/PID/stat``.

    Raises:
        ProcessGone: no such process.
        OSError: another reason it cannot be read.
        ValueError: the file does not parse (it always does on Linux).
    """
    return parse_stat(_read(pid, "stat"))


def read_cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (``[]`` for a zombie or a kernel thread).

    Raises:
        ProcessGone: no such process.
        OSError: another reason it cannot be read.
    """
    raw = _read(pid, "cmdline")
    if not raw:
        return []
    # Each argument ends with a NUL, unless the process rewrote its argv.
    return [os.fsdecode(arg) for arg in raw.removesuffix(b"\0").split(b"\0")]


def pids() -> list[int]:
    """The pids in ``/proc`` now (processes, not threads), this one included."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as file:
            return file.read()
    except (FileNotFoundError, ProcessLookupError):
        # ESRCH: the process ended between open and read.
        raise ProcessGone(pid) from None
