"""How task outcomes are shown (domain/shown.py) and which tasks a --force names
(domain/forcing.py), tested directly; then the displays that use them — the status read model,
the live panel and the report model — fed by hand.

The ledger keeps FAILED and COMPLETED; a failure the plan allows reads ``FAILED (allowed)`` and a
result reused from an earlier run ``CACHED``, and summaries count them apart.
"""

from __future__ import annotations

import os

import pytest

from domain.forcing import UnknownTasksForced, forced_tasks
from domain.shown import (
    CACHED,
    counts_text,
    css_name,
    is_allowed_failure,
    outcome_text,
    progress_shown_state,
    shown_state,
    status_fields,
    stored_state,
    task_shown_state,
)
from messages import RunProgress


def test_a_failure_the_plan_allows_and_a_reused_result_are_told_apart_and_nothing_else_is():
    assert shown_state("FAILED", allowed=True) == "FAILED (allowed)"
    assert shown_state("TIMEOUT", allowed=True) == "TIMEOUT (allowed)"
    assert shown_state("COMPLETED", cached=True) == CACHED
    # allow_failure says nothing of a block or a cancel; a cached key says nothing of a failure.
    assert shown_state("BLOCKED", allowed=True) == "BLOCKED"
    assert shown_state("CANCELLED", allowed=True) == "CANCELLED"
    assert shown_state("FAILED", cached=True) == "FAILED"
    assert shown_state("FAILED") == "FAILED"
    for shown in ("FAILED (allowed)", "TIMEOUT (allowed)", CACHED, "FAILED", "PENDING"):
        assert stored_state(shown) in ("FAILED", "TIMEOUT", "COMPLETED", "PENDING")
    assert stored_state("TIMEOUT (allowed)") == "TIMEOUT" and stored_state(CACHED) == "COMPLETED"
    assert is_allowed_failure("FAILED (allowed)") and not is_allowed_failure("FAILED")
    assert css_name("FAILED (allowed)") == "FAILED-allowed" and css_name(CACHED) == "CACHED"


def test_a_task_row_is_shown_from_its_plan_snapshot_and_its_adapter():
    lint = {"state": "FAILED", "adapter": "shell", "spec": {"command": "ruff", "allow_failure": True}}
    tests = {"state": "FAILED", "adapter": "shell", "spec": {"command": "pytest"}}
    reused = {"state": "COMPLETED", "adapter": "cache", "spec": {}}
    ran = {"state": "COMPLETED", "adapter": "shell", "spec": {}}
    unreadable = {"state": "FAILED", "adapter": None, "spec": "not json"}
    assert [task_shown_state(t) for t in (lint, tests, reused, ran, unreadable)] == [
        "FAILED (allowed)", "FAILED", CACHED, "COMPLETED", "FAILED"]


def test_a_progress_event_is_shown_from_the_detail_the_run_core_gives_it():
    assert progress_shown_state("FAILED", "(allowed) exit code 1") == "FAILED (allowed)"
    assert progress_shown_state("FAILED", "exit code 1") == "FAILED"
    assert progress_shown_state("FAILED", "exit code 1", allowed=True) == "FAILED (allowed)"
    assert progress_shown_state("COMPLETED", "cached (result of run-1/w/a/1)") == CACHED
    assert progress_shown_state("COMPLETED", "in 0.2s") == "COMPLETED"


def test_summaries_count_allowed_failures_apart_and_cached_results_within_completions():
    counts = {"COMPLETED": 10, CACHED: 2, "FAILED (allowed)": 1, "BLOCKED": 0}
    assert outcome_text(counts) == "12 completed (2 cached), 1 failed (allowed)"
    assert outcome_text({"FAILED": 1, "FAILED (allowed)": 2, "BLOCKED": 3}) == "3 blocked, 1 failed, 2 failed (allowed)"
    assert outcome_text({CACHED: 4}) == "4 completed (4 cached)"
    assert outcome_text({}) == ""
    assert counts_text(counts) == "cached=2 completed=10 failed (allowed)=1"


def test_a_status_answer_carries_shown_counts_and_only_the_tasks_shown_otherwise():
    states = {"w/a": "COMPLETED", "w/b": "FAILED", "w/c": "COMPLETED"}
    shown = {"w/a": "COMPLETED", "w/b": "FAILED (allowed)", "w/c": CACHED}
    assert status_fields(states, shown) == {
        "shown_counts": {CACHED: 1, "COMPLETED": 1, "FAILED (allowed)": 1},
        "shown_states": {"w/b": "FAILED (allowed)", "w/c": CACHED}}


def test_force_names_every_task_some_tasks_or_none_and_refuses_a_task_not_in_the_plan():
    known = {"w/a", "w/b"}
    assert forced_tasks(None, known, "p.json") == (False, ())
    assert forced_tasks([], known, "p.json") == (True, ())
    assert forced_tasks(["w/b", "w/a", "w/b"], known, "p.json") == (False, ("w/b", "w/a"))
    with pytest.raises(UnknownTasksForced) as refused:
        forced_tasks(["w/a", "w/nope"], known, "p.json")
    assert str(refused.value) == "no task 'w/nope' in p.json (name tasks as workstream/task: w/a, w/b)"
    many = {f"w/t{i:02d}" for i in range(12)}
    with pytest.raises(UnknownTasksForced, match=r"w/t09, \.\.\.\)$"):
        forced_tasks(["x"], many, "p.json")


def _event(task: str, state: str, detail: str = "", run: str = "r") -> RunProgress:
    return RunProgress(run, task, state, "2026-01-01T00:00:00Z", 0, 3, detail)


def test_the_status_read_model_knows_allowed_failures_from_the_plan_and_reused_results_from_events():
    from actors.status_view import StatusView

    view = StatusView()
    view.start("r", {"w/lint": "PENDING", "w/read": "PENDING", "w/use": "PENDING"}, allowed=frozenset({"w/lint"}))
    view.apply(_event("w/lint", "FAILED", "exit code 1"))  # allowed by the plan, whatever the detail says
    view.apply(_event("w/read", "COMPLETED", "cached (result of run-0/w/read/1)"))
    view.apply(_event("w/use", "FAILED", "exit code 2"))
    run = view.snapshot("r")["runs"][0]
    assert run["counts"] == {"COMPLETED": 1, "FAILED": 2}  # the states, as recorded
    assert run["shown_counts"] == {CACHED: 1, "FAILED": 1, "FAILED (allowed)": 1}
    assert run["shown_states"] == {"w/lint": "FAILED (allowed)", "w/read": CACHED}
    view.apply(_event("w/read", "PENDING"))  # run again (forced, or retried): no longer a reused result
    assert "w/read" not in view.snapshot("r")["runs"][0]["shown_states"]


def test_the_live_panel_shows_an_allowed_failure_in_its_counts_and_failures_not_as_a_plain_failure(tmp_path):
    from rich.console import Console

    from cli.live import Board

    board = Board("r", str(tmp_path), {"w/lint": "PENDING", "w/read": "PENDING", "w/tests": "PENDING"})
    board.apply(_event("w/lint", "FAILED", "(allowed) exit code 1: style"))
    board.apply(_event("w/read", "COMPLETED", "cached (result of run-0/w/read/1)"))
    board.apply(_event("w/tests", "FAILED", "exit code 1: boom"))
    with open(os.devnull, "w") as sink:
        console = Console(width=140, record=True, file=sink)
        console.print(board.render())
    text = console.export_text()
    assert "cached=1 failed=1 failed (allowed)=1" in text, text
    assert "3/3" in text  # every task ended: allowed failures and reused results are done too
    assert "w/lint FAILED (allowed)  exit code 1: style" in text, text
    assert "w/tests FAILED  exit code 1: boom" in text


def test_the_report_model_shows_allowed_failures_and_reused_results_apart():
    from persistence.report_reader import RunLedger
    from views.report_model import build_report

    def task(key: str, state: str, adapter: str = "shell", **spec) -> dict:
        return {"task_key": key, "ws_id": "w", "state": state, "tool": "shell", "adapter": adapter, "attempts": 1,
                "exit_code": None, "error_class": None, "spec": {"command": "x", **spec}}

    def attempt(row_id: int, key: str, n: int, status: str, adapter: str = "shell") -> dict:
        return {"id": row_id, "step_name": key, "attempt": n, "status": status, "adapter": adapter,
                "started_at": f"2026-12-05T10:00:0{row_id}.000000Z", "completed_at": f"2026-12-05T10:00:0{row_id}.500000Z",
                "duration_s": 0.5}

    ledger = RunLedger(
        run={"run_id": "run-1", "status": "completed", "status_reason": "", "created_at": "2026-12-05T10:00:00Z",
             "updated_at": "2026-12-05T10:00:09Z", "plan_source": "plan.json"},
        workstreams=[{"ws_id": "w", "status": "done", "depends_on": [], "title": ""}],
        tasks=[task("w/lint", "FAILED", allow_failure=True), task("w/read", "COMPLETED", adapter="cache"),
               task("w/build", "COMPLETED")],
        # lint failed, was retried, failed again: only its last failure is the allowed one.
        attempts=[attempt(1, "w/lint", 1, "FAILED"), attempt(2, "w/lint", 2, "FAILED"),
                  attempt(3, "w/read", 1, "COMPLETED", adapter="cache"), attempt(4, "w/build", 1, "COMPLETED")],
        errors=[], events=[], breaker_events=[], routing=[], patches=[], audit=None)
    report = build_report(ledger, {}, "now")
    assert report.summary["counts"] == [("COMPLETED", 1), (CACHED, 1), ("FAILED (allowed)", 1)]
    assert report.summary["outcome"] == "2 completed (1 cached), 1 failed (allowed)"
    rows = {row["key"]: row for row in report.workstreams[0]["tasks"]}
    assert (rows["w/lint"]["state"], rows["w/read"]["state"], rows["w/build"]["state"]) == (
        "FAILED (allowed)", CACHED, "COMPLETED")
    assert [a["status"] for a in rows["w/lint"]["attempts"]] == ["FAILED", "FAILED (allowed)"]
    assert {n["key"]: n["state"] for n in report.task_graph["nodes"]} == {
        "w/lint": "FAILED (allowed)", "w/read": CACHED, "w/build": "COMPLETED"}
    assert sorted(b["state"] for b in report.timeline["bars"]) == ["COMPLETED", "COMPLETED", "FAILED",
                                                                    "FAILED (allowed)"]


def test_watch_prints_a_task_event_in_its_shown_state():
    from cli.client import watched_line

    def event(task: str, state: str, detail: str) -> dict:
        return {"at": "T", "run_id": "r", "task": task, "state": state, "detail": detail}

    assert watched_line(event("w/lint", "FAILED", "(allowed) exit code 1")) == "T  r  w/lint  FAILED (allowed)  exit code 1"
    assert watched_line(event("w/read", "COMPLETED", "cached (result of run-0/w/read/1)")) == (
        "T  r  w/read  CACHED  cached (result of run-0/w/read/1)")
    assert watched_line(event("w/tests", "FAILED", "exit code 2")) == "T  r  w/tests  FAILED  exit code 2"
    assert watched_line(event("w/tests", "IN_PROGRESS", "")) == "T  r  w/tests  IN_PROGRESS"
