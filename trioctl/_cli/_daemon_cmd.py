"""``trioctl daemon``: a thin wrapper over :func:`trioctl.open_daemon`.

SIGTERM and SIGINT stop it within ``server.shutdown_grace`` seconds (default
2): it stops accepting clients, gives calls in flight the grace less a reserve
for closing the sessions and exiting, then cancels them. Calls stuck on hung
domains do not hold it up beyond that. QEMU processes keep running.
SIGHUP reads the tokens file again (a file that cannot be used keeps the old
tokens, with one log line saying why).

A start-up failure is one line on stderr, ``trioctl daemon: WHAT: WHY``, and
an exit status per cause (:data:`EXIT_STATUSES`, ``docs/cli.md``).
"""

from __future__ import annotations

import errno
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
from .._startup import (
    ListenAddressInUse,
    ListenAddressUnusable,
    StartupError,
    StateDirInUse,
    StateDirUnusable,
    TokensFileUnusable,
)
from .._store import check_private_dir, write_atomic
from .._tokens import TokensFileError
from .._util import exception_leaves, tune_gc

logger = logging.getLogger("trioctl.daemon")

#: Exit status of a failure not listed below (one line on stderr too).
EXIT_FAILED = 1
#: Exit status of a bad configuration file or option.
EXIT_CONFIG = 2
#: ``trioctl daemon``'s exit statuses, by cause (``docs/cli.md``).
EXIT_STATUSES: dict[str, int] = {
    "stopped (SIGTERM or SIGINT)": 0,
    "other failure": EXIT_FAILED,
    "bad configuration or usage": EXIT_CONFIG,
    "listen address in use": ListenAddressInUse.exit_status,
    "listen address unusable (unresolvable host, not local, not permitted)": (
        ListenAddressUnusable.exit_status
    ),
    "another daemon uses the state directory": StateDirInUse.exit_status,
    "state directory unusable": StateDirUnusable.exit_status,
    "tokens file unusable": TokensFileUnusable.exit_status,
}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Structured fields of operator lines (see trioctl._log.log): as keys,
        # never replacing the four above.
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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
    running: DaemonHandle | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals(run_scope: trio.CancelScope) -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        _reload_tokens(running)
                        continue
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
                    running = daemon
                    _announce(config, daemon, ready_file)
                    await stop.wait()
            nursery.cancel_scope.cancel()
    logger.info("stopped")


def _reload_tokens(daemon: DaemonHandle | None) -> None:
    if daemon is None:
        logger.warning("SIGHUP during start-up: ignored (the tokens file is being read)")
        return
    if daemon.tokens_file is None:
        logger.info("SIGHUP: auth is not required; no tokens file to read")
        return
    try:
        count = daemon.reload_tokens()
    except TokensFileError as exc:
        logger.error("SIGHUP: kept the tokens in use: %s", exc)
        return
    logger.info("SIGHUP: %d tokens read from %s", count, daemon.tokens_file)


def _announce(config: DaemonConfig, daemon: DaemonHandle, ready_file: Path | None) -> None:
    print(f"trioctl daemon listening on {daemon.url} (admin: {daemon.admin_url})")
    if daemon.tokens_file is not None:
        print(f"tokens file: {daemon.tokens_file}")
    print(f"state directory: {config.driver.state_dir}", flush=True)
    if logger.isEnabledFor(logging.INFO):
        # Not at the default level: listing 10,000 domains takes 60 ms.
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
        return EXIT_CONFIG
    if print_config:
        print(config.to_toml(), end="")
        return 0
    setup_logging(config)
    # Nothing the daemon creates is for other users (files are 0600 anyway).
    os.umask(0o077)
    try:
        resolve_qemu_user(config.driver.qemu_user)
    except ValueError as exc:
        print(f"trioctl daemon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for directory, what in (
        (config.driver.state_dir, "state directory"),
        (config.driver.runtime_dir, "run directory"),
    ):
        # Refused before anything starts, in one line (open_daemon checks again).
        try:
            check_private_dir(directory, what)
        except OSError as exc:
            text = str(exc) if exc.strerror is None else f"{what} {directory}: {exc.strerror}"
            print(f"trioctl daemon: {text}", file=sys.stderr)
            return StateDirUnusable.exit_status
    tune_gc()
    try:
        trio.run(functools.partial(run_daemon, config, ready_file=ready_file))
    except BaseException as exc:
        status = _report_failure(exc)
        if status is None:
            raise
        return status
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    return text or type(exc).__name__


def _report_failure(exc: BaseException) -> int | None:
    """Print one line for an expected failure and return the exit status;
    None for anything else (a bug: let its traceback show).

    Nurseries wrap what their tasks raise in exception groups: the leaves
    are what happened.
    """
    leaves = exception_leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, StartupError):
            print(f"trioctl daemon: {leaf}", file=sys.stderr)
            return leaf.exit_status
    for leaf in leaves:
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            # The listen address was taken between the check and the bind.
            print(f"trioctl daemon: listen address in use: {_one_line(leaf)}", file=sys.stderr)
            return ListenAddressInUse.exit_status
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return 130
    expected = (OSError, RuntimeError, ValueError, ConfigError)
    if leaves and all(isinstance(leaf, expected) for leaf in leaves):
        more = f" (and {len(leaves) - 1} more errors)" if len(leaves) > 1 else ""
        print(f"trioctl daemon: {_one_line(leaves[0])}{more}", file=sys.stderr)
        return EXIT_FAILED
    return None
