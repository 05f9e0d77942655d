"""Creating or finding the run of a plan: the one path every command takes.

The Ledger actor is the only writer, so a new run is always its ``CreateRun`` ask; an existing
run of the same request (same plan, same options: the request hash) is found in the ledger and
reused when the caller allows its status. ``orchestrate run``, ``request`` and the control
socket's ``submit`` all come here.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import pykka

from domain.plan import Plan
from messages.ledger import CreateRun
from persistence.store import Store
from planning.request import build_request, validate_request_json

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
