"""Start-up failures of :func:`trioctl.open_daemon`, one class per cause.

Each is raised before anything runs (no nursery wraps it), its message is one
line naming the thing (address, state directory, file) and why, and
``trioctl daemon`` maps each class to its own exit status (``docs/cli.md``).
"""

from __future__ import annotations

import errno
import socket
from typing import ClassVar

import trio

__all__ = [
    "ListenAddressInUse",
    "ListenAddressUnusable",
    "StartupError",
    "StateDirInUse",
    "StateDirUnusable",
    "TokensFileUnusable",
    "check_listen_address",
]


class StartupError(Exception):
    """The daemon cannot start; ``str()`` is one line naming the cause."""

    #: ``trioctl daemon``'s exit status for this cause.
    exit_status: ClassVar[int] = 1


class ListenAddressInUse(StartupError):
    """Another program listens on the address."""

    exit_status = 3


class ListenAddressUnusable(StartupError):
    """The host does not resolve, is not an address of this machine, or the
    port needs privileges."""

    exit_status = 4


class StateDirInUse(StartupError):
    """Another daemon holds the state directory's lock."""

    exit_status = 5


class StateDirUnusable(StartupError):
    """The state directory cannot be created, locked or used."""

    exit_status = 6


class TokensFileUnusable(StartupError):
    """The tokens file is missing and cannot be created, unreadable,
    unparseable, owned by another user or writable by group or others."""

    exit_status = 7


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def check_listen_address(host: str, port: int) -> None:
    """Fail now, with one clear line, if ``host:port`` cannot be listened on.

    Resolves ``host`` and binds each address it gives (as the listener will,
    with ``SO_REUSEADDR``), then closes. The real listener binds again right
    after; this check only turns the usual mistakes into a clear message
    before any domain is loaded.

    Raises:
        ListenAddressUnusable: the host does not resolve, or is not an
            address of this machine, or binding is not permitted.
        ListenAddressInUse: something already listens there.
    """
    where = _shown(host, port)
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenAddressUnusable(
            f"listen address {where}: cannot resolve {host!r}: {exc.strerror}"
        ) from None
    for family, kind, proto, _canon, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            address = _shown(str(sockaddr[0]), port)
            detail = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                raise ListenAddressInUse(
                    f"listen address {address}: already in use "
                    f"(another daemon or program listens there; choose another with --listen)"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ListenAddressUnusable(
                    f"listen address {address}: not an address of this machine ({detail})"
                ) from None
            raise ListenAddressUnusable(f"listen address {address}: {detail}") from None
        finally:
            sock.close()
