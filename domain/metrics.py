"""The run metrics, as one fold over the facts of the ledger.

:class:`MetricsTally` is fed facts one at a time — by a live runtime as the Ledger commits them
(:mod:`monitoring.observer`), or from a finished run's rows (:func:`tally_from_records`) — so
the numbers a scrape of a live runtime shows and the numbers ``orchestrate metrics`` computes
afterwards come from the same rules. Pure: no clock, no I/O, no threads (a caller sharing a
tally between threads holds its own lock).

What each family counts is documented in :data:`FAMILIES`, which the exposition also uses as
the metrics' help text.
"""

from __future__ import annotations

import bisect
import copy
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.cache import CACHE_ADAPTER
from domain.routing import INTEGRATOR

# Seconds. Tasks run from milliseconds (`true`) to an hour (an agent, a test suite).
TASK_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                         300.0, 600.0, 1800.0, 3600.0)
# Seconds. A group commit takes ~0.1-5 ms; a locked or full database stretches it.
DB_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# The states an attempt ends in, as the ``outcome`` label.
FINISHED_STATUSES = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"})
CIRCUIT_VALUES = {"CIRCUIT_CLOSED": 0, "CIRCUIT_HALF_OPEN": 1, "CIRCUIT_OPEN": 2}
# Recorded by the runtime when a live plan submission is refused (no run is made of it).
VALIDATION_FAILED = "VALIDATION_FAILED"
# The hook for coding agents' usage: an event of this type with payload {"adapter",
# "tokens_in", "tokens_out", "cost_usd"} (each optional but the adapter), recorded by whoever
# learns it from an agent's result, feeds agent_tokens_total and agent_cost_usd_total, live and
# from the ledger alike.
AGENT_USAGE = "AGENT_USAGE"

FAMILIES: Mapping[str, str] = {
    "requests_created_total": "Execution requests that created a run (RUN_CREATED).",
    "requests_validated_total": "Execution requests validated against schema/execution_request.v1.json.",
    "validation_errors_total": "Plans or requests refused as invalid by a live runtime (no run is made of them).",
    "tasks_executed_total": "Finished task attempts, by adapter (tool) and the state the attempt ended in (outcome); "
                            "results reused from the cache are not executions (see tasks_cached_total).",
    "tasks_cached_total": "Tasks completed by reusing an earlier attempt's result (incremental runs).",
    "task_success_rate": "Share of finished attempts that completed (NaN before the first one finishes).",
    "task_duration_seconds": "Wall time of finished task attempts.",
    "retry_attempts_total": "Attempts beyond a task's first: automatic retries, `retry` commands, reruns of "
                            "interrupted attempts.",
    "circuit_breaker_state": "Circuit of each adapter: 0 closed, 1 half-open, 2 open.",
    "acceptance_test_pass_rate": "Share of acceptance gate evaluations that passed (NaN before the first).",
    "db_write_duration_seconds": "Time of each ledger group commit (for a recorded run: the commits of the "
                                 "runtime that last ran it, as of its last heartbeat).",
    "task_queue_depth": "Tasks of active runs ready and queued, not yet started (live runtime only).",
    "tasks_running": "Tasks in progress, validating or awaiting approval (live runtime only).",
    "actor_restarts_total": "Actors restarted by the supervisor, by actor.",
    "agent_tokens_total": "Tokens coding agents reported, by adapter and direction (in, out), when they say.",
    "agent_cost_usd_total": "Cost coding agents reported, in US dollars, by adapter, when they say.",
}


@dataclass(slots=True)
class Histogram:
    """Observations counted into fixed upper bounds (the last bucket is +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; len(bounds) + 1
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` for every bucket, ``inf`` last."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def as_json(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}

    @classmethod
    def from_json(cls, document: Mapping[str, Any], bounds: tuple[float, ...]) -> Histogram:
        """The histogram saved by :meth:`as_json`; an empty one if it was saved with other bounds."""
        if tuple(document.get("bounds", ())) != bounds or len(document.get("counts", ())) != len(bounds) + 1:
            return cls(bounds)
        return cls(bounds, [int(c) for c in document["counts"]], float(document.get("sum", 0.0)))


AttemptId = tuple[str, str, int]  # run, task key, attempt


@dataclass(slots=True)
class MetricsTally:
    """Every counter of :data:`FAMILIES` except the live gauges (queue depth, running tasks),
    which a runtime reads from its own state when scraped."""

    cached: int = 0
    requests_created: int = 0
    requests_validated: int = 0
    validation_errors: int = 0
    executed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (tool, outcome)
    task_duration: Histogram = field(default_factory=lambda: Histogram(TASK_DURATION_BUCKETS))
    retries: int = 0
    circuits: dict[str, int] = field(default_factory=dict)
    gates_passed: int = 0
    gates_failed: int = 0
    db_writes: Histogram = field(default_factory=lambda: Histogram(DB_WRITE_BUCKETS))
    actor_restarts: Counter[str] = field(default_factory=Counter)
    agent_tokens: Counter[tuple[str, str]] = field(default_factory=Counter)  # (adapter, "in" | "out")
    agent_cost_usd: Counter[str] = field(default_factory=Counter)
    # Attempts started and not yet finished: their adapter, and whether their gate ran.
    _adapter_of: dict[AttemptId, str] = field(default_factory=dict)
    _validating: set[AttemptId] = field(default_factory=set)

    # -- facts -------------------------------------------------------------------------------------
    def adapter_known(self, adapter: str) -> None:
        """An adapter exists: its circuit shows (closed) before anything happens to it."""
        self.circuits.setdefault(adapter, 0)

    def attempt_started(self, attempt: AttemptId, adapter: str) -> None:
        self._adapter_of[attempt] = adapter or "unknown"
        if attempt[2] > 1:
            self.retries += 1

    def attempt_validating(self, attempt: AttemptId) -> None:
        """The attempt's tool succeeded and its acceptance gate is being evaluated."""
        self._validating.add(attempt)

    def attempt_finished(self, attempt: AttemptId, status: str, duration_s: float | None,
                         error_class: str | None, adapter: str | None = None, cached: bool = False) -> None:
        """An attempt ended in ``status``; ``adapter`` if known here, else the one it started on;
        ``cached``: it reused an earlier attempt's result (counted apart: nothing ran)."""
        tool = adapter or self._adapter_of.pop(attempt, "unknown")
        self._adapter_of.pop(attempt, None)
        if cached:
            self._validating.discard(attempt)
            self.cached += 1
            return
        self.executed[(tool, status.lower())] += 1
        if duration_s is not None:
            self.task_duration.observe(duration_s)
        gated = attempt in self._validating
        self._validating.discard(attempt)
        if error_class == "gate":
            self.gates_failed += 1
        elif gated and status == "COMPLETED":
            self.gates_passed += 1

    def event(self, event_type: str, payload: Mapping[str, Any]) -> None:
        """A line of the ledger's event log; types that do not count for metrics are ignored."""
        if event_type == "RUN_CREATED":
            self.requests_created += 1
        elif event_type == "EXECUTION_REQUEST_VALIDATED":
            self.requests_validated += 1
        elif event_type == VALIDATION_FAILED:
            self.validation_errors += 1
        elif event_type in CIRCUIT_VALUES and payload.get("adapter"):
            self.circuits[str(payload["adapter"])] = CIRCUIT_VALUES[event_type]
        elif event_type == "ACTOR_RESTARTED" and payload.get("actor"):
            self.actor_restarts[str(payload["actor"])] += 1
        elif event_type == AGENT_USAGE and payload.get("adapter"):
            self.agent_usage(str(payload["adapter"]), int(payload.get("tokens_in") or 0),
                             int(payload.get("tokens_out") or 0), float(payload.get("cost_usd") or 0.0))

    def commit_took(self, seconds: float) -> None:
        self.db_writes.observe(seconds)

    def agent_usage(self, adapter: str, tokens_in: int = 0, tokens_out: int = 0, cost_usd: float = 0.0) -> None:
        """What a coding agent says a turn cost (see :data:`AGENT_USAGE`)."""
        self.agent_tokens[(adapter, "in")] += tokens_in
        self.agent_tokens[(adapter, "out")] += tokens_out
        self.agent_cost_usd[adapter] += cost_usd

    def copy(self) -> MetricsTally:
        """A copy sharing nothing mutable with this tally."""
        return copy.deepcopy(self)

    # -- derived -----------------------------------------------------------------------------------
    @property
    def task_success_rate(self) -> float:
        finished = sum(self.executed.values())
        completed = sum(n for (_, outcome), n in self.executed.items() if outcome == "completed")
        return completed / finished if finished else float("nan")

    @property
    def acceptance_test_pass_rate(self) -> float:
        evaluated = self.gates_passed + self.gates_failed
        return self.gates_passed / evaluated if evaluated else float("nan")



def tally_from_records(tasks: Iterable[Mapping[str, Any]], attempts: Iterable[Mapping[str, Any]],
                       events: Iterable[Mapping[str, Any]], db_writes: Mapping[str, Any] | None = None) -> MetricsTally:
    """The tally of one recorded run, from its ``tasks``, ``step_attempts`` (in the order they
    started) and ``events`` rows as :class:`persistence.reader.StateReader` returns them;
    ``db_writes``: the commit-time histogram its runtime saved (:meth:`Histogram.as_json`).

    A gate counts as evaluated when a task with acceptance checks completed an attempt, or an
    attempt failed its gate (error class ``gate``) — what a live runtime sees as the attempt's
    VALIDATING phase."""
    tally = MetricsTally()
    gated: set[str] = set()
    for task in tasks:
        if task.get("adapter") and task["adapter"] not in (INTEGRATOR, CACHE_ADAPTER):  # no circuit of their own
            tally.adapter_known(task["adapter"])
        spec = task.get("spec")
        if isinstance(spec, Mapping) and spec.get("acceptance"):
            gated.add(task["task_key"])
    for row in attempts:
        attempt = (row["run_id"], row["step_name"], int(row["attempt"]))
        tally.attempt_started(attempt, row.get("adapter") or "")
        if row["status"] not in FINISHED_STATUSES:
            continue
        if row["status"] == "COMPLETED" and row["step_name"] in gated:
            tally.attempt_validating(attempt)
        tally.attempt_finished(attempt, row["status"], row.get("duration_s"), row.get("error_class"),
                               cached=bool(row.get("cached_from")))
    for event in events:
        payload = event.get("payload")
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except ValueError:
                payload = {}
        tally.event(event["event_type"], payload if isinstance(payload, Mapping) else {})
    if db_writes:
        tally.db_writes = Histogram.from_json(db_writes, DB_WRITE_BUCKETS)
    return tally
