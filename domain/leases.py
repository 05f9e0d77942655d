"""Run ownership: a lease per run, so that no two runtimes ever drive one run.

A runtime drives a run only while it holds the run's lease: an owner (the runtime's id, host,
pid and state directory), renewed by a heartbeat, and an expiry ``ttl`` after the last renewal.
Another runtime may take the lease over only once it has expired — a runtime killed with
``kill -9`` stops renewing, so its runs become free after at most one ``ttl`` — with one
exception: a runtime on the same state directory takes it at once, because holding that
directory's lock proves the previous holder is gone. The taking itself is one
conditional update in the database (see :mod:`persistence.leases`); this module holds the
rules that update applies and the words a refusal is said in. Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

DEFAULT_TTL_S = 30.0
# Renewals per lease period: a runtime misses two heartbeats before anyone may take over.
RENEWALS_PER_TTL = 3


class RunLeaseHeld(RuntimeError):
    """Another live runtime drives the run (it holds the run's lease); the message says who
    (see :func:`refusal`)."""


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """Who holds a lease: one runtime process. ``runtime_id`` is unique per runtime start;
    ``home`` identifies the state directory it runs from (unique per directory, "" unknown)."""

    runtime_id: str
    host: str
    pid: int
    home: str = ""

    def describe(self) -> str:
        return f"runtime {self.runtime_id} (host {self.host}, pid {self.pid})"


@dataclass(frozen=True, slots=True)
class Lease:
    """A run's lease as recorded; times are aware UTC datetimes. ``owner`` is None for a run
    nobody has driven yet; ``released`` when its owner ended it (the run finished there, or
    the runtime stopped)."""

    run_id: str
    owner: LeaseOwner | None
    heartbeat_at: datetime | None
    expires_at: datetime | None
    released: bool = False

    def is_live(self, now: datetime) -> bool:
        """Held: someone owns it, has not released it, and it has not expired."""
        return self.owner is not None and not self.released and self.expires_at is not None and now < self.expires_at

    def abandoned(self) -> bool:
        """Its owner stopped renewing without releasing it: killed, or cut off for too long."""
        return self.owner is not None and not self.released

    def may_be_taken_by(self, taker: LeaseOwner, now: datetime) -> bool:
        """The rule the database's conditional update applies: free, expired, already the
        taker's, or held by a runtime of the taker's own state directory (which the taker's
        lock on that directory proves dead)."""
        if not self.is_live(now) or self.owner is None:
            return True
        return self.owner.runtime_id == taker.runtime_id or (bool(taker.home) and self.owner.home == taker.home)


def expiry(now: datetime, ttl_s: float) -> datetime:
    return now + timedelta(seconds=ttl_s)


def renew_interval_s(ttl_s: float) -> float:
    """How often a holder renews its leases."""
    return ttl_s / RENEWALS_PER_TTL


def refusal(lease: Lease, now: datetime) -> str:
    """One line: the run is driven by someone else, by whom, and what the user can do."""
    assert lease.owner is not None and lease.expires_at is not None
    heard = f"{(now - lease.heartbeat_at).total_seconds():.0f}s ago" if lease.heartbeat_at else "never"
    left = max(0.0, (lease.expires_at - now).total_seconds())
    return (f"run {lease.run_id} is being driven by {lease.owner.describe()}; its lease was renewed {heard} "
            f"and expires in {left:.0f}s. Watch it with `orchestrate runs show {lease.run_id}`; if that runtime "
            "is dead, `execute --run` takes the run over once the lease has expired")


def takeover(lease: Lease, now: datetime) -> str:
    """One line: this runtime takes over a run whose previous owner stopped renewing."""
    assert lease.owner is not None and lease.expires_at is not None
    if lease.is_live(now):
        return (f"taking over run {lease.run_id} from {lease.owner.describe()}, which ran from this state "
                "directory and is gone")
    ago = max(0.0, (now - lease.expires_at).total_seconds())
    return f"taking over run {lease.run_id} from {lease.owner.describe()}, whose lease expired {ago:.0f}s ago"
