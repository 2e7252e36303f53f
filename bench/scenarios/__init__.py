"""The scenarios, by name, in the order ``all`` runs them."""

from __future__ import annotations

from typing import Final

from .._context import Scenario
from . import destroy, qmp, restart, scale, stop, storm, throughput

__all__ = ["SCENARIOS"]

SCENARIOS: Final[dict[str, Scenario]] = {
    s.name: s
    for s in (
        storm.SCENARIO,
        destroy.SCENARIO,
        restart.SCENARIO,
        restart.STARTUP,
        stop.SCENARIO,
        throughput.SCENARIO,
        scale.SCENARIO,
        qmp.SCENARIO,
    )
}
