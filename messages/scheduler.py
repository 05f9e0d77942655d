"""Messages the Scheduler sends itself through the timer service."""

from __future__ import annotations

from dataclasses import dataclass

from domain.run_events import BreakerDue, RetryDue
from messages.base import Message


@dataclass(frozen=True, slots=True)
class CoreTimerFired(Message):
    """A timer the run core asked for has fired; ``event`` goes back into the core.

    ``event``: a :class:`RetryDue` (a task's retry backoff elapsed) or a :class:`BreakerDue`
    (an open circuit's reset timeout elapsed)."""

    event: RetryDue | BreakerDue


@dataclass(frozen=True, slots=True)
class SchedulerTick(Message):
    """Once a second while runs are active: lets the core notice that nothing can move."""
