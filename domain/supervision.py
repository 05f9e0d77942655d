"""Supervision as data: child specs, strategy and restart intensity (after Erlang/OTP).

The Supervisor actor interprets these; the decision "restart or give up" is made here, with
an injected clock, so it is tested without threads.
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
    LATE = "late"  # missed a heartbeat or two: slow, not yet hung
    HUNG = "hung"  # silent for ``hung_after`` intervals
    DEAD = "dead"  # died and was not (yet) replaced


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    interval_s: float = 0.5
    hung_after: int = 4  # K: intervals of silence before an actor is declared hung


def liveness(age_s: float, policy: HeartbeatPolicy) -> Liveness:
    """An actor's liveness from the age of its last heartbeat."""
    if age_s >= policy.hung_after * policy.interval_s:
        return Liveness.HUNG
    if age_s > 2 * policy.interval_s:
        return Liveness.LATE
    return Liveness.OK


def restart_delay(restarts: int, min_s: float, max_s: float, random_factor: float, unit_random: float) -> float:
    """Akka's backoff before restart number ``restarts`` (0-based):
    ``min(max, min * 2**restarts) * (1 + unit_random * random_factor)``."""
    return min(max_s, min_s * 2**restarts) * (1.0 + unit_random * random_factor)
