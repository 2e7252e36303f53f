"""What a scenario gets to run with: the options, the modes, the process
registry and the progress printer; and what a scenario is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ._output import Progress
from ._procs import Mode, Registry
from ._report import Report

__all__ = ["Context", "Options", "Scenario"]

T = TypeVar("T")


@attrs.frozen
class Options:
    """The command line, with None where the scenario's default applies."""

    short: bool = False
    backend: str = "sim"
    duration: float | None = None
    idle: float | None = None
    n: int | None = None
    k: int | None = None
    clients: int | None = None
    rounds: int | None = None
    interval: float = 0.05
    give_up: float = 60.0
    hammer_call: str = "monitor"
    hammer_pause: float = 0.0
    out: Path = Path("bench/results")
    keep: bool = False
    quiet: bool = False
    against: Path | None = None
    """startup: another checkout whose daemon alternates with this one's."""


@attrs.define
class Context:
    options: Options
    modes: list[Mode]
    registry: Registry
    progress: Progress

    def pick(self, given: T | None, full: T, short: T) -> T:
        """``given`` if set, else the full-size or the ``--short`` default."""
        if given is not None:
            return given
        return short if self.options.short else full

    @property
    def emulator(self) -> str:
        return "qemu" if self.options.backend == "qemu" else "sim"


@attrs.frozen
class Scenario:
    name: str
    summary: str
    default_modes: tuple[str, ...]
    run: Callable[[Context], Awaitable[dict[str, Any]]]
    """Measure; return JSON-compatible results."""
    report: Callable[[dict[str, Any]], Report]
    """Tables, goals and figure panels from a result file's ``results``."""
