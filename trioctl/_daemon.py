"""The whole daemon as one async context manager, for embedding.

::

    async with trioctl.open_daemon(config) as daemon:
        print(daemon.url, daemon.token)
        async with trioctl.connect(daemon.url, daemon.token) as client:
            ...

``trioctl daemon`` is a thin wrapper over :func:`open_daemon`. The nursery
tree::

    open_daemon
    ├── driver nursery           one nursery per running domain inside
    ├── worker pools nursery     general + priority workers
    └── server nursery           listener + one nursery per client session

Leaving the block stops accepting clients, gives calls in flight
``server.shutdown_grace`` seconds less a reserve for closing the sessions
(:meth:`~trioctl._server.Server.drain`), then cancels everything. QEMU
processes keep running; the next daemon reconnects to them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from ._config import DaemonConfig
from ._dispatch import Dispatcher, DispatchMode
from ._driver import Driver, open_driver
from ._pools import WorkerPools, open_worker_pools
from ._server import Server, serve
from ._startup import (
    StateDirInUse,
    StateDirUnusable,
    TokensFileUnusable,
    check_listen_address,
)
from ._store import UnsafeDirectory, check_private_dir, write_atomic
from ._tokens import Tokens, TokensFileError

__all__ = ["DaemonHandle", "ensure_tokens_file", "open_daemon"]

logger = logging.getLogger(__name__)


@attrs.frozen
class DaemonHandle:
    """A running daemon."""

    url: str
    """The API endpoint, e.g. ``ws://127.0.0.1:16509/``."""
    admin_url: str
    token: str | None
    """An admin token (None when auth is not required)."""
    tokens_file: Path | None
    port: int
    driver: Driver
    pools: WorkerPools
    dispatcher: Dispatcher
    server: Server
    config: DaemonConfig

    def reload_tokens(self) -> int:
        """Read the tokens file again and use it for new connections (SIGHUP).

        Clients already connected keep their role. Returns how many tokens
        the file holds. Does nothing (returns 0) when auth is not required.

        Raises:
            TokensFileError: the file cannot be used; the old tokens stay.
        """
        if self.tokens_file is None:
            return 0
        tokens = Tokens.load(self.tokens_file, owner=os.geteuid())
        self.server.tokens = tokens
        return len(tokens.roles)


def ensure_tokens_file(path: Path) -> None:
    """Create ``path`` with one admin token, readable only by its owner, if absent.

    Raises:
        TokensFileUnusable: it is absent and cannot be created.
    """
    if os.path.lexists(path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"tokens": [{"token": secrets.token_urlsafe(32), "role": "admin", "name": "local"}]}
        write_atomic(path, json.dumps(body, indent=2).encode() + b"\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise TokensFileUnusable(
            f"tokens file {path}: absent and cannot be created: {exc.strerror or exc}"
        ) from None
    logger.info("created %s with an admin token", path)


def load_tokens_file(path: Path) -> Tokens:
    """The tokens file at ``path``, created if absent, checked like at start-up.

    Raises:
        TokensFileUnusable: see :func:`ensure_tokens_file` and
            :func:`trioctl._tokens.read_tokens_file` (with this user as owner).
    """
    ensure_tokens_file(path)
    try:
        return Tokens.load(path, owner=os.geteuid())
    except TokensFileError as exc:
        raise TokensFileUnusable(str(exc)) from None


def _lock_state_dir(state_dir: Path) -> int:
    try:
        check_private_dir(state_dir, "state directory")
        fd = os.open(
            state_dir / "daemon.lock",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
    except OSError as exc:
        # UnsafeDirectory (a PermissionError) already says what and why.
        if isinstance(exc, UnsafeDirectory):
            raise StateDirUnusable(str(exc)) from None
        raise StateDirUnusable(f"state directory {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUse(
            f"state directory {state_dir}: another trioctl daemon uses it "
            f"(give each daemon its own --state-dir)"
        ) from None
    return fd


@asynccontextmanager
async def open_daemon(config: DaemonConfig) -> AsyncIterator[DaemonHandle]:
    """Run the daemon (driver, pools, server) while the block lasts.

    The daemon writes every file with mode 0600 and creates directories with
    mode 0700 itself; it does not change the process's umask (that belongs to
    the embedding program: ``trioctl daemon`` sets 077, and embedders should
    too).

    Raises:
        StartupError: before anything runs, one of its subclasses
            (:mod:`trioctl._startup`): the state directory is unusable (a
            symlink, not owned by the daemon's user, writable by group or
            others) or another daemon holds it, the tokens file cannot be
            used, the listen address cannot be listened on.
    """
    driver_config = config.driver_config()
    lock_fd = _lock_state_dir(driver_config.state_dir)
    try:
        host, port = config.server.host, config.server.port
        await check_listen_address(host, port)
        tokens: Tokens | None = None
        token: str | None = None
        tokens_file: Path | None = None
        if config.auth.required:
            tokens_file = config.auth.tokens_file
            tokens = load_tokens_file(tokens_file)
            token = tokens.admin_token()
        mode = DispatchMode.LEGACY if config.mode == "legacy" else DispatchMode.DEFAULT
        # A parallel reconnect listens while the definitions and records load
        # (the client's connection and handshake overlap the load; calls wait
        # for it within their deadline). A serial one, as libvirt's, loads
        # first: nothing is served before every domain is reconnected.
        early = driver_config.reconnect == "parallel"
        async with (
            open_driver(driver_config, load=not early) as driver,
            open_worker_pools(config.pools) as pools,
        ):
            dispatcher = Dispatcher(pools, driver.jobs, mode=mode)
            async with serve(
                config.server,
                driver,
                dispatcher,
                tokens=tokens,
                host=host,
                port=port,
                ssl_context=config.tls.server_context(),
                backend=config.driver.backend,
            ) as server:
                if early:
                    # Supervisors start after the first answer (or a patience).
                    driver.serve_first = server.first_served
                    await driver.load()
                scheme = "wss" if config.tls.enabled else "ws"
                shown = f"[{host}]" if ":" in host else host
                url = f"{scheme}://{shown}:{server.port}/"
                handle = DaemonHandle(
                    url=url,
                    admin_url=url + "admin",
                    token=token,
                    tokens_file=tokens_file,
                    port=server.port,
                    driver=driver,
                    pools=pools,
                    dispatcher=dispatcher,
                    server=server,
                    config=config,
                )
                try:
                    yield handle
                finally:
                    with trio.CancelScope(shield=True):
                        await server.drain(config.server.shutdown_grace)
    finally:
        os.close(lock_fd)
