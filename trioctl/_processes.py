"""The driver's table of emulator processes, shared by reference count.

The simulator's many-VMs mode serves thousands of domains from one process,
and one pidfd per domain would exhaust the open-file limit: the table keeps
one :class:`~trioctl._launcher.QemuProcess` per process, by ``(pid, start
ticks)``, with how many runs use it, and closes its pidfd when the last one
lets go.

It also watches them: one task per watched process (in the driver's
nursery, not one per domain) waits on its pidfd and, when it exits, calls
each run's exit callback, synchronously and in the order they were added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ._launcher import QemuProcess

__all__ = ["ProcessTable"]

logger = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("exits", "gone", "proc", "users", "watching")

    def __init__(self, proc: QemuProcess) -> None:
        self.proc = proc
        self.users = 0
        self.exits: dict[Callable[[], None], None] = {}
        """Exit callbacks, in the order they were added."""
        self.watching = False
        self.gone = False
        """The process has exited and its callbacks were called."""


class ProcessTable:
    """Processes by ``(pid, start ticks)``, each with its number of users."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._procs: dict[tuple[int, int], _Entry] = {}

    def hold(self, proc: QemuProcess) -> QemuProcess:
        """One more user of ``proc``'s process: the table's handle on it.

        If the process is held already, ``proc`` is closed and the first
        handle (its pidfd) is shared.
        """
        key = (proc.pid, proc.start_ticks)
        entry = self._procs.get(key)
        if entry is None:
            entry = self._procs[key] = _Entry(proc)
        elif entry.proc is not proc:
            proc.close()  # already watched: share the first pidfd
        entry.users += 1
        return entry.proc

    def release(self, proc: QemuProcess) -> None:
        """One user fewer; the last closes the handle."""
        key = (proc.pid, proc.start_ticks)
        entry = self._procs.get(key)
        if entry is None:
            proc.close()
        elif entry.users <= 1:
            del self._procs[key]
            entry.proc.close()
        else:
            entry.users -= 1

    def get(self, pid: int, start_ticks: int) -> QemuProcess | None:
        """The held handle of that process, if any."""
        entry = self._procs.get((pid, start_ticks))
        return None if entry is None else entry.proc

    def users(self, proc: QemuProcess) -> int:
        """How many runs use ``proc``'s process (1 if it is not held)."""
        entry = self._procs.get((proc.pid, proc.start_ticks))
        return 1 if entry is None else entry.users

    def watch(self, proc: QemuProcess, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit()`` once, soon after the held process ``proc`` exits
        (at once if it has), unless :meth:`unwatch` comes first. It must not
        raise."""
        entry = self._procs[(proc.pid, proc.start_ticks)]
        entry.exits[on_exit] = None
        if entry.gone:
            self._nursery.start_soon(self._call_late, entry, on_exit)
        elif not entry.watching:
            entry.watching = True
            self._nursery.start_soon(self._watch, entry, name=f"exit watcher of pid {proc.pid}")

    def unwatch(self, proc: QemuProcess, on_exit: Callable[[], None]) -> None:
        entry = self._procs.get((proc.pid, proc.start_ticks))
        if entry is not None:
            entry.exits.pop(on_exit, None)

    async def _watch(self, entry: _Entry) -> None:
        try:
            await entry.proc.wait()
        finally:
            entry.watching = False
        if not entry.proc.exited() or self._procs.get(_key(entry.proc)) is not entry:
            return  # released, not exited: nobody to tell
        entry.gone = True
        while entry.exits:
            on_exit = next(iter(entry.exits))
            del entry.exits[on_exit]
            _call(on_exit)

    @staticmethod
    async def _call_late(entry: _Entry, on_exit: Callable[[], None]) -> None:
        if entry.exits.pop(on_exit, False) is None:
            _call(on_exit)

    def close(self) -> None:
        """Close every handle (supervision has ended; the processes run on)."""
        for entry in self._procs.values():
            entry.proc.close()
        self._procs.clear()


def _key(proc: QemuProcess) -> tuple[int, int]:
    return (proc.pid, proc.start_ticks)


def _call(on_exit: Callable[[], None]) -> None:
    try:
        on_exit()
    except Exception:
        logger.exception("an exit callback failed")
