"""Heartbeat-based health: a hung actor is detected, reported and replaced, and the runtime
keeps answering meanwhile."""

from __future__ import annotations

import pytest

from actors.runtime import Runtime, RuntimeOptions
from control.client import ControlClient
from domain.supervision import HeartbeatPolicy
from messages.control import Hang, Spin
from persistence.db import make_engine, sqlite_url
from persistence.migrate import init_db
from persistence.store import Store
from tests.conftest import wait_until


@pytest.fixture
def runtime(tmp_path):
    url = sqlite_url(tmp_path / ".state" / "orchestration.db")
    init_db(url)
    store = Store(make_engine(url), tmp_path / ".state" / "transitions.jsonl")
    options = RuntimeOptions(
        state_dir=tmp_path / ".state",
        heartbeat=HeartbeatPolicy(interval_s=0.2, hung_after=4),
        control_socket=tmp_path / ".state" / "orchestrate.sock",
    )
    runtime = Runtime(store, options)
    runtime.start()
    yield runtime
    runtime.stop()
    store.close()


def test_health_reports_every_actor_with_its_heartbeat_age(runtime):
    with ControlClient(runtime.options.control_socket) as control:
        health = wait_until(lambda: (h := control.request("health"))["healthy"] and h, what="a healthy report")
    assert set(health["actors"]) == {"ledger", "router", "workspace", "scheduler", "executor:shell", "executor:python",
                                     "executor:human"}
    for actor in health["actors"].values():
        assert actor["status"] == "ok" and 0 <= actor["heartbeat_age_s"] < 1 and actor["restarts"] == 0
    assert health["database"]["reachable"] and health["schemas"]["loaded"]
    assert health["circuits"] == {"shell": "closed", "python": "closed", "human": "closed"}


def test_a_hung_actor_shows_unhealthy_is_replaced_and_the_runtime_stays_responsive(runtime):
    warnings = []
    runtime.add_listener(lambda event: event.state == "HUNG" and warnings.append(event.task_key))
    runtime.directory.get("router").tell(Hang(seconds=5))
    with ControlClient(runtime.options.control_socket) as control:
        def router_unhealthy():
            health = control.request("health")
            return not health["healthy"] and health["actors"]["router"]["status"] in ("late", "hung", "dead") and health
        seen = wait_until(router_unhealthy, timeout=10, what="the router to show unhealthy")
        assert control.request("ping")["pong"] is True
        replaced = wait_until(
            lambda: (h := control.request("health"))["actors"]["router"]["restarts"] == 1
            and h["actors"]["router"]["status"] == "ok" and h,
            timeout=10, what="the router to be replaced",
        )
    assert seen["actors"]["router"]["heartbeat_age_s"] > 0.4
    assert replaced["healthy"]
    assert "router" in warnings


def test_an_actor_computing_longer_than_the_hung_threshold_is_busy_and_never_replaced(runtime):
    """Busy is not hung: a call that keeps its thread working (a 100k-task plan being opened)
    reports nothing, yet its CPU time shows it is alive."""
    runtime.directory.get("router").tell(Spin(seconds=3))
    with ControlClient(runtime.options.control_socket) as control:
        def router() -> dict:
            return control.request("health")["actors"]["router"]
        wait_until(lambda: router()["status"] == "busy", timeout=10, what="the router to show busy")
        wait_until(lambda: router()["status"] == "ok", timeout=20, what="the router to answer again")
        assert router()["restarts"] == 0
