"""The cyclic GC off while a command's modules are imported (it imports
nothing heavy itself: it runs before them)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["no_gc_while_importing"]


@contextmanager
def no_gc_while_importing() -> Iterator[None]:
    """The cyclic GC off while the block runs, then as it was.

    Importing the daemon's modules allocates a few hundred thousand objects
    that nearly all survive: at Python's default thresholds that is about 120
    collections, each re-scanning what the previous ones kept, 30-90 ms of a
    start-up of about 250 ms of CPU (docs/benchmarks.md, restart). Nothing is
    lost: the few cycles made while importing go at the next collection.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
