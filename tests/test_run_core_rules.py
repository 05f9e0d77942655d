"""The run core's effect streams, in full, for each kind of event and control command.

Each effect is what the Scheduler writes to the ledger or shows a person; the tests below say
exactly what a scenario produces and in what order, so a change to a reason, a payload or the
order of effects is a decision someone makes on purpose.
"""

from __future__ import annotations

import pytest

from domain.breaker import BreakerPolicy
from domain.errors import ErrorClass
from domain.outcomes import Verdict
from domain.routing import AdapterInfo
from domain.run_core import ControlRefused, CoreConfig, RunCore, RunNotActive
from domain.run_events import (
    AttemptBegan,
    AttemptClosed,
    AttemptEnded,
    BreakerDue,
    ChangesRecorded,
    Dispatched,
    DispatchRefused,
    ErrorCounted,
    ExecutorDown,
    ExecutorUp,
    IntegrationEnded,
    Noted,
    Phase,
    PhaseBegan,
    ReportAccepted,
    RetryDue,
    Route,
    Routed,
    RouteRequested,
    RunMoved,
    RunOpened,
    TaskMoved,
    Tick,
    TimerSet,
    WorkstreamMoved,
    WorktreeReady,
)
from domain.states import RunState, TaskState
from tests.test_run_core import (
    CANCELLED,
    COMPLETED,
    FAILED_EXIT,
    GATE_FAILED,
    TOOL_DOWN,
    Harness,
    plan,
    task,
)


def said(effect) -> tuple:
    """An effect in a few words: its kind and the fields a reader cares about."""
    kind = type(effect).__name__
    match effect:
        case TaskMoved():
            return (kind, effect.task_key, effect.state.value, effect.reason, effect.attempt, effect.adapter,
                    effect.done, effect.total)
        case WorkstreamMoved():
            return (kind, effect.ws_id, effect.state.value)
        case RunMoved():
            return (kind, effect.state.value, effect.reason, effect.done, effect.total, effect.finished)
        case RouteRequested():
            return (kind, tuple(t.key for t in effect.tasks), tuple(sorted(effect.open_circuits)), effect.load)
        case Dispatched():
            return (kind, effect.task.key, effect.attempt, effect.adapter, effect.log_path)
        case Noted():
            return (kind, effect.run_id, effect.event_type, effect.task_key, dict(effect.payload))
        case ErrorCounted():
            return (kind, effect.ws_id, effect.task_key, effect.error_class.value, effect.message, effect.gate_output)
        case ReportAccepted():
            return (kind,)
        case AttemptClosed():
            verdict = effect.verdict
            return (kind, effect.task_key, effect.attempt, verdict.state.value,
                    verdict.error_class.value if verdict.error_class else None, verdict.message, effect.duration_s)
        case TimerSet():
            return (kind, effect.delay_s, effect.event)
    return (kind, *(getattr(effect, f) for f in effect.__dataclass_fields__ if f != "run_id"))


def said_all(effects) -> list[tuple]:
    effects = list(effects)
    # Every scenario here drives the one run "r": an effect that names a run names that one.
    assert {e.run_id for e in effects if hasattr(e, "run_id") and not isinstance(e, Noted)} <= {"r"}
    return [said(e) for e in effects]


def test_a_run_opens_queues_what_is_ready_and_finishes_with_a_count_of_how_tasks_ended():
    h = Harness()
    h.open(plan(task("a", "x"), task("a", "y", "a/x")))
    h.feed(AttemptBegan("r", "a/x", 1, pid=100, create_time=1.0))
    h.now = 2.5
    h.feed(AttemptEnded("r", "a/x", 1, COMPLETED, 2.5))
    h.feed(AttemptBegan("r", "a/y", 1, pid=101, create_time=1.0))
    h.feed(AttemptEnded("r", "a/y", 1, FAILED_EXIT, 0.5))
    assert said_all(e for e in h.effects if not isinstance(e, RouteRequested)) == [
        ("RunMoved", "running", "execution started", 0, 2, False),
        ("TaskMoved", "a/x", "QUEUED", "dependencies completed", 0, "", 0, 2),
        ("WorkstreamMoved", "a", "ready"),
        ("Dispatched", "a/x", 1, "shell", "/logs/a/x.log"),
        ("TaskMoved", "a/x", "IN_PROGRESS", "", 1, "shell", 0, 2),
        ("ReportAccepted",),
        ("Noted", "r", "TASK_STARTED", "a/x", {"attempt": 1, "adapter": "shell", "pid": 100}),
        ("ReportAccepted",),
        ("TaskMoved", "a/x", "COMPLETED", "in 2.50s", 1, "", 1, 2),
        ("Noted", "r", "TASK_COMPLETED", "a/x", {"attempt": 1, "duration_s": 2.5}),
        ("TaskMoved", "a/y", "QUEUED", "dependencies completed", 0, "", 1, 2),
        ("WorkstreamMoved", "a", "editing"),
        ("Dispatched", "a/y", 1, "shell", "/logs/a/y.log"),
        ("TaskMoved", "a/y", "IN_PROGRESS", "", 1, "shell", 1, 2),
        ("ReportAccepted",),
        ("Noted", "r", "TASK_STARTED", "a/y", {"attempt": 1, "adapter": "shell", "pid": 101}),
        ("ReportAccepted",),
        ("ErrorCounted", "a", "a/y", "command_failed", "exit code 1", ""),
        ("TaskMoved", "a/y", "FAILED", "exit code 1", 1, "", 2, 2),
        ("Noted", "r", "TASK_FAILED", "a/y",
         {"attempt": 1, "state": "FAILED", "error_class": "command_failed", "message": "exit code 1"}),
        ("WorkstreamMoved", "a", "failed"),
        ("Noted", "r", "EXECUTION_FINISHED", None, {"state": "partial", "tasks": {"COMPLETED": 1, "FAILED": 1}}),
        ("RunMoved", "partial", "1 completed, 1 failed", 2, 2, True),
    ]


def test_routing_is_asked_once_for_every_task_queued_together():
    h = Harness()
    h.open(plan(task("a", "x"), task("b", "y")))
    requests = [said(e) for e in h.effects if isinstance(e, RouteRequested)]
    assert requests == [("RouteRequested", ("a/x", "b/y"), (), ())]
    assert h.open(plan(task("a", "x"))) == [], "opening a run already open changes nothing"
    h.feed(AttemptBegan("r", "a/x", 1))
    h.feed(AttemptEnded("r", "a/x", 1, FAILED_EXIT, 0.1))
    assert [said(e) for e in h.effects if isinstance(e, RouteRequested)] == requests


def test_checks_fix_rounds_and_an_approval_show_as_task_and_workstream_phases():
    h = Harness()
    h.open(plan(task("a", "x"), task("b", "y", tool="human")))
    h.effects.clear()
    h.feed(AttemptBegan("r", "a/x", 1, pid=7, create_time=3.0))
    h.feed(PhaseBegan("r", "a/x", 1, Phase.STATIC))
    h.feed(PhaseBegan("r", "a/x", 1, Phase.FIXING, "lint failed", round=2))
    h.feed(PhaseBegan("r", "a/x", 1, Phase.RUNTIME))
    h.feed(AttemptBegan("r", "b/y", 1))
    h.feed(PhaseBegan("r", "b/y", 1, Phase.AWAITING, "ship it?"))
    assert said_all(h.effects) == [
        ("TaskMoved", "a/x", "IN_PROGRESS", "", 1, "shell", 0, 2),
        ("ReportAccepted",),
        ("Noted", "r", "TASK_STARTED", "a/x", {"attempt": 1, "adapter": "shell", "pid": 7}),
        ("TaskMoved", "a/x", "VALIDATING", "static checks", 1, "", 0, 2),
        ("WorkstreamMoved", "a", "editing"),
        ("WorkstreamMoved", "a", "static_check"),
        ("Noted", "r", "FIX_ROUND", "a/x", {"attempt": 1, "round": 2, "reason": "lint failed"}),
        ("Announced", "a/x", "FIXING", "round 2: lint failed", 0, 2),
        ("WorkstreamMoved", "a", "fixing"),
        ("WorkstreamMoved", "a", "runtime_check"),
        ("TaskMoved", "b/y", "IN_PROGRESS", "", 1, "shell", 0, 2),
        ("ReportAccepted",),
        ("Noted", "r", "TASK_STARTED", "b/y", {"attempt": 1, "adapter": "shell", "pid": None}),
        ("TaskMoved", "b/y", "AWAITING_APPROVAL", "ship it?", 1, "", 0, 2),
        ("Noted", "r", "APPROVAL_REQUESTED", "b/y", {"attempt": 1, "prompt": "ship it?"}),
        ("WorkstreamMoved", "b", "editing"),
    ]
    run = h.core.status("r")["runs"][0]
    assert run["awaiting_approval"] == [{"task": "b/y", "prompt": "ship it?"}]
    assert run["tasks"] == {"a/x": "VALIDATING", "b/y": "AWAITING_APPROVAL"}
    result, effects = h.core.approve("r", "b/y", False, "ann", "no", 5.0, "2026-01-01T00:00:05Z")
    assert result == {"task": "b/y", "approved": False, "who": "ann"}
    assert said_all(effects) == [
        ("Noted", "r", "TASK_REJECTED", "b/y", {"who": "ann", "comment": "no", "at": "2026-01-01T00:00:05Z",
                                                "attempt": 1}),
        ("ApprovalRelayed", "shell", "b/y", 1, False, "ann", "no"),
    ]


def test_an_approval_names_who_approved_and_for_which_attempt():
    h = Harness()
    h.open(plan(task("b", "y", tool="human")))
    h.feed(AttemptBegan("r", "b/y", 1))
    h.feed(PhaseBegan("r", "b/y", 1, Phase.AWAITING, "ok?"))
    _, effects = h.core.approve("r", "b/y", True, "bo", "", 1.0, "T")
    assert said_all(effects) == [
        ("Noted", "r", "TASK_APPROVED", "b/y", {"who": "bo", "comment": "", "at": "T", "attempt": 1}),
        ("ApprovalRelayed", "shell", "b/y", 1, True, "bo", ""),
    ]


def test_pausing_resuming_draining_and_stopping_say_what_they_did():
    h = Harness(concurrency=1)
    h.open(plan(task("a", "x"), task("a", "y")))
    h.feed(AttemptBegan("r", "a/x", 1, pid=7, create_time=3.0))
    result, effects = h.core.pause("r", 1, "t")
    assert result == {"paused": True, "runs": ["r"]}
    assert said_all(effects) == [("Noted", "r", "RUN_PAUSED", None, {}), ("Announced", "", "PAUSED", "", 0, 2)]
    result, effects = h.core.pause(None, 1, "t")
    assert result == {"paused": True, "runs": ["r"]}
    assert said_all(effects) == [("Noted", "r", "RUN_PAUSED", None, {}), ("Announced", "", "PAUSED", "", 0, 2)]
    assert h.core.drain(1, "t") == ({"draining": True, "running": 1}, [])
    status = h.core.status(None)
    assert (status["paused_all"], status["draining"], status["ledger_holding"]) == (True, True, False)
    assert status["runs"][0]["paused"] is True
    result, effects = h.core.resume(None, 1, "t")
    assert result == {"paused": False, "runs": ["r"]}
    assert said_all(effects) == [("Noted", "r", "RUN_RESUMED", None, {}), ("Announced", "", "RESUMED", "", 0, 2)]
    assert (h.core.status(None)["draining"], h.core.status(None)["runs"][0]["paused"]) == (False, False)
    result, effects = h.core.stop(1, "t")
    assert result == {"stopping": 1}
    assert said_all(effects) == [("CancelRequested", "shell", "a/x", 1)]
    assert h.core.status(None) == {
        "paused_all": True, "draining": False, "ledger_holding": False, "running": 1, "concurrency": 1,
        "circuits": {"shell": "closed"}, "queued": {"shell": 1},
        "runs": [{"run_id": "r", "paused": True, "cancelling": False, "quarantine_reason": "", "stop_reason": "",
                  "waiting": "", "counts": {"IN_PROGRESS": 1, "QUEUED": 1}, "done": 0, "total": 2,
                  "running": ["a/x"], "awaiting_approval": [], "tasks": {"a/x": "IN_PROGRESS", "a/y": "QUEUED"}}],
    }


def merge_step_of_one_task_workstream() -> Harness:
    h = Harness()
    h.open(plan(task("f", "edit"), isolated=("f",)))
    h.feed(WorktreeReady("r", "f", "/wt/f"))
    h.feed(AttemptBegan("r", "f/edit", 1))
    h.feed(AttemptEnded("r", "f/edit", 1, COMPLETED, 0.1))
    h.feed(ChangesRecorded("r", "f/edit", 1))
    h.effects.clear()
    h.now = 4.0
    return h


def _payload(**fields):
    return {"workstream": "f", "branch": "ws/f", "target": "main", "commit": "", "conflicts": [], "error": ""} | fields


@pytest.mark.parametrize(
    ("ended", "noted", "closed", "moved"),
    [
        ({"merged": True, "commit": "0123456789abcdef"},
         ("WORKSTREAM_MERGED", _payload(commit="0123456789abcdef")),
         ("COMPLETED", None, "merged ws/f into main (0123456789)"),
         "merged ws/f into main (0123456789) in 4.00s"),
        ({"merged": False},
         ("BRANCH_LEFT", _payload()),
         ("COMPLETED", None, "ws/f left for review"),
         "ws/f left for review in 4.00s"),
    ],
)
def test_a_merged_or_left_branch_completes_the_merge_step_and_says_how(ended, noted, closed, moved):
    h = merge_step_of_one_task_workstream()
    h.feed(IntegrationEnded("r", "f", branch="ws/f", target="main", **ended))
    assert said_all(h.effects) == [
        ("Noted", "r", noted[0], None, noted[1]),
        ("AttemptClosed", "f/@merge", 1, *closed, 4.0),
        ("TaskMoved", "f/@merge", "COMPLETED", moved, 1, "", 2, 2),
        ("Noted", "r", "TASK_COMPLETED", "f/@merge", {"attempt": 1, "duration_s": 4.0}),
        ("WorkstreamMoved", "f", "done"),
        ("Noted", "r", "EXECUTION_FINISHED", None, {"state": "completed", "tasks": {"COMPLETED": 2}}),
        ("RunMoved", "completed", "2 completed", 2, 2, True),
    ]


@pytest.mark.parametrize(
    ("ended", "noted", "why"),
    [
        ({"conflicts": ("x.py", "y.py")}, ("MERGE_CONFLICT", _payload(conflicts=["x.py", "y.py"])),
         "merge into main conflicts in x.py, y.py; branch ws/f left for review"),
        ({"error": "dirty checkout."}, ("MERGE_FAILED", _payload(error="dirty checkout.")),
         "dirty checkout; once that is fixed, `orchestrate retry r f` merges it"),
    ],
)
def test_a_conflict_or_a_merge_error_fails_the_merge_step_for_a_person_to_fix(ended, noted, why):
    h = merge_step_of_one_task_workstream()
    h.feed(IntegrationEnded("r", "f", merged=False, branch="ws/f", target="main", **ended))
    assert said_all(h.effects) == [
        ("Noted", "r", noted[0], None, noted[1]),
        ("AttemptClosed", "f/@merge", 1, "FAILED", "merge", why, 4.0),
        ("ErrorCounted", "f", "f/@merge", "merge", why, ""),
        ("TaskMoved", "f/@merge", "FAILED", why, 1, "", 2, 2),
        ("Noted", "r", "TASK_FAILED", "f/@merge", {"attempt": 1, "state": "FAILED", "error_class": "merge",
                                                   "message": why}),
        ("WorkstreamMoved", "f", "failed"),
        ("Noted", "r", "EXECUTION_FINISHED", None, {"state": "partial", "tasks": {"COMPLETED": 1, "FAILED": 1}}),
        ("RunMoved", "partial", "1 completed, 1 failed", 2, 2, True),
    ]


def test_an_integration_report_for_a_workstream_not_merging_is_ignored():
    h = merge_step_of_one_task_workstream()
    assert h.feed(IntegrationEnded("r", "other", merged=True)) == []
    assert h.feed(IntegrationEnded("nope", "f", merged=True)) == []


def test_a_dead_executor_kills_what_it_ran_and_each_of_its_attempts_ends_as_a_crash():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=2, backoff_s=0.0, retry_jitter=0.0), task("a", "y")))
    h.feed(AttemptBegan("r", "a/x", 1, 123, 9.0))
    h.effects.clear()
    h.now = 3.0
    h.feed(ExecutorDown("shell", "boom"))
    crash = "executor shell crashed: boom"
    assert said_all(h.effects) == [
        ("ProcessKill", 123, 9.0),
        ("AttemptClosed", "a/x", 1, "FAILED", "crash", crash, 3.0),
        ("ErrorCounted", "a", "a/x", "crash", crash, ""),
        ("TaskMoved", "a/x", "RETRY_WAIT", f"{crash}; retry in 0.00s", 1, "", 0, 2),
        ("TimerSet", 0.0, RetryDue("r", "a/x")),
        ("WorkstreamMoved", "a", "editing"),
        # a/y was dispatched but never reported its start: its attempt gets its row all the same.
        ("AttemptOpened", "a", "a/y", 1, "shell"),
        ("AttemptClosed", "a/y", 1, "FAILED", "crash", crash, 3.0),
        ("ErrorCounted", "a", "a/y", "crash", crash, ""),
        ("TaskMoved", "a/y", "FAILED", crash, 1, "", 1, 2),
        ("Noted", "r", "TASK_FAILED", "a/y", {"attempt": 1, "state": "FAILED", "error_class": "crash",
                                              "message": crash}),
    ]


def test_cancelling_a_task_blocks_its_dependants_and_cancelling_the_run_ends_everything_cancelled():
    h = Harness(concurrency=1)
    h.open(plan(task("a", "1"), task("a", "2"), task("a", "3", "a/2")))
    h.feed(AttemptBegan("r", "a/1", 1, 5, 1.0))
    result, effects = h.core.cancel("r", "a/2", 1, "t")
    assert result == {"cancelled": ["a/2"], "killing": []}
    by_request = "cancelled by request"
    assert said_all(effects) == [  # a cancellation is a decision, not an error: nothing counted
        ("TaskMoved", "a/2", "CANCELLED", by_request, 0, "", 1, 3),
        ("Noted", "r", "TASK_FAILED", "a/2", {"attempt": 0, "state": "CANCELLED", "error_class": "cancelled",
                                              "message": by_request}),
        ("TaskMoved", "a/3", "BLOCKED", "dependency a/2 ended CANCELLED", 0, "", 2, 3),
        ("WorkstreamMoved", "a", "editing"),
    ]
    result, effects = h.core.cancel("r", None, 1, "t")
    assert result == {"cancelled": ["a/3"], "killing": ["a/1"]}
    assert said_all(effects) == [
        ("CancelRequested", "shell", "a/1", 1),
        ("TaskMoved", "a/3", "CANCELLED", by_request, 0, "", 2, 3),
        ("Noted", "r", "TASK_FAILED", "a/3", {"attempt": 0, "state": "CANCELLED", "error_class": "cancelled",
                                              "message": by_request}),
    ]
    h.effects.clear()
    h.feed(AttemptEnded("r", "a/1", 1, CANCELLED, 0.2))
    assert said_all(h.effects) == [
        ("ReportAccepted",),
        ("TaskMoved", "a/1", "CANCELLED", "cancelled", 1, "", 3, 3),
        ("Noted", "r", "TASK_FAILED", "a/1", {"attempt": 1, "state": "CANCELLED", "error_class": "cancelled",
                                              "message": "cancelled"}),
        ("WorkstreamMoved", "a", "failed"),
        ("Noted", "r", "EXECUTION_FINISHED", None, {"state": "cancelled", "tasks": {"CANCELLED": 3}}),
        ("RunMoved", "cancelled", "3 cancelled", 3, 3, True),
    ]


def test_a_cancel_names_an_unknown_or_finished_task_in_its_refusal():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2")))
    h.start_and_end("a/1", COMPLETED)
    with pytest.raises(ControlRefused, match=r"^run r has no task 'a/9'$"):
        h.core.cancel("r", "a/9", 0, "")
    with pytest.raises(ControlRefused, match=r"^task a/1 already ended COMPLETED$"):
        h.core.cancel("r", "a/1", 0, "")
    with pytest.raises(RunNotActive, match=r"^run 'x' is not active in this runtime$"):
        h.core.cancel("x", None, 0, "")


def test_a_retry_by_request_resets_the_task_and_its_dependants_and_queues_what_can_start():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1"), task("b", "slow")))
    h.start_and_end("a/1", FAILED_EXIT)
    result, effects = h.core.retry("r", "a/1", 1, "t")
    assert result == {"retried": ["a/1", "a/2"]}
    # The progress counter never goes backwards: each outcome reopened is one more to wait for.
    assert said_all(effects) == [
        ("TaskMoved", "a/1", "PENDING", "retried by request", 0, "", 2, 4),
        ("TaskMoved", "a/2", "PENDING", "retried by request", 0, "", 2, 5),
        ("Announced", "a/1", "RETRIED", "by request, with a/2", 2, 5),
        ("TaskMoved", "a/1", "QUEUED", "dependencies completed", 0, "", 2, 5),
        ("WorkstreamMoved", "a", "ready"),
        ("RouteRequested", ("a/1",), (), (("shell", 1),)),
    ]
    with pytest.raises(ControlRefused, match=r"^run r has no task 'a/9'$"):
        h.core.retry("r", "a/9", 0, "")


def test_a_failure_with_attempts_left_waits_says_how_long_and_its_gate_output_is_kept():
    h = Harness()
    h.open(plan(task("a", "1", max_attempts=2, backoff_s=0.25, retry_jitter=0.0)))
    h.feed(AttemptBegan("r", "a/1", 1))
    h.effects.clear()
    h.feed(AttemptEnded("r", "a/1", 1, GATE_FAILED, 0.1, gate_output="E assert"))
    h.feed(RetryDue("r", "a/1"))
    gate = "acceptance check 'x' failed: exit code 1"
    assert said_all(e for e in h.effects if not isinstance(e, WorkstreamMoved)) == [
        ("ReportAccepted",),
        ("ErrorCounted", "a", "a/1", "gate", gate, "E assert"),
        ("TaskMoved", "a/1", "RETRY_WAIT", f"{gate}; retry in 0.25s", 1, "", 0, 1),
        ("TimerSet", 0.25, RetryDue("r", "a/1")),
        ("TaskMoved", "a/1", "QUEUED", "retry backoff elapsed", 0, "", 0, 1),
        ("RouteRequested", ("a/1",), (), ()),
        ("Dispatched", "a/1", 2, "shell", "/logs/a/1.attempt2.log"),
    ]


def test_a_worktree_that_cannot_be_made_fails_every_task_waiting_for_it_as_bad_input():
    h = Harness()
    h.open(plan(task("f", "a"), task("f", "b"), isolated=("f",)))
    h.effects.clear()
    h.feed(WorktreeReady("r", "f", error="disk full"))
    why = "worktree for f: disk full"
    assert said_all(h.effects) == [
        ("ErrorCounted", "f", "f/a", "bad_input", why, ""),
        ("TaskMoved", "f/a", "FAILED", why, 0, "", 1, 3),
        ("Noted", "r", "TASK_FAILED", "f/a", {"attempt": 0, "state": "FAILED", "error_class": "bad_input",
                                              "message": why}),
        ("TaskMoved", "f/@merge", "BLOCKED", "dependency f/a ended FAILED", 0, "", 2, 3),
        ("ErrorCounted", "f", "f/b", "bad_input", why, ""),
        ("TaskMoved", "f/b", "FAILED", why, 0, "", 3, 3),
        ("Noted", "r", "TASK_FAILED", "f/b", {"attempt": 0, "state": "FAILED", "error_class": "bad_input",
                                              "message": why}),
        ("WorkstreamMoved", "f", "failed"),
        ("Noted", "r", "EXECUTION_FINISHED", None, {"state": "failed", "tasks": {"FAILED": 2, "BLOCKED": 1}}),
        ("RunMoved", "failed", "1 blocked, 2 failed", 3, 3, True),
    ]


def test_a_failed_worktree_attempt_drops_its_changes_and_a_capture_error_is_noted_not_fatal():
    h = Harness()
    h.open(plan(task("f", "a"), isolated=("f",)))
    h.feed(WorktreeReady("r", "f", "/wt/f"))
    h.feed(AttemptBegan("r", "f/a", 1))
    h.effects.clear()
    h.feed(AttemptEnded("r", "f/a", 1, FAILED_EXIT, 0.1))
    assert said_all(h.effects) == [("CaptureWanted", "f", "f/a", 1, False)]
    assert h.feed(ChangesRecorded("r", "f/a", 2)) == [], "another attempt's capture is ignored"
    h.feed(ChangesRecorded("r", "f/a", 1, error="git broke"))
    assert said(h.effects[1]) == ("Noted", "r", "PATCH_CAPTURE_FAILED", "f/a", {"error": "git broke"})
    assert h.finished().state is RunState.FAILED


def test_a_resumed_run_closes_interrupted_attempts_retries_failures_and_requeues_what_was_running():
    h = Harness()
    h.open(plan(task("a", "1"), task("a", "2", "a/1"), task("a", "3"), task("a", "4")),
           task_states={"a/1": TaskState.COMPLETED, "a/2": TaskState.FAILED, "a/3": TaskState.VALIDATING,
                        "a/4": TaskState.RETRY_WAIT},
           attempts={"a/1": 1, "a/2": 1, "a/3": 2, "a/4": 1}, failures={"a/2": 1, "a/4": 1}, interrupted=(("a/3", 2),))
    assert said_all(h.effects) == [
        ("RunMoved", "running", "execution started", 2, 4, False),
        ("AttemptClosed", "a/3", 2, "FAILED", "interrupted", "interrupted: the runtime running this attempt stopped",
         None),
        ("TaskMoved", "a/2", "PENDING", "resumed: tried again", 0, "", 1, 4),
        ("TaskMoved", "a/3", "QUEUED", "resumed: attempt was interrupted", 0, "", 1, 4),
        ("TaskMoved", "a/4", "QUEUED", "resumed: attempt was interrupted", 0, "", 1, 4),
        ("TaskMoved", "a/2", "QUEUED", "dependencies completed", 0, "", 1, 4),
        ("WorkstreamMoved", "a", "ready"),
        ("WorkstreamMoved", "a", "editing"),
        ("RouteRequested", ("a/3", "a/4", "a/2"), (), ()),
        ("Dispatched", "a/2", 2, "shell", "/logs/a/2.attempt2.log"),
        ("Dispatched", "a/3", 3, "shell", "/logs/a/3.attempt3.log"),
        ("Dispatched", "a/4", 2, "shell", "/logs/a/4.attempt2.log"),
    ]
    # A retried task starts its budget afresh; an interrupted one keeps what it had used.
    assert h.core.runs["r"].failures == {"a/2": 0, "a/4": 1}


def test_a_task_no_adapter_can_take_fails_as_bad_input_with_the_routers_reason():
    h = Harness()
    h.core.handle(RunOpened("r", plan(task("a", "1"), task("a", "2")), "/logs"), 0, "")
    out = h.core.handle(Routed("r", (Route("a/1", "", "no adapter serves tool 'shell'"), Route("a/2", "shell", "ok"))),
                        0, "")
    why = "no adapter serves tool 'shell'"
    assert said_all(out) == [
        ("ErrorCounted", "a", "a/1", "bad_input", why, ""),
        ("TaskMoved", "a/1", "FAILED", why, 0, "", 1, 2),
        ("Noted", "r", "TASK_FAILED", "a/1", {"attempt": 0, "state": "FAILED", "error_class": "bad_input",
                                              "message": why}),
        ("WorkstreamMoved", "a", "editing"),
        ("Dispatched", "a/2", 1, "shell", "/logs/a/2.log"),
    ]
    assert h.core.handle(Routed("gone", (Route("a/2", "shell", "x"),)), 0, "") == []


def test_the_merge_step_starts_when_its_workstream_completed_and_asks_the_workspace_to_merge():
    h = Harness()
    h.open(plan(task("f", "edit"), isolated=("f",)))
    h.feed(WorktreeReady("r", "f", "/wt/f"))
    h.feed(AttemptBegan("r", "f/edit", 1))
    h.feed(AttemptEnded("r", "f/edit", 1, COMPLETED, 0.1))
    h.effects.clear()
    h.feed(ChangesRecorded("r", "f/edit", 1))
    assert said_all(h.effects) == [
        ("ReportAccepted",),
        ("TaskMoved", "f/edit", "COMPLETED", "in 0.10s", 1, "", 1, 2),
        ("Noted", "r", "TASK_COMPLETED", "f/edit", {"attempt": 1, "duration_s": 0.1}),
        ("TaskMoved", "f/@merge", "QUEUED", "dependencies completed", 0, "", 1, 2),
        ("AttemptOpened", "f", "f/@merge", 1, "workspace"),
        ("TaskMoved", "f/@merge", "IN_PROGRESS", "", 1, "workspace", 1, 2),
        ("IntegrationWanted", "f", None, "merge", "fail", "", ""),
        ("WorkstreamMoved", "f", "editing"),
    ]
    assert h.core.status("r")["running"] == 0, "a merge takes no executor slot"


def test_a_circuit_opening_is_noted_with_its_reason_timed_and_sends_queued_work_to_be_routed_again():
    h = Harness(concurrency=1, breaker=BreakerPolicy(max_failures=2, reset_timeout_s=10))
    h.open(plan(*(task("w", str(i)) for i in range(4))))
    h.now = 1.0
    h.start_and_end("w/0", TOOL_DOWN)
    h.effects.clear()
    h.start_and_end("w/1", TOOL_DOWN)
    down = "could not start: no such file"
    assert said_all(e for e in h.effects if isinstance(e, (Noted, TimerSet, RouteRequested))) == [
        ("Noted", "r", "TASK_STARTED", "w/1", {"attempt": 1, "adapter": "shell", "pid": 100}),
        ("Noted", "r", "CIRCUIT_OPEN", None, {"adapter": "shell", "state": "open",
                                               "reason": f"2 consecutive failures, last: {down}"}),
        ("TimerSet", 10.0, BreakerDue("shell")),
        ("Noted", "r", "TASK_FAILED", "w/1", {"attempt": 1, "state": "FAILED", "error_class": "tool_error",
                                              "message": down}),
        ("RouteRequested", ("w/2", "w/3"), ("shell",), ()),
    ]
    assert h.core.status(None)["circuits"] == {"shell": "open"}
    h.effects.clear()
    h.now = 11.0
    h.feed(BreakerDue("shell"))
    assert said_all(h.effects)[:2] == [
        ("Noted", None, "CIRCUIT_HALF_OPEN", None, {"adapter": "shell", "state": "half_open",
                                                    "reason": "reset timeout elapsed: admitting one probe"}),
        ("Dispatched", "w/2", 1, "shell", "/logs/w/2.log"),
    ]
    h.effects.clear()
    h.start_and_end("w/2", COMPLETED)
    assert ("Noted", "r", "CIRCUIT_CLOSED", None, {"adapter": "shell", "state": "closed", "reason": "probe succeeded"}
            ) in said_all(h.effects)
    assert h.running() == ["w/3"]


def test_a_new_core_runs_nothing_is_neither_paused_nor_draining_and_every_circuit_is_closed():
    h = Harness(concurrency=3)
    assert h.core.status(None) == {
        "paused_all": False, "draining": False, "ledger_holding": False, "running": 0, "concurrency": 3,
        "circuits": {"shell": "closed"}, "queued": {}, "runs": [],
    }


def test_an_adapter_takes_no_more_than_its_own_concurrency_and_a_dead_one_takes_nothing():
    core = RunCore(CoreConfig(8, (AdapterInfo("one", "shell", concurrency=1), AdapterInfo("any", "shell"))))
    core.handle(RunOpened("r", plan(*(task("a", str(i)) for i in range(5))), "/logs"), 0, "")
    core.handle(ExecutorDown("any", "gone"), 0, "")
    routes = tuple(Route(f"a/{i}", "one" if i < 2 else "any", "rule") for i in range(5))
    out = core.handle(Routed("r", routes), 0, "")
    assert [(e.task.key, e.adapter) for e in out if isinstance(e, Dispatched)] == [("a/0", "one")]
    out = core.handle(ExecutorUp("any"), 0, "")
    assert [(e.task.key, e.adapter) for e in out if isinstance(e, Dispatched)] == [
        ("a/2", "any"), ("a/3", "any"), ("a/4", "any")]


def test_safe_mode_says_which_adapters_were_down_how_long_and_how_to_resume():
    h = Harness(concurrency=1, breaker=BreakerPolicy(max_failures=1, reset_timeout_s=300), safe_mode_after_s=60,
                waiting_every_s=100)
    h.open(plan(task("w", "0"), task("w", "1")))
    h.start_and_end("w/0", TOOL_DOWN)
    h.effects.clear()
    for second in (1.0, 61.4):
        h.now = second
        h.feed(Tick())
    why = ("safe mode: every adapter this run needs ('shell') has been unavailable for 60s; "
           "resume with `orchestrate execute --run r` once it is back")
    assert said_all(h.effects) == [
        ("Announced", "", "WAITING", "waiting: circuit 'shell' open, next probe in 299s", 1, 2),
        ("Noted", "r", "RUN_SAFE_MODE", None, {"adapters": ["shell"], "waited_s": 60.4, "reason": why}),
        ("TaskMoved", "w/1", "BLOCKED", why, 0, "", 2, 2),
        ("WorkstreamMoved", "w", "failed"),
        ("Noted", "r", "EXECUTION_FINISHED", None, {"state": "partial", "tasks": {"FAILED": 1, "BLOCKED": 1}}),
        ("RunMoved", "partial", f"{why}; 1 blocked, 1 failed", 2, 2, True),
    ]


def test_quarantine_names_the_signature_its_count_and_threshold_and_stops_retries():
    h = Harness(quarantine_after=1)
    retried = {"max_attempts": 5, "backoff_s": 0, "retry_jitter": 0}
    h.open(plan(task("a", "0", **retried), task("a", "1", **retried), task("a", "2")))
    h.start_and_end("a/0", FAILED_EXIT)
    h.effects.clear()
    h.start_and_end("a/1", FAILED_EXIT)
    signature = "command_failed:cf9ff380e18a7a6f"
    why = f"quarantined: 2 failures with signature {signature} (threshold 1); last: exit code 1"
    assert said_all(h.effects)[4:] == [
        ("ErrorCounted", "a", "a/1", "command_failed", "exit code 1", ""),
        ("Noted", "r", "RUN_QUARANTINED", None, {"signature": signature, "count": 2, "reason": why}),
        ("TaskMoved", "a/0", "BLOCKED", why, 0, "", 1, 3),
        ("TaskMoved", "a/1", "FAILED", "exit code 1", 1, "", 2, 3),
        ("Noted", "r", "TASK_FAILED", "a/1", {"attempt": 1, "state": "FAILED", "error_class": "command_failed",
                                              "message": "exit code 1"}),
    ]
    run = h.core.status("r")["runs"][0]
    assert (run["quarantine_reason"], run["stop_reason"]) == (why, why)
    assert h.feed(RetryDue("r", "a/0")) == [], "a stopped run starts nothing more"


def test_a_completed_attempt_is_recorded_with_its_duration_whatever_its_tool_said():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.feed(AttemptBegan("r", "a/x", 1))
    h.feed(AttemptEnded("r", "a/x", 1, Verdict(TaskState.COMPLETED, None, "all good"), 1.5))
    assert ("TaskMoved", "a/x", "COMPLETED", "in 1.50s", 1, "", 1, 1) in said_all(h.effects)


def test_a_running_task_cancelled_on_its_own_ends_cancelled_without_counting_an_error():
    h = Harness()
    h.open(plan(task("a", "x", max_attempts=3), task("a", "y")))
    h.feed(AttemptBegan("r", "a/x", 1))
    result, effects = h.core.cancel("r", "a/x", 0, "")
    assert result == {"cancelled": [], "killing": ["a/x"]}
    assert said_all(effects)[0] == ("CancelRequested", "shell", "a/x", 1)
    h.effects.clear()
    h.feed(AttemptEnded("r", "a/x", 1, Verdict(TaskState.CANCELLED, ErrorClass.CANCELLED, ""), 0.1))
    assert said_all(h.effects) == [
        ("ReportAccepted",),
        ("TaskMoved", "a/x", "CANCELLED", "cancelled", 1, "", 1, 2),
        ("Noted", "r", "TASK_FAILED", "a/x", {"attempt": 1, "state": "CANCELLED", "error_class": "cancelled",
                                              "message": "cancelled"}),
    ]


def test_an_interrupted_attempt_is_requeued_saying_why():
    h = Harness()
    h.open(plan(task("a", "x")))
    h.feed(AttemptBegan("r", "a/x", 1))
    h.effects.clear()
    h.feed(AttemptEnded("r", "a/x", 1, Verdict(TaskState.FAILED, ErrorClass.INTERRUPTED, "runtime stopping"), 0.1))
    assert said_all(h.effects) == [
        ("ReportAccepted",),
        ("ErrorCounted", "a", "a/x", "interrupted", "runtime stopping", ""),
        ("TaskMoved", "a/x", "QUEUED", "runtime stopping", 0, "", 0, 1),
        ("RouteRequested", ("a/x",), (), ()),
        ("Dispatched", "a/x", 2, "shell", "/logs/a/x.attempt2.log"),
    ]


def test_different_failures_are_counted_apart_towards_quarantine():
    h = Harness(quarantine_after=1)
    h.open(plan(task("a", "0"), task("a", "1"), task("a", "2")))
    h.start_and_end("a/0", FAILED_EXIT)
    h.start_and_end("a/1", Verdict(TaskState.FAILED, ErrorClass.COMMAND_FAILED, "killed by signal 9"))
    assert h.core.status("r")["runs"][0]["stop_reason"] == ""


@pytest.mark.parametrize(
    "event",
    [
        AttemptBegan("ghost", "a/x", 1),
        PhaseBegan("ghost", "a/x", 1, Phase.STATIC),
        AttemptEnded("ghost", "a/x", 1, COMPLETED),
        ChangesRecorded("ghost", "a/x", 1),
        WorktreeReady("ghost", "f", "/wt"),
        IntegrationEnded("ghost", "f", merged=True),
        RetryDue("ghost", "a/x"),
        DispatchRefused("ghost", "a/x", 1, "shell"),
        Routed("ghost", (Route("a/x", "shell", "r"),)),
    ],
)
def test_a_report_about_a_run_this_core_does_not_drive_is_ignored(event):
    h = Harness()
    h.open(plan(task("a", "x"), task("f", "y"), isolated=("f",)))
    assert h.core.handle(event, 0, "") == []


@pytest.mark.parametrize(
    "event",
    [
        AttemptBegan("r", "a/gone", 1),
        AttemptEnded("r", "a/gone", 1, COMPLETED),
        ChangesRecorded("r", "a/x", 1),
        WorktreeReady("r", "nope", "/wt"),
        IntegrationEnded("r", "f", merged=True),
        IntegrationEnded("r", "nope", merged=True),
        RetryDue("r", "a/x"),
        DispatchRefused("r", "a/gone", 1, "shell"),
    ],
)
def test_a_report_about_a_task_or_workstream_not_in_that_state_is_ignored(event):
    h = Harness()
    h.open(plan(task("a", "x"), task("f", "y"), isolated=("f",)))
    assert h.core.handle(event, 0, "") == []


def test_a_task_started_after_a_resume_has_its_duration_measured_from_then():
    h = Harness()
    h.core.pause(None, 0, "")
    h.open(plan(task("a", "x")))
    h.core.resume(None, 2.0, "")
    h.now = 5.0
    out = h.feed(ExecutorDown("shell", "boom"))
    assert [e.duration_s for e in out if isinstance(e, AttemptClosed)] == [3.0]
