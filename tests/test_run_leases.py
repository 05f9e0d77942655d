"""Run leases: the rules (domain.leases) and the Store that applies them, on SQLite and on a real
PostgreSQL server. No two runtimes ever drive one run; a dead runtime's run is free once its
lease expires (at once for a runtime of the same state directory)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from domain.leases import Lease, LeaseOwner, refusal, renew_interval_s, takeover
from messages.ledger import EventObserved, TransitionRun
from persistence.db import make_engine
from persistence.errors import LeaseLost, UnknownEntity
from persistence.migrate import init_db
from persistence.store import Store, WriteStalled
from tests.test_persistence import PLAN, REQUEST, at

NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
ANA = LeaseOwner("rt-ana", "ana-laptop", 101, home="home-ana")
BEN = LeaseOwner("rt-ben", "ben-desk", 202, home="home-ben")


def lease(owner: LeaseOwner | None, expires_in_s: float, released: bool = False) -> Lease:
    return Lease("run-1", owner, NOW - timedelta(seconds=1), NOW + timedelta(seconds=expires_in_s), released)


# -- the rules ---------------------------------------------------------------------------------------
def test_a_live_lease_of_another_runtime_cannot_be_taken() -> None:
    assert lease(ANA, 10).is_live(NOW)
    assert not lease(ANA, 10).may_be_taken_by(BEN, NOW)


def test_a_lease_is_free_when_expired_released_or_never_taken() -> None:
    assert lease(ANA, -0.001).may_be_taken_by(BEN, NOW)
    assert lease(ANA, 0).may_be_taken_by(BEN, NOW), "expiry is exclusive"
    assert lease(ANA, 10, released=True).may_be_taken_by(BEN, NOW)
    assert lease(None, 10).may_be_taken_by(BEN, NOW)


def test_the_holder_keeps_its_lease_and_its_state_directory_may_take_it_at_once() -> None:
    assert lease(ANA, 10).may_be_taken_by(ANA, NOW)
    ana_restarted = LeaseOwner("rt-ana-2", "ana-laptop", 303, home="home-ana")
    assert lease(ANA, 10).may_be_taken_by(ana_restarted, NOW)
    homeless = LeaseOwner("rt-x", "ana-laptop", 404, home="")
    assert not lease(LeaseOwner("rt-y", "h", 1, home=""), 10).may_be_taken_by(homeless, NOW)


def test_only_a_lease_left_behind_counts_as_abandoned() -> None:
    assert lease(ANA, -5).abandoned()
    assert not lease(ANA, -5, released=True).abandoned()
    assert not lease(None, -5).abandoned()


def test_a_refusal_names_the_owner_when_it_was_heard_of_and_when_the_lease_ends() -> None:
    text = refusal(lease(ANA, 12.4), NOW)
    assert "run run-1 is being driven by runtime rt-ana (host ana-laptop, pid 101)" in text
    assert "renewed 1s ago" in text and "expires in 12s" in text and "\n" not in text
    assert "expired 3s ago" in takeover(lease(ANA, -3), NOW)
    assert "ran from this state directory" in takeover(lease(ANA, 5), NOW)
    assert renew_interval_s(30) == 10


# -- the Store -----------------------------------------------------------------------------------------
@pytest.fixture
def engine(tmp_path: Path, db_url: str | None) -> Iterator[Engine]:
    url = db_url or f"sqlite:///{tmp_path}/.state/orchestration.db"
    init_db(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[Store]:
    with Store(engine) as store:
        store.create_run(REQUEST, PLAN, run_id="run-1", at=at(0))
        yield store


def test_the_first_taker_holds_the_lease_and_the_next_is_refused_until_it_is_released(store: Store) -> None:
    assert store.acquire_lease("run-1", ANA, ttl_s=60) == (True, None)
    taken, before = store.acquire_lease("run-1", BEN, ttl_s=60)
    assert not taken and before is not None and before.owner == ANA
    assert store.acquire_lease("run-1", ANA, ttl_s=60)[0], "the holder takes it again"
    store.release_leases(ANA.runtime_id, ["run-1"])
    taken, before = store.acquire_lease("run-1", BEN, ttl_s=60)
    assert taken and before is not None and before.released and not before.abandoned()


def test_an_expired_lease_is_taken_over_and_its_old_owner_learns_it_has_lost_it(store: Store) -> None:
    store.acquire_lease("run-1", ANA, ttl_s=0.001)
    taken, before = store.acquire_lease("run-1", BEN, ttl_s=60)
    assert taken and before is not None and before.abandoned() and before.owner == ANA
    assert store.renew_leases(ANA.runtime_id, ["run-1"], ttl_s=60) == {"run-1"}
    assert store.renew_leases(BEN.runtime_id, ["run-1"], ttl_s=60) == set()


def test_a_lease_of_an_unknown_run_is_refused(store: Store) -> None:
    with pytest.raises(UnknownEntity):
        store.acquire_lease("run-nope", ANA, ttl_s=60)


def test_writes_to_a_run_taken_over_by_another_runtime_are_refused_and_the_rest_is_written(engine: Engine) -> None:
    with Store(engine, lease_owner=ANA) as ana, Store(engine, lease_owner=BEN) as ben:
        ana.create_run(REQUEST, PLAN, run_id="run-1", at=at(0))
        ana.create_run(REQUEST, PLAN, run_id="run-2", at=at(0))
        ana.acquire_lease("run-1", ANA, ttl_s=0.001)
        ana.acquire_lease("run-2", ANA, ttl_s=60)
        assert ben.acquire_lease("run-1", BEN, ttl_s=60)[0]

        rejected = ana.apply([TransitionRun("run-1", "running", at(1)), TransitionRun("run-2", "running", at(1)),
                              EventObserved("NOTE", at(1), "run-1")])
        assert [type(r.error) for r in rejected] == [LeaseLost]
        assert rejected[0].op.run_id == "run-1"
        assert ben.get_run("run-1")["status"] == "pending", "the old owner wrote nothing to it"
        assert ben.get_run("run-2")["status"] == "running"
        assert [e["event_type"] for e in ben.get_events("run-1", types=["NOTE"])] == ["NOTE"]

        assert ben.apply([TransitionRun("run-1", "running", at(2))]) == []
        assert ben.get_run("run-1")["status"] == "running"


def test_of_many_runtimes_taking_one_lease_at_the_same_instant_exactly_one_wins(engine: Engine, store: Store) -> None:
    """Each on its own connection, released together by a barrier, over several rounds."""
    takers = [LeaseOwner(f"rt-{i}", "host", i) for i in range(6)]
    stores = [Store(engine, lease_owner=taker) for taker in takers]
    try:
        for round_ in range(5):
            run_id = f"run-race-{round_}"
            store.create_run(REQUEST, PLAN, run_id=run_id, at=at(0))
            barrier = threading.Barrier(len(takers))
            won: list[str] = []
            refused_by: list[str] = []
            errors: list[BaseException] = []

            def take(taker: LeaseOwner, own: Store, run_id: str = run_id, barrier: threading.Barrier = barrier,
                     won: list[str] = won, refused_by: list[str] = refused_by,
                     errors: list[BaseException] = errors) -> None:
                try:
                    barrier.wait(timeout=60)
                    while True:
                        try:
                            taken, holder = own.acquire_lease(run_id, taker, ttl_s=60)
                            break
                        except WriteStalled:  # SQLite: another writer held the lock; the Ledger retries too
                            continue
                    if taken:
                        won.append(taker.runtime_id)
                    else:  # a refusal names who holds it
                        refused_by.append(holder.owner.runtime_id if holder and holder.owner else "nobody")
                except BaseException as error:  # noqa: BLE001 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=take, args=(t, s)) for t, s in zip(takers, stores, strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert errors == [] and len(won) == 1, (won, errors)
            assert refused_by == won * (len(takers) - 1)
    finally:
        for own in stores:
            own.close()
