"""Files the simulator makes: listening UNIX sockets, removed only if still ours."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

import trio

__all__ = ["listen_unix", "unlink_if_ours"]


def listen_unix(path: str, backlog: int) -> tuple[trio.socket.SocketType, int]:
    """A listening UNIX socket at ``path`` and the inode of its file.

    A stale socket file at ``path`` is replaced (as QEMU does); any other file
    is left alone, and bind then fails.

    Raises:
        OSError: cannot bind.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(path)
        sock.listen(backlog)
        inode = os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock), inode


def unlink_if_ours(path: str, inode: int | None) -> None:
    """Remove the file at ``path`` if it is still the one we made (its inode
    is ``inode``): another process may have put its own there since. Nothing
    happens for ``inode=None`` or when the file cannot be looked at."""
    if inode is None:
        return
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
