"""The lifecycle table: what docs/design.md draws is what the driver takes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from trioctl._lifecycle import TRANSITIONS, Lifecycle, Reason, Trigger, transition
from trioctl._models import DomainState

ROOT = Path(__file__).resolve().parent.parent


def _doc_rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "design.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \|(.*)\|$", text, re.MULTILINE)
    return {name: [cell.strip() for cell in rest.split("|")] for name, rest in rows}


def test_the_design_doc_draws_the_table() -> None:
    rows = _doc_rows()
    assert set(rows) == {t.value for t in Trigger}
    for trigger, step in TRANSITIONS.items():
        _when, sources, target, reason, event, repeat = rows[trigger.value]
        named = sources.split(", ")
        states = set(DomainState) if sources == "any" else {DomainState(s) for s in named}
        assert states == step.sources, trigger
        assert DomainState(target) is step.target, trigger
        assert Reason(reason) is step.reason, trigger
        assert (None if event == "-" else Lifecycle(event)) is step.event, trigger
        assert repeat == ("nothing" if step.idempotent else "again"), trigger


@pytest.mark.parametrize("trigger", list(Trigger))
@pytest.mark.parametrize("state", list(DomainState))
def test_every_state_and_trigger(
    trigger: Trigger, state: DomainState, caplog: pytest.LogCaptureFixture
) -> None:
    step = TRANSITIONS[trigger]
    with caplog.at_level(logging.ERROR, logger="trioctl._lifecycle"):
        got = transition("d", state, trigger)
    if step.idempotent and state is step.target:
        assert got is None
        assert not caplog.records
    else:
        assert got is step
        # Outside its sources: logged as a bug, taken anyway.
        assert bool(caplog.records) == (state not in step.sources)


def test_wire_strings() -> None:
    assert [r.value for r in Reason] == [
        "defined", "booted", "user", "unpaused", "destroyed", "shutdown", "crashed",
    ]  # fmt: skip
    assert isinstance(Reason.BOOTED, str) and f"{Lifecycle.STARTED}" == "started"
