"""Log lines for operators: structured fields, and rate-limited refusals.

Every line meant for operators goes through :func:`log`, which passes its
fields (``domain``, ``client``, ``procedure``, ``reason`` ...) in the record's
``fields`` attribute: the JSON log format (``log.format = "json"``) writes
them as keys beside ``message``; the human format shows the text only. The
lines, their levels and fields are listed in ``docs/configuration.md`` ("Log
lines"); a test holds each to that list.

Refusals at a limit (``max_clients``, a full job queue ...) can come by the
thousand: :class:`RefusalLog` says the first at once, then at most one line per
kind per interval with how many there were since its last line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["REFUSAL_INTERVAL", "RefusalLog", "log"]

REFUSAL_INTERVAL = 10.0
"""Seconds between two refusal lines of the same kind."""


def log(logger: logging.Logger, level: int, msg: str, *args: object, **fields: Any) -> None:
    """``logger.log(level, msg, *args)`` with ``fields`` as structured keys.

    ``exc_info=True`` among the fields adds the current exception, as with
    :meth:`logging.Logger.log`; None-valued fields are left out.
    """
    exc_info = bool(fields.pop("exc_info", False))
    if not logger.isEnabledFor(level):
        return
    clean = {k: v for k, v in fields.items() if v is not None}
    logger.log(level, msg, *args, exc_info=exc_info, extra={"fields": clean}, stacklevel=2)


class RefusalLog:
    """At most one warning per kind of refusal per ``interval`` seconds.

    Sans-I/O: the caller passes the time (``trio.current_time()``) and calls
    :meth:`flush` while :attr:`pending` (``on_pending`` says when that
    starts), so that refusals after the last line are counted in a line too.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = REFUSAL_INTERVAL,
        *,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._on_pending = on_pending
        """Called when a refusal is counted but not said yet: a flush is due."""
        self._last: dict[str, float] = {}
        self._pending: dict[str, tuple[int, str, dict[str, Any]]] = {}
        self.total: dict[str, int] = {}
        """Refusals per kind since the start (for tests and statistics)."""

    def refused(self, kind: str, what: str, now: float, **fields: Any) -> None:
        """Count one refusal of ``kind`` (a limit's name) described by ``what``;
        log at once if no line of that kind came within ``interval``."""
        self.total[kind] = self.total.get(kind, 0) + 1
        count = self._pending[kind][0] + 1 if kind in self._pending else 1
        self._pending[kind] = (count, what, fields)
        last = self._last.get(kind)
        if last is None or now - last >= self.interval:
            self._say(kind, now)
        elif self._on_pending is not None:
            self._on_pending()

    @property
    def pending(self) -> bool:
        """Refusals are counted that no line has said yet."""
        return bool(self._pending)

    def flush(self, now: float) -> None:
        """Log the refusals counted since each kind's last line, if that is
        ``interval`` old."""
        for kind in list(self._pending):
            if now - self._last.get(kind, -self.interval) >= self.interval:
                self._say(kind, now)

    def _say(self, kind: str, now: float) -> None:
        count, what, fields = self._pending.pop(kind)
        self._last[kind] = now
        log(
            self._logger,
            logging.WARNING,
            "limit %s: refused %d since the last such line (latest: %s)",
            kind,
            count,
            what,
            event="limit_refused",
            limit=kind,
            count=count,
            **fields,
        )
