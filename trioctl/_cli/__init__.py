"""The ``trioctl`` command line: the daemon and the client commands."""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
