"""The ``trioctl`` command line: the daemon and the client commands."""

from __future__ import annotations

from ._imports import no_gc_while_importing

__all__ = ["main"]


def main() -> None:
    """Run the ``trioctl`` command (the console script, ``python -m trioctl``)."""
    with no_gc_while_importing():
        from ._main import main as run
    run()
