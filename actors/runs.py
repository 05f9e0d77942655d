"""Creating or finding the run of a plan: the one path every command takes.

The Ledger actor is the only writer, so a new run is always its ``CreateRun`` ask; an existing
run of the same request (same plan, same options: the request hash) is found in the ledger and
reused when the caller allows its status. ``orchestrate run``, ``request`` and the control
socket's ``submit`` all come here.

``run PLAN`` and ``submit PLAN`` then ask :func:`reused_results` which tasks of the run about to
start complete with an earlier run's result (incremental runs): one answer for both doors.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import pykka

from actors.incremental import plan_reuse
from domain.cache import CacheHit
from domain.forcing import forcing_needs_new_run
from domain.plan import Plan
from domain.states import RunState, TaskState
from messages.ledger import CreateRun
from persistence.store import Store
from planning.request import build_request, validate_request_json

# `run PLAN` and `submit PLAN` continue the latest run of the same request (same plan, same
# options) unless it completed (or was abandoned): what did not complete runs again, nothing
# else. `--new` (or a completed run) makes a fresh run.
RESUMABLE = frozenset(state.value for state in RunState) - {RunState.COMPLETED.value, RunState.ABANDONED.value}
# Long enough to outlast a database stall: the Ledger waits one out up to its own limit.
CREATE_RUN_TIMEOUT_S = 300.0


def create_or_find_run(
    ledger: pykka.ActorRef,
    store: Store,
    plan: Plan,
    concurrency: int,
    reuse: Collection[str] = frozenset(),
    run_id: str | None = None,
) -> tuple[str, bool]:
    """``(run id, created)``: the latest run of the same request if its status is in ``reuse``
    (empty: always a new one), else a new run created by ``ledger``.

    Raises :class:`planning.request.RequestInvalid` for a request outside its schema,
    :class:`persistence.store.DuplicateRun` for a ``run_id`` taken, and
    :class:`persistence.store.WriteStalled` when the database refused past the stall limit.
    """
    request = build_request(plan, concurrency=concurrency)
    request_json = request.to_json()
    validate_request_json(request_json)
    if reuse and run_id is None:
        existing = store.find_run_by_request_hash(request.request_hash)
        run = store.get_run(existing) if existing is not None else None
        if run is not None and run["status"] in reuse:
            return run["run_id"], False
    created = ledger.ask(CreateRun(json.dumps(request_json), plan, run_id), timeout=CREATE_RUN_TIMEOUT_S)
    return created, True


def continued_statuses(store: Store, plan: Plan, concurrency: int, new: bool, force: Collection[str] = (),
                       force_all: bool = False) -> frozenset[str]:
    """The statuses of the latest run of ``plan`` that ``run``/``submit`` continue (the
    ``reuse`` of :func:`create_or_find_run`): none for ``--new``, nor when ``--force`` names a task
    that run completed (see :func:`domain.forcing.forcing_needs_new_run`); else every unfinished
    one."""
    if new:
        return frozenset()
    if not force_all and not force:
        return RESUMABLE
    existing = store.find_run_by_request_hash(build_request(plan, concurrency=concurrency).request_hash)
    run = store.get_run(existing, metadata=False) if existing is not None else None
    if run is not None and run["status"] in RESUMABLE and forcing_needs_new_run(
            force_all, force, completed_tasks(store, run["run_id"])):
        return frozenset()
    return RESUMABLE


def completed_tasks(store: Store, run_id: str) -> list[str]:
    """The tasks of ``run_id`` the ledger has COMPLETED."""
    return [task["task_key"] for task in store.get_tasks(run_id, states=(TaskState.COMPLETED.value,))]


def reused_results(store: Store, plan: Plan, run_id: str, created: bool, force: Collection[str] = (),
                   force_all: bool = False) -> dict[str, CacheHit]:
    """The tasks of ``run_id`` (``created`` now, or an earlier run of ``plan`` being continued)
    that complete with an earlier run's result instead of running, each with that result (see
    :func:`actors.incremental.plan_reuse`). Tasks the continued run completed are kept, not
    reused; ``force`` / ``force_all``: tasks that run whatever the cache holds."""
    done = () if created else completed_tasks(store, run_id)
    decisions = plan_reuse(store, plan, force, force_all, done)
    return {d.task_key: d.hit for d in decisions if not d.run and d.hit is not None}
