"""The driver's table of emulator processes, shared by reference count.

The simulator's many-VMs mode serves thousands of domains from one process,
and one pidfd per domain would exhaust the open-file limit: the table keeps
one :class:`~trioctl._launcher.QemuProcess` per process, by ``(pid, start
ticks)``, with how many runs use it, and closes its pidfd when the last one
lets go.
"""

from __future__ import annotations

from ._launcher import QemuProcess

__all__ = ["ProcessTable"]


class ProcessTable:
    """Processes by ``(pid, start ticks)``, each with its number of users."""

    def __init__(self) -> None:
        self._procs: dict[tuple[int, int], tuple[QemuProcess, int]] = {}

    def hold(self, proc: QemuProcess) -> QemuProcess:
        """One more user of ``proc``'s process: the table's handle on it.

        If the process is held already, ``proc`` is closed and the first
        handle (its pidfd) is shared.
        """
        key = (proc.pid, proc.start_ticks)
        held, users = self._procs.get(key, (proc, 0))
        if held is not proc:
            proc.close()  # already watched: share the first pidfd
        self._procs[key] = (held, users + 1)
        return held

    def release(self, proc: QemuProcess) -> None:
        """One user fewer; the last closes the handle."""
        key = (proc.pid, proc.start_ticks)
        held, users = self._procs.get(key, (proc, 1))
        if users <= 1:
            self._procs.pop(key, None)
            held.close()
        else:
            self._procs[key] = (held, users - 1)

    def get(self, pid: int, start_ticks: int) -> QemuProcess | None:
        """The held handle of that process, if any."""
        entry = self._procs.get((pid, start_ticks))
        return None if entry is None else entry[0]

    def users(self, proc: QemuProcess) -> int:
        """How many runs use ``proc``'s process (1 if it is not held)."""
        return self._procs.get((proc.pid, proc.start_ticks), (proc, 1))[1]

    def close(self) -> None:
        """Close every handle (supervision has ended; the processes run on)."""
        for proc, _users in self._procs.values():
            proc.close()
        self._procs.clear()
