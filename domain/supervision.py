"""Supervision as data: child specs, strategy and restart intensity (after Erlang/OTP), and
the liveness decision: is a silent child slow, or dead or stuck?

The Supervisor actor interprets these; the decisions "restart or give up" and "busy or hung"
are made here, from ages the supervisor measured, so they are tested without threads.

Busy is not hung. A heartbeat only proves that an actor's mailbox is being served; a child
can miss heartbeats because it is working: inside one long call (a commit waiting for a
lock) or through a backlog of messages queued before the ping. What the supervisor knows
besides the heartbeat (see :class:`Vitals`): whether the child is inside a call and for how
long, and when it last reported progress. A child that keeps entering new calls, or reports
progress from inside a long one, is BUSY and left alone; one that sits in the same call with
no progress for the hung threshold is stuck, and one that is in no call yet answers nothing
is gone: both are HUNG and replaced. When the whole process stalled (the supervisor itself
ran late: GIL held by a long C call, SIGSTOP, an overloaded machine), nobody's silence during
the stall counts (:func:`process_stalled`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Restart(StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """``start`` starts the child and returns its ActorRef; called again on each restart.

    A ``significant`` child that dies for good (not restarted) takes the supervisor down with
    it, as OTP's ``significant`` children with ``auto_shutdown``.
    """

    name: str
    start: Callable[[], Any]
    restart: Restart = Restart.PERMANENT
    significant: bool = False


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    children: tuple[ChildSpec, ...]
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 5
    period_s: float = 10.0


class RestartIntensity:
    """At most ``max_restarts`` within any ``period_s``; the one after that means give up."""

    def __init__(self, max_restarts: int, period_s: float) -> None:
        self.max_restarts = max_restarts
        self.period_s = period_s
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False when it would exceed the intensity."""
        while self._times and now - self._times[0] > self.period_s:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


def should_restart(spec: ChildSpec, abnormal: bool) -> bool:
    if spec.restart is Restart.PERMANENT:
        return True
    if spec.restart is Restart.TRANSIENT:
        return abnormal
    return False


class Liveness(StrEnum):
    OK = "ok"
    BUSY = "busy"  # working (long call with progress, a backlog, or declared long work)
    LATE = "late"  # missed a heartbeat or two: slow, not yet hung
    HUNG = "hung"  # silent for ``hung_after`` intervals with no sign of progress
    DEAD = "dead"  # died and was not (yet) replaced


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    interval_s: float = 0.5
    hung_after: int = 4  # K: intervals of silence before an actor is declared hung
    # A supervisor tick this many intervals late means the whole process stalled.
    stall_after: float = 3.0

    @property
    def hung_s(self) -> float:
        return self.hung_after * self.interval_s


@dataclass(frozen=True, slots=True)
class Vitals:
    """What the supervisor knows of one child, as ages in seconds at the time of judging.

    ``heartbeat_age_s``: since its last heartbeat. ``call_age_s``: how long its current call
    has lasted (None: between calls). ``progress_age_s``: since it last reported progress
    (None: never). ``activity``: long work it declared and has not
    finished (e.g. "waiting for the database"), "" when none.
    """

    heartbeat_age_s: float
    call_age_s: float | None = None
    progress_age_s: float | None = None
    activity: str = ""


def liveness(vitals: Vitals, policy: HeartbeatPolicy) -> Liveness:
    """A child's liveness. Only HUNG warrants replacing it.

    BUSY when it reported progress within the hung threshold (whether or not it also answers
    heartbeats), or when its heartbeat is late but its current call started less than two
    intervals ago (it is moving through a backlog the ping waits behind). Otherwise by the
    heartbeat's age: OK up to two intervals, HUNG from ``hung_after`` intervals, LATE between.
    """
    progressing = vitals.progress_age_s is not None and vitals.progress_age_s < policy.hung_s
    if progressing and (vitals.activity or vitals.heartbeat_age_s > 2 * policy.interval_s):
        return Liveness.BUSY
    if vitals.heartbeat_age_s <= 2 * policy.interval_s:
        return Liveness.OK
    if vitals.call_age_s is not None and vitals.call_age_s < 2 * policy.interval_s:
        return Liveness.BUSY
    if vitals.heartbeat_age_s >= policy.hung_s:
        return Liveness.HUNG
    return Liveness.LATE


def process_stalled(tick_gap_s: float, policy: HeartbeatPolicy) -> bool:
    """True when the supervisor's tick came ``tick_gap_s`` after the previous one, so late
    that the whole process must have been stalled; then every child's silence is excused."""
    return tick_gap_s >= policy.stall_after * policy.interval_s


def restart_delay(restarts: int, min_s: float, max_s: float, random_factor: float, unit_random: float) -> float:
    """Akka's backoff before restart number ``restarts`` (0-based):
    ``min(max, min * 2**restarts) * (1 + unit_random * random_factor)``."""
    return min(max_s, min_s * 2**restarts) * (1.0 + unit_random * random_factor)
