"""The ``trioctl`` command line: the daemon and the client commands."""

from __future__ import annotations

from ._imports import no_gc_while_importing

with no_gc_while_importing():
    from ._main import main

__all__ = ["main"]
