"""Busy is not hung: the liveness decision as a pure function, and a Ledger whose database is
locked for longer than the hung threshold, which must show busy, never be replaced, and commit
every op once the lock is gone."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from actors.directory import LEDGER, SUPERVISOR
from actors.ledger import LedgerWriter
from actors.runtime import Runtime, RuntimeOptions
from domain.supervision import HeartbeatPolicy, Liveness, Vitals, liveness, process_stalled
from messages.control import HealthQuery
from messages.ledger import EventObserved
from persistence.clock import utc_now_iso
from persistence.db import make_engine, sqlite_url
from persistence.migrate import init_db
from persistence.store import Store, WriteStalled
from tests.conftest import wait_until

POLICY = HeartbeatPolicy(interval_s=0.5, hung_after=4)  # late after 1 s, hung after 2 s


# -- the pure decision ------------------------------------------------------------------------------
def test_a_silent_actor_between_calls_is_late_then_hung():
    assert liveness(Vitals(heartbeat_age_s=0.4), POLICY) is Liveness.OK
    assert liveness(Vitals(heartbeat_age_s=1.5), POLICY) is Liveness.LATE
    assert liveness(Vitals(heartbeat_age_s=2.0), POLICY) is Liveness.HUNG


def test_one_call_with_no_progress_for_the_threshold_is_stuck():
    assert liveness(Vitals(heartbeat_age_s=1.5, call_age_s=1.4), POLICY) is Liveness.LATE
    assert liveness(Vitals(heartbeat_age_s=2.1, call_age_s=2.0), POLICY) is Liveness.HUNG


def test_a_long_call_reporting_progress_is_busy_however_long_it_lasts():
    busy = Vitals(heartbeat_age_s=30.0, call_age_s=30.0, progress_age_s=0.3, activity="committing")
    assert liveness(busy, POLICY) is Liveness.BUSY
    went_quiet = Vitals(heartbeat_age_s=30.0, call_age_s=30.0, progress_age_s=2.5, activity="committing")
    assert liveness(went_quiet, POLICY) is Liveness.HUNG


def test_an_actor_working_through_a_backlog_is_busy():
    # The ping waits behind queued work; each message is a fresh, short call.
    assert liveness(Vitals(heartbeat_age_s=5.0, call_age_s=0.01), POLICY) is Liveness.BUSY


def test_declared_long_work_shows_busy_even_while_heartbeats_arrive():
    waiting = Vitals(heartbeat_age_s=0.1, progress_age_s=0.2, activity="waiting for the database")
    assert liveness(waiting, POLICY) is Liveness.BUSY
    assert liveness(Vitals(heartbeat_age_s=0.1, progress_age_s=0.2), POLICY) is Liveness.OK


def test_a_supervisor_tick_far_later_than_its_interval_means_the_process_stalled():
    assert not process_stalled(0.5, POLICY)
    assert not process_stalled(1.2, POLICY)
    assert process_stalled(1.5, POLICY)
    assert process_stalled(8.0, POLICY)


# -- the Ledger under a lock, for real ------------------------------------------------------------
@pytest.fixture
def runtime(tmp_path):
    url = sqlite_url(tmp_path / ".state" / "orchestration.db")
    init_db(url)
    store = Store(make_engine(url), tmp_path / ".state" / "transitions.jsonl")
    runtime = Runtime(store, RuntimeOptions(state_dir=tmp_path / ".state",
                                            heartbeat=HeartbeatPolicy(interval_s=0.2, hung_after=4)))
    runtime.start()
    yield runtime
    runtime.stop()
    store.close()


def hold_lock(db, taken: threading.Event, release: threading.Event) -> None:
    connection = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        taken.set()
        release.wait(30)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def test_a_ledger_waiting_on_a_locked_database_is_busy_not_replaced_and_commits_everything(runtime, tmp_path):
    warnings = []
    runtime.add_listener(lambda event: event.state == "WARNING" and warnings.append(event.detail))
    health = lambda: runtime.directory.get(SUPERVISOR).ask(HealthQuery(), timeout=10)["actors"][LEDGER]  # noqa: E731
    taken, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_lock, args=(tmp_path / ".state" / "orchestration.db", taken, release))
    holder.start()
    try:
        assert taken.wait(30)
        for i in range(500):
            runtime.directory.tell(LEDGER, EventObserved("STALL_PROBE", utc_now_iso(), payload_json=f'{{"i": {i}}}'))
        # Busy first perhaps only because its thread is working through the 500 ops; then busy
        # with the stall it reports.
        wait_until(lambda: (h := health())["status"] == "busy"
                   and "waiting for the database (locked by another process)" in h["activity"],
                   timeout=10, what="the ledger to show busy waiting for the database")
        # Past the hung threshold (0.8 s) and past a warning interval, still the same incarnation.
        wait_until(lambda: warnings, timeout=10, what="a stall warning")
        assert health()["status"] == "busy" and health()["restarts"] == 0
    finally:
        release.set()
        holder.join(30)
    runtime.flush()
    assert health()["restarts"] == 0
    wait_until(lambda: health()["status"] == "ok", timeout=10, what="the ledger to be ok again")
    count = sqlite3.connect(tmp_path / ".state" / "orchestration.db").execute(
        "select count(*) from events where event_type = 'STALL_PROBE'").fetchone()[0]
    assert count == 500
    assert warnings[0].startswith("ledger waiting for the database (locked by another process) for ")


# -- the writer: ownership and crashes ------------------------------------------------------------
class CrashingOnce(Store):
    """A real store whose first apply raises, as a bug in the commit path would."""

    crashed = False

    def apply(self, ops, fence_owner=None):
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("boom")
        return super().apply(ops, fence_owner)


def test_a_crash_in_the_commit_path_keeps_the_batch_and_a_replaced_owner_cannot_commit(tmp_path):
    url = sqlite_url(tmp_path / "orchestration.db")
    init_db(url)
    store = CrashingOnce(make_engine(url))
    writer = LedgerWriter(store, 60.0, on_warning=lambda text: None, on_gave_up=lambda error, s: None)
    writer.claim("first")
    for i in range(3):
        writer.append(EventObserved("PROBE", utc_now_iso(), payload_json=str(i)))
    with pytest.raises(WriteStalled, match="RuntimeError: boom"):
        writer.commit("first")
    assert writer.pending() == 3
    writer.claim("second")
    assert writer.commit("first") == 0 and writer.pending() == 3
    assert writer.commit("second") == 3 and writer.pending() == 0
    count = sqlite3.connect(tmp_path / "orchestration.db").execute(
        "select count(*) from events where event_type = 'PROBE'").fetchone()[0]
    assert count == 3
    store.close()
