"""A circuit breaker per adapter (CLOSED -> OPEN -> HALF_OPEN -> CLOSED), after Akka's.

CLOSED counts consecutive tool failures (see :mod:`domain.outcomes`); at ``max_failures`` it
opens. OPEN refuses work until
``reset_timeout`` has passed, then HALF_OPEN admits exactly one probe: its success closes the
circuit (so does a task-level failure: the tool ran), an end that says nothing of the tool
(cancel, timeout, interrupt) admits the next probe, and its failure opens it again with the reset timeout multiplied by ``backoff_factor``
(capped at ``max_reset_timeout``). The clock is passed in, so every rule is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    max_failures: int = 5
    reset_timeout_s: float = 10.0
    backoff_factor: float = 2.0
    max_reset_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """What a call changed: the new state and, when it opened, when it may half-open."""

    adapter: str
    state: CircuitState
    reason: str
    retry_at: float | None = None


class CircuitBreaker:
    def __init__(self, adapter: str, policy: BreakerPolicy) -> None:
        self.adapter = adapter
        self.policy = policy
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_times = 0
        self.reset_timeout_s = policy.reset_timeout_s
        self.retry_at: float | None = None
        self.probe_in_flight = False

    def capacity(self) -> int | None:
        """How many more tasks may start now besides those running (None: no limit of the
        breaker's own, only the adapter's)."""
        if self.state is CircuitState.CLOSED:
            return None
        if self.state is CircuitState.OPEN:
            return 0
        return 0 if self.probe_in_flight else 1

    def due(self, now: float) -> BreakerChange | None:
        """OPEN -> HALF_OPEN once the reset timeout has passed."""
        if self.state is CircuitState.OPEN and self.retry_at is not None and now >= self.retry_at:
            self.state = CircuitState.HALF_OPEN
            self.probe_in_flight = False
            return BreakerChange(self.adapter, self.state, "reset timeout elapsed: admitting one probe")
        return None

    def started(self) -> None:
        if self.state is CircuitState.HALF_OPEN:
            self.probe_in_flight = True

    def released(self) -> BreakerChange | None:
        """An attempt ended saying nothing about the tool (cancelled, interrupted, timed out):
        a half-open circuit admits its next probe, so queued work never waits forever."""
        if self.state is CircuitState.HALF_OPEN:
            self.probe_in_flight = False
        return None

    def succeeded(self) -> BreakerChange | None:
        self.failures = 0
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.CLOSED
            self.probe_in_flight = False
            self.reset_timeout_s = self.policy.reset_timeout_s
            return BreakerChange(self.adapter, self.state, "probe succeeded")
        return None

    def failed(self, now: float, reason: str) -> BreakerChange | None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN:
            self.reset_timeout_s = min(
                self.policy.max_reset_timeout_s, self.reset_timeout_s * self.policy.backoff_factor
            )
            return self._open(now, f"probe failed: {reason}")
        if self.state is CircuitState.CLOSED and self.failures >= self.policy.max_failures:
            return self._open(now, f"{self.failures} consecutive failures, last: {reason}")
        return None

    def _open(self, now: float, reason: str) -> BreakerChange:
        self.state = CircuitState.OPEN
        self.probe_in_flight = False
        self.opened_times += 1
        self.retry_at = now + self.reset_timeout_s
        return BreakerChange(self.adapter, self.state, reason, self.retry_at)
