"""``trioctl daemon``: a thin wrapper over :func:`trioctl.open_daemon`.

SIGTERM and SIGINT stop it: it stops accepting clients, gives calls in flight
``server.shutdown_grace`` seconds (default 2), then cancels them. Calls stuck
on hung domains do not hold it up beyond that. QEMU processes keep running.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from .._config import ConfigError, DaemonConfig, load_config
from .._daemon import DaemonHandle, open_daemon
from .._launcher import resolve_qemu_user
from .._store import check_private_dir, write_atomic

logger = logging.getLogger("trioctl.daemon")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config: DaemonConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("trioctl")
    root.handlers[:] = [handler]
    root.setLevel(config.log.level_number)
    root.propagate = False


def build_config(
    config_file: Path | None,
    listen: str | None,
    state_dir: Path | None,
    backend: str | None,
    mode: str | None,
) -> DaemonConfig:
    """The configuration from the file plus command-line options.

    Raises:
        ConfigError: naming the file (or "command line"), the key and why.
    """
    overrides: dict[str, Any] = {}
    if listen is not None:
        overrides["server.listen"] = listen
    if state_dir is not None:
        overrides["driver.state_dir"] = str(state_dir)
    if backend is not None:
        overrides["driver.backend"] = backend
    if mode is not None:
        overrides["mode"] = mode
    return load_config(config_file, overrides=overrides)


async def run_daemon(config: DaemonConfig, *, ready_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT.

    A signal while serving stops gracefully (calls in flight get
    ``shutdown_grace``); a signal during start-up (loading thousands of
    domains, or a legacy serial reconnect blocked on a hung QEMU) abandons the
    start at once.
    """
    stop = trio.Event()
    serving = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals(run_scope: trio.CancelScope) -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if serving:
                        grace = config.server.shutdown_grace
                        logger.info("%s: stopping within %.1f s", name, grace)
                        stop.set()
                    else:
                        logger.info("%s during start-up: stopping now", name)
                        run_scope.cancel()
                    return

            with trio.CancelScope() as run_scope:
                nursery.start_soon(watch_signals, run_scope)
                async with open_daemon(config) as daemon:
                    serving = True
                    _announce(config, daemon, ready_file)
                    await stop.wait()
            nursery.cancel_scope.cancel()
    logger.info("stopped")


def _announce(config: DaemonConfig, daemon: DaemonHandle, ready_file: Path | None) -> None:
    print(f"trioctl daemon listening on {daemon.url} (admin: {daemon.admin_url})")
    if daemon.tokens_file is not None:
        print(f"tokens file: {daemon.tokens_file}")
    print(f"state directory: {config.driver.state_dir}", flush=True)
    logger.info("serving %d domains", len(daemon.driver.list_domains()))
    if ready_file is not None:
        # It holds the token: written like every state file, mode 0600, through
        # a random temporary name (O_EXCL|O_NOFOLLOW) renamed over the path, so
        # a file another user planted there, or a symlink, is replaced, never
        # written through.
        write_atomic(
            ready_file,
            json.dumps(
                {
                    "url": daemon.url,
                    "admin_url": daemon.admin_url,
                    "token": daemon.token,
                    "pid": os.getpid(),
                    "ready_at": time.time(),
                }
            ).encode(),
        )


def daemon_main(
    config_file: Path | None,
    listen: str | None,
    state_dir: Path | None,
    backend: str | None,
    mode: str | None,
    print_config: bool,
    ready_file: Path | None,
) -> int:
    try:
        config = build_config(config_file, listen, state_dir, backend, mode)
    except ConfigError as exc:
        print(f"trioctl daemon: {exc}", file=sys.stderr)
        return 2
    if print_config:
        print(config.to_toml(), end="")
        return 0
    setup_logging(config)
    # Nothing the daemon creates is for other users (files are 0600 anyway).
    os.umask(0o077)
    try:
        # Refused before anything starts, in one line (open_daemon checks again).
        check_private_dir(config.driver.state_dir, "state directory")
        check_private_dir(config.driver.run_dir, "run directory")
        resolve_qemu_user(config.driver.qemu_user)
    except (OSError, ValueError) as exc:
        print(f"trioctl daemon: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(functools.partial(run_daemon, config, ready_file=ready_file))
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"trioctl daemon: {exc}", file=sys.stderr)
        return 1
    return 0
