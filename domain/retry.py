"""Retry decisions: whether a failed attempt is tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

from domain.errors import ErrorClass

NEVER_RETRIED = frozenset({ErrorClass.BAD_INPUT, ErrorClass.CANCELLED})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    base_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.1

    def should_retry(self, attempt: int, error_class: str) -> bool:
        """True when attempt number ``attempt`` (1-based) failed and another one is allowed."""
        return attempt < self.max_attempts and error_class not in NEVER_RETRIED

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """``min(max, base * factor**(attempt-1)) * (1 + U(0, jitter))`` before the next attempt."""
        raw = min(self.max_delay_s, self.base_delay_s * self.factor ** max(0, attempt - 1))
        return raw * (1.0 + (rng or random).uniform(0.0, self.jitter))
