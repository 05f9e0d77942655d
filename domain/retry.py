"""Retry decisions: whether a failed attempt is tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

from domain.errors import ErrorClass
from domain.plan import TaskSpec

NEVER_RETRIED = frozenset({ErrorClass.BAD_INPUT, ErrorClass.CANCELLED, ErrorClass.REJECTED, ErrorClass.MERGE})
RETRYABLE_BY_DEFAULT = frozenset(ErrorClass) - NEVER_RETRIED - {ErrorClass.INTERRUPTED}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    base_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.1
    retry_on: frozenset[str] = RETRYABLE_BY_DEFAULT

    def should_retry(self, failures: int, error_class: str) -> bool:
        """True when a task that has failed ``failures`` times (this one included) may have
        another attempt.

        Bad input, cancellation, rejection and merge failures are never retried, whatever
        ``retry_on`` says: trying again cannot change them.
        """
        return (
            failures < self.max_attempts
            and error_class in self.retry_on
            and error_class not in NEVER_RETRIED
        )

    @classmethod
    def for_task(cls, task: TaskSpec) -> RetryPolicy:
        return cls(
            max_attempts=max(task.max_attempts, 1),
            base_delay_s=task.backoff_s,
            max_delay_s=task.max_backoff_s,
            jitter=task.retry_jitter,
            retry_on=frozenset(task.retry_on) or RETRYABLE_BY_DEFAULT,
        )

    def delay_s(self, failures: int, rng: random.Random | None = None) -> float:
        """``min(max, base * factor**(failures-1)) * (1 + U(0, jitter))`` before the next attempt."""
        raw = min(self.max_delay_s, self.base_delay_s * self.factor ** max(0, failures - 1))
        return raw * (1.0 + (rng or random).uniform(0.0, self.jitter))
