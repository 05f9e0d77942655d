"""The SQL of run leases (rules: :mod:`domain.leases`), on a connection inside a transaction.

Taking a lease is one conditional ``UPDATE`` (after making sure the run's row exists), so of two
runtimes trying at the same instant exactly one sees its row updated: PostgreSQL locks the row
and re-checks the condition for the second; SQLite has one writer at a time. Renewing updates
only rows the renewer still owns, and the Store's commits check ownership first (see
:func:`held_by_others`), so a runtime that lost a lease while it was stopped (or the database
was away) can write nothing more to that run.

Timestamps are the ledger's ISO-8601 UTC text (fixed width, so text order is time order),
taken from the clock of the runtime that writes them: runtimes sharing a ledger need clocks in
step (NTP) to well within the lease's time to live.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Connection, or_, select, update

from domain.leases import Lease, LeaseOwner
from persistence.clock import parse_iso
from persistence.models import RunLease

_leases = RunLease.__table__
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso(moment: datetime) -> str:
    return moment.strftime(_FORMAT)


def read(connection: Connection, run_id: str) -> Lease | None:
    """The run's lease as recorded; None if it was never taken."""
    row = connection.execute(select(_leases).where(_leases.c.run_id == run_id)).mappings().first()
    return as_lease(row) if row is not None else None


def as_lease(row: object) -> Lease:
    """A ``run_leases`` row (a mapping) as a :class:`domain.leases.Lease`."""
    values = dict(row)  # type: ignore[call-overload]
    owner = None
    if values["owner_id"]:
        owner = LeaseOwner(values["owner_id"], values["owner_host"] or "", values["owner_pid"] or 0,
                           values["owner_home"] or "")
    return Lease(
        run_id=values["run_id"],
        owner=owner,
        heartbeat_at=parse_iso(values["heartbeat_at"]) if values["heartbeat_at"] else None,
        expires_at=parse_iso(values["expires_at"]) if values["expires_at"] else None,
        released=values["released_at"] is not None,
    )


def try_acquire(connection: Connection, run_id: str, owner: LeaseOwner, now: datetime,
                expires: datetime) -> bool:
    """Take (or keep) the run's lease for ``owner`` until ``expires`` when
    :meth:`domain.leases.Lease.may_be_taken_by` allows; True if taken. The run must exist."""
    _ensure_row(connection, run_id)
    now_text = iso(now)
    free = [_leases.c.owner_id.is_(None), _leases.c.owner_id == owner.runtime_id,
            _leases.c.released_at.is_not(None), _leases.c.expires_at.is_(None), _leases.c.expires_at <= now_text]
    if owner.home:
        free.append(_leases.c.owner_home == owner.home)
    taken = connection.execute(
        update(_leases)
        .where(_leases.c.run_id == run_id, or_(*free))
        .values(owner_id=owner.runtime_id, owner_host=owner.host, owner_pid=owner.pid, owner_home=owner.home,
                acquired_at=now_text, heartbeat_at=now_text, expires_at=iso(expires), released_at=None)
    )
    return taken.rowcount == 1


def renew(connection: Connection, owner_id: str, run_ids: Collection[str], now: datetime,
          expires: datetime) -> set[str]:
    """Extend ``owner_id``'s leases of ``run_ids``; returns those it no longer owns."""
    if not run_ids:
        return set()
    connection.execute(
        update(_leases)
        .where(_leases.c.run_id.in_(list(run_ids)), _leases.c.owner_id == owner_id,
               _leases.c.released_at.is_(None))
        .values(heartbeat_at=iso(now), expires_at=iso(expires))
    )
    return held_by_others(connection, owner_id, run_ids)


def release(connection: Connection, owner_id: str, run_ids: Collection[str], now: datetime) -> None:
    """End ``owner_id``'s leases of ``run_ids`` now. The owner stays recorded, so a runtime that
    takes the run over later is told whose it was, and late writes of this one still pass."""
    if run_ids:
        connection.execute(
            update(_leases)
            .where(_leases.c.run_id.in_(list(run_ids)), _leases.c.owner_id == owner_id)
            .values(released_at=iso(now))
        )


def held_by_others(connection: Connection, owner_id: str, run_ids: Collection[str]) -> set[str]:
    """Which of ``run_ids`` another runtime has taken over; their rows stay locked until the
    transaction ends (PostgreSQL), so no takeover can slip in before this transaction commits."""
    if not run_ids:
        return set()
    rows = connection.execute(
        select(_leases.c.run_id, _leases.c.owner_id)
        .where(_leases.c.run_id.in_(list(run_ids)))
        .with_for_update()
    )
    return {run_id for run_id, owner in rows if owner is not None and owner != owner_id}


def _ensure_row(connection: Connection, run_id: str) -> None:
    # Imported here: the dialect's package costs start-up time every other command would pay.
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    connection.execute(insert(_leases).values(run_id=run_id).on_conflict_do_nothing())
