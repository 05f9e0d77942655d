"""Turning what the ledger knows about a run into the message that (re)starts it.

This is how a run survives its runtime: ``orchestrate execute --run``, ``run`` on an
unfinished run, and the control socket's ``retry`` of a finished run all start from here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from actors.incremental import definitions
from domain.cache import CacheHit
from domain.errors import ErrorClass
from domain.results import ResultRef
from domain.plan import Plan
from domain.states import TaskState, WorkstreamState
from messages import StartRun
from persistence.store import Store

_FAILED_ATTEMPT = frozenset({TaskState.FAILED.value, TaskState.TIMEOUT.value})


class RunNotFound(LookupError):
    """The ledger has no run with this id."""


def start_message(
    store: Store, run_id: str, state_dir: Path, reset: tuple[str, ...] | None = None, plan: Plan | None = None,
    cached: Mapping[str, CacheHit] | None = None,
) -> StartRun:
    """The StartRun that continues ``run_id`` from the ledger.

    Completed tasks stay completed. Attempts the ledger still shows IN_PROGRESS were
    interrupted by a dead runtime: they are reported so the scheduler records them as such and
    queues the task again without using its retry budget. ``reset`` is passed through.
    ``plan``, when the caller holds it (the run was made from it: same request hash), saves
    reading and decoding the run's snapshot — a big part of starting a very large run.
    ``cached``: tasks to complete with an earlier run's result (see :mod:`actors.incremental`);
    the results and cache keys completed tasks recorded are read back for the tasks after them.
    """
    run = store.get_run(run_id, metadata=plan is None)
    if run is None:
        raise RunNotFound(run_id)
    plan = plan or Plan.from_json(run["metadata"]["plan"])
    tasks = store.get_tasks(run_id)
    attempts = store.get_attempts(run_id)
    failures: Counter[str] = Counter()
    costs: Counter[str] = Counter()
    latest: dict[str, dict] = {}
    for attempt in attempts:
        latest[attempt["step_name"]] = attempt
        if attempt.get("cost_usd"):
            costs[attempt["step_name"]] += attempt["cost_usd"]
        if attempt["status"] in _FAILED_ATTEMPT and attempt.get("error_class") != ErrorClass.INTERRUPTED.value:
            failures[attempt["step_name"]] += 1
    states = {t["task_key"]: TaskState(t["state"]) for t in tasks}
    results, keys = {}, {}
    for key, attempt in latest.items():
        if attempt["status"] == TaskState.COMPLETED.value and states.get(key) is TaskState.COMPLETED:
            # The reader hands ``result_json`` decoded, as ``result``.
            if attempt.get("result_file"):
                results[key] = ResultRef(path=attempt["result_file"])
            elif attempt.get("result") is not None:
                results[key] = ResultRef(text=json.dumps(attempt["result"]))
            if attempt.get("cache_key"):
                keys[key] = attempt["cache_key"]
    interrupted = tuple(
        (key, attempt["attempt"])
        for key, attempt in sorted(latest.items())
        if attempt["status"] == TaskState.IN_PROGRESS.value
    )
    return StartRun(
        run_id=run_id,
        plan=plan,
        state_dir=str(state_dir),
        task_states=tuple(sorted(states.items())),
        attempts=tuple(sorted((t["task_key"], t["attempts"]) for t in tasks)),
        workstream_states=tuple(sorted((w["ws_id"], WorkstreamState(w["status"]))
                                       for w in store.get_workstreams(run_id))),
        failures=tuple(sorted(failures.items())),
        interrupted=interrupted,
        reset=reset,
        results=tuple(sorted(results.items())),
        keys=tuple(sorted(keys.items())),
        definitions=tuple(sorted(definitions(plan).items())),
        cached=tuple(sorted((cached or {}).items())),
        costs=tuple(sorted(costs.items())),
    )


def open_attempt_logs(store: Store, run_id: str) -> list[str]:
    """The output logs of attempts the ledger shows as still running (a dead runtime's)."""
    return [a["log_path"] for a in store.get_attempts(run_id)
            if a["status"] == TaskState.IN_PROGRESS.value and a.get("log_path")]


def recorded_processes(store: Store, run_id: str) -> list[tuple[int, float]]:
    """``(pid, create_time)`` of attempts the ledger shows as still running."""
    return [
        (a["pid"], a["pid_create_time"])
        for a in store.get_attempts(run_id)
        if a["status"] == TaskState.IN_PROGRESS.value and a.get("pid") and a.get("pid_create_time")
    ]
