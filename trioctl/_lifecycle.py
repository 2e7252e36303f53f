"""A domain's lifecycle: reasons, event kinds and the one table of transitions.

As in h11's ``_state.py``, the allowed transitions are data, checked in one
place (:func:`transition`); ``docs/design.md`` draws its state table from
:data:`TRANSITIONS`. The states are :class:`~trioctl.DomainState` (an enum of
the models); the enums here are ``StrEnum``, their values the wire strings of
``DomainInfo.reason``, ``DomainEvent.kind`` and ``DomainEvent.detail``, so
the models keep typing those fields as ``str``.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

import attrs

from ._models import DomainState

__all__ = ["TRANSITIONS", "EventKind", "Lifecycle", "Reason", "Step", "Trigger", "transition"]

logger = logging.getLogger(__name__)


class Reason(enum.StrEnum):
    """Why a domain is in its state (``DomainInfo.reason``)."""

    DEFINED = "defined"
    BOOTED = "booted"
    USER = "user"
    UNPAUSED = "unpaused"
    DESTROYED = "destroyed"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"


class EventKind(enum.StrEnum):
    """``DomainEvent.kind``."""

    LIFECYCLE = "lifecycle"
    MONITOR = "monitor"
    QMP = "qmp"


class Lifecycle(enum.StrEnum):
    """``DomainEvent.detail`` of lifecycle events."""

    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    RESET = "reset"
    SHUTDOWN = "shutdown"
    DESTROYED = "destroyed"
    CRASHED = "crashed"


class Trigger(enum.Enum):
    """What moves a domain's state."""

    START = "start"
    """start: the monitor answered."""
    START_PAUSED = "start_paused"
    """start with ``paused``."""
    SUSPEND = "suspend"
    """suspend, or QEMU's STOP event."""
    RESUME = "resume"
    """resume, or QEMU's RESUME event."""
    SYNC_RUNNING = "sync_running"
    """After a reconnect, ``query-status`` says running."""
    SYNC_PAUSED = "sync_paused"
    """After a reconnect, ``query-status`` says paused."""
    ADOPT = "adopt"
    """At load, a runtime record's live process is adopted."""
    EXIT_DESTROYED = "exit_destroyed"
    """The process exited after destroy."""
    EXIT_SHUTDOWN = "exit_shutdown"
    """The process exited after QEMU's SHUTDOWN event."""
    CRASH = "crash"
    """The process exited otherwise, or was gone at load."""


@attrs.frozen
class Step:
    """One row of the table."""

    sources: frozenset[DomainState]
    """The states it may happen in."""
    target: DomainState
    reason: Reason
    event: Lifecycle | None
    """The lifecycle event it emits (None: it is silent)."""
    idempotent: bool = False
    """In its target state already, nothing happens (no event either)."""


_ALL: Final = frozenset(DomainState)
_UP: Final = frozenset({DomainState.RUNNING, DomainState.PAUSED})
_DOWN: Final = frozenset({DomainState.SHUTOFF, DomainState.CRASHED})
_S = DomainState

TRANSITIONS: Final[dict[Trigger, Step]] = {
    Trigger.START: Step(_DOWN, _S.RUNNING, Reason.BOOTED, Lifecycle.STARTED),
    Trigger.START_PAUSED: Step(_DOWN, _S.PAUSED, Reason.USER, Lifecycle.STARTED),
    Trigger.SUSPEND: Step(_UP, _S.PAUSED, Reason.USER, Lifecycle.SUSPENDED, idempotent=True),
    Trigger.RESUME: Step(_UP, _S.RUNNING, Reason.UNPAUSED, Lifecycle.RESUMED, idempotent=True),
    Trigger.SYNC_RUNNING: Step(_UP, _S.RUNNING, Reason.UNPAUSED, None, idempotent=True),
    Trigger.SYNC_PAUSED: Step(_UP, _S.PAUSED, Reason.USER, None, idempotent=True),
    Trigger.ADOPT: Step(_DOWN, _S.RUNNING, Reason.BOOTED, None),
    # A process may exit before its start finished (still shutoff or crashed).
    Trigger.EXIT_DESTROYED: Step(_ALL, _S.SHUTOFF, Reason.DESTROYED, Lifecycle.DESTROYED),
    Trigger.EXIT_SHUTDOWN: Step(_ALL, _S.SHUTOFF, Reason.SHUTDOWN, Lifecycle.SHUTDOWN),
    Trigger.CRASH: Step(_ALL, _S.CRASHED, Reason.CRASHED, Lifecycle.CRASHED),
}
"""Every state change of a domain. A domain is defined ``shutoff`` with
reason ``defined`` (or in the state and reason saved at its last exit)."""


def transition(name: str, state: DomainState, trigger: Trigger) -> Step | None:
    """The step ``trigger`` makes from ``state`` (None: nothing to do).

    A trigger outside its row's sources is a bug of the caller, logged; the
    step is still taken, so that the cached state follows the process.
    """
    step = TRANSITIONS[trigger]
    if step.idempotent and state is step.target:
        return None
    if state not in step.sources:
        logger.error(
            "domain %s: %s from %s is not in the lifecycle table", name, trigger.value, state.value
        )
    return step
