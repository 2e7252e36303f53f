"""The cyclic GC kept off the modules a command imports (this module imports
nothing heavy itself: it runs before them)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["no_gc_while_importing"]


@contextmanager
def no_gc_while_importing() -> Iterator[None]:
    """The cyclic GC off while the block imports a command's modules; then
    everything alive is frozen (:func:`gc.freeze`) and the GC is as it was.

    For the program's entry only: the modules a command imports live as long
    as the process. Importing the daemon's allocates some 65,000 objects that
    all survive: at Python's default thresholds that was about 120
    collections re-scanning them, 30-90 ms of a start-up of about 250 ms of
    CPU, and the first collection after the imports another 16-20 ms
    (docs/benchmarks.md, restart). Frozen, no collection scans them again,
    the daemon's later full collections included. The few cycles made while
    importing stay (a frozen object is never collected).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
