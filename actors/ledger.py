"""The Ledger: the only actor that writes the database.

Ops are buffered and applied in one transaction (group commit) when the buffer is full or a
short commit interval after the first buffered op has passed, whichever comes first; a
``Flush`` ask commits at once. A burst of transitions thus costs one commit, and no fact
waits longer than the interval to become durable.

The durability contract: a state change is done when it is committed, and an op the Ledger
received is never dropped. The ops live in a :class:`LedgerWriter`, made by the runtime and
handed to every incarnation of the Ledger, so a replaced incarnation's ops are the new one's;
only the incarnation that last claimed the writer may commit (a replaced one that wakes up
cannot). When the database refuses a write for a cause that may pass (:class:`WriteStalled`:
locked by another process, disk full, I/O error) or the commit path raises anything else, the
ops stay and the commit is tried again with backoff. Each try waits at most a moment inside
SQLite, so the actor keeps answering heartbeats and reports its stall as progress (``busy`` in
``health``, never replaced for it). Meanwhile the Scheduler is told :class:`LedgerStalled`
(hold new dispatches) and, after the next commit, :class:`LedgerRecovered`; a warning goes to
the runtime every ``WARN_EVERY_S``; past the stall limit the runtime is told to stop (at once
for a read-only database, which does not pass by waiting). What is still unwritten when the
runtime stops is spilled to a file (:mod:`persistence.spill`) and committed by the next one.

Run leases (:mod:`domain.leases`) are written here too, the one writer: a runtime asks
:class:`AcquireLease` before it drives a run, the Ledger renews every lease it holds each
``ttl / 3`` and ends a run's lease when told :class:`ReleaseLease` (or when the runtime stops).
When a renewal or a commit finds a run taken over by another runtime (this one was stopped or
cut off for longer than the lease lasts), nothing more is written to that run and
``on_lease_lost`` tells the runtime to stop.
"""

from __future__ import annotations

import json
import threading
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from actors.base import SupervisedActor
from actors.directory import SCHEDULER, Directory, PeerUnavailable
from actors.timers import TimerService
from domain.leases import DEFAULT_TTL_S, LeaseOwner, refusal, renew_interval_s, takeover
from messages import Flush
from messages.health import LedgerRecovered, LedgerStalled
from messages.ledger import (
    AcquireLease,
    CommitDue,
    CreateRun,
    LeaseReply,
    LedgerOp,
    LedgerOps,
    ReleaseLease,
    RenewLeasesDue,
    ReplacePlan,
)
from persistence.clock import utc_now_iso
from persistence.errors import LeaseLost
from persistence.spill import (
    SpilledLeases,
    read_spill,
    read_spilled_leases,
    write_spill,
)
from persistence.store import Store, WriteStalled

log = structlog.get_logger("orchestrate.ledger")

MAX_BATCH = 2000
COMMIT_INTERVAL_S = 0.02
RETRY_MIN_S = 0.05
RETRY_MAX_S = 0.5
WARN_EVERY_S = 2.0
LEDGER_OPS = typing.get_args(LedgerOp)
T = typing.TypeVar("T")
# Causes a person must fix: waiting does not help, so the runtime stops at the first refusal.
STOP_AT_ONCE = frozenset({"read-only"})


@dataclass(slots=True)
class Stall:
    """A run of refused commits: since when (monotonic), why, and what was said about it."""

    since: float
    error: WriteStalled
    failures: int = 0
    warned_at: float = 0.0
    gave_up: bool = False


class CommitObserver(Protocol):
    """Told what the ledger committed (see :class:`monitoring.observer.LedgerObserver`); both
    calls are made on the Ledger's thread and must return at once."""

    def committed(self, ops: Sequence[object], seconds: float) -> None: ...

    def run_created(self, run_id: str, request: Mapping[str, Any], tasks: int) -> None: ...


class LedgerWriter:
    """The Ledger's unwritten ops and its stall, outliving any one incarnation of the actor.

    Thread-safe. ``on_warning(text)`` is called (from the Ledger's thread) once per
    ``WARN_EVERY_S`` of a stall; ``on_gave_up(error, stalled_s)`` once when a stall passes
    ``stall_limit_s`` (or at once for a read-only database). ``wait_settled`` lets a caller
    outside the actor system wait until everything received is committed or the writer gave up.
    """

    def __init__(
        self,
        store: Store,
        stall_limit_s: float,
        on_warning: Callable[[str], None],
        on_gave_up: Callable[[WriteStalled, float], None],
        clock: Callable[[], float] = time.monotonic,
        lease_owner: LeaseOwner | None = None,
        lease_ttl_s: float = DEFAULT_TTL_S,
        on_lease_lost: Callable[[str], None] = lambda run_id: None,
        observer: CommitObserver | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        # The runtime this writer takes leases for (None: a session that drives no run).
        self.lease_owner = lease_owner
        self.lease_ttl_s = lease_ttl_s
        self.on_lease_lost = on_lease_lost
        # Runs whose lease this runtime holds; outlives an incarnation, as the ops do.
        self.leases: set[str] = set()
        # Set by the runtime as it stops: the last incarnation then ends every lease it holds.
        self.release_on_stop = False
        # A spill being replayed: whose its ops are (their commit is fenced as that runtime's),
        # and the leases it could not end, ended once they are in.
        self._replay_owner: str | None = None
        self._spilled_leases: SpilledLeases | None = None
        self.stall_limit_s = stall_limit_s
        self.on_warning = on_warning
        self.on_gave_up = on_gave_up
        self.clock = clock
        self.stall: Stall | None = None
        self.commits = 0
        self.ops_written = 0
        self._ops: list[LedgerOp] = []
        self._owner = ""
        self._ops_lock = threading.Lock()
        # Held for a whole commit attempt: a replaced incarnation still inside one finishes it
        # before its successor starts, and never starts another (see ``commit``).
        self._commit_lock = threading.Lock()
        self._settled = threading.Condition(self._ops_lock)

    # -- ownership and ops ---------------------------------------------------------------------
    def claim(self, owner: str) -> None:
        """Make ``owner`` (an incarnation's URN) the only one allowed to commit from now on."""
        with self._commit_lock:
            self._owner = owner

    def append(self, op: LedgerOp) -> int:
        """Accept ``op``; returns how many ops are now unwritten."""
        return self.extend((op,))

    def extend(self, ops: Iterable[LedgerOp]) -> int:
        """Accept ``ops``, in order; returns how many ops are now unwritten."""
        with self._ops_lock:
            self._ops.extend(ops)
            return len(self._ops)

    def pending(self) -> int:
        with self._ops_lock:
            return len(self._ops)

    # -- committing ------------------------------------------------------------------------------
    def commit(self, owner: str) -> int:
        """Commit every op received so far, in one transaction; return how many were written.

        Nothing happens for an ``owner`` that is no longer the claimant. If the commit fails,
        every op stays and :class:`WriteStalled` is raised (any other error is converted to
        one, cause "error: ...", after logging it): the caller retries later.
        """
        with self._commit_lock:
            if owner != self._owner:
                return 0
            with self._ops_lock:
                batch = list(self._ops)
            if not batch and self._spilled_leases is None:
                return 0
            began = time.perf_counter()
            try:
                rejected = self.store.apply(batch, fence_owner=self._replay_owner) if batch else []
            except WriteStalled:
                raise
            except Exception as error:  # a crash in the commit path must not lose the batch either
                log.exception("ledger_commit_failed", ops=len(batch))
                raise WriteStalled(f"error: {type(error).__name__}: {error}", self.store.database, "") from error
            took = time.perf_counter() - began
            with self._settled:
                del self._ops[:len(batch)]
                self._replay_owner = None
                self._settled.notify_all()
            self._end_spilled_leases()
        if self.observer is not None:
            refused = {id(rejection.op) for rejection in rejected}
            self.observer.committed([op for op in batch if id(op) not in refused] if refused else batch, took)
        self.commits += 1
        self.ops_written += len(batch)
        lost: set[str] = set()
        for rejection in rejected:
            if isinstance(rejection.error, LeaseLost):
                lost.add(rejection.error.run_id)
            else:
                log.warning("ledger_rejected", op=type(rejection.op).__name__, reason=rejection.reason)
        for run_id in sorted(lost):
            self.lease_lost(run_id)
        return len(batch)

    def _end_spilled_leases(self) -> None:
        """End the leases a spilling runtime could not (after its ops are in); on failure the
        next commit tries again, and meanwhile they expire by themselves."""
        spilled = self._spilled_leases
        if spilled is None:
            return
        try:
            self.store.release_leases(spilled.owner_id, spilled.runs)
        except WriteStalled as error:
            log.warning("spilled_leases_not_ended", cause=error.cause)
            return
        self._spilled_leases = None

    # -- leases --------------------------------------------------------------------------------------
    def acquire(self, run_id: str) -> LeaseReply:
        """Take ``run_id``'s lease (see :meth:`persistence.store.Store.acquire_lease`)."""
        if self.lease_owner is None:
            raise RuntimeError("this ledger drives no runs: it has no lease owner")
        with self._commit_lock:
            taken, before = self.store.acquire_lease(run_id, self.lease_owner, self.lease_ttl_s)
            if taken:
                self.leases.add(run_id)
        now = datetime.now(UTC)
        if not taken:
            assert before is not None  # only a recorded, live lease refuses
            return LeaseReply(run_id, False, refusal(before, now))
        if before is not None and before.abandoned() and before.owner is not None \
                and before.owner.runtime_id != self.lease_owner.runtime_id:
            return LeaseReply(run_id, True, takeover(before, now))
        return LeaseReply(run_id, True)

    def renew(self) -> None:
        """Renew every lease held; a run found taken over is given up (``lease_lost``)."""
        if self.lease_owner is None or not self.leases:
            return
        with self._commit_lock:
            lost = self.store.renew_leases(self.lease_owner.runtime_id, set(self.leases), self.lease_ttl_s)
        for run_id in sorted(lost):
            self.lease_lost(run_id)

    def release(self, run_ids: Iterable[str]) -> None:
        """End the leases of ``run_ids`` (held ones only)."""
        held = set(run_ids) & self.leases
        if self.lease_owner is None or not held:
            return
        with self._commit_lock:
            self.store.release_leases(self.lease_owner.runtime_id, held)
            self.leases -= held

    def lease_lost(self, run_id: str) -> None:
        if run_id not in self.leases:
            # Replayed ops of a dead runtime, for a run taken over since: not ours to write.
            log.warning("ops_of_a_run_taken_over_dropped", run_id=run_id)
        else:
            with self._ops_lock:
                self.leases.discard(run_id)
            log.error("lease_lost", run_id=run_id)
            self.on_lease_lost(run_id)

    def refused(self, error: WriteStalled) -> Stall:
        """Record a refused commit; warn and give up when it is time. Returns the stall."""
        now = self.clock()
        first = self.stall is None
        if self.stall is None:
            self.stall = Stall(since=now, error=error, warned_at=now)
            log.warning("ledger_stalled", cause=error.cause, database=error.database, detail=error.detail)
        stall = self.stall
        stall.error, stall.failures = error, stall.failures + 1
        stalled_s = now - stall.since
        if first and error.cause not in STOP_AT_ONCE:
            return stall
        if now - stall.warned_at >= WARN_EVERY_S:
            stall.warned_at = now
            self.on_warning(f"ledger waiting for the database ({error.cause}) for {stalled_s:.1f}s; "
                            f"{self.pending()} records held, none lost")
        if not stall.gave_up and (stalled_s >= self.stall_limit_s or error.cause in STOP_AT_ONCE):
            stall.gave_up = True
            log.error("ledger_gave_up", cause=error.cause, stalled_s=round(stalled_s, 1), pending=self.pending())
            with self._settled:
                self._settled.notify_all()
            self.on_gave_up(error, stalled_s)
        return stall

    def recovered(self) -> float:
        """The stall ended (a commit went through); returns how long it lasted."""
        stall, self.stall = self.stall, None
        if stall is None:
            return 0.0
        stalled_s = self.clock() - stall.since
        log.warning("ledger_recovered", stalled_s=round(stalled_s, 2), failures=stall.failures)
        return stalled_s

    def wait_settled(self, timeout_s: float) -> bool:
        """Block until nothing is unwritten (True), or the writer gave up or ``timeout_s``
        passed (False)."""
        deadline = self.clock() + timeout_s
        with self._settled:
            while self._ops:
                remaining = deadline - self.clock()
                if remaining <= 0 or (self.stall is not None and self.stall.gave_up):
                    return False
                self._settled.wait(min(remaining, 0.5))
        return True

    # -- across runtimes ---------------------------------------------------------------------------
    def spill(self, path: Path) -> int:
        """Move every unwritten op to ``path`` (see :mod:`persistence.spill`), with the leases
        still held (their release failed too); returns how many ops. Raises OSError (the ops
        stay here) if they cannot be written there either."""
        with self._commit_lock, self._ops_lock:
            leases = SpilledLeases(self.lease_owner.runtime_id if self.lease_owner else "", tuple(sorted(self.leases)))
            if self._ops or leases.runs:
                write_spill(path, self._ops, leases)
            count = len(self._ops)
            self._ops.clear()
        return count

    def restore(self, path: Path) -> int:
        """Take the ops spilled at ``path`` as the first unwritten ones; returns how many (or 1
        when it holds only leases to end). The ops are committed as the runtime that spilled
        them, whose leases are then ended. The file stays until :meth:`forget_spill` (call it
        once they are committed)."""
        ops = read_spill(path)
        spilled = read_spilled_leases(path)
        with self._ops_lock:
            self._ops[:0] = ops
            if spilled.owner_id:
                self._replay_owner = spilled.owner_id if ops else None
                self._spilled_leases = spilled
        return len(ops) or len(spilled.runs)

    @staticmethod
    def forget_spill(path: Path) -> None:
        path.unlink(missing_ok=True)


class LedgerActor(SupervisedActor):
    def __init__(self, name: str, directory: Directory, writer: LedgerWriter, timers: TimerService) -> None:
        super().__init__(name, directory)
        self.writer = writer
        self.store = writer.store
        self.timers = timers
        self.commit_pending = False
        self.renewal_pending = False

    def on_start(self) -> None:
        self.writer.claim(self.actor_urn)
        if self.writer.pending():
            # Ops a predecessor (or a spill file) left: commit them before anything new.
            self._schedule_commit(COMMIT_INTERVAL_S)
        if self.writer.leases:
            self._schedule_renewal()

    def handle(self, message: object) -> object:
        if isinstance(message, AcquireLease):
            reply = self._patiently("taking a run's lease", lambda: self.writer.acquire(message.run_id))
            if reply.taken:
                self._schedule_renewal()
            return reply
        if isinstance(message, RenewLeasesDue):
            self.renewal_pending = False
            self._renew()
            return None
        if isinstance(message, ReleaseLease):
            self._commit()
            self._release((message.run_id,))
            return None
        if isinstance(message, Flush):
            self._commit()
            return {"commits": self.writer.commits, "ops": self.writer.ops_written, "pending": self.writer.pending()}
        if isinstance(message, CreateRun):
            self._commit()
            return self._create_run(message)
        if isinstance(message, ReplacePlan):
            self._commit()
            self.store.replace_plan(message.run_id, json.loads(message.request_json), message.plan, message.changed,
                                    message.rerun, at=utc_now_iso())
            return message.run_id
        if isinstance(message, CommitDue):
            self.commit_pending = False
            self._commit()
            return None
        ops = message.ops if isinstance(message, LedgerOps) else (message,)
        if not all(isinstance(op, LEDGER_OPS) for op in ops):
            # Applying it would fail every batch it sits in, forever.
            log.warning("ledger_ignored", message=type(message).__name__)
            return None
        pending = self.writer.extend(ops)
        if pending >= MAX_BATCH and self.writer.stall is None:
            self._commit()
        else:
            self._schedule_commit(COMMIT_INTERVAL_S)
        return None

    def on_stale(self, message: object) -> object:
        """A replaced Ledger hands ops still in its mailbox to its successor, not to the floor."""
        if not isinstance(message, (*LEDGER_OPS, LedgerOps)):
            return super().on_stale(message)
        try:
            self.directory.tell(self.name, message)
        except PeerUnavailable:
            self.writer.extend(message.ops if isinstance(message, LedgerOps) else (message,))  # type: ignore[arg-type]
        return None

    def _create_run(self, message: CreateRun) -> str:
        """Create the run, waiting out a locked or full database like any commit (with
        warnings, within the stall limit); raises :class:`WriteStalled` past it."""
        request, plan = json.loads(message.request_json), message.plan
        run_id = self._patiently("creating a run", lambda: self.store.create_run(
            request, plan, run_id=message.run_id, at=utc_now_iso()))
        if self.writer.observer is not None:
            self.writer.observer.run_created(run_id, request, len(plan.tasks))
        return run_id

    def _patiently(self, doing: str, write: Callable[[], T]) -> T:
        """``write()``, retried while the database refuses for a cause that may pass, as a
        commit is (with warnings, within the stall limit); raises :class:`WriteStalled` past it."""
        failures = 0
        while True:
            try:
                result = write()
            except WriteStalled as error:
                stall = self.writer.refused(error)
                self.report_progress(f"{doing}: waiting for the database ({error.cause})")
                if stall.gave_up:
                    raise
                failures += 1
                # A backoff between tries of the same write, not a wait for a signal: the
                # database says nothing when it frees up.
                threading.Event().wait(min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(failures, 10)))
                continue
            if self.writer.stall is not None:
                self.writer.recovered()
            return result

    def _renew(self) -> None:
        try:
            self.writer.renew()
        except WriteStalled as error:
            # The commits' stall handling says what is wrong; the next tick tries again, and
            # a lease that expires meanwhile is fenced off in the database (see Store.apply).
            log.warning("lease_renewal_failed", cause=error.cause)
        except Exception:
            log.exception("lease_renewal_failed")
        if self.writer.leases:
            self._schedule_renewal()

    def _release(self, run_ids: Iterable[str]) -> None:
        try:
            self.writer.release(run_ids)
        except Exception as error:  # it expires by itself within one time to live
            log.warning("lease_release_failed", error=str(error))

    def _schedule_renewal(self) -> None:
        if self.renewal_pending:
            return
        self.renewal_pending = True
        me = self.actor_ref
        self.timers.call_later(renew_interval_s(self.writer.lease_ttl_s), lambda: me.tell(RenewLeasesDue()))

    def _schedule_commit(self, delay_s: float) -> None:
        if self.commit_pending:
            return
        self.commit_pending = True
        me = self.actor_ref
        self.timers.call_later(delay_s, lambda: me.tell(CommitDue()))

    def _commit(self) -> None:
        try:
            written = self.writer.commit(self.actor_urn)
        except WriteStalled as error:
            self._refused(error)
            return
        if self.writer.stall is not None and written:
            stalled_s = self.writer.recovered()
            self.report_progress("")
            self._tell_scheduler(LedgerRecovered(stalled_s=round(stalled_s, 3), written=written))

    def _refused(self, error: WriteStalled) -> None:
        first = self.writer.stall is None
        stall = self.writer.refused(error)
        self.report_progress(f"waiting for the database ({error.cause}) for {time.monotonic() - stall.since:.1f}s")
        if first:
            self._tell_scheduler(LedgerStalled(cause=error.cause, database=error.database,
                                               pending=self.writer.pending()))
        self._schedule_commit(min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(stall.failures, 10)))

    def _tell_scheduler(self, message: object) -> None:
        try:
            self.directory.tell(SCHEDULER, message)
        except PeerUnavailable:
            log.warning("scheduler_unreachable", message=type(message).__name__)

    def on_stop(self) -> None:
        # One last try; what it cannot write stays with the writer (the runtime spills it).
        try:
            self.writer.commit(self.actor_urn)
        except WriteStalled:
            pass
        if self.writer.release_on_stop:
            self._release(set(self.writer.leases))
